"""The monitors' statistics for loops without Lightning's Trainer: plain PyTorch and Fabric (litgpt's loops).

    from callbacks.watch import StepStatistics          # or lit_ortho.callbacks.watch

    stats = StepStatistics(model)                       # chooses layers and parameters once; keeps W0
    for step, (x, y) in enumerate(loader):
        with stats.record(optimizer, enabled=step % 50 == 0) as result:
            loss = loss_fn(model(x), y)
            loss.backward()                             # fabric.backward(loss) under Fabric
            optimizer.step()
            optimizer.zero_grad()
        if result:                                      # filled when the block exits
            writer.add_scalars(...) / fabric.log_dict(result.flat(), step)

``result`` holds, for the block: per watched layer the output's variance, mean, gain var(out)/var(in),
kurtosis and max |x| (``activation_*``), per parameter the gradient variance, the update ratio of the
optimizer step taken inside the block and the drift from W0 (``gradient_variance``, ``update_ratio``,
``parameter_drift``), and learnable activations' coefficients and their gradients. They are exact under DDP
and FSDP (1 and 2, hybrid too): every rank must enter the block (it ends with ONE collective).

The same parts serve the Lightning callbacks (:class:`~callbacks.ActivationVarianceMonitor` uses
:func:`activation_signals` and the probes, :class:`~callbacks.ParameterUpdateMonitor` uses
:class:`~.parameters.ParameterStatistics`); this module needs no Trainer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer

from .parameters import ParameterStatistics
from .probes import ActivationProbe
from .selection import ModuleType, activation_parameters, choose_layers, select_parameters, usable_layers
from .statistics import (
    MAX_FIELDS,
    LayerMoments,
    MomentsReadout,
    fsdp1_shard_group,
    gradient_moments,
    gradient_variances,
    group_size,
    pool_many,
    shard_peers,
)

__all__ = ["StepResult", "StepStatistics", "activation_signals"]


def activation_signals(readout: MomentsReadout, names: Sequence[str], *, mean: bool = True, gain: bool = True,
                       kurtosis: bool = True, absmax: bool = True, nonfinite: bool = False) -> dict[str, dict[str, float]]:  # fmt: skip
    """``{signal: {layer: value}}`` from pooled activation moments (slots ``in`` and ``out``): the layers that
    saw data; kurtosis and absmax only where they are known (a compiled activation may keep no higher sums)."""
    seen = (readout.count("out") > 0).tolist()

    def per_layer(values: torch.Tensor, finite: bool = False, keep_inf: bool = False) -> dict[str, float]:
        out = {name: v for name, v, ok in zip(names, values.tolist(), seen) if ok}
        if finite:
            out = {k: v for k, v in out.items() if v == v and (keep_inf or abs(v) != float("inf"))}
        return out

    signals = {"activation_variance": per_layer(readout.variance("out"))}
    if mean:
        signals["activation_mean"] = per_layer(readout.mean("out"))
    if gain:
        signals["activation_gain"] = per_layer(readout.gain("out", "in"))
    if kurtosis:
        signals["activation_kurtosis"] = per_layer(readout.kurtosis("out"), finite=True)
    if absmax:
        signals["activation_absmax"] = per_layer(readout.absmax("out"), finite=True, keep_inf=True)
    if nonfinite:
        signals["activation_nonfinite"] = per_layer(readout.nonfinite_fraction("out"))
    return signals


class StepResult(dict):
    """``{signal: {layer or parameter: value}}``, empty until the recorded block exits (and when disabled)."""

    def flat(self) -> dict[str, float]:
        """``{"<signal>/<name>": value}``: the tags the Lightning monitors log, for ``fabric.log_dict``."""
        return {f"{signal}/{name}": value for signal, values in self.items() for name, value in values.items()}


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside Fabric's ``_FabricModule`` or DDP (FSDP modules are kept: they are the model)."""
    if hasattr(model, "_forward_module") and hasattr(model, "module"):  # Fabric
        model = model.module
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return model


def _unwrap_optimizer(optimizer: Optimizer) -> Optimizer:
    """The torch optimizer inside Fabric's ``_FabricOptimizer`` / Lightning's ``LightningOptimizer``."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, Optimizer) else optimizer


class StepStatistics:
    """Per-layer and per-parameter statistics of the blocks recorded with :meth:`record`.

    Args:
        model: the model (a Fabric-wrapped, DDP, FSDP1 or FSDP2 model works too).
        modules, module_types, include_activations: which layers' outputs are watched, as in
            :class:`~callbacks.ActivationVarianceMonitor` (a model without activation modules: its Linear/Conv).
        parameters: globs choosing the parameters (all trainable ones by default).
        activations, gradients, updates: which groups of statistics to compute (``updates``: update ratio, drift
            and coefficients; needs the optimizer passed to :meth:`record`).
        data_group: the ranks that see different samples (activation statistics pool over them); the world by
            default.
    """

    def __init__(self, model: nn.Module, *, modules: Sequence[str] = (), module_types: Sequence[ModuleType] = (),
                 include_activations: bool = True, parameters: Sequence[str] = (), activations: bool = True,
                 gradients: bool = True, updates: bool = True, data_group: Optional[dist.ProcessGroup] = None):  # fmt: skip
        self.model = _unwrap(model)
        self.data_group = data_group
        name = type(self).__name__
        self.layers = []
        if activations:
            self.layers = usable_layers(choose_layers(self.model, name, include_activations, module_types, modules),
                                        name, compiled_ok=True)  # fmt: skip
        self.params = select_parameters(self.model, parameters) if (gradients or updates) else []
        device = self.params[0][1].device if self.params else next(self.model.parameters(), torch.empty(0)).device
        self._moments = LayerMoments(len(self.layers), ActivationProbe.SLOTS, device) if self.layers else None
        self._probe = ActivationProbe(self.layers, self._moments, higher=True) if self._moments is not None else None
        fsdp1 = fsdp1_shard_group(self.model)
        self.gradients = gradients
        self._grad_peers = [shard_peers(p, fsdp1) for _, p in self.params]
        self._updates: Optional[ParameterStatistics] = None
        if updates and self.params:
            self._updates = ParameterStatistics(self.params, model=self.model, fsdp1_group=fsdp1,
                                                coefficients=activation_parameters(self.model, self.params))
            self._updates.take_initial()
        self._grad_moments: Optional[LayerMoments] = None
        self._stepped = False

    # ---- recording ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def record(self, optimizer: Optional[Optimizer] = None, enabled: bool = True) -> Iterator[StepResult]:
        """Record the forward and backward passes (and the ``optimizer.step()``) run inside the block.

        Activation hooks are attached only while the model's own forward runs (not during the backward
        re-run of checkpointed blocks). Gradients are read just before ``optimizer.step()`` (after the user's
        unscaling and clipping), or at the end of the block if it takes no step. ``enabled=False`` records
        nothing and costs nothing (so ``enabled=step % 50 == 0`` sets the cadence). Every rank must enter.
        """
        result = StepResult()
        if not enabled:
            yield result
            return
        handles = []
        if self._probe is not None:
            self._moments.reset()
            self._probe.calls.reset()
            handles.append(self.model.register_forward_pre_hook(lambda *_: self._probe.attach()))
            handles.append(self.model.register_forward_hook(lambda *_: self._probe.detach()))
        self._grad_moments, self._stepped = None, False
        if optimizer is not None:
            inner = _unwrap_optimizer(optimizer)
            handles.append(inner.register_step_pre_hook(lambda *_: self._before_step()))
            handles.append(inner.register_step_post_hook(lambda *_: self._after_step()))
        try:
            yield result
        finally:
            for handle in handles:
                handle.remove()
            if self._probe is not None:
                self._probe.detach()
        if not self._stepped:
            self._read_gradients()
        result.update(self._pool())

    def _read_gradients(self) -> None:
        if not (self.gradients and self.params):
            return
        self._grad_moments = gradient_moments([p for _, p in self.params], self.params[0][1].device)

    def _before_step(self) -> None:
        if self._stepped:  # a second step inside one block: the first snapshot covers both
            return
        self._read_gradients()
        if self._updates is not None:
            self._updates.before_step()

    def _after_step(self) -> None:
        if not self._stepped and self._updates is not None:
            self._updates.after_step()
        self._stepped = True

    def _pool(self) -> dict[str, dict[str, float]]:
        """Everything in ONE collective over the world: activation moments over ``data_group``'s ranks,
        parameter sums over each parameter's shard peers."""
        world = group_size()
        data_ranks = None
        if world > 1 and self.data_group is not None:
            data_ranks = dist.get_process_group_ranks(self.data_group)
        parts, peers, max_fields = [], [], []
        if self._moments is not None:
            self._moments._flush_counts()
            parts.append(self._moments.values)
            peers.append(None if data_ranks is None else [data_ranks] * self._moments.num_layers)
            max_fields.append(MAX_FIELDS)
        if self._grad_moments is not None:
            self._grad_moments._flush_counts()
            parts.append(self._grad_moments.values)
            peers.append(self._grad_peers)
            max_fields.append(MAX_FIELDS)
        update_parts = []
        if self._updates is not None and self._stepped:
            update_parts = self._updates.pool_parts()
            for tensor, rows_peers in update_parts:
                parts.append(tensor.to(parts[0].dtype if parts else tensor.dtype))
                peers.append(rows_peers)
                max_fields.append(())
        if not parts:
            return {}
        dtype = parts[0].dtype
        pooled = pool_many([p.to(dtype) for p in parts], peers=peers, max_fields=max_fields)
        out: dict[str, dict[str, float]] = {}
        k = 0
        if self._moments is not None:
            readout = MomentsReadout(pooled[k].detach().to("cpu", torch.float64), ActivationProbe.SLOTS)
            k += 1
            names = [layer.name for layer in self.layers]
            out.update(activation_signals(readout, names))
        if self._grad_moments is not None:
            readout = MomentsReadout(pooled[k].detach().to("cpu", torch.float64), ("grad",))
            k += 1
            out["gradient_variance"] = gradient_variances(readout, [n for n, _ in self.params])
        if update_parts:
            out.update(self._updates.read(pooled[k:]))
        return out

    # ---- W0 ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """W0 of the drift, for the user's checkpoint (a collective when parameters are sharded)."""
        return {"initial": self._updates.initial_state()} if self._updates is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self._updates is not None and state.get("initial"):
            why = self._updates.load_initial(state["initial"])
            if why is not None:
                raise ValueError(f"StepStatistics.load_state_dict: the saved initial weights do not fit: {why}")
