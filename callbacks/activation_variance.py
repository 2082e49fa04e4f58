"""ActivationVarianceMonitor: per-layer output variance, mean and gain, exact across data-parallel ranks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from typing_extensions import override

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from .monitor import Series, VarianceMonitor
from .steps import batches_that_stepped, ends_optimizer_step
from .probes import ActivationProbe
from .selection import ModuleType, WatchedModule, choose_layers, usable_layers
from .statistics import LayerMoments, data_parallel_group
from .watch import activation_signals


class ActivationVarianceMonitor(VarianceMonitor):
    r"""Logs, per watched layer and logging step, the population variance of its output over every element
    of the step's global batch (all accumulated micro-batches, all data-parallel ranks), its mean and its
    gain var(out)/var(in), to watch activations explode or vanish through depth.

    Statistics are exact under DDP/FSDP: every rank sums (count, sum, sum of squares) in float64 and one
    ``all_reduce`` adds them up before the variance is taken. Hooks exist only during the forward pass of
    a logging step; works with bf16-mixed, activation checkpointing, and ``torch.compile`` (there only for
    activations that keep their own sums: :class:`callbacks.protocol.SelfRecordingActivation`, e.g.
    lit_ortho's).

    Logged: ``activation_variance/<layer>``, ``activation_mean/<layer>``, ``activation_gain/<layer>``,
    ``activation_kurtosis/<layer>`` (E[(x-mean)^4]/var^2 over every output element: 3 for a Gaussian, large
    when a few features carry the signal), ``activation_absmax/<layer>`` (the largest |output|: outlier
    features), optionally ``activation_nonfinite/<layer>``; a TensorBoard custom-scalars chart per layer kind,
    and every ``image_every_n_steps`` an ``activation_variance/by_depth`` picture. All of them are pooled over
    the data-parallel ranks in one collective per logging step.

    Args:
        modules: extra modules to watch, by glob on their name (``"blocks.*.mlp.c_fc"``); wrapper parts
            (``_fsdp_wrapped_module.`` ...) are not part of names.
        module_types: extra module classes to watch: classes, ``torch.nn`` names (``"Linear"``), import paths
            or names of classes in the model.
        include_activations: watch every activation module (``nn.GELU``, ``nn.ReLU``, ..., timm's and those
            implementing :class:`callbacks.protocol.SelfRecordingActivation`, such as lit_ortho's). A model
            with none (activations called as functions, as in ``nn.Transformer``) gets a warning and its
            Linear/Conv layers are watched instead.
        log_mean, log_gain: also log the output mean / the gain var(out)/var(in).
        log_kurtosis, log_absmax: also log the output's kurtosis / largest |value| (three more passes over
            each output, on logging steps only; a compiled layer reports them when its activation records
            them, as lit_ortho's do).
        log_nonfinite: also log the fraction of non-finite output values (one more pass over each output).
        **kwargs: the options of :class:`~callbacks.monitor.VarianceMonitor`, by keyword: ``every_n_steps``
            (log every this many optimizer steps; ``None`` follows ``Trainer(log_every_n_steps)``),
            ``image_every_n_steps`` and ``history_size`` (the depth picture), ``low``, ``high``,
            ``check_finite``, ``stop_on_alert`` (bounds on the output variance).

    Example::

        trainer = Trainer(callbacks=[ActivationVarianceMonitor(every_n_steps=50, high=1e4)])
    """

    def __init__(
        self,
        *,
        modules: Sequence[str] = (),
        module_types: Sequence[ModuleType] = (),
        include_activations: bool = True,
        log_mean: bool = True,
        log_gain: bool = True,
        log_kurtosis: bool = True,
        log_absmax: bool = True,
        log_nonfinite: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)  # every_n_steps, image_every_n_steps, history_size and the alert options
        self.modules, self.module_types = list(modules), list(module_types)
        self.include_activations = include_activations
        self.log_mean, self.log_gain, self.log_nonfinite = log_mean, log_gain, log_nonfinite
        self.log_kurtosis, self.log_absmax = log_kurtosis, log_absmax
        self._layers: list[WatchedModule] = []
        self._probe: Optional[ActivationProbe] = None
        self._group = None
        self._collecting: Optional[int] = None  # the logging step whose micro-batches are being summed
        self._checked_calls = False  # warned (once) about watched layers that never ran

    def _state_key_args(self) -> dict[str, Any]:
        return {"modules": self.modules, "module_types": [str(t) for t in self.module_types]}

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        layers = choose_layers(pl_module, type(self).__name__, self.include_activations, self.module_types, self.modules)
        self._layers = usable_layers(layers, type(self).__name__, compiled_ok=True)
        self._collecting, self._checked_calls = None, False
        if not self._layers:  # warned already: nothing to watch, nothing to do
            self._probe = None
            return
        moments = LayerMoments(len(self._layers), ActivationProbe.SLOTS, pl_module.device)
        self._probe = ActivationProbe(self._layers, moments, count_nonfinite=self.log_nonfinite,
                                      higher=self.log_kurtosis or self.log_absmax)
        self._group = data_parallel_group(trainer.strategy)

    @override
    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        if self._probe is None or not self.is_logging_step(trainer):
            return
        step = batches_that_stepped(trainer)
        if self._collecting != step:  # first micro-batch of this optimizer step
            self._probe.moments.reset()
            self._probe.calls.reset()
            self._collecting = step
        self._probe.attach()

    @override
    def on_before_backward(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", loss: torch.Tensor) -> None:
        if self._probe is not None:
            self._probe.detach()

    @override
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if self._probe is None:
            return
        self._probe.detach()  # in case no backward ran (training_step returned None)
        if self._collecting is None or not ends_optimizer_step(trainer):
            return
        step, self._collecting = self._collecting, None
        self._probe.moments.all_reduce(self._group)  # every rank, same order: one collective
        readout = self._probe.moments.cpu()
        if not self._checked_calls:
            self._checked_calls = True
            unseen = [layer.name for layer, n in zip(self._layers, readout.count("out").tolist()) if n == 0]
            if unseen:
                rank_zero_warn(
                    f"{type(self).__name__}: {len(unseen)} of {len(self._layers)} watched layer(s) never ran their "
                    f"forward in step {step} (their weights may be used by a parent, as in nn.MultiheadAttention's "
                    f"out_proj) and are not logged: {unseen[:8]}{' ...' if len(unseen) > 8 else ''}"
                )
        self.publish(trainer, step, self._series(readout), self._kinds(), self._forward_order())

    def _series(self, readout) -> list[Series]:
        signals = activation_signals(readout, [layer.name for layer in self._layers], mean=self.log_mean,
                                     gain=self.log_gain, kurtosis=self.log_kurtosis, absmax=self.log_absmax,
                                     nonfinite=self.log_nonfinite)  # fmt: skip
        # bounds, alerts and the depth picture are about the variance
        return [Series(name, values, alert=name == "activation_variance", image=name == "activation_variance")
                for name, values in signals.items()]  # fmt: skip

    def _kinds(self) -> dict[str, str]:
        return {layer.name: layer.kind for layer in self._layers}

    def _forward_order(self) -> list[str]:
        assert self._probe is not None
        return self._probe.calls.names([layer.name for layer in self._layers])

    @override
    def _release(self) -> None:
        if self._probe is not None:
            self._probe.detach()
        self._collecting = None

    @override
    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        super().teardown(trainer, pl_module, stage)  # waits for pictures, detaches hooks
        self._probe, self._layers = None, []
