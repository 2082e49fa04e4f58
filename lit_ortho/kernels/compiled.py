"""The eager math written for ``torch.compile`` (inductor), used when the eager backend is traced.

Same functions and gradients as the autograd Functions in :mod:`lit_ortho.activations`, saving the
same tensors (x and the coefficients), but shaped so that inductor makes one pass over the elements
in each direction and nothing breaks the graph:

* tropical families: the coefficient gradients are K masked sums, not ``bincount`` (whose output
  shape depends on data: a graph break), and the argmax is tracked with ``where``;
* Fourier: one range reduction to [-pi/2, pi/2] and two short polynomials give sin and cos
  together (float32: max abs error 1.5e-7, about one rounding), with no select or branch, instead
  of a full ``cos`` and ``sin`` call per term; float64 inputs keep ``torch.sin``/``torch.cos``.
  The polynomials use inductor's fused multiply-add, and the backward computes dx inside the loop
  of the 3K+1 coefficient sums rather than in a second loop that would recompute every sine. With
  shared coefficients the sums go row by row, which spares inductor its per-vector
  cascade-summation bookkeeping;
* per-channel ``[C, K]`` coefficients reach the loop as contiguous ``[C]`` columns, so it stays
  vectorised.

``tests/test_kernels.py`` checks the loop counts and the vectorisation in the generated C++.
Hermite's eager Function already traces into fused loops and is used as is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_ortho.kernels.common import channel_view, compute_dtype, inverse_factorials, reduce_channels

__all__ = ["FUNCTIONS", "sincos", "cos"]

_INV_PI = 1.0 / math.pi
# pi in three parts (8, 11 and 24 significant bits): j * part is exact for |j| < 2**13.
PI_PARTS = (3.140625, 9.67502593994140625e-4, 1.509957990978376432e-7)
# Near-minimax polynomials on [-pi/2, pi/2] in t = r^2 (fitted here; max abs error 1.5e-7 in float32):
# sin r = r * S(t), cos r = C(t).
SIN_COEFFS = (1.0, -0.16666658222675323, 0.008333050645887852, -0.00019809075456578285, 2.6052248358610086e-06)
COS_COEFFS = (1.0, -0.5, 0.04166663810610771, -0.0013888361863791943, 2.476016197761055e-05, -2.605149518331018e-07)


def fma(a, b, c):
    """a * b + c. Inductor lowers this prim to a vector fused multiply-add; written as ``a * b + c``
    its C++ backend keeps a multiply and an add (it compiles with -ffp-contract=off): the sine and
    cosine polynomials below are chains of these, so this halves their instruction count."""
    from torch._inductor import inductor_prims  # registers the prim; imported here, not with lit_ortho (2 s)

    return inductor_prims.fma(a, b, c)


def _reduce_pi(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """z = j pi + r with r in [-pi/2, pi/2]: (r, r^2, (-1)^j), all without branches or selects."""
    j = torch.floor(fma(z, _INV_PI, 0.5))
    r = fma(j, -PI_PARTS[2], fma(j, -PI_PARTS[1], fma(j, -PI_PARTS[0], z)))
    half = j * 0.5
    sign = fma(half - torch.floor(half), -4.0, 1.0)  # frac(j / 2) is 0 or 1/2
    return r, r * r, sign


def _horner(t: Tensor, coeffs) -> Tensor:
    acc = fma(t, coeffs[-1], coeffs[-2])
    for c in reversed(coeffs[:-2]):
        acc = fma(acc, t, c)
    return acc


def sincos(z: Tensor) -> tuple[Tensor, Tensor]:
    """(sin z, cos z) from one shared range reduction and two short polynomials (float32);
    float64 inputs use torch.sin / torch.cos."""
    if z.dtype == torch.float64:
        return torch.sin(z), torch.cos(z)
    r, t, sign = _reduce_pi(z)
    return (sign * r) * _horner(t, SIN_COEFFS), sign * _horner(t, COS_COEFFS)


def cos(z: Tensor) -> Tensor:
    if z.dtype == torch.float64:
        return torch.cos(z)
    _, t, sign = _reduce_pi(z)
    return sign * _horner(t, COS_COEFFS)


@torch.library.custom_op("lit_ortho::coefficient_columns", mutates_args=())
def coefficient_columns(coef: Tensor) -> Tensor:
    """``[C, K]`` per-channel coefficients as a materialised ``[K, C]`` tensor. A custom op because
    inductor inlines a transpose or ``.contiguous()`` into its consumer: the vector loop would then
    read each column with stride K, and inductor falls back to a scalar loop for such loads."""
    return coef.t().clone(memory_format=torch.contiguous_format)


@coefficient_columns.register_fake
def _(coef: Tensor) -> Tensor:
    return coef.new_empty((coef.shape[1], coef.shape[0]))


def columns(coef: Tensor, x: Tensor, channel_dim: int) -> list[Tensor]:
    """The K columns of a ``[K]`` or ``[C, K]`` coefficient tensor, each contiguous and shaped to
    broadcast against ``x``."""
    rows = coefficient_columns(coef) if coef.dim() == 2 else coef
    return [channel_view(rows[k], x, channel_dim) for k in range(coef.shape[-1])]


def zero_reading(t: Tensor) -> Tensor:
    """Exact zeros shaped like ``t``, NaN and inf included (``fmin(t * 0, 0)``: fmin drops the NaN),
    that inductor still sees as a read of ``t``: a way to steer its loop fusion without changing any
    value."""
    return torch.fmin(t * 0.0, torch.zeros((), dtype=t.dtype, device=t.device))


# Inductor sums more than this many float32 elements with a cascade-summation helper that it updates
# in memory for every vector: about 10 % of Fourier-5's time for its 16 sums. Rows up to this length
# are summed with plain vector adds, and the row sums then by the helper (few elements).
ROW_SUM_LIMIT = 4096


def sums_by_rows(x: Tensor, per_channel: bool) -> bool:
    """Whether the shared-coefficient sums over ``x`` go row by row (the last dim) and then over rows."""
    return not per_channel and x.dim() >= 2 and 1 < x.shape[-1] <= ROW_SUM_LIMIT


class _FourierCompiled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, amplitudes, phases, frequencies, channel_dim: int):
        ctx.save_for_backward(x, bias, amplitudes, phases, frequencies)
        ctx.channel_dim = channel_dim
        dtype = compute_dtype(x)
        xf = x.to(dtype)
        c, phi, w = (columns(t.to(dtype), xf, channel_dim) for t in (amplitudes, phases, frequencies))
        y = torch.zeros_like(xf) + columns(bias.to(dtype), xf, channel_dim)[0]
        for k, inv_fact in enumerate(inverse_factorials(amplitudes.shape[-1])[1:]):
            y = fma(c[k] * inv_fact, cos(fma(w[k], xf, -phi[k])), y)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, bias, amplitudes, phases, frequencies = ctx.saved_tensors
        dtype = compute_dtype(x)
        cd, per_channel = ctx.channel_dim, bias.dim() == 2
        xf, g = x.to(dtype), grad_out.to(dtype)
        c, phi, w = (columns(t.to(dtype), xf, cd) for t in (amplitudes, phases, frequencies))
        inv_facts = inverse_factorials(amplitudes.shape[-1])[1:]
        trig = [sincos(fma(w[k], xf, -phi[k])) for k in range(len(inv_facts))]  # (sin z_k, cos z_k)
        dydx = torch.zeros_like(xf)
        for k, inv_fact in enumerate(inv_facts):
            dydx = fma(c[k] * (-inv_fact) * w[k], trig[k][0], dydx)
        grad_x = g * dydx
        if sums_by_rows(xf, per_channel):
            # the row sums are 2-D loops (rows x last dim): dx must read a per-row value, or inductor
            # flattens its loop to 1-D and cannot fuse it with them
            grad_x = grad_x + zero_reading(xf[..., :1])
            total = lambda t: t.sum(-1).sum()  # noqa: E731
        else:
            total = lambda t: reduce_channels(t, per_channel, cd)  # noqa: E731
        # One pass over the elements for dx and all 3K+1 sums. Inductor schedules the sums first and
        # fuses a pointwise node only into a later reduction, so dx would get a second pass that
        # recomputes every sine; a sum that reads dx fuses dx's loop into its own instead.
        grad_bias = total(g + zero_reading(grad_x))
        gx = g * xf
        grad_c, grad_phi, grad_w = [], [], []
        for k, ((sin_z, cos_z), inv_fact) in enumerate(zip(trig, inv_facts)):
            weight = amplitudes[..., k].to(dtype) * inv_fact
            grad_c.append(total(g * cos_z) * inv_fact)
            grad_phi.append(total(g * sin_z) * weight)
            grad_w.append(-total(gx * sin_z) * weight)
        stack = lambda t, ref: torch.stack(t, dim=-1).to(ref.dtype)  # noqa: E731
        return (grad_x.to(x.dtype), grad_bias.reshape(bias.shape).to(bias.dtype), stack(grad_c, amplitudes),
                stack(grad_phi, phases), stack(grad_w, frequencies), None)


def _max_plus(x: Tensor, slopes, intercepts, K: int, channel_dim: int):
    """(max_k (s_k x + c_k), argmax as a float, slope of the argmax); the first maximum wins ties.
    ``slopes`` is None for the fixed slopes 0..K-1."""
    c = columns(intercepts, x, channel_dim)
    s = [float(k) for k in range(K)] if slopes is None else columns(slopes, x, channel_dim)
    best = s[0] * x + c[0]
    arg = torch.zeros_like(x)
    win_slope = torch.zeros_like(x) + s[0]
    for k in range(1, K):
        cand = s[k] * x + c[k]
        win = cand > best
        arg = torch.where(win, float(k), arg)
        win_slope = torch.where(win, s[k], win_slope)
        best = torch.maximum(best, cand)
    return best, arg, win_slope


def _masked_sums(weights: Tensor, arg: Tensor, K: int, per_channel: bool, channel_dim: int) -> Tensor:
    """[K] (or [C, K]) sums of ``weights`` over the elements whose argmax is k: fused by inductor."""
    zero = torch.zeros((), dtype=weights.dtype, device=weights.device)
    sums = [reduce_channels(torch.where(arg == float(k), weights, zero), per_channel, channel_dim) for k in range(K)]
    return torch.stack(sums, dim=-1)


class _TropicalCompiled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, intercepts, scale, channel_dim: int):
        ctx.save_for_backward(x, intercepts, scale)
        ctx.channel_dim = channel_dim
        dtype = compute_dtype(x)
        xf = x.to(dtype)
        best, _, _ = _max_plus(xf, None, intercepts.to(dtype), intercepts.shape[-1], channel_dim)
        return (best * scale.to(dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, intercepts, scale = ctx.saved_tensors
        dtype, cd = compute_dtype(x), ctx.channel_dim
        xf, g = x.to(dtype), grad_out.to(dtype) * scale.to(dtype)
        K = intercepts.shape[-1]
        _, arg, _ = _max_plus(xf, None, intercepts.to(dtype), K, cd)
        grad_x = (g * arg).to(x.dtype)
        grad_c = _masked_sums(g, arg, K, intercepts.dim() == 2, cd)
        return grad_x, grad_c.to(intercepts.dtype), None, None


class _TropicalRationalCompiled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim: int):
        ctx.save_for_backward(x, num_slopes, num_intercepts, den_slopes, den_intercepts)
        ctx.channel_dim = channel_dim
        dtype = compute_dtype(x)
        xf = x.to(dtype)
        K = num_slopes.shape[-1]
        num, _, _ = _max_plus(xf, num_slopes.to(dtype), num_intercepts.to(dtype), K, channel_dim)
        den, _, _ = _max_plus(xf, den_slopes.to(dtype), den_intercepts.to(dtype), K, channel_dim)
        return (num - den).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, p, c, q, d = ctx.saved_tensors
        dtype, cd = compute_dtype(x), ctx.channel_dim
        xf, g = x.to(dtype), grad_out.to(dtype)
        K, per_channel = p.shape[-1], p.dim() == 2
        _, arg_n, slope_n = _max_plus(xf, p.to(dtype), c.to(dtype), K, cd)
        _, arg_d, slope_d = _max_plus(xf, q.to(dtype), d.to(dtype), K, cd)
        gx = g * xf
        grad_x = (g * (slope_n - slope_d)).to(x.dtype)
        return (
            grad_x,
            _masked_sums(gx, arg_n, K, per_channel, cd).to(p.dtype),
            _masked_sums(g, arg_n, K, per_channel, cd).to(c.dtype),
            (-_masked_sums(gx, arg_d, K, per_channel, cd)).to(q.dtype),
            (-_masked_sums(g, arg_d, K, per_channel, cd)).to(d.dtype),
            None,
        )


def fourier(x, bias, amplitudes, phases, frequencies, channel_dim=-1):
    return _FourierCompiled.apply(x, bias, amplitudes, phases, frequencies, channel_dim)


def tropical(x, intercepts, scale, channel_dim=-1):
    return _TropicalCompiled.apply(x, intercepts, scale, channel_dim)


def tropical_rational(x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim=-1):
    return _TropicalRationalCompiled.apply(x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim)


# Families whose traced eager path is replaced; Hermite's eager Function compiles well as it is.
FUNCTIONS = {"fourier": fourier, "tropical": tropical, "tropical_rational": tropical_rational}
