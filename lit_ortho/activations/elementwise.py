"""Tensor helpers every family's math uses: the compute dtype, coefficient broadcasting, channel sums.

Coefficients are ``[K]`` (one set per layer, the paper) or ``[C, K]`` (one set per channel, along
``channel_dim`` of the input). ``columns(coef, x, channel_dim)`` gives the K coefficients, each shaped
to broadcast against ``x``; ``reduce_channels`` sums a gradient back to a coefficient's shape.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "inverse_factorials", "compute_dtype", "power_sums", "broadcast_to_channels", "columns", "reduce_channels", "dot",
    "ROW_SUM_LIMIT", "row_length", "as_rows", "fma", "zero_reading", "channel_reading", "tie_to_rows",
]


def inverse_factorials(n: int) -> list[float]:
    """[1/0!, 1/1!, ..., 1/n!]: the Hermite basis normalisation and the Fourier term weights."""
    return [1.0 / math.factorial(k) for k in range(n + 1)]


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for every input dtype (bf16/fp16 included), float64 only for float64 (gradcheck)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


SUM_BLOCK = 4096


def power_sums(x: Tensor, powers: int, dtype: torch.dtype = torch.float64) -> tuple[list[Tensor], Tensor]:
    """([sum of x**p for p = 1..powers], max |x|) over every element of ``x``, as ``dtype`` scalars, no host sync.

    The powers are taken of x * 2**-e in float32 (float64 for float64), e the binary exponent of max |x|, and
    the sums scaled back by powers of two in ``dtype``: no power overflows, however large x (a blown-up layer at
    1e20 reads its variance of 1e40), and every sum accumulates in ``dtype`` down 4096-wide columns (on CPU
    ~10x faster than ``torch.sum(..., dtype=torch.float64)`` over float32, which converts element by element).
    A non-finite element makes every sum non-finite. The monitors keep the same function
    (``callbacks.statistics.power_sums``: that package imports nothing of ours).
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


def broadcast_to_channels(coef: Tensor, x: Tensor, channel_dim: int) -> Tensor:
    """Shape a per-layer ``[]`` or per-channel ``[C]`` coefficient to broadcast against ``x``."""
    if coef.dim() == 0:
        return coef
    shape = [1] * x.dim()
    shape[channel_dim] = coef.shape[0]
    return coef.reshape(shape)


@torch.library.custom_op("lit_ortho::coefficient_columns", mutates_args=())
def _transposed_copy(coef: Tensor) -> Tensor:
    """``[C, K]`` per-channel coefficients as a materialised ``[K, C]`` tensor (``[K]`` ones as a copy). A custom op because
    inductor inlines a transpose or ``.contiguous()`` into its consumer: the vector loop would then
    read each column with stride K, and inductor falls back to a scalar loop for such loads."""
    return coef.t().clone(memory_format=torch.contiguous_format)


@_transposed_copy.register_fake
def _(coef: Tensor) -> Tensor:
    return coef.new_empty(coef.shape[::-1])


def columns(coef: Tensor, x: Tensor, channel_dim: int, contiguous: bool = False, materialise: bool = False) -> list[Tensor]:
    """The K columns of a ``[K]`` or ``[C, K]`` coefficient tensor, each shaped to broadcast against ``x``.

    ``contiguous=True`` (the compiled twins) makes each per-channel column a contiguous ``[C]`` tensor,
    so inductor keeps the loop over ``x`` vectorised; eager code takes strided views (no copy).
    ``materialise=True`` copies shared ``[K]`` coefficients too: inductor then loads each from a buffer instead
    of recomputing, for every vector of ``x``, whatever arithmetic on the coefficients came before.
    """
    copy = contiguous and (coef.dim() == 2 or materialise)
    rows = _transposed_copy(coef) if copy else coef.movedim(-1, 0)
    return [broadcast_to_channels(rows[k], x, channel_dim) for k in range(coef.shape[-1])]


# Inductor sums more than this many float32 elements with a cascade-summation helper that it updates in
# memory for every vector: about 10 % of Fourier-5's time for its 16 sums. Rows up to this length are summed
# with plain vector adds, and the row sums then by the helper (few elements).
ROW_SUM_LIMIT = 4096


def _row_length(n: int) -> int:
    """The longest row of at most ROW_SUM_LIMIT elements that ``n`` elements split into (1 if none of 256 up)."""
    return next((d for d in range(min(n, ROW_SUM_LIMIT), 255, -1) if n % d == 0), 1)


def reduce_channels(t: Tensor, per_channel: bool, channel_dim: int, rows: int = 0) -> Tensor:
    """Sum over every element (shared coefficients) or over all but the channel dimension. ``rows``: ``t`` is
    in the rows of :func:`as_rows`, summed row by row and then over the row sums."""
    if not per_channel:
        return t.sum(-1).sum() if rows else t.sum()
    dim = channel_dim % t.dim()
    inner = math.prod(t.shape[dim + 1 :])
    if inner > 1 and torch.compiler.is_compiling():
        # The dims after the channel first, in contiguous rows of at most ROW_SUM_LIMIT, then the few partial
        # sums. As one reduction over all the other dims, more than ROW_SUM_LIMIT elements per channel,
        # inductor sums with its cascade helper: compiled Hermite-3 per channel on dim 1 of (256, 160, 16, 16)
        # 1.6x GELU that way, 1.1x this way (benchmarks/RESULTS.md).
        row = _row_length(inner) if inner > ROW_SUM_LIMIT else inner
        return t.reshape(math.prod(t.shape[:dim]), t.shape[dim], inner // row, row).sum(-1).sum(-1).sum(0)
    return t.sum(dim=[d for d in range(t.dim()) if d != dim])


def row_length(x: Tensor, per_channel: bool) -> int:
    """How a compiled backward sums over ``x`` with shared coefficients: in rows of this many elements (then over
    the row sums), or as a whole (0). Rows of 256 to ROW_SUM_LIMIT elements: the product of x's last dims where
    one is in that range, else the longest such row that the elements split into (whatever the shape: NCHW's
    16-element last dim would make a vector's worth per row, 1.8x compiled GELU for Tropical-5 against 1.1x).
    Rows made of x's own last dims make the rows a plain view of its shape; rows that split one of its dims (4096
    = 16 x 16 x 16 of 256x160x16x16) made inductor copy dx back to x's shape in a second, scalar loop.
    0 per channel, in eager code, for small or non-contiguous inputs."""
    if per_channel or x.numel() <= ROW_SUM_LIMIT or not x.is_contiguous() or not torch.compiler.is_compiling():
        return 0
    last_dims = [math.prod(x.shape[i:]) for i in range(x.dim() - 1, 0, -1)]
    row = max((n for n in last_dims if 256 <= n <= ROW_SUM_LIMIT), default=0) or _row_length(x.numel())
    return row if row > 1 else 0


def as_rows(t: Tensor, rows: int) -> Tensor:
    """``t`` as [n / rows, rows] (a view of a contiguous tensor), or ``t`` itself for ``rows=0``."""
    return t.reshape(-1, rows) if rows else t


def fma(a, b, c):
    """a * b + c. Inductor lowers this prim to a vector fused multiply-add; written as ``a * b + c``
    its C++ backend keeps a multiply and an add (it compiles with -ffp-contract=off): Fourier's sine and
    cosine polynomials are chains of these, and every tropical line is one."""
    from torch._inductor import inductor_prims  # registers the prim; imported here, not with lit_ortho (2 s)

    return inductor_prims.fma(a, b, c)


def zero_reading(t: Tensor) -> Tensor:
    """Exact zeros shaped like ``t``, NaN and inf included (``fmin(t * 0, 0)``: fmin drops the NaN),
    that inductor still sees as a read of ``t``: a way to steer its loop fusion without changing any
    value."""
    return torch.fmin(t * 0.0, torch.zeros((), dtype=t.dtype, device=t.device))


def channel_reading(t: Tensor, coef: Tensor, x: Tensor, channel_dim: int) -> Tensor:
    """``t`` unchanged in value (times a materialised column of ones, one per channel of the ``[C, K]`` ``coef``),
    that inductor sees as a read per channel: it keeps a loop over the channel dim for a node that reads a
    per-channel value and merges that dim away for one that does not, and a sum looped unlike dx cannot share dx's
    pass (Hermite-3 per channel on dim 1 of 256x160x16x16: two passes and 1.20x compiled GELU, one and 1.01x)."""
    return t * columns(torch.ones_like(coef[..., :1]), x, channel_dim, contiguous=True)[0]


def tie_to_rows(grad_x: Tensor, x: Tensor, rows: int) -> Tensor:
    """``grad_x`` unchanged in value. With ``rows``, it also reads a value per row of ``x``: the row sums are 2-D
    loops (rows x row length), and a pointwise loop that reads nothing per row is flattened to 1-D, which inductor
    cannot fuse with them. Pair it with a sum that reads ``grad_x`` (``zero_reading``): inductor schedules the
    sums first and fuses a pointwise node only into a later reduction, so dx gets the sums' loop, not a second
    pass that recomputes everything."""
    return grad_x + zero_reading(x[..., :1]) if rows else grad_x


def dot(g: Tensor, h: Tensor, per_channel: bool, channel_dim: int) -> Tensor:
    """sum(g * h) overall or per channel; one fused pass in the shared case."""
    if not per_channel:
        return torch.dot(g.reshape(-1), h.reshape(-1)) if h.shape == g.shape else (g * h).sum()
    return reduce_channels(g * h, per_channel, channel_dim)
