"""ActivationShapeMonitor: pictures of each learnable activation's learned curve F(x) and its derivative.

Learnable activations are the modules implementing :class:`callbacks.protocol.SelfRecordingActivation`
(lit_ortho's among them); they are evaluated as they are, and their Gaussian gains computed here.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Sequence
from functools import partial
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn
from typing_extensions import override

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from . import plots, reporting
from .monitor import _check_count
from .probes import ModuleOrderProbe
from .protocol import is_self_recording_activation
from .selection import default_activation_types, is_activation, kind_summary, named_modules
from .steps import batches_that_stepped, ends_optimizer_step, is_logging_step

# The Gaussian-gain quadrature: trapezoid rule on a fine float64 grid over [-12, 12] (exact to ~1e-9, also
# for functions with kinks, where Gauss-Hermite quadrature would not be).
GAIN_RANGE, GAIN_POINTS = 12.0, 240_001


def _full(t: Tensor) -> Tensor:
    """The whole tensor behind an FSDP2 DTensor shard (a collective: every rank calls it); others as is."""
    full_tensor = getattr(t, "full_tensor", None)
    return (full_tensor() if callable(full_tensor) else t).detach().clone()


def _device(params: dict[str, Tensor]) -> torch.device:
    return next(iter(params.values())).device if params else torch.device("cpu")


def _channels(module: nn.Module) -> tuple[Optional[int], int]:
    """(channel count or ``None`` for one shared function, channel dimension): the protocol's optional
    ``per_channel`` and ``channel_dim`` attributes."""
    return getattr(module, "per_channel", None), int(getattr(module, "channel_dim", -1))


def _grid_input(x: Tensor, module: nn.Module) -> Tensor:
    """``x`` shaped so a per-channel activation sees every channel: ``[points, C]`` along ``channel_dim``."""
    channels, cd = _channels(module)
    if channels is None:
        return x
    ndim = max(2, cd + 1 if cd >= 0 else -cd)
    shape = [1] * ndim
    shape[cd] = channels
    points_dim = next(d for d in range(ndim) if d != cd % ndim)
    view = [1] * ndim
    view[points_dim] = x.numel()
    return x.reshape(view).expand(*[max(a, b) for a, b in zip(shape, view)]).contiguous()


def full_parameters(module: nn.Module) -> dict[str, Tensor]:
    """Copies of the module's own parameters, whole even when FSDP2 shards them (a collective then: call it
    on every rank) or inside FSDP1's ``summon_full_params`` (whose views die with the context)."""
    return {name: _full(p) for name, p in module.named_parameters(recurse=False)}


def evaluate_curve(module: nn.Module, params: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """F(x) and F'(x) of an element-wise activation with parameters ``params`` on the 1-D grid ``x``, as
    ``[channels, points]`` (one channel for shared coefficients)."""
    grid = _grid_input(x.to(_device(params)), module).detach().clone().requires_grad_(True)
    with torch.enable_grad(), torch.autocast(grid.device.type, enabled=False):
        y = torch.func.functional_call(module, params, (grid,))
        (dy,) = torch.autograd.grad(y.sum(), grid)

    channels, channel_dim = _channels(module)

    def per_channel(t: Tensor) -> Tensor:
        if channels is None:
            return t.detach().reshape(1, -1)
        return t.detach().movedim(channel_dim % t.dim(), 0).reshape(channels, -1)

    return per_channel(y).double().cpu(), per_channel(dy).double().cpu()


def gaussian_gains(module: nn.Module, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """E[F], E[F^2] (forward gain) and E[F'^2] (backward gain) under x ~ N(0, 1) of the activation ``module``
    with parameters ``params``, one value per channel (``[channels]``, float64): the trapezoid rule with the
    N(0, 1) density on a float64 grid of ``GAIN_POINTS`` points over [-GAIN_RANGE, GAIN_RANGE], F' by autograd."""
    x = torch.linspace(-GAIN_RANGE, GAIN_RANGE, GAIN_POINTS, dtype=torch.float64)
    y, dy = evaluate_curve(module, params, x)
    density = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

    def integrate(f: Tensor) -> Tensor:
        return torch.trapezoid(f * density, x, dim=-1)

    return {"mean": integrate(y), "forward_gain": integrate(y * y), "backward_gain": integrate(dy * dy)}


class ActivationShapeMonitor(Callback):
    r"""Draws every learnable activation's learned curve F(x) and derivative F'(x) on ``x_range`` (one
    line per layer, coloured by depth (forward order, learned on the first step), GELU dashed for
    reference; per-channel activations show the channel
    mean and a min-max band) as ``activation_shape/curves``, and logs each layer's gains under
    x ~ N(0, 1), E[F(x)^2] and E[F'(x)^2] (the quantities the variance-preserving init sets to 1), as
    ``activation_shape_forward_gain/<layer>`` and ``activation_shape_backward_gain/<layer>``.

    Learnable activations are the modules implementing :class:`callbacks.protocol.SelfRecordingActivation`
    (lit_ortho's do); they must be element-wise. A model without any gets a warning (at the start of ``fit``)
    and this monitor does nothing. Steps follow the variance monitors' convention
    (:mod:`callbacks.steps`): the curves are drawn after each optimizer step that Lightning would log with
    ``log_every_n_steps=every_n_steps``, at the number of steps taken (the picture at step N shows the
    parameters after N steps, those the values logged at step N were computed with).

    Args:
        every_n_steps: draw every this many optimizer steps; ``None`` means 10 x ``Trainer(log_every_n_steps)``.
        modules: globs choosing which learnable activations to draw (all by default).
        x_range, num_points: the grid F is evaluated on.
        log_at_start: also draw the initial curves, before the first step.
    """

    def __init__(
        self,
        every_n_steps: Optional[int] = None,
        modules: Sequence[str] = (),
        x_range: tuple[float, float] = (-4.0, 4.0),
        num_points: int = 401,
        log_at_start: bool = True,
    ):
        _check_count("every_n_steps", every_n_steps, 1)
        _check_count("num_points", num_points, 2)
        if not (len(x_range) == 2 and float(x_range[0]) < float(x_range[1])):
            raise ValueError(f"x_range must be (low, high) with low < high, got {x_range!r}")
        self.every_n_steps, self.modules = every_n_steps, list(modules)
        self.x_range = (float(x_range[0]), float(x_range[1]))
        self.num_points, self.log_at_start = num_points, log_at_start
        self._every = every_n_steps or 1
        self._layers: list[tuple[str, nn.Module]] = []
        self._last_step: Optional[int] = None
        self._order: Optional[ModuleOrderProbe] = None
        self._images = reporting.BackgroundImages()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, modules=self.modules)

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage == "fit":
            self._every = self.every_n_steps or max(1, 10 * trainer.log_every_n_steps)

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        named = named_modules(pl_module)
        candidates = [(name, m) for name, m in named if is_self_recording_activation(m)]
        self._layers, self._last_step, self._order = [], None, None
        if not candidates:
            fixed = [m for _, m in named if is_activation(m, default_activation_types())]
            found = f"its activation modules are fixed functions ({kind_summary(fixed)})" if fixed else (
                "it has no activation module at all (activations called as functions, such as F.relu)")
            rank_zero_warn(
                "ActivationShapeMonitor draws learnable activations (modules implementing "
                "callbacks.protocol.SelfRecordingActivation, such as lit_ortho's) and the model has none: "
                f"{found}. Nothing to draw: this monitor does nothing in this run."
            )
            return
        for pattern in self.modules:
            if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in candidates):
                raise ValueError(
                    f"Module glob {pattern!r} matches no learnable activation; they are: {[n for n, _ in candidates]}"
                )
        self._layers = [
            (name, m)
            for name, m in candidates
            if not self.modules or any(fnmatch.fnmatchcase(name, p) for p in self.modules)
        ]

    @override
    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        if self._order is None:  # once: learn the forward order of the layers from the first forward pass
            self._order = ModuleOrderProbe([m for _, m in self._layers])
            self._order.attach()

    @override
    def on_before_backward(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", loss: Tensor) -> None:
        if self._order is not None and self._order.attached:
            self._order.detach()
            order = self._order.calls.names(list(range(len(self._layers))))
            self._layers = [self._layers[i] for i in order]

    @override
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.log_at_start:
            self._draw(trainer, batches_that_stepped(trainer))

    @override
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if ends_optimizer_step(trainer) and is_logging_step(trainer, self._every):
            self._draw(trainer, batches_that_stepped(trainer) + 1)  # the count is raised after this hook

    @override
    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._draw(trainer, batches_that_stepped(trainer))
        self._images.wait()

    @override
    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if self._order is not None:
            self._order.detach()
        self._images.wait()

    def _draw(self, trainer: "pl.Trainer", step: int) -> None:
        """All ranks evaluate (gathering FSDP shards is collective); rank 0 logs. ``step`` counts optimizer
        steps taken (Lightning's logging step), so the picture at step N shows the parameters after N updates."""
        if step == self._last_step or not self._layers:
            return
        self._last_step = step
        x = torch.linspace(*self.x_range, self.num_points, dtype=torch.float32)
        with _fsdp1_full_parameters(trainer):
            params = [full_parameters(m) for _, m in self._layers]
        if not trainer.is_global_zero:
            return
        curves = [evaluate_curve(m, p, x) for (_, m), p in zip(self._layers, params)]
        names = [name for name, _ in self._layers]
        scalars = {}
        for (name, module), p in zip(self._layers, params):
            if _channels(module)[0] is None:  # per-channel modules have one pair of gains per channel: not logged
                gains = gaussian_gains(module, p)
                scalars[f"activation_shape_forward_gain/{name}"] = float(gains["forward_gain"][0])
                scalars[f"activation_shape_backward_gain/{name}"] = float(gains["backward_gain"][0])
        reporting.log_scalars(trainer, scalars, step)
        xs = x.double().numpy()
        if not reporting.any_logger_takes_images(trainer):
            return
        values, slopes = (np.stack([c[k].mean(0).numpy() for c in curves]) for k in (0, 1))
        bands = [None, None]
        if any(y.shape[0] > 1 for y, _ in curves):  # per-channel: shade min..max over channels
            bands = [np.stack([np.stack([c[k].min(0).values.numpy(), c[k].max(0).values.numpy()]) for c in curves])
                     for k in (0, 1)]  # fmt: skip
        render = partial(plots.curves_figure, names, xs, values, slopes, step, bands[0], bands[1])
        self._images.submit(trainer, "activation_shape/curves", render, step)


def _fsdp1_full_parameters(trainer: "pl.Trainer") -> contextlib.AbstractContextManager:
    """FSDP1 keeps only flat slices outside forward: gather the full parameters (on every rank) to read them."""
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = trainer.strategy.model
        if isinstance(model, FullyShardedDataParallel):
            return FullyShardedDataParallel.summon_full_params(model, writeback=False, recurse=True)
    return contextlib.nullcontext()
