"""Tropical (max-plus) activations.

* Tropical: F(x) = s * max_{k=0..n}(k x + c_k), fixed slopes 0..n, learnable intercepts c_k;
* Tropical rational: F(x) = max_k(p_k x + c_k) - max_k(q_k x + d_k), any continuous piecewise-linear
  function.

Both save only x and the coefficients and recompute the winning piece in backward. The eager path
tracks the argmax as uint8 and sums the coefficient gradients with one ``bincount``. The compiled twin
(traced by ``torch.compile``) cannot: ``bincount``'s output shape depends on data (a graph break). It
finds each element's piece from the breakpoints of the max of lines (:func:`breakpoints`, a few
coefficients' worth of work) with K - 1 compares, and sums each piece's gradient by a mask, all fused
into one or two passes. The first maximal piece wins ties in both.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from lit_ortho.activations.base import LearnableActivation
from lit_ortho.activations.elementwise import (
    as_rows, columns, compute_dtype, fma, reduce_channels, row_length, tie_to_rows, zero_reading,
)
from lit_ortho.activations.family import Family, Launchers, register_family
from lit_ortho.activations.kernels import cpu
from lit_ortho.activations.init import fit_activation, lbfgs_fit
from lit_ortho.activations.spec import register_activation

__all__ = ["TropicalActivation", "TropicalRationalActivation", "tropical", "tropical_rational"]


def fixed_slopes(K: int) -> list[float]:
    """Tropical's slopes 0, 1, ..., K - 1."""
    return [float(k) for k in range(K)]


def fixed_slopes_like(intercepts: Tensor) -> Tensor:
    """Tropical's slopes as a tensor shaped (and typed) like its ``[K]`` or ``[C, K]`` intercepts."""
    K = intercepts.shape[-1]
    return torch.tensor(fixed_slopes(K), dtype=intercepts.dtype, device=intercepts.device).expand(intercepts.shape)


# ---- eager ---------------------------------------------------------------------------------------
@torch.no_grad()  # values flow through the autograd Functions; argmax has no gradient
def _running_max(x: Tensor, slopes, intercepts: list[Tensor], K: int, with_argmax: bool = False):
    """Running max over the K lines without a [..., K] tensor; the argmax (uint8) only when asked."""
    best = slopes[0] * x + intercepts[0]
    arg = torch.zeros(x.shape, dtype=torch.uint8, device=x.device) if with_argmax else None
    cand = torch.empty_like(best)
    for k in range(1, K):
        torch.add(slopes[k] * x, intercepts[k], out=cand)
        if with_argmax:
            arg.masked_fill_(cand > best, k)
        torch.maximum(best, cand, out=best)
    return best, arg


def _scatter_by_argmax(weights: Tensor, arg: Tensor, K: int, per_channel: int, channel_dim: int) -> Tensor:
    """Sum ``weights`` grouped by argmax piece (and channel): a bincount, not K masked reductions."""
    w = weights.reshape(-1)
    if not per_channel:
        return torch.bincount(arg.reshape(-1).long(), weights=w, minlength=K).to(weights.dtype)
    shape = [1] * arg.dim()
    shape[channel_dim] = per_channel
    channel = torch.arange(per_channel, device=arg.device).reshape(shape).expand(arg.shape)
    index = channel.reshape(-1) * K + arg.reshape(-1).long()
    return torch.bincount(index, weights=w, minlength=per_channel * K).reshape(per_channel, K).to(weights.dtype)


class _TropicalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, intercepts, scale, channel_dim: int):
        ctx.save_for_backward(x, intercepts, scale)
        ctx.channel_dim = channel_dim
        dtype = compute_dtype(x)
        xf = x.to(dtype)
        c = columns(intercepts.to(dtype), xf, channel_dim)
        best, _ = _running_max(xf, fixed_slopes(intercepts.shape[-1]), c, intercepts.shape[-1])
        return (best * scale.to(dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, intercepts, scale = ctx.saved_tensors
        dtype = compute_dtype(x)
        xf, g = x.to(dtype), grad_out.to(dtype) * scale.to(dtype)
        K = intercepts.shape[-1]
        c = columns(intercepts.to(dtype), xf, ctx.channel_dim)
        _, arg = _running_max(xf, fixed_slopes(intercepts.shape[-1]), c, K, with_argmax=True)
        grad_x = (g * arg.to(dtype)).to(x.dtype)
        per_channel = intercepts.shape[0] if intercepts.dim() == 2 else 0
        grad_c = _scatter_by_argmax(g, arg, K, per_channel, ctx.channel_dim)
        return grad_x, grad_c.to(intercepts.dtype), None, None


class _TropicalRationalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim: int):
        ctx.save_for_backward(x, num_slopes, num_intercepts, den_slopes, den_intercepts)
        ctx.channel_dim = channel_dim
        dtype = compute_dtype(x)
        xf = x.to(dtype)
        col = lambda t: columns(t.to(dtype), xf, channel_dim)  # noqa: E731
        K = num_slopes.shape[-1]
        num, _ = _running_max(xf, col(num_slopes), col(num_intercepts), K)
        den, _ = _running_max(xf, col(den_slopes), col(den_intercepts), K)
        return (num - den).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, p, c, q, d = ctx.saved_tensors
        dtype = compute_dtype(x)
        cd = ctx.channel_dim
        xf, g = x.to(dtype), grad_out.to(dtype)
        col = lambda t: columns(t.to(dtype), xf, cd)  # noqa: E731
        K = p.shape[-1]
        per_channel = p.shape[0] if p.dim() == 2 else 0
        _, arg_num = _running_max(xf, col(p), col(c), K, with_argmax=True)
        _, arg_den = _running_max(xf, col(q), col(d), K, with_argmax=True)
        gx = g * xf
        grad_p = _scatter_by_argmax(gx, arg_num, K, per_channel, cd)
        grad_c = _scatter_by_argmax(g, arg_num, K, per_channel, cd)
        grad_q = -_scatter_by_argmax(gx, arg_den, K, per_channel, cd)
        grad_d = -_scatter_by_argmax(g, arg_den, K, per_channel, cd)
        slope_num = _winning_slope(p.to(dtype), arg_num, cd)
        slope_den = _winning_slope(q.to(dtype), arg_den, cd)
        grad_x = (g * (slope_num - slope_den)).to(x.dtype)
        return grad_x, grad_p.to(p.dtype), grad_c.to(c.dtype), grad_q.to(q.dtype), grad_d.to(d.dtype), None


def _winning_slope(coef: Tensor, arg: Tensor, channel_dim: int) -> Tensor:
    """coef[..., arg] element-wise: the slope of the winning piece at every element."""
    if coef.dim() == 1:
        return coef[arg.long()]
    C, K = coef.shape
    shape = [1] * arg.dim()
    shape[channel_dim] = C
    channel = torch.arange(C, device=arg.device).reshape(shape)
    return coef.reshape(-1)[channel * K + arg.long()]


# ---- compiled ------------------------------------------------------------------------------------
def _max_of_lines(x: Tensor, slopes, intercepts: Tensor, channel_dim: int) -> Tensor:
    """max_k (s_k x + c_k), one fused multiply-add and one max per line; ``slopes`` None: Tropical's 0..K-1."""
    c = columns(intercepts, x, channel_dim, contiguous=True)
    s = fixed_slopes(len(c)) if slopes is None else columns(slopes, x, channel_dim, contiguous=True)
    best = fma(s[0], x, c[0])
    for k in range(1, len(c)):
        best = torch.maximum(best, fma(s[k], x, c[k]))
    return best


def breakpoints(slopes: Tensor, intercepts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Where each line of max_k(s_k x + c_k) wins: (slopes sorted ascending, their order, thresholds T).

    A max of lines is convex, so sorted by slope its winning line only moves up as x grows: the winner is
    sorted line k or a later one exactly where x > T[k-1] (k = 1..K-1), T non-decreasing, and sorted line k
    wins on (T[k-1], T[k]] (empty for a line that never wins). T[k-1] = min over lines i >= k of max over
    j < k of the x above which line i beats line j, the first line (in the given order) winning a tie. Built
    from the few coefficients in float64 and rounded down to their dtype, so ``x > T`` in that dtype is the
    exact comparison. This is how the compiled backward finds the winning piece: K - 1 compares an
    element instead of recomputing the running max and its argmax (Tropical-rational-6 at 6.3 M elements:
    2.6x compiled GELU before, 1.7x after, in one process on 2 threads; benchmarks/RESULTS.md). Within a
    rounding of a breakpoint the piece can differ from the one eager's float32 comparison of the lines picks.
    """
    wide = torch.float64
    sorted_slopes, order = torch.sort(slopes, dim=-1, stable=True)
    c = intercepts.gather(-1, order).to(wide)
    s = sorted_slopes.to(wide)
    s_i, s_j, c_i, c_j = s[..., :, None], s[..., None, :], c[..., :, None], c[..., None, :]
    i_first = order[..., :, None] < order[..., None, :]
    steeper = s_i > s_j
    crossing = (c_j - c_i) / torch.where(steeper, s_i - s_j, torch.ones_like(s_i))
    inf = torch.full_like(crossing, math.inf)
    parallel = torch.where((c_i > c_j) | ((c_i == c_j) & i_first), -inf, inf)  # i beats j everywhere or nowhere
    above = torch.where(steeper, crossing, parallel)  # line i beats line j where x > above[i, j] ...
    low = above.to(slopes.dtype)  # ... or at x == above[i, j] too, when i comes first: x > the next float down
    nudge = (low.to(wide) > above) | (i_first & steeper & (low.to(wide) == above))
    low = torch.where(nudge, torch.nextafter(low, torch.full_like(low, -math.inf)), low)
    beats_all_below = torch.cummax(low, dim=-1).values[..., :-1]  # [..., i, k - 1]: max over j < k, k = 1..K-1
    from_k = torch.cummin(beats_all_below.flip(-2), dim=-2).values.flip(-2)  # [..., i, k - 1]: min over lines from i
    thresholds = torch.diagonal(from_k, offset=-1, dim1=-2, dim2=-1)  # [..., k - 1]: min over i >= k
    # T is non-decreasing already (as k grows, a min over fewer lines of a max over more). Sorting changes no
    # value; it makes inductor keep T as a buffer: it inlines reductions over at most 8 elements, and every
    # element's loop would then recompute T from the coefficients (Tropical-3 at 6.3 M elements: 20x GELU).
    return sorted_slopes, order, torch.sort(thresholds, dim=-1).values


def _pieces(x: Tensor, slopes: Tensor, intercepts: Tensor, channel_dim: int):
    """(the masks ``x > T[k]`` for k = 0..K-2, nested since T is non-decreasing; the winning slope at every
    element; the sort order): K - 1 compares and K - 1 selects an element (:func:`breakpoints`)."""
    sorted_slopes, order, thresholds = breakpoints(slopes, intercepts)
    s = columns(sorted_slopes, x, channel_dim, contiguous=True)
    above = [x > t for t in columns(thresholds, x, channel_dim, contiguous=True)]
    slope = torch.zeros_like(x) + s[0]
    for k in range(1, len(s)):
        slope = torch.where(above[k - 1], s[k], slope)
    return above, slope, order


def _sums_by_piece(weights: Tensor, above: list[Tensor], order: Tensor, per_channel: bool, channel_dim: int,
                   rows: int, grad_x: Tensor | None = None) -> Tensor:
    """[K] (or [C, K]) sums of ``weights`` over the elements where each line wins, in the lines' own order.

    Sorted line k wins on (T[k-1], T[k]]. Shared coefficients: the first line's sum is taken over x <= T[0],
    the others' as differences of the sums over x > T[k] (one select and one add an element and breakpoint, no
    masks to combine; Tropical-rational-6 at 6.3 M elements 1.57x compiled GELU against 1.67x). A line that never
    wins gets exactly zero (its neighbours sum the same elements in the same order). Per channel each piece's
    mask is combined from two compares: the differences made inductor's per-channel loops slower (1.8x for
    Tropical-rational-6 per channel on the last dim of 256x160x16x16), for a cause not found.
    ``grad_x`` (from :func:`tie_to_rows`): with ``rows``, a sum reads it, so that dx is computed in the sums'
    pass rather than in a second one (as in Fourier's backward). Without rows (per channel) the sums and dx loop
    in different orders and do not fuse, and the sum would only read dx back from memory: a third stream.
    Every sum reads a threshold: a plain sum of ``weights`` (a total to difference from) looped differently
    from dx per channel on dim 1 and split their one pass in two."""
    zero = torch.zeros((), dtype=weights.dtype, device=weights.device)
    reduce = lambda t: reduce_channels(t, per_channel, channel_dim, rows)  # noqa: E731
    first = torch.where(above[0], zero, weights)
    if grad_x is not None and rows:
        first = first + zero_reading(grad_x)
    if per_channel:
        wins = [*(a & ~b for a, b in zip(above, above[1:])), above[-1]]
        sums = torch.stack([reduce(first), *(reduce(torch.where(w, weights, zero)) for w in wins)], -1)
        return torch.zeros_like(sums).scatter(-1, order, sums)
    above_sums = torch.stack([reduce(torch.where(a, weights, zero)) for a in above], -1)
    return piece_sums(torch.cat([reduce(first)[..., None], above_sums], -1), order)


def piece_sums(cumulative: Tensor, order: Tensor) -> Tensor:
    """Each line's sum, in the lines' own order, from ``cumulative``: [..., 0] the sum over x <= T[0], [..., k] the sum
    over x > T[k-1] (k = 1..K-1). Sorted line k wins on (T[k-1], T[k]], so its sum is the difference of neighbours."""
    above = cumulative[..., 1:]
    sums = torch.cat([cumulative[..., :1], above[..., :-1] - above[..., 1:], above[..., -1:]], -1)
    return torch.zeros_like(sums).scatter(-1, order, sums)


class _TropicalCompiled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, intercepts, scale, channel_dim: int):
        ctx.save_for_backward(x, intercepts, scale)
        ctx.channel_dim = channel_dim
        dtype = compute_dtype(x)
        xf = x.to(dtype)
        return (_max_of_lines(xf, None, intercepts.to(dtype), channel_dim) * scale.to(dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, intercepts, scale = ctx.saved_tensors
        dtype, cd = compute_dtype(x), ctx.channel_dim
        per_channel = intercepts.dim() == 2
        rows = row_length(x, per_channel)
        xf, g = as_rows(x.to(dtype), rows), as_rows(grad_out.to(dtype) * scale.to(dtype), rows)
        c = intercepts.to(dtype)
        above, slope, order = _pieces(xf, fixed_slopes_like(c), c, cd)
        grad_x = tie_to_rows(g * slope, xf, rows)
        grad_c = _sums_by_piece(g, above, order, per_channel, cd, rows, grad_x=grad_x)
        return grad_x.reshape(x.shape).to(x.dtype), grad_c.to(intercepts.dtype), None, None


class _TropicalRationalCompiled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim: int):
        ctx.save_for_backward(x, num_slopes, num_intercepts, den_slopes, den_intercepts)
        ctx.channel_dim = channel_dim
        dtype = compute_dtype(x)
        xf = x.to(dtype)
        num = _max_of_lines(xf, num_slopes.to(dtype), num_intercepts.to(dtype), channel_dim)
        den = _max_of_lines(xf, den_slopes.to(dtype), den_intercepts.to(dtype), channel_dim)
        return (num - den).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, p, c, q, d = ctx.saved_tensors
        dtype, cd = compute_dtype(x), ctx.channel_dim
        per_channel = p.dim() == 2
        rows = row_length(x, per_channel)
        xf, g = as_rows(x.to(dtype), rows), as_rows(grad_out.to(dtype), rows)
        gx = g * xf
        above_n, slope_n, order_n = _pieces(xf, p.to(dtype), c.to(dtype), cd)
        above_d, slope_d, order_d = _pieces(xf, q.to(dtype), d.to(dtype), cd)
        grad_x = tie_to_rows(g * (slope_n - slope_d), xf, rows)
        sums = lambda w, above, order, dx=None: _sums_by_piece(w, above, order, per_channel, cd, rows, dx)  # noqa: E731
        return (
            grad_x.reshape(x.shape).to(x.dtype),
            sums(gx, above_n, order_n, grad_x).to(p.dtype),
            sums(g, above_n, order_n).to(c.dtype),
            (-sums(gx, above_d, order_d)).to(q.dtype),
            (-sums(g, above_d, order_d)).to(d.dtype),
            None,
        )


def tropical(x, intercepts, scale, channel_dim=-1):
    return _TropicalFunction.apply(x, intercepts, scale, channel_dim)


def tropical_compiled(x, intercepts, scale, channel_dim=-1):
    return _TropicalCompiled.apply(x, intercepts, scale, channel_dim)


def tropical_rational(x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim=-1):
    return _TropicalRationalFunction.apply(x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim)


def tropical_rational_compiled(x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim=-1):
    return _TropicalRationalCompiled.apply(x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim)


# ---- C++ kernels (the layouts in each record's Launchers): the compiled twin's pieces, summed in one pass ----
def _tropical_cpu_forward(x, intercepts, scale, channel_dim):
    return cpu.forward("tropical", intercepts.shape[-1], x, intercepts.dim() == 2, channel_dim, [intercepts],
                                     (float(scale),))


def _tropical_cpu_backward(grad, x, intercepts, scale, channel_dim, need_x, need_values):
    K = intercepts.shape[-1]
    dx, sums = cpu.lines_backward("tropical", K, grad, x, intercepts.dim() == 2, channel_dim,
                                  _cpu_fixed_slopes(tuple(intercepts.shape)), intercepts, 1, need_x, (float(scale),))
    return dx, cpu.cast(sums[0], intercepts.dtype)


@functools.lru_cache(maxsize=16)
def _cpu_fixed_slopes(shape: tuple[int, ...]) -> Tensor:
    """Tropical's slopes as contiguous float32 ``shape`` (its intercepts'), made once: read-only for the C++."""
    return torch.tensor(fixed_slopes(shape[-1]), dtype=torch.float32).expand(shape).contiguous()


def _rational_cpu_forward(x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim):
    values = [num_slopes, num_intercepts, den_slopes, den_intercepts]
    return cpu.forward("tropical_rational", num_slopes.shape[-1], x, num_slopes.dim() == 2, channel_dim, values)


def _rational_cpu_backward(grad, x, p, c, q, d, channel_dim, need_x, need_values):
    # both maxes of lines at once, numerator then denominator; per max the sums of g, then of g x (the second negated)
    dx, (g_n, gx_n, g_d, gx_d) = cpu.lines_backward("tropical_rational", p.shape[-1], grad, x, p.dim() == 2, channel_dim,
                                                    torch.stack([p, q]), torch.stack([c, d]), 4, need_x, (1.0,))
    return dx, cpu.cast(gx_n, p.dtype), cpu.cast(g_n, c.dtype), cpu.cast(gx_d, q.dtype), cpu.cast(g_d, d.dtype)


# ---- fitting to a target -------------------------------------------------------------------------
def _slope_breakpoints(x: Tensor, dy: Tensor, slopes: Tensor) -> Tensor:
    """Where the target's slope first reaches the midpoint between consecutive piece slopes."""
    mids = (slopes[:-1] + slopes[1:]) / 2
    idx = torch.searchsorted(torch.cummax(dy, 0).values.contiguous(), mids.contiguous()).clamp(max=len(x) - 1)
    t = x[idx]
    # Keep breakpoints strictly increasing so that no piece is dead at the start.
    for i in range(1, len(t)):
        t[i] = torch.maximum(t[i], t[i - 1] + 1e-3)
    return t


def _fit_tropical(module, x, y, dy, weight) -> dict[str, Tensor]:
    n = module.degree
    lo, hi = float(dy.min()), float(dy.max())
    scale = torch.tensor(max(hi - min(lo, 0.0), 1e-3) / n, dtype=torch.float64)
    t = _slope_breakpoints(x, dy, torch.arange(n + 1, dtype=torch.float64) * scale)
    c = torch.zeros(n + 1, dtype=torch.float64)
    c[1:] = -torch.cumsum(t, 0)
    # Shift so the curve matches the target's mean level on the grid.
    f0 = scale * torch.max(torch.arange(n + 1, dtype=torch.float64) * x[:, None] + c, dim=1).values
    c = c + float((y - f0).mean()) / scale
    return lbfgs_fit(module, x, y, dy, weight, {"intercepts": c, "scale": scale}, trainable=("intercepts", "scale"))


def _fit_tropical_rational(module, x, y, dy, weight) -> dict[str, Tensor]:
    """Start from g = (g + h) - h with h = lam x^2/2 making g + h convex; tangents of each at n+1 points."""
    K = module.degree + 1
    h = x[1] - x[0]
    curvature = torch.diff(dy) / h
    lam = float(max(0.0, -float(curvature.min()))) + 1e-2
    s = torch.linspace(float(x[0]) * 0.8, float(x[-1]) * 0.8, K, dtype=torch.float64)
    idx = torch.searchsorted(x.contiguous(), s.contiguous()).clamp(max=len(x) - 1)
    g, dg = y[idx], dy[idx]
    p = dg + lam * s
    c = g + lam * s * s / 2 - p * s
    q = lam * s
    d = -lam * s * s / 2
    start = {"num_slopes": p, "num_intercepts": c, "den_slopes": q, "den_intercepts": d}
    return lbfgs_fit(module, x, y, dy, weight, start, trainable=tuple(start))


TROPICAL = register_family(Family(
    name="tropical",
    value_names=("intercepts", "scale"),
    learnable=("intercepts",),  # the scale is a fixed buffer
    eager=tropical,
    compiled=tropical_compiled,
    triton="lit_ortho.activations.kernels.triton_tropical",
    # the C++ kernels on every layout they take: faster than the twin on each when chosen (compiled fwd+bwd, then: NHWC
    # dim 1 0.71x GELU, the twin 1.29x; on shared values and short rows, once the outputs were streamed, 0.57-0.92x
    # against the twin's 0.72-1.03x). Today's ratios: benchmarks/RESULTS.md
    cpu=Launchers(_tropical_cpu_forward, _tropical_cpu_backward, layouts=cpu.LAYOUTS),
    fit=_fit_tropical,
))
TROPICAL_RATIONAL = register_family(Family(
    name="tropical_rational",
    value_names=("num_slopes", "num_intercepts", "den_slopes", "den_intercepts"),
    learnable=("num_slopes", "num_intercepts", "den_slopes", "den_intercepts"),
    eager=tropical_rational,
    compiled=tropical_rational_compiled,
    triton="lit_ortho.activations.kernels.triton_tropical_rational",
    # the C++ kernels on every layout they take: faster than the twin on each when chosen (compiled fwd+bwd, then:
    # 1.10-1.28x GELU shared, the twin 1.57-1.68x; 1.61-1.81x per channel on dim 1, the twin 1.66-2.45x). Today's
    # ratios: benchmarks/RESULTS.md
    cpu=Launchers(_rational_cpu_forward, _rational_cpu_backward, layouts=cpu.LAYOUTS),
    fit=_fit_tropical_rational,
))


class TropicalActivation(LearnableActivation):
    """F(x) = s * max_{k=0..n}(k x + c_k): max-plus polynomial with fixed slopes 0..n, learnable c_k.

    ``s`` is a fixed buffer: sqrt(2)/n in the paper; the unit-gain init chooses it so E[F'^2] = 1.
    """

    family = "tropical"

    def _create_parameters(self) -> None:
        self.intercepts = self._coef(self.degree + 1)
        self.register_buffer("scale", torch.tensor(math.sqrt(2.0) / self.degree))

    def _init_paper(self) -> None:
        # Equal intercepts c give sqrt(2) ReLU(x) + sqrt(2) c/n: c = 0 makes both gains exactly 1
        # (torchortho's c = 1 inflates the forward gain to 1 + 4/(n sqrt(2 pi)) + 2/n^2).
        self.scale.fill_(math.sqrt(2.0) / self.degree)
        self.set_shared(intercepts=torch.zeros(self.degree + 1))

    def _init_torchortho(self) -> None:
        self.scale.fill_(math.sqrt(2.0) / self.degree)
        self.set_shared(intercepts=torch.ones(self.degree + 1))

    def _init_unit_start(self) -> None:
        # Breakpoints at the N(0, 1) quantiles k/(n+1): every slope wins on an equal share of inputs.
        n = self.degree
        probs = torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)
        self.scale.fill_(1.0)
        self.set_breakpoints(torch.special.ndtri(probs))

    def set_breakpoints(self, breakpoints: Tensor) -> None:
        """Intercepts such that slope k wins exactly on [t_k, t_{k+1}) (t increasing): no dead pieces."""
        c = torch.zeros(self.degree + 1, dtype=torch.float64)
        c[1:] = -torch.cumsum(torch.as_tensor(breakpoints, dtype=torch.float64), 0)
        self.set_shared(intercepts=c)

    def scale_output(self, alpha: float, beta: float) -> None:
        with torch.no_grad():
            self.scale.mul_(alpha)
            self.intercepts.add_(beta / float(self.scale))


class TropicalRationalActivation(LearnableActivation):
    """F(x) = max_k(p_k x + c_k) - max_k(q_k x + d_k): a difference of two max-plus polynomials.

    Any continuous piecewise-linear function is one; the paper uses it to fine-tune from GELU, so the
    ``paper`` init fits GELU (there is no closed-form variance-preserving init).
    """

    family = "tropical_rational"

    def _create_parameters(self) -> None:
        K = self.degree + 1
        self.num_slopes, self.num_intercepts = self._coef(K), self._coef(K)
        self.den_slopes, self.den_intercepts = self._coef(K), self._coef(K)

    def _init_paper(self) -> None:
        fit_activation(self, "gelu")

    def _init_torchortho(self) -> None:
        # torchortho 0.1.2 draws randn(n + 1) in this order: powers_num, powers_denom, coefficients_num/denom.
        K = self.degree + 1
        p, q, c, d = (torch.randn(K) for _ in range(4))
        self.set_shared(num_slopes=p, den_slopes=q, num_intercepts=c, den_intercepts=d)

    def scale_output(self, alpha: float, beta: float) -> None:
        if alpha <= 0:
            raise ValueError("tropical_rational: the output scale must be positive")
        with torch.no_grad():
            for t in (self.num_slopes, self.num_intercepts, self.den_slopes, self.den_intercepts):
                t.mul_(alpha)
            self.num_intercepts.add_(beta)


register_activation(TropicalActivation.family, TropicalActivation)
register_activation(TropicalRationalActivation.family, TropicalRationalActivation)
