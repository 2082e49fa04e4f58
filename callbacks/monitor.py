"""What the variance monitors share: cadence, publishing (scalars, chart layout, depth images) and alerts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Optional

import numpy as np
from typing_extensions import override

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from . import plots, reporting
from .alerts import VarianceAlert
from .steps import batches_that_stepped, is_logging_step

__all__ = ["Series", "VarianceMonitor", "batches_that_stepped"]


def _check_count(name: str, value: Optional[int], minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name} must be None or an int >= {minimum}, got {value!r}")


class Series:
    """One logged quantity for every layer (e.g. ``activation_variance``): ``{layer name: value}``."""

    def __init__(self, name: str, values: Mapping[str, float], alert: bool = False, image: bool = False,
                 unit: str = "layer"):  # fmt: skip
        self.name, self.values, self.alert, self.image, self.unit = name, dict(values), alert, image, unit


class VarianceMonitor(Callback):
    """Base of the per-layer monitors. A step is a *logging step* when Lightning would log there too:
    ``(optimizer steps so far + 1) % every_n_steps == 0``; values are logged at Lightning's step number
    (see :mod:`callbacks.steps`, the convention every monitor follows).

    The options below are declared here only; subclasses take them as keyword arguments (``**kwargs``,
    which LightningCLI/jsonargparse resolve, so they are ``init_args`` of the subclasses in YAML).

    Args:
        every_n_steps: log every this many optimizer steps; ``None`` follows ``Trainer(log_every_n_steps)``.
        image_every_n_steps: draw the depth picture (variance against layer, and a layer x step heat map)
            every this many steps, a multiple of ``every_n_steps``, and once more when training ends (the last
            logged values, unless they were just drawn); ``None`` means 10 x ``every_n_steps``, 0 disables
            pictures.
        history_size: logging steps kept for the heat map (older columns are thinned out, not dropped).
        low: optional lower bound on each layer's variance.
        high: optional upper bound on each layer's variance.
        check_finite: warn when a layer's variance is non-finite (NaN or inf).
        stop_on_alert: also stop training when a bound is crossed or a value is non-finite.
    """

    def __init__(
        self,
        *,
        every_n_steps: Optional[int] = None,
        image_every_n_steps: Optional[int] = None,
        history_size: int = 256,
        low: Optional[float] = None,
        high: Optional[float] = None,
        check_finite: bool = True,
        stop_on_alert: bool = False,
    ):
        _check_count("every_n_steps", every_n_steps, 1)
        _check_count("image_every_n_steps", image_every_n_steps, 0)
        _check_count("history_size", history_size, 2)
        self.every_n_steps = every_n_steps
        self.image_every_n_steps = image_every_n_steps
        self.history_size = history_size
        self.alert = VarianceAlert(low, high, check_finite, stop_on_alert)
        self._every = every_n_steps or 1
        self._image_every = 0
        self._history: dict[str, dict[str, Any]] = {}
        self._layout_written = False
        self._layer_kinds: dict[str, str] = {}  # layer name -> kind, for the pictures' markers and legend
        self._pictured: dict[str, int] = {}  # series -> the step of its latest picture
        self._images = reporting.BackgroundImages()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, **self._state_key_args())

    def _state_key_args(self) -> dict[str, Any]:
        return {}

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        self._every = self.every_n_steps or trainer.log_every_n_steps
        if self._every < 1:
            raise ValueError(
                f"{type(self).__name__}: Trainer(log_every_n_steps=0) disables logging; pass every_n_steps >= 1"
            )
        image_every = 10 * self._every if self.image_every_n_steps is None else self.image_every_n_steps
        if image_every % self._every:
            raise ValueError(
                f"{type(self).__name__}: image_every_n_steps={image_every} must be a multiple of "
                f"every_n_steps={self._every} (pictures are drawn from logged values)"
            )
        self._image_every = image_every
        self._layout_written = False

    def is_logging_step(self, trainer: "pl.Trainer") -> bool:
        """True during a whole optimizer step (all its accumulated micro-batches) that will be logged."""
        return is_logging_step(trainer, self._every)

    # ---- publishing --------------------------------------------------------------------------------------
    def publish(self, trainer: "pl.Trainer", step: int, series: Sequence[Series], kinds: Mapping[str, str],
                forward_order: Sequence[str]) -> None:  # fmt: skip
        """Log ``series`` at ``step``: scalars everywhere, then (rank 0) chart layout, alerts and pictures.

        ``kinds`` maps layer name -> class name (layers of one kind share a chart); ``forward_order`` lists
        layer names in the order their forward ran (depth), used for alerts and pictures.
        """
        reporting.log_scalars(
            trainer, {f"{s.name}/{layer}": value for s in series for layer, value in s.values.items()}, step
        )
        self._layer_kinds.update(kinds)
        if not self._layout_written:
            self._write_layout(trainer, series, kinds)
        for s in series:
            order = [name for name in forward_order if name in s.values]
            if s.alert:
                self.alert.check(trainer, s.name, s.values, order, step)
            if s.image and self._image_every:
                self._add_history(s, order, step, f"{s.unit} (forward order)")
                if (step + 1) % self._image_every == 0 and trainer.is_global_zero:
                    self._draw(trainer, s.name, step)

    def _write_layout(self, trainer: "pl.Trainer", series: Sequence[Series], kinds: Mapping[str, str]) -> None:
        charts: dict[str, dict[str, list[str]]] = {}
        for s in series:
            for layer in s.values:
                charts.setdefault(s.name, {}).setdefault(kinds[layer], []).append(f"{s.name}/{layer}")
        reporting.add_custom_scalars(trainer, charts)
        self._layout_written = True

    def _add_history(self, series: Series, order: Sequence[str], step: int, axis_label: str) -> None:
        history = self._history.setdefault(series.name, {"layers": list(order), "steps": [], "values": []})
        history["axis_label"] = axis_label
        for name in order:
            if name not in history["layers"]:
                history["layers"].append(name)
        history["steps"].append(step)
        history["values"].append([series.values.get(name, float("nan")) for name in history["layers"]])
        if len(history["steps"]) > self.history_size:
            keep = list(range(len(history["steps"]) - 1, -1, -2))[::-1]  # every other column, newest kept
            history["steps"] = [history["steps"][i] for i in keep]
            history["values"] = [history["values"][i] for i in keep]

    def _draw(self, trainer: "pl.Trainer", name: str, step: int) -> None:
        if not reporting.any_logger_takes_images(trainer):
            return
        self._pictured[name] = step
        history = self._history[name]
        axis_label = history.get("axis_label", "layer (forward order)")
        layers = history["layers"]
        matrix = np.full((len(layers), len(history["steps"])), np.nan)
        for column, values in enumerate(history["values"]):
            matrix[: len(values), column] = values
        steps = list(history["steps"])
        kinds = [self._layer_kinds.get(layer, "") for layer in layers]
        render = partial(plots.depth_figure, name, list(layers), matrix[:, -1], steps, matrix, step, axis_label, kinds)
        self._images.submit(trainer, f"{name}/by_depth", render, step)

    @override
    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """The pictures of the last logged values, where the cadence did not just draw them: a run always ends
        with its final state in pictures, however rarely ``image_every_n_steps`` draws them on the way."""
        if self._image_every and trainer.is_global_zero:
            for name, history in self._history.items():
                if history["steps"] and self._pictured.get(name) != history["steps"][-1]:
                    self._draw(trainer, name, history["steps"][-1])
        self._images.wait()

    def _release(self) -> None:
        """Detach this monitor's hooks and drop a half-collected step; subclasses own the hooks."""

    @override
    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._release()

    @override
    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        self._release()

    @override
    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._images.wait()
        self._release()

    # ---- checkpointing -----------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"alert": self.alert.state_dict(), "history": self._history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.alert.load_state_dict(state_dict.get("alert", {}))
        self._history = state_dict.get("history", {})
