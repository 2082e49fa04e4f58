"""GradientVarianceMonitor: per-parameter gradient variance (exact on DDP replicas and FSDP shards) and,
optionally, the variance of the gradient flowing through each activation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch.optim import Optimizer
from typing_extensions import override

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from .monitor import Series, VarianceMonitor
from .steps import batches_that_stepped, ends_optimizer_step
from .probes import GradientProbe, ParameterOrder
from .selection import (
    ModuleType,
    WatchedModule,
    choose_layers,
    named_modules,
    parameter_kinds,
    select_parameters,
    usable_layers,
)
from .statistics import (
    LayerMoments,
    data_parallel_group,
    fsdp1_shard_group,
    gradient_moments,
    gradient_variances,
    group_size,
    shard_peers,
)


class GradientVarianceMonitor(VarianceMonitor):
    r"""Logs, per trainable parameter and logging step, the variance of its gradient over all its elements;
    optionally also the variance of the gradient flowing through each watched activation (input side) and
    the backward gain var(dL/dx)/var(dL/dy) of that activation.

    Parameter gradients are read in ``on_before_optimizer_step``: after backward and gradient
    accumulation, after AMP unscaling, before clipping and the optimizer step. Under FSDP each rank holds
    a shard (an FSDP2 DTensor or an FSDP1 flat slice, possibly empty with ``grad=None``): every rank adds
    its shard's (count, sum, sum of squares) and one collective sums them over the ranks holding that
    parameter's shards (not HSDP's replicas). DDP replicas are identical and need no collective.

    Logged: ``gradient_variance/<parameter>`` (and ``activation_grad_variance/<layer>``,
    ``activation_grad_gain/<layer>``), custom-scalars charts per kind, and ``*/by_depth`` pictures.

    Args:
        parameters: globs choosing the parameters (``"blocks.*.weight"``); all trainable ones by default.
        activation_gradients: also watch the gradient through activations (tensor hooks on logged steps;
            not available inside ``torch.compile``'d regions).
        modules, module_types, include_activations: which layers ``activation_gradients`` watches, as in
            :class:`ActivationVarianceMonitor` (a model without activation modules gets a warning and its
            Linear/Conv layers are watched instead).
        **kwargs: the options of :class:`~callbacks.monitor.VarianceMonitor`, by keyword: ``every_n_steps``
            (log every this many optimizer steps; ``None`` follows ``Trainer(log_every_n_steps)``),
            ``image_every_n_steps`` and ``history_size`` (the depth pictures), ``low``, ``high``,
            ``check_finite``, ``stop_on_alert`` (bounds on each gradient variance).
    """

    def __init__(
        self,
        *,
        parameters: Sequence[str] = (),
        activation_gradients: bool = False,
        modules: Sequence[str] = (),
        module_types: Sequence[ModuleType] = (),
        include_activations: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)  # every_n_steps, image_every_n_steps, history_size and the alert options
        self.parameters = list(parameters)
        self.activation_gradients = activation_gradients
        self.modules, self.module_types = list(modules), list(module_types)
        self.include_activations = include_activations
        self._params: list[tuple[str, torch.nn.Parameter]] = []
        self._order: Optional[ParameterOrder] = None
        self._param_kinds: dict[str, str] = {}
        self._peers: dict[str, tuple[int, ...]] = {}
        self._pending: dict[str, float] = {}  # parameter variances read this step, published at batch end
        self._pending_step: Optional[int] = None
        self._layers: list[WatchedModule] = []
        self._probe: Optional[GradientProbe] = None
        self._group = None
        self._collecting: Optional[int] = None
        self._checked_calls = False  # warned (once) about watched layers no gradient reached

    def _state_key_args(self) -> dict[str, Any]:
        return {"parameters": self.parameters, "activation_gradients": self.activation_gradients}

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._params = select_parameters(pl_module, self.parameters)
        modules = dict(named_modules(pl_module))
        self._param_kinds = parameter_kinds(self._params, modules, pl_module)
        # Parameters are shown in the order their modules run, found on the first logged step's forward.
        self._order = ParameterOrder(self._params, modules, pl_module)
        fsdp1_group = fsdp1_shard_group(trainer.strategy.model or pl_module)
        self._peers = {name: shard_peers(p, fsdp1_group) for name, p in self._params}  # the ranks holding its shards
        self._probe, self._collecting, self._checked_calls = None, None, False
        if self.activation_gradients:
            layers = choose_layers(pl_module, type(self).__name__, self.include_activations, self.module_types,
                                   self.modules)
            self._layers = usable_layers(layers, type(self).__name__, compiled_ok=False)
            if self._layers:  # none: warned already, only parameter gradients are logged
                moments = LayerMoments(len(self._layers), GradientProbe.SLOTS, pl_module.device)
                self._probe = GradientProbe(self._layers, moments)
                self._group = data_parallel_group(trainer.strategy)

    # ---- parameter gradients -------------------------------------------------------------------------------
    @override
    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                                 optimizer: Optimizer) -> None:  # fmt: skip
        if not self.is_logging_step(trainer):
            return
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [(name, p) for name, p in self._params if id(p) in in_optimizer]
        moments = gradient_moments([p for _, p in params], pl_module.device)
        moments.all_reduce(peers=[self._peers[name] for name, _ in params])  # each over its shards: one collective
        self._pending.update(gradient_variances(moments.cpu(), [name for name, _ in params]))
        self._pending_step = batches_that_stepped(trainer)

    # ---- gradients through activations ---------------------------------------------------------------------
    @override
    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        if not self.is_logging_step(trainer):
            return
        if self._order is not None:
            self._order.attach()
        if self._probe is None:
            return
        step = batches_that_stepped(trainer)
        if self._collecting != step:
            self._probe.moments.reset()
            self._probe.calls.reset()
            self._collecting = step
        self._probe.attach()

    @override
    def on_before_backward(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", loss: torch.Tensor) -> None:
        if self._probe is not None:
            self._probe.detach()  # the taps planted in this forward stay and fire during backward
        if self._order is not None:
            self._order.finish()  # the first logged forward showed the modules' order

    @override
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if self._probe is not None:
            self._probe.detach()
        if not ends_optimizer_step(trainer):
            return
        series, step = [], self._pending_step
        if self._pending:
            series.append(Series("gradient_variance", self._pending, alert=True, image=True, unit="parameter"))
        if self._probe is not None and self._collecting is not None:
            series += self._activation_gradient_series()
            step = self._collecting
        self._pending, self._pending_step, self._collecting = {}, None, None
        if series and step is not None:
            layer_names = [layer.name for layer in self._layers]
            kinds = {**self._param_kinds, **{layer.name: layer.kind for layer in self._layers}}
            order = self._order.names_in_order() if self._order is not None else [n for n, _ in self._params]
            if self._probe is not None:
                order = order + self._probe.calls.names(layer_names)
            self.publish(trainer, step, series, kinds, order)

    def _activation_gradient_series(self) -> list[Series]:
        assert self._probe is not None
        self._probe.moments.all_reduce(self._group)  # every rank, same order: one collective
        readout = self._probe.moments.cpu()
        # Each rank differentiates its own loss and data parallelism averages them: the gradient of the loss
        # actually optimized is 1/ranks of the local one (what 1 process sees on the global batch).
        ranks = group_size(self._group)
        var_in = readout.variance("grad_in") / ranks**2
        seen = (readout.count("grad_in") > 0).tolist()
        if not self._checked_calls:
            self._checked_calls = True
            unseen = [layer.name for layer, ok in zip(self._layers, seen) if not ok]
            if unseen:
                rank_zero_warn(
                    f"{type(self).__name__}: no gradient reached the input of {len(unseen)} of {len(self._layers)} "
                    "watched layer(s) (their input needs no gradient, as the first layer's, fed by data, or they "
                    f"never ran); activation_grad_* is not logged for them: {unseen[:8]}"
                    f"{' ...' if len(unseen) > 8 else ''}"
                )

        def per_layer(values: torch.Tensor) -> dict[str, float]:
            return {layer.name: v for layer, v, ok in zip(self._layers, values.tolist(), seen) if ok}

        return [
            Series("activation_grad_variance", per_layer(var_in), alert=True, image=True),
            Series("activation_grad_gain", per_layer(readout.gain("grad_in", "grad_out"))),
        ]

    @override
    def _release(self) -> None:
        if self._order is not None:
            self._order.detach()
        if self._probe is not None:
            self._probe.detach()
        self._collecting = None

    @override
    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        super().teardown(trainer, pl_module, stage)  # waits for pictures, detaches hooks
        self._probe, self._layers, self._params = None, [], []
