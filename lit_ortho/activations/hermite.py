"""Hermite: F(x) = sum_{k=0..n} a_k He_k(x)/k!, the paper's polynomial activation.

He_k are the probabilists' Hermite polynomials; with P_k = He_k/k!, P_{k+1} = (x P_k - P_{k-1})/(k+1)
and P_k' = P_{k-1}, so dF/dx = sum_{k>=1} a_k P_{k-1}. F and dF/dx are evaluated by Clenshaw's
recurrence (never by powers of x), which is exact wherever float32 holds the value and gives the
correctly signed infinity where it does not; the coefficient gradients sum g P_k over the upward
recurrence. The eager autograd Function traces into fused loops under ``torch.compile`` as it is,
so it is also the compiled path.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from lit_ortho.activations.base import LearnableActivation
from lit_ortho.activations.elementwise import channel_reading, columns, compute_dtype, dot, reduce_channels
from lit_ortho.activations.family import Family, Launchers, register_family
from lit_ortho.activations.kernels import cpu
from lit_ortho.activations.spec import register_activation

__all__ = ["HermiteActivation", "hermite_basis", "clenshaw", "hermite_forward", "hermite"]


def hermite_basis(x: Tensor, n: int):
    """Yield P_2(x) .. P_n(x), P_k = He_k/k!, by P_{k+1} = (x P_k - P_{k-1}) / (k + 1), two held at a time.

    The normalised polynomials grow like |x|^k / k!, far slower than He_k. Where one overflows anyway
    it saturates at the dtype's largest finite value with its true sign, so the next step cannot
    compute inf - inf (NaN): the gradient sums then come out as large or infinite, never NaN.
    """
    big = torch.finfo(x.dtype).max
    p_prev, p = None, x  # P_0 = 1 stays implicit
    for k in range(1, n):
        if p_prev is None:  # P_2 = (x^2 - 1)/2: one pass
            p_next = torch.addcmul(torch.full((), -0.5, dtype=x.dtype, device=x.device), x, p, value=0.5)
        else:  # P_{k+1} = -(P_{k-1} - x P_k)/(k+1): two passes
            p_next = torch.addcmul(p_prev, x, p, value=-1.0).mul_(-1.0 / (k + 1))
        p_next.clamp_(-big, big)
        yield p_next
        p_prev, p = p, p_next


# Compiled, 4096x1536 float32 on 2 cores: Hermite-3 4.4 ms saturating against 7.3 ms with the exact branch,
# Hermite-5 8.9 against 8.2, Hermite-6 11.6 against 10.7 (benchmarks/RESULTS.md).
SATURATE_MAX_DEGREE = 4


def clenshaw(x: Tensor, a: list[Tensor], saturate: Optional[bool] = None) -> Tensor:
    """sum_k a_k P_k(x) by Clenshaw's backward recurrence, b_k = a_k + x b_{k+1}/(k+1) - b_{k+2}/(k+2).

    The b_k stay below the size of the result, so the sum is exact to a few roundings wherever
    float32 can hold the value, at any degree and any |x|. Where it cannot, an intermediate b_k
    overflows too, and inf arithmetic loses its sign or gives NaN (inf - inf). Two ways to give those
    elements the infinity of the value's true sign:

    * ``saturate=False``: :func:`_overflow_infinity`'s exact sign, in eager code for the elements one
      reduction finds overflowed, and while ``torch.compile`` traces (degree > ``SATURATE_MAX_DEGREE``) for
      every element through a select;
    * ``saturate=True`` (the default while ``torch.compile`` traces degrees up to ``SATURATE_MAX_DEGREE``:
      a graph cannot pick elements out, and inductor would compute the exact branch for every element, which
      doubles compiled Hermite-3's cost; from degree 5 on the two clamps per step cost more than the branch):
      each b_k is clamped to the largest finite value with its sign, as :func:`hermite_basis` does, so no
      step computes inf - inf; a saturated result becomes the infinity of its sign. The b_k are exact until
      one saturates, and from there the dominant term carries the sign: it equals the exact branch
      bitwise on the exact-arithmetic test of degrees 1-32 and on random huge inputs (tests).

    ``a`` holds the coefficients as tensors broadcastable against ``x``.
    """
    n = len(a) - 1
    if n == 0:
        return torch.zeros_like(x) + a[0]
    if saturate is None:
        saturate = torch.compiler.is_compiling() and n <= SATURATE_MAX_DEGREE
    big = torch.finfo(x.dtype).max
    b1, b2 = a[n], None  # b_n (broadcast, not materialised), b_{n+1} = 0
    for k in range(n - 1, -1, -1):
        t = torch.addcmul(a[k], x, b1, value=1.0 / (k + 1))
        if b2 is not None:
            t.sub_(b2, alpha=1.0 / (k + 2))
        if saturate:
            t.clamp_(-big, big)
        b1, b2 = t, b1
    if saturate:
        return torch.where(b1.abs() >= big, b1 * math.inf, b1)
    if torch.compiler.is_compiling():  # no data-dependent shapes in a graph: the exact sign for every element
        overflowed = ~torch.isfinite(b1) & ~torch.isnan(x)  # an overflowed b_k may also carry a wrong sign
        # in x's dtype (float64 would triple the compiled cost)
        return torch.where(overflowed, _overflow_infinity(x, a, x.dtype).to(b1.dtype), b1)
    # eager: one reduction to check (a NaN or inf anywhere makes the sum non-finite; a sum of finite values that
    # overflows only costs the exact pass below), then the (rare) overflowed elements only
    if not torch.isfinite(b1.sum()):
        overflowed = ~torch.isfinite(b1) & ~torch.isnan(x)
        b1[overflowed] = _overflow_infinity(x[overflowed], [torch.broadcast_to(c, x.shape)[overflowed] for c in a]).to(b1.dtype)
    return b1


def _overflow_infinity(x: Tensor, a: list[Tensor], dtype: torch.dtype = torch.float64) -> Tensor:
    """±inf with the sign of sum_k a_k P_k(x), for inputs where that sum overflows.

    With t = 1/x, P_k(x) = x^k Q_k where Q_0 = Q_1 = 1 and Q_{k+1} = (Q_k - t^2 Q_{k-1})/(k+1) stay
    small, so F(x) = x^n S with S = sum_k a_k Q_k t^(n-k) by Horner in t (float64): sign(F) =
    sign(x)^n sign(S), exact also where the top terms nearly cancel (in float64; in float32, unless they
    cancel to float32's precision: t^(n-k) of the low terms underflows, and those terms are negligible).
    """
    n = len(a) - 1
    xd = x.to(dtype)
    t = 1.0 / xd
    t2 = t * t
    q = [torch.ones_like(xd), torch.ones_like(xd)]
    for k in range(1, n):
        q.append((q[k] - t2 * q[k - 1]) / (k + 1))
    s = a[0].to(dtype) * q[0]
    for k in range(1, n + 1):  # Horner from a_0, which carries t^n
        s = s * t + a[k].to(dtype) * q[k]
    sign = torch.sign(s) * (torch.sign(xd) if n % 2 else 1.0)
    return sign * torch.inf


def hermite_forward(x: Tensor, coefficients: Tensor, channel_dim: int = -1) -> Tensor:
    """sum_k a_k He_k(x)/k! (x and the coefficients in their compute dtype)."""
    return clenshaw(x, _columns(coefficients, x, channel_dim))


def _columns(coefficients: Tensor, x: Tensor, channel_dim: int) -> list[Tensor]:
    """The coefficient columns: strided views in eager code, contiguous ``[C]`` vectors while ``torch.compile``
    traces (a strided per-channel column makes inductor's loop scalar: 7x GELU instead of ~1.2x)."""
    return columns(coefficients, x, channel_dim, contiguous=torch.compiler.is_compiling())


class _HermiteFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coefficients: Tensor, channel_dim: int) -> Tensor:
        ctx.save_for_backward(x, coefficients)
        ctx.channel_dim = channel_dim
        dtype = compute_dtype(x)
        return hermite_forward(x.to(dtype), coefficients.to(dtype), channel_dim).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, coefficients = ctx.saved_tensors
        dtype = compute_dtype(x)
        xf, g = x.to(dtype), grad_out.to(dtype)
        cd, per_channel = ctx.channel_dim, coefficients.dim() == 2
        n = coefficients.shape[-1] - 1
        grad_x = grad_a = None
        if ctx.needs_input_grad[0]:  # dF/dx = sum_{k>=1} a_k P_{k-1}: Clenshaw on the shifted coefficients
            grad_x = (g * clenshaw(xf, _columns(coefficients.to(dtype)[..., 1:], xf, cd))).to(x.dtype)
        if ctx.needs_input_grad[1]:  # dF/da_k = P_k
            if per_channel and torch.compiler.is_compiling():  # the sums then share dx's pass (P_k reads no coefficient)
                g = channel_reading(g, coefficients.to(dtype), xf, cd)
            raw = [reduce_channels(g, per_channel, cd), dot(g, xf, per_channel, cd)]
            raw += [dot(g, p, per_channel, cd) for p in hermite_basis(xf, n)]
            grad_a = torch.stack(raw, dim=-1).to(coefficients.dtype)
        return grad_x, grad_a, None


def hermite(x: Tensor, coefficients: Tensor, channel_dim: int = -1) -> Tensor:
    """F(x) for explicit coefficients ``[n + 1]`` or ``[C, n + 1]`` (differentiable in both)."""
    return _HermiteFunction.apply(x, coefficients, channel_dim)


def _cpu_forward(x: Tensor, coefficients: Tensor, channel_dim: int) -> Tensor:
    per_channel = coefficients.dim() == 2
    return cpu.forward("hermite", coefficients.shape[-1], x, per_channel, channel_dim, [coefficients])


def _cpu_backward(grad: Tensor, x: Tensor, coefficients: Tensor, channel_dim: int, need_x: bool, need_values: bool):
    K, per_channel = coefficients.shape[-1], coefficients.dim() == 2
    dx, sums = cpu.backward("hermite", K, grad, x, per_channel, channel_dim, [coefficients], K, need_x)
    return dx, cpu.cast(sums, coefficients.dtype)  # sums[..., k] = sum of g P_k


def _fit_hermite(module, x, y, dy, weight) -> dict[str, Tensor]:
    """F is linear in a_k: weighted least squares on values and slopes, closed form."""
    n = module.degree
    values = torch.stack([torch.ones_like(x), x, *hermite_basis(x, n)][: n + 1], dim=1)  # [N, n+1]: P_k(x)
    slopes = torch.cat([torch.zeros_like(x)[:, None], values[:, :n]], dim=1)  # P_k' = P_{k-1}
    root_w = weight.sqrt()[:, None]
    A = torch.cat([values * root_w, slopes * root_w], dim=0)
    b = torch.cat([y, dy], dim=0) * torch.cat([root_w, root_w])[:, 0]
    coefficients = torch.linalg.lstsq(A, b[:, None], driver="gelsd").solution[:, 0]
    return {"coefficients": coefficients}


HERMITE = register_family(Family(
    name="hermite",
    value_names=("coefficients",),
    learnable=("coefficients",),
    eager=hermite,
    triton="lit_ortho.activations.kernels.triton_hermite",
    # the C++ kernels on every layout they take: faster than the twin on each when chosen (compiled fwd+bwd, then: NHWC
    # dim 1 0.71x GELU, the twin 1.42x; on shared values and short rows, once dx was streamed and the launchers made
    # few torch calls, Hermite-3 0.66-0.86x against the twin's 0.98-1.07x, Hermite-8 2.3-2.7x against 3.7-4.3x).
    # Today's ratios: benchmarks/RESULTS.md
    cpu=Launchers(_cpu_forward, _cpu_backward, layouts=cpu.LAYOUTS),
    fit=_fit_hermite,
))


class HermiteActivation(LearnableActivation):
    """F(x) = sum_{k=0..n} a_k He_k(x)/k!: the paper's polynomial activation (probabilists' Hermite)."""

    family = "hermite"

    def _create_parameters(self) -> None:
        self.coefficients = self._coef(self.degree + 1)

    def _init_paper(self) -> None:
        n = self.degree
        a = torch.full((n + 1,), math.exp(-0.5))
        a[0] = math.exp(-0.5) * math.sqrt(1.0 - 1.0 / math.factorial(n))
        self.set_shared(coefficients=a)

    def scale_output(self, alpha: float, beta: float) -> None:
        with torch.no_grad():
            self.coefficients.mul_(alpha)
            self.coefficients[..., 0] += beta


register_activation(HermiteActivation.family, HermiteActivation)
