"""Per-parameter signals of one optimizer step, exact on DDP replicas and FSDP shards: update ratio, drift from
the initial weights, and the values and gradients of small (activation) coefficients.

Every rank computes, per parameter, sums over its own shard (``||dW||^2``, ``||W||^2``, ...) and, for a
coefficient, its shard's values placed at their positions in the whole tensor; :func:`~.statistics.pool`
adds them over the ranks that hold the parameter's shards (its *peers*: the FSDP shard group, not the HSDP
replicas, not DDP's identical copies) in one collective. Ratios are taken after pooling.

Used by :class:`~.parameter_update.ParameterUpdateMonitor` and by :class:`~.watch.StepStatistics` (plain
PyTorch and Fabric loops).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .statistics import accumulation_dtype, group_size, local_tensor, pool_many, shard_peers

# Fields of a parameter's row: squared norms of the update, of the weights before it, of W - W0 and of W0.
UPDATE_SQ, BEFORE_SQ, DRIFT_SQ, INITIAL_SQ = range(4)
_FIELDS = 4


def _rank() -> int:
    return dist.get_rank() if group_size() > 1 else 0


def _fsdp1_shard_infos(model: nn.Module) -> dict[int, tuple[Any, int]]:
    """id(original parameter) -> (FSDP1 ``_ShardParamInfo``: where this rank's slice sits in the parameter,
    the whole parameter's number of elements): outside forward FSDP1 leaves each rank only its slice."""
    infos: dict[int, tuple[Any, int]] = {}
    for module in model.modules():
        handle = getattr(module, "_handle", None)
        flat = getattr(handle, "flat_param", None)
        params, shard_infos = getattr(flat, "_params", None), getattr(flat, "_shard_param_infos", None)
        if params is not None and shard_infos is not None:
            infos.update({id(p): (info, int(n)) for p, info, n in zip(params, shard_infos, flat._numels)})
    return infos


def local_span(param: Tensor, fsdp1_info: Any = None) -> Optional[tuple[int, int]]:
    """(start, length) of this rank's part of ``param`` in the whole parameter's flat (row-major) order, or
    ``None`` when the part is not one contiguous run (a DTensor sharded along a dimension other than 0)."""
    if fsdp1_info is not None:
        if not fsdp1_info.in_shard:
            return (0, 0)
        return (int(fsdp1_info.intra_param_start_idx), int(fsdp1_info.numel_in_shard))
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
        if tuple(shape[1:]) != tuple(param.shape[1:]) or any(offset[1:]):
            return None
        row = math.prod(param.shape[1:])
        return (int(offset[0]) * row, math.prod(shape))
    return (0, param.numel())


class ParameterStatistics:
    """Update ratio ``||W_after - W_before|| / ||W_before||`` over one optimizer step, drift
    ``||W - W0|| / ||W0||`` from the weights at :meth:`take_initial` (kept on the CPU, in the checkpoint
    state), and every value and gradient of parameters with at most ``max_coefficients`` elements that
    ``coefficients`` names (e.g. learnable activations' coefficients).

    Call :meth:`before_step` just before ``optimizer.step()`` (gradients final: unscaled, clipped) and
    :meth:`after_step` just after; :meth:`pool` then returns the pooled values (one collective).
    """

    def __init__(self, named_params: Sequence[tuple[str, nn.Parameter]], *, model: Optional[nn.Module] = None,
                 fsdp1_group: Optional[dist.ProcessGroup] = None, update_ratio: bool = True, drift: bool = True,
                 coefficients: Sequence[str] = (), max_coefficients: int = 64):  # fmt: skip
        self.names = [name for name, _ in named_params]
        self.params = [p for _, p in named_params]
        self.update_ratio, self.drift = update_ratio, drift
        self.peers = [shard_peers(p, fsdp1_group) for p in self.params]
        self.sharded = any(len(peers) > 1 for peers in self.peers)
        fsdp1 = _fsdp1_shard_infos(model) if model is not None and fsdp1_group is not None else {}
        wanted = set(coefficients)
        # (parameter index, its whole number of elements, this rank's span of them)
        self.coefficients: list[tuple[int, int, tuple[int, int]]] = []
        for i, (name, p) in enumerate(named_params):
            info, numel = fsdp1.get(id(p), (None, p.numel()))
            if name in wanted and numel <= max_coefficients:
                span = local_span(p, info)
                if span is not None:
                    self.coefficients.append((i, numel, span))
        self.initial: Optional[list[Tensor]] = None
        self._before: Optional[list[Tensor]] = None
        self._coefficient_grads: Optional[list[Tensor]] = None
        self._rows: Optional[Tensor] = None

    @property
    def device(self) -> torch.device:
        return self.params[0].device if self.params else torch.device("cpu")

    def _locals(self) -> list[Tensor]:
        return [local_tensor(p).detach() for p in self.params]

    # ---- W0 --------------------------------------------------------------------------------------------
    def take_initial(self) -> None:
        """Keep this rank's part of every parameter as it is now, on the CPU: the W0 of the drift."""
        self.initial = [t.to("cpu", copy=True) for t in self._locals()]

    def initial_state(self) -> dict[str, Any]:
        """W0 for a checkpoint. Sharded parameters: every rank's part, gathered to all (a collective: every
        rank calls it, as Lightning calls callbacks' ``state_dict`` on every rank); replicas: this rank's."""
        if self.initial is None:
            return {}
        mine = dict(zip(self.names, self.initial))
        if not self.sharded:
            return {"world_size": 1, "parts": [mine]}
        parts: list[Any] = [None] * group_size()
        dist.all_gather_object(parts, mine)
        return {"world_size": len(parts), "parts": parts}

    def load_initial(self, state: Mapping[str, Any]) -> Optional[str]:
        """Take W0 from :meth:`initial_state`'s output; returns why not (then W0 is taken anew) or ``None``."""
        parts = state.get("parts")
        if not parts:
            return "the checkpoint holds no initial weights"
        world = group_size() if self.sharded else 1
        if int(state.get("world_size", 1)) != world:
            return f"they were saved from {state.get('world_size')} shard(s) and this run has {world}"
        part = parts[_rank() if self.sharded else 0]
        locals_ = self._locals()
        missing = [n for n in self.names if n not in part]
        if missing:
            return f"they lack parameters {missing[:4]}"
        wrong = [n for n, t in zip(self.names, locals_) if part[n].shape != t.shape]
        if wrong:
            return f"parameters {wrong[:4]} changed shape"
        self.initial = [part[n].detach().to("cpu", t.dtype) for n, t in zip(self.names, locals_)]
        return None

    # ---- one optimizer step ------------------------------------------------------------------------------
    def before_step(self) -> None:
        """Keep W (for the update) and the coefficients' gradients, just before the optimizer step."""
        current = self._locals()
        self._before = [t.clone() for t in current] if self.update_ratio else None
        self._coefficient_grads = []
        for i, _, _ in self.coefficients:
            grad = self.params[i].grad
            self._coefficient_grads.append(
                torch.full_like(current[i], float("nan")) if grad is None else local_tensor(grad).detach().clone()
            )

    def after_step(self) -> None:
        """Compute this rank's sums after the step (no host sync): one row of squared norms per parameter,
        with a few fused multi-tensor kernels (empty shards add zeros)."""
        dtype = accumulation_dtype(self.device)
        current = self._locals()
        columns = [torch.zeros(len(current), dtype=dtype, device=self.device) for _ in range(_FIELDS)]

        def squared_norms(tensors: list) -> torch.Tensor:
            return torch.stack(torch._foreach_norm(tensors, 2, dtype=dtype)).to(self.device).square()

        if current and self._before is not None:
            columns[UPDATE_SQ] = squared_norms(torch._foreach_sub(current, self._before))
            columns[BEFORE_SQ] = squared_norms(self._before)
        if current and self.drift and self.initial is not None:
            initial = [w0.to(w.device, non_blocking=True) for w0, w in zip(self.initial, current)]
            columns[DRIFT_SQ] = squared_norms(torch._foreach_sub(current, initial))
            columns[INITIAL_SQ] = squared_norms(initial)
        self._rows, self._before = torch.stack(columns, dim=1), None

    def _coefficient_parts(self) -> list[Tensor]:
        """Each coefficient's values and gradient as whole flat tensors, this rank's span filled, zeros elsewhere."""
        parts = []
        grads = self._coefficient_grads or []
        dtype = accumulation_dtype(self.device)
        current = self._locals()
        for k, (i, numel, (start, length)) in enumerate(self.coefficients):
            whole = torch.zeros(2, numel, dtype=dtype, device=self.device)
            if length:
                whole[0, start : start + length] = current[i].reshape(-1).to(dtype)
                if k < len(grads):
                    whole[1, start : start + length] = grads[k].reshape(-1).to(dtype)
                else:
                    whole[1] = float("nan")
            parts.append(whole)
        return parts

    def pool_parts(self) -> list[tuple[Tensor, Optional[list[Sequence[int]]]]]:
        """What :meth:`pool` sends, for callers that pack it with other statistics into one collective."""
        rows = self._rows if self._rows is not None else torch.zeros(len(self.params), _FIELDS,
                                                                     dtype=accumulation_dtype(self.device),
                                                                     device=self.device)  # fmt: skip
        parts = [(rows, list(self.peers))]
        for (i, _, _), whole in zip(self.coefficients, self._coefficient_parts()):
            parts.append((whole.unsqueeze(0), [self.peers[i]]))
        return parts

    def pool(self) -> dict[str, dict[str, float]]:
        """The pooled signals: ``{"update_ratio": {name: value}, "parameter_drift": ..., "coefficient":
        {"<name>/<k>": value}, "coefficient_grad": ...}`` (one collective over the world)."""
        parts = self.pool_parts()
        return self.read(pool_many([p for p, _ in parts], peers=[q for _, q in parts]))

    def read(self, pooled: Sequence[Tensor]) -> dict[str, dict[str, float]]:
        """Ratios from pooled sums (``pooled``: :meth:`pool_parts`' tensors after pooling, in order)."""
        rows = pooled[0].double().cpu()
        out: dict[str, dict[str, float]] = {}
        if self.update_ratio and self._rows is not None:
            out["update_ratio"] = _ratios(self.names, rows[:, UPDATE_SQ], rows[:, BEFORE_SQ])
        if self.drift and self.initial is not None and self._rows is not None:
            out["parameter_drift"] = _ratios(self.names, rows[:, DRIFT_SQ], rows[:, INITIAL_SQ])
        values: dict[str, float] = {}
        grads: dict[str, float] = {}
        for (i, _, _), whole in zip(self.coefficients, pooled[1:]):
            whole = whole.reshape(2, -1).double().cpu()
            for k in range(whole.shape[1]):
                values[f"{self.names[i]}/{k}"] = float(whole[0, k])
                if whole[1, k] == whole[1, k]:  # NaN: no gradient this step
                    grads[f"{self.names[i]}/{k}"] = float(whole[1, k])
        if values:
            out["coefficient"] = values
        if grads:
            out["coefficient_grad"] = grads
        self._rows, self._coefficient_grads = None, None
        return out


def _ratios(names: Sequence[str], top_sq: Tensor, bottom_sq: Tensor) -> dict[str, float]:
    """sqrt(top) / sqrt(bottom) per parameter; parameters whose norm is 0 (nothing to compare with) skipped."""
    return {name: math.sqrt(t) / math.sqrt(b) for name, t, b in zip(names, top_sq.tolist(), bottom_sq.tolist()) if b > 0}
