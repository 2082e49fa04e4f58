"""Exact per-layer moments that survive data parallelism.

A variance cannot be averaged across ranks. Every rank instead keeps, per layer and per tensor kind
("slot": the input or output of an activation, a gradient, ...), the raw power sums (count, sum of x,
x^2, x^3, x^4, non-finite count) and the largest |x|, in float64; all layers are stacked in one tensor
and pooled across ranks with a single collective that every rank calls in the same order (:func:`pool`:
sums added, maxima maximised). Variance, kurtosis and the rest are computed from the pooled values
afterwards, so 2 processes report exactly what 1 process reports on the same global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

COUNT, SUM, SUMSQ, NONFINITE, SUM3, SUM4, ABSMAX = range(7)
_FIELDS = 7
MAX_FIELDS = (ABSMAX,)  # pooled by maximum; every other field by sum


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64 wherever the backend supports it (MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


SUM_BLOCK = 4096


def accurate_sum(t: Tensor, dtype: torch.dtype) -> Tensor:
    """sum(t) accumulated in ``dtype`` (float64): the tensor as rows of ``SUM_BLOCK`` elements, summed down the
    columns (one float64 accumulator per column), then across.

    The same float64 accumulation as ``torch.sum(t, dtype=torch.float64)``, about 10x faster on CPU for float32
    ``t``: that reduction converts element by element, while the column sums vectorise along the rows.
    """
    if t.dtype == torch.float64 or dtype != torch.float64:
        return torch.sum(t, dtype=dtype)
    flat = t.reshape(-1)
    head = flat.numel() - flat.numel() % SUM_BLOCK
    total = flat[:head].view(-1, SUM_BLOCK).sum(0, dtype=dtype).sum()  # a float64 accumulator per column
    return total + flat[head:].sum(dtype=dtype) if head < flat.numel() else total


def power_sums(x: Tensor, powers: int, dtype: torch.dtype = torch.float64) -> tuple[list[Tensor], Tensor]:
    """([sum of x**p for p = 1..powers], max |x|) over every element of ``x``, as ``dtype`` scalars, no host sync.

    The powers are taken of x * 2**-e in float32 (float64 for float64), e the binary exponent of max |x|, and
    the sums scaled back by powers of two in ``dtype``: no power overflows, however large x (a blown-up layer at
    1e20 reads its variance of 1e40), and every sum accumulates in ``dtype`` down 4096-wide columns, as
    :func:`accurate_sum` does. A non-finite element makes every sum non-finite.
    (``lit_ortho.activations.elementwise.power_sums`` is the same function: the two packages import nothing
    from each other.)
    """
    xf = (x if x.dtype in (torch.float32, torch.float64) else x.float()).reshape(-1)
    absmax = xf.abs().amax()
    exponent = torch.frexp(absmax).exponent  # max |x| = m 2**e, m in [0.5, 1); e = 0 for 0 (and for inf, NaN)
    n = xf.numel()
    # row p holds (x 2**-e)**(p+1), zero-padded to whole blocks: all the sums in one reduction
    terms = xf.new_zeros(powers, -(-n // SUM_BLOCK) * SUM_BLOCK)
    torch.mul(xf, torch.ldexp(torch.ones((), dtype=xf.dtype, device=xf.device), -exponent), out=terms[0, :n])
    for p in range(1, powers):
        torch.mul(terms[p - 1, :n], terms[0, :n], out=terms[p, :n])
    sums = terms.view(powers, -1, SUM_BLOCK).sum(1, dtype=dtype).sum(1)  # float64 accumulators down the columns
    scale = torch.arange(1, powers + 1, dtype=dtype, device=xf.device) * exponent.to(dtype)
    return list(torch.ldexp(sums, scale).unbind()), absmax.to(dtype)


class LayerMoments:
    """Running (count, power sums, non-finite, max |x|) for ``num_layers`` layers x ``slots`` tensor kinds.

    ``add`` is called from hooks (device tensors only, no ``.item()``); ``all_reduce`` pools every rank's
    values with one collective; the ``variance``/``kurtosis``/... read-outs are computed from the pools.
    """

    def __init__(self, num_layers: int, slots: Sequence[str], device: torch.device | str = "cpu"):
        self.slots = tuple(slots)
        device = torch.device(device)
        self.values = torch.zeros(num_layers, len(self.slots), _FIELDS, dtype=accumulation_dtype(device), device=device)
        # Element counts are known on the host: kept there until read, which saves kernels in every hook.
        self._counts = [[0] * len(self.slots) for _ in range(num_layers)]

    @property
    def num_layers(self) -> int:
        return self.values.shape[0]

    def slot(self, name: str) -> int:
        return self.slots.index(name)

    def reset(self) -> None:
        self.values.zero_()
        self._counts = [[0] * len(self.slots) for _ in range(self.num_layers)]

    def add(self, layer: int, slot: str, x: Tensor, count_nonfinite: bool = False, higher: bool = False) -> None:
        """Add the moments of every element of ``x`` to ``layer``'s ``slot``, without a host sync.

        The sums are :func:`power_sums`' (float32 powers, scaled so that none overflows, summed as accurately as
        in float64). Non-finite values propagate into the sums, so a non-finite layer reads as a non-finite
        variance even when ``count_nonfinite`` (one more pass) is off. ``higher`` also adds the sums of x^3
        and x^4 and the largest |x| (kurtosis and outliers: two more passes).
        """
        x = x.detach()
        if x.numel() == 0:
            return
        cell = self.values[layer, self.slot(slot)]
        sums, absmax = power_sums(x, 4 if higher else 2, cell.dtype)
        cell[SUM].add_(sums[0])
        cell[SUMSQ].add_(sums[1])
        if count_nonfinite:
            cell[NONFINITE].add_((~torch.isfinite(x)).sum())
        if higher:
            cell[SUM3].add_(sums[2])
            cell[SUM4].add_(sums[3])
            cell[ABSMAX] = torch.maximum(cell[ABSMAX], absmax)
        self._counts[layer][self.slot(slot)] += x.numel()

    def _flush_counts(self) -> None:
        if any(any(row) for row in self._counts):
            self.values[..., COUNT] += torch.tensor(self._counts, dtype=self.values.dtype, device=self.values.device)
            self._counts = [[0] * len(self.slots) for _ in range(self.num_layers)]

    def add_each(self, slot: str, tensors: Sequence[Optional[Tensor]]) -> None:
        """Add ``tensors[i]``'s moments to layer ``i`` (``None``: nothing) with a handful of fused kernels:
        the way to read a model's worth of gradients at once."""
        present = [(i, t.detach()) for i, t in enumerate(tensors) if t is not None and t.numel() > 0]
        if not present:
            return
        dtype, device, s = self.values.dtype, self.values.device, self.slot(slot)
        rows = torch.tensor([i for i, _ in present], device=device)
        ts = [t for _, t in present]
        sums = torch.stack([accurate_sum(t, dtype) for t in ts]).to(device)
        sumsq = torch.stack(torch._foreach_norm(ts, 2, dtype=dtype)).to(device).square()  # one multi-tensor kernel
        self.values[:, s, SUM].index_add_(0, rows, sums)
        self.values[:, s, SUMSQ].index_add_(0, rows, sumsq)
        for i, t in present:
            self._counts[i][s] += t.numel()

    def add_raw(self, layer: int, slot: str, moments: dict[int, Tensor]) -> None:
        """Add precomputed fields (``{COUNT: n, SUM: s, ...}``) to ``layer``'s ``slot``: sums are added, the
        largest |x| is kept."""
        cell = self.values[layer, self.slot(slot)]
        for field, value in moments.items():
            value = value.to(cell)
            cell[field] = torch.maximum(cell[field], value) if field in MAX_FIELDS else cell[field] + value

    def all_reduce(self, group: Optional[dist.ProcessGroup] = None, peers: Optional[Sequence[Sequence[int]]] = None) -> None:
        """Pool the moments over ``group`` (the world by default): ONE collective for every layer; ``peers[i]``
        restricts layer ``i`` to those ranks (:func:`pool`).

        A no-op outside a process group. Every rank of the group must call it, in the same order as its
        other collectives, even if it saw no data (an empty FSDP shard adds zeros).
        """
        self._flush_counts()
        self.values = pool(self.values, group=group, peers=peers, max_fields=MAX_FIELDS)

    def cpu(self) -> "MomentsReadout":
        """One device-to-host copy of everything, for the (cheap) read-outs that follow."""
        self._flush_counts()
        return MomentsReadout(self.values.detach().to("cpu", torch.float64), self.slots)


class MomentsReadout:
    """Host-side read-outs of reduced moments: population variance, mean, gain, non-finite fraction."""

    def __init__(self, values: Tensor, slots: Sequence[str]):
        self.values = values
        self.slots = tuple(slots)

    def _field(self, slot: str, field: int) -> Tensor:
        return self.values[:, self.slots.index(slot), field]

    def count(self, slot: str) -> Tensor:
        return self._field(slot, COUNT)

    def mean(self, slot: str) -> Tensor:
        """Mean per layer; NaN for a layer that saw no elements."""
        n = self.count(slot)
        return torch.where(n > 0, self._field(slot, SUM) / n.clamp(min=1), torch.full_like(n, float("nan")))

    def variance(self, slot: str) -> Tensor:
        """Population variance E[x^2] - E[x]^2 per layer (never an average of per-rank variances).

        Clamped at 0 against float64 rounding; NaN for an empty layer or when non-finite values were seen.
        """
        n, total, sumsq = self.count(slot), self._field(slot, SUM), self._field(slot, SUMSQ)
        mean = total / n.clamp(min=1)
        var = (sumsq / n.clamp(min=1) - mean * mean).clamp(min=0.0)
        bad = (n == 0) | (self._field(slot, NONFINITE) > 0) | ~torch.isfinite(total) | ~torch.isfinite(sumsq)
        return torch.where(bad, torch.full_like(var, float("nan")), var)

    def gain(self, numerator: str, denominator: str) -> Tensor:
        """var(numerator) / var(denominator) per layer, e.g. var(out)/var(in); NaN where the latter is 0."""
        top, bottom = self.variance(numerator), self.variance(denominator)
        return torch.where(bottom > 0, top / bottom.clamp(min=torch.finfo(bottom.dtype).tiny), top * float("nan"))

    def nonfinite_fraction(self, slot: str) -> Tensor:
        n = self.count(slot)
        return torch.where(n > 0, self._field(slot, NONFINITE) / n.clamp(min=1), torch.full_like(n, float("nan")))

    def kurtosis(self, slot: str) -> Tensor:
        """E[(x - mean)^4] / var^2 per layer (3 for a Gaussian), from the pooled power sums; NaN where the
        variance is 0, NaN or the higher sums were not kept."""
        n = self.count(slot).clamp(min=1)
        m1, m2 = self._field(slot, SUM) / n, self._field(slot, SUMSQ) / n
        m3, m4 = self._field(slot, SUM3) / n, self._field(slot, SUM4) / n
        central4 = m4 - 4 * m1 * m3 + 6 * m1 * m1 * m2 - 3 * m1**4
        var = self.variance(slot)
        ok = (var > 0) & (m4 > 0)
        return torch.where(ok, central4.clamp(min=0.0) / (var * var).clamp(min=torch.finfo(var.dtype).tiny), var * float("nan"))

    def absmax(self, slot: str) -> Tensor:
        """The largest |x| per layer; NaN for a layer that saw no elements."""
        n = self.count(slot)
        return torch.where(n > 0, self._field(slot, ABSMAX), torch.full_like(n, float("nan")))


def group_size(group: Optional[dist.ProcessGroup] = None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def pool(values: Tensor, *, group: Optional[dist.ProcessGroup] = None, peers: Optional[Sequence[Sequence[int]]] = None,
         max_fields: Sequence[int] = ()) -> Tensor:  # fmt: skip
    """``values`` (``[rows, ..., fields]``) pooled over the ranks of ``group`` with ONE collective (an all-gather:
    sums and maxima travel together): fields in ``max_fields`` take the maximum over ranks, the others the sum.

    ``peers[row]`` restricts row ``row`` to those ranks of ``group`` (the shards that together make one parameter,
    so HSDP replicas are not counted twice); by default every rank counts. Every rank of ``group`` must call it,
    in the same order as its other collectives. A no-op (``values`` returned) outside a process group.
    """
    return pool_many([values], group=group, peers=[peers], max_fields=[max_fields])[0]


def pool_many(parts: Sequence[Tensor], *, group: Optional[dist.ProcessGroup] = None,
              peers: Optional[Sequence[Optional[Sequence[Sequence[int]]]]] = None,
              max_fields: Optional[Sequence[Sequence[int]]] = None) -> list[Tensor]:  # fmt: skip
    """Several tensors pooled as :func:`pool` does, with ONE collective for all: flattened into one vector,
    gathered from every rank, split back; ``peers[i]`` and ``max_fields[i]`` apply to ``parts[i]``."""
    size = group_size(group)
    if size == 1 or not parts:
        return list(parts)
    if peers is not None and all(rows is not None and all(len(r) == 1 for r in rows) for rows in peers):
        return list(parts)  # every row is whole on its own rank (DDP replicas): nothing to pool, on every rank alike
    dtype, device = parts[0].dtype, parts[0].device
    flat = torch.cat([p.reshape(-1).to(dtype) for p in parts])
    gathered = [torch.empty_like(flat) for _ in range(size)]
    dist.all_gather(gathered, flat, group=group)
    stacked_all = torch.stack(gathered)  # [ranks, total]
    out, offset = [], 0
    for i, part in enumerate(parts):
        stacked = stacked_all[:, offset : offset + part.numel()].reshape(size, *part.shape)
        offset += part.numel()
        rows_peers = peers[i] if peers is not None else None
        fields = max_fields[i] if max_fields is not None else ()
        mask = None
        if rows_peers is not None:
            mask = torch.zeros(size, part.shape[0], dtype=torch.bool)
            for row, ranks in enumerate(rows_peers):
                mask[list(ranks), row] = True
            mask = mask.to(device).reshape(size, part.shape[0], *([1] * (part.dim() - 1)))
        summed = (stacked if mask is None else torch.where(mask, stacked, 0.0)).sum(0)
        if fields:
            maxed = (stacked if mask is None else torch.where(mask, stacked, float("-inf"))).amax(0)
            for field in fields:
                summed[..., field] = maxed[..., field]
        out.append(summed.to(part.dtype))
    return out


# ---- which ranks hold which part of the data ---------------------------------------------------------------
def data_parallel_group(strategy: object) -> Optional[dist.ProcessGroup]:
    """Ranks that see different samples: activation statistics are summed over them (the world, unless a
    ``ModelParallelStrategy`` mesh names a ``data_parallel`` dimension)."""
    mesh = getattr(strategy, "_device_mesh", None)
    if mesh is not None and "data_parallel" in (mesh.mesh_dim_names or ()):
        return mesh["data_parallel"].get_group()
    return None


def fsdp1_shard_group(model: torch.nn.Module) -> Optional[dist.ProcessGroup]:
    """The shard group of FSDP1 (``FullyShardedDataParallel``) if ``model`` uses it: each rank holds a slice
    of every parameter there (HYBRID_SHARD: a slice within its node, replicated across nodes)."""
    if not dist.is_available():
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel

    for module in model.modules():
        if isinstance(module, FullyShardedDataParallel):
            return module.process_group
    return None


def shard_peers(param: Tensor, fsdp1_group: Optional[dist.ProcessGroup] = None) -> tuple[int, ...]:
    """Global ranks whose local parts of ``param`` together make the whole parameter, this rank included: the
    rows :func:`pool` adds for it.

    FSDP2 DTensor: the ranks along the mesh dimensions it is ``Shard``-ed over, at this rank's coordinate on
    the others (HSDP's replicate dimension would count every element twice). FSDP1: its shard group.
    DDP replicas and single-device: this rank alone.
    """
    if group_size() == 1:
        return (0,)
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        mesh = param.device_mesh
        coordinate = mesh.get_coordinate()
        assert coordinate is not None, "this rank is not part of the parameter's mesh"
        index = tuple(slice(None) if p.is_shard() else coordinate[d] for d, p in enumerate(param.placements))
        return tuple(int(r) for r in mesh.mesh[index].reshape(-1).tolist())
    if fsdp1_group is not None:
        return tuple(dist.get_process_group_ranks(fsdp1_group))
    return (dist.get_rank(),)


def gradient_moments(params: Sequence[Tensor], device: torch.device | str) -> LayerMoments:
    """One row per parameter (slot ``grad``): the moments of this rank's part of its gradient. A missing
    gradient (an empty FSDP1 shard has ``grad=None``) adds nothing, and its row still joins the collective."""
    moments = LayerMoments(len(params), ("grad",), device)
    moments.add_each("grad", [None if p.grad is None else local_tensor(p.grad) for p in params])
    return moments


def gradient_variances(readout: MomentsReadout, names: Sequence[str]) -> dict[str, float]:
    """``{parameter: gradient variance}`` from pooled :func:`gradient_moments`; a 1-element tensor has no spread
    to report and is left out."""
    seen = (readout.count("grad") > 1).tolist()
    return {name: value for name, value, ok in zip(names, readout.variance("grad").tolist(), seen) if ok}


def local_tensor(t: Tensor) -> Tensor:
    """This rank's shard of a DTensor; any other tensor as is."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t
