"""ParameterUpdateMonitor: how far each optimizer step and the whole run move every parameter, exact on
DDP replicas and FSDP shards, and the coefficients of learnable activations over time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch.optim import Optimizer
from typing_extensions import override

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from .monitor import Series, VarianceMonitor
from .parameters import ParameterStatistics
from .probes import ParameterOrder
from .selection import activation_parameters, named_modules, parameter_kinds, select_parameters
from .statistics import fsdp1_shard_group
from .steps import batches_that_stepped, ends_optimizer_step


class ParameterUpdateMonitor(VarianceMonitor):
    r"""Logs, per trainable parameter and logging step:

    - ``update_ratio/<parameter>``: ``||W_after - W_before|| / ||W_before||`` (Frobenius) over that optimizer
      step, measured on the weights themselves, so it is the real update whatever the optimizer (fused or
      not), the AMP loss scale (a skipped step reads 0) and the clipping did;
    - ``parameter_drift/<parameter>``: ``||W - W0|| / ||W0||`` after that step, W0 being the weights when this
      monitor first saw the run start. W0 is part of the callback's checkpoint state, so a resumed run
      continues the same curve (under FSDP every rank's part is gathered into the checkpoint);
    - for learnable activations (:class:`callbacks.protocol.SelfRecordingActivation`, e.g. lit_ortho's), every
      coefficient's value and gradient: ``coefficient/<parameter>/<k>``, ``coefficient_grad/<parameter>/<k>``
      (parameters of at most ``max_coefficients`` elements: shared coefficients, not per-channel tables).

    Each rank sums over its own shard; one collective per logging step adds the sums of the ranks that hold a
    parameter's shards (FSDP's shard group; not HSDP's replicas, not DDP's copies). Costs one copy of the
    watched parameters on the logging step (W before the step) and one on the CPU for W0.

    Args:
        parameters: globs choosing the parameters (``"blocks.*.weight"``); all trainable ones by default.
        log_update_ratio, log_drift, log_coefficients: which of the three to log.
        max_coefficients: coefficients of larger activation parameters are not logged one by one.
        **kwargs: the options of :class:`~callbacks.monitor.VarianceMonitor`, by keyword: ``every_n_steps``,
            ``image_every_n_steps``, ``history_size`` (the ``update_ratio/by_depth`` picture), ``low``,
            ``high``, ``check_finite``, ``stop_on_alert`` (bounds on each update ratio).
    """

    def __init__(
        self,
        *,
        parameters: Sequence[str] = (),
        log_update_ratio: bool = True,
        log_drift: bool = True,
        log_coefficients: bool = True,
        max_coefficients: int = 64,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)  # every_n_steps, image_every_n_steps, history_size and the alert options
        self.parameters = list(parameters)
        self.log_update_ratio, self.log_drift, self.log_coefficients = log_update_ratio, log_drift, log_coefficients
        self.max_coefficients = max_coefficients
        self._stats: Optional[ParameterStatistics] = None
        self._order: Optional[ParameterOrder] = None
        self._kinds: dict[str, str] = {}
        self._stepped: Optional[int] = None  # the logging step whose "before" snapshot is taken
        self._restored: Optional[dict[str, Any]] = None

    def _state_key_args(self) -> dict[str, Any]:
        return {"parameters": self.parameters}

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        params = select_parameters(pl_module, self.parameters)
        modules = dict(named_modules(pl_module))
        coefficients = activation_parameters(pl_module, params) if self.log_coefficients else []
        model = trainer.strategy.model or pl_module
        self._stats = ParameterStatistics(
            params, model=model, fsdp1_group=fsdp1_shard_group(model), update_ratio=self.log_update_ratio,
            drift=self.log_drift, coefficients=coefficients, max_coefficients=self.max_coefficients,
        )  # fmt: skip
        self._kinds = parameter_kinds(params, modules, pl_module)
        for i, numel, _ in self._stats.coefficients:
            name = self._stats.names[i]
            self._kinds.update({f"{name}/{k}": self._kinds[name] for k in range(numel)})
        self._order = ParameterOrder(params, modules, pl_module)
        self._stepped = None

    @override
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """W0: the checkpoint's when resuming, else the weights now (after any restore, before the first step)."""
        if self._stats is None or not self.log_drift:
            return
        if self._restored is not None:
            why = self._stats.load_initial(self._restored)
            self._restored = None
            if why is None:
                return
            rank_zero_warn(f"ParameterUpdateMonitor: the checkpoint's initial weights are not used ({why}): "
                           "parameter_drift is measured from the weights this run starts with")  # fmt: skip
        elif trainer.ckpt_path:
            rank_zero_info("ParameterUpdateMonitor: the checkpoint has no state of this monitor; parameter_drift "
                           "is measured from the resumed weights")  # fmt: skip
        self._stats.take_initial()

    @override
    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        if self._order is not None and self.is_logging_step(trainer):
            self._order.attach()

    @override
    def on_before_backward(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", loss: torch.Tensor) -> None:
        if self._order is not None:
            self._order.finish()

    @override
    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                                 optimizer: Optimizer) -> None:  # fmt: skip
        step = batches_that_stepped(trainer)
        if self._stats is None or not self.is_logging_step(trainer) or self._stepped == step:
            return  # a second optimizer in the same step: the first one's snapshot covers both updates
        self._stats.before_step()
        self._stepped = step

    @override
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if self._stats is None or not ends_optimizer_step(trainer) or not self.is_logging_step(trainer):
            return
        step = batches_that_stepped(trainer)
        if self._stepped != step:  # no optimizer step ran in this batch (e.g. manual optimization skipped it)
            return
        self._stepped = None
        self._stats.after_step()
        signals = self._stats.pool()  # every rank, same order: one collective
        order = self._order.names_in_order() if self._order is not None else list(self._stats.names)
        numel = {self._stats.names[i]: n for i, n, _ in self._stats.coefficients}
        coefficient_order = [f"{name}/{k}" for name in order for k in range(numel.get(name, 0))]
        series = []
        if "update_ratio" in signals:
            series.append(Series("update_ratio", signals["update_ratio"], alert=True, image=True, unit="parameter"))
        if "parameter_drift" in signals:
            series.append(Series("parameter_drift", signals["parameter_drift"], image=True, unit="parameter"))
        for name in ("coefficient", "coefficient_grad"):
            if name in signals:
                series.append(Series(name, signals[name], unit="coefficient"))
        if series:
            self.publish(trainer, step, series, self._kinds, order + coefficient_order)

    @override
    def _release(self) -> None:
        if self._order is not None:
            self._order.detach()

    @override
    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if stage == "fit":
            self._order = None

    # ---- checkpointing -----------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._stats is not None and self.log_drift:
            state["initial"] = self._stats.initial_state()  # a collective when sharded: every rank is here
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._restored = state_dict.get("initial") or None

