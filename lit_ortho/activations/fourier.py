"""Fourier: F(x) = a_0 + sum_{k=1..n} c_k cos(w_k x - phi_k)/k!, with learnable a_0, c, phi and w.

Two formulations of the same function and gradients, both saving only x and the coefficients:

* ``_FourierFunction`` (eager): ``torch.cos`` / ``torch.sin`` per term;
* ``_FourierCompiled`` (traced by ``torch.compile``): the arguments in half turns, (w x - phi) / pi, one
  exact range reduction to [-1/2, 1/2] and two short polynomials give sin and cos together (float32: max
  abs error 1.9e-7, about one rounding, for |w x - phi| < 1.3e7; the argument itself carries a few
  roundings of w x, as eager's ``w * x - phi`` does), with no select or branch; float64 inputs keep
  ``torch.sin``/``torch.cos``. Products of coefficients are computed once a call, not per element. The
  polynomials use inductor's fused multiply-add, and the backward computes dx inside the loop of the 3K+1 coefficient
  sums rather than in a second loop that would recompute every sine. With shared coefficients the
  sums go row by row, which spares inductor its per-vector cascade-summation bookkeeping.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from lit_ortho.activations.base import LearnableActivation
from lit_ortho.activations.elementwise import (
    as_rows, columns, compute_dtype, fma, inverse_factorials, reduce_channels, row_length, tie_to_rows, zero_reading,
)
from lit_ortho.activations.family import Family, Launchers, register_family
from lit_ortho.activations.kernels import cpu
from lit_ortho.activations.init import lbfgs_fit
from lit_ortho.activations.spec import register_activation

__all__ = ["FourierActivation", "FOURIER_C", "fourier", "fourier_compiled", "sincos_pi", "cos_pi"]

FOURIER_C = 1.0 / math.sqrt(1.0 + sum(1.0 / math.factorial(k) ** 2 for k in range(1, 40)))  # 1/sqrt(I0(2))


# ---- eager ---------------------------------------------------------------------------------------
class _FourierFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, amplitudes, phases, frequencies, channel_dim: int):
        ctx.save_for_backward(x, bias, amplitudes, phases, frequencies)
        ctx.channel_dim = channel_dim
        dtype = compute_dtype(x)
        xf = x.to(dtype)
        c, phi, w = (columns(t.to(dtype), xf, channel_dim) for t in (amplitudes, phases, frequencies))
        y = torch.zeros_like(xf) + columns(bias.to(dtype), xf, channel_dim)[0]
        for k, inv_fact in enumerate(inverse_factorials(amplitudes.shape[-1])[1:]):
            y = y + (c[k] * inv_fact) * torch.cos(w[k] * xf - phi[k])
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, bias, amplitudes, phases, frequencies = ctx.saved_tensors
        dtype = compute_dtype(x)
        xf, g = x.to(dtype), grad_out.to(dtype)
        cd, per_channel = ctx.channel_dim, bias.dim() == 2
        c, phi, w = (columns(t.to(dtype), xf, cd) for t in (amplitudes, phases, frequencies))
        dydx = torch.zeros_like(xf)
        grad_c, grad_phi, grad_w = [], [], []
        gx = g * xf
        for k, inv_fact in enumerate(inverse_factorials(amplitudes.shape[-1])[1:]):
            z = w[k] * xf - phi[k]
            cos_z, sin_z = torch.cos(z), torch.sin(z)
            ck = c[k] * inv_fact
            dydx = dydx - (ck * w[k]) * sin_z
            grad_c.append(reduce_channels(g * cos_z, per_channel, cd) * inv_fact)
            # dF/dphi = ck sin z,  dF/dw = -ck x sin z: reduce first, scale by the coefficient after.
            s_g = reduce_channels(g * sin_z, per_channel, cd)
            s_gx = reduce_channels(gx * sin_z, per_channel, cd)
            grad_phi.append(s_g * amplitudes[..., k].to(dtype) * inv_fact)
            grad_w.append(-s_gx * amplitudes[..., k].to(dtype) * inv_fact)
        grad_x = (g * dydx).to(x.dtype)
        grad_bias = reduce_channels(g, per_channel, cd).reshape(bias.shape).to(bias.dtype)
        return (
            grad_x,
            grad_bias,
            torch.stack(grad_c, dim=-1).to(amplitudes.dtype),
            torch.stack(grad_phi, dim=-1).to(phases.dtype),
            torch.stack(grad_w, dim=-1).to(frequencies.dtype),
            None,
        )


# ---- compiled: sine and cosine by polynomials, one pass each way ------------------------------------
# The compiled twin takes the arguments in half turns, u = z / pi = (w / pi) x - phi / pi (the coefficients
# scaled once a call, :func:`_half_turns`): then u - round(u) is exact for every float32 |u| < 2**22, with no
# multiple of pi to subtract, one operation fewer per sine-cosine than reducing z itself. Near-minimax polynomials on
# [-1/2, 1/2] in t = f^2 (fitted for r = pi f in [-pi/2, pi/2], the coefficients scaled by powers of pi):
# sin(pi f) = f * S(t) of degree 4 in t, cos(pi f) = C(t) of degree 4 with C(0) = 1. Max abs error in float32:
# 1.4e-7 and 1.6e-7; a degree-5 cosine (1.1e-7) costs one more multiply-add per term and element, a degree-3
# sine 7e-7.
SIN_COEFFS = tuple(c * math.pi ** (2 * i + 1) for i, c in enumerate(
    (1.0, -0.16666658222675323, 0.008333050645887852, -0.00019809075456578285, 2.6052248358610086e-06)))
COS_COEFFS = tuple(c * math.pi ** (2 * i) for i, c in enumerate(
    (1.0, -0.4999993229097445, 0.04166398940579426, -0.0013855926841146232, 2.3194379095954503e-05)))


# The C++ backward, which needs the sine and the cosine of every term, takes its arguments in quarter turns,
# v = 2 z / pi = j + f with f in [-1/2, 1/2]: sin(pi f / 2) = f * S(t) with S of degree 2 in t = f^2 and
# cos(pi f / 2) = C(t) of degree 3 (minimax on [-1/2, 1/2]; max abs error in float32 6.2e-7 and 1e-7), then j mod 4
# swaps and negates them. Three multiply-adds fewer per term and element than in half turns, for a few bitwise
# operations and selects: where the walk is in memory order its time is the multiply-adds' (Fourier-5's backward at
# 6.3 M elements 2.8 -> 2.6 ms; per channel on NHWC's dim 1 20 -> 17.6 ms). The sine's degree-3 S (error 9e-8) cost
# one multiply-add more per term and element: the backward 3.07 -> 2.89 ms per channel at 4096 x 1536, the compiled
# step 1.53x -> 1.41x GELU's at 12288 x 3072 (two builds alternated in one process). Its 6.2e-7 stays inside the
# tolerance of the kernels' tests against float64 autograd, and below what a float32 sum of a few thousand gradient
# terms gathers anyway. The forward needs only the cosine, which is cheaper in half turns, and keeps F to 1.4e-7.
QUARTER_SIN_COEFFS = (1.5707885026931763, -0.6457120776176453, 0.07766738533973694)
QUARTER_COS_COEFFS = (0.9999999724571629, -1.2336970173307966, 0.2535986836794396, -0.020408475324401536)


# Adding 1.5 * 2**23 to a float32 of magnitude below 2**22 rounds it to an integer, held in the sum's low
# mantissa bits: the sum's lowest bit is then the integer's parity.
_ROUNDER = 12582912.0


def _reduce_half_turns(u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """u = j + f with j an integer and f in [-1/2, 1/2]: (f, f^2, the sign bit of (-1)^j as an int32), no branch
    or select. j = round(u) by the rounding constant (no floor); f = u - j is exact; (-1)^j is j's parity moved
    to the sign bit, to be xor-ed into a result (:func:`_with_sign`)."""
    k = u + _ROUNDER
    f = u - (k - _ROUNDER)
    return f, f * f, k.view(torch.int32) << 31


def _with_sign(t: Tensor, sign_bit: Tensor) -> Tensor:
    return (t.view(torch.int32) ^ sign_bit).view(t.dtype)


def _horner(t: Tensor, coeffs) -> Tensor:
    acc = fma(t, coeffs[-1], coeffs[-2])
    for c in reversed(coeffs[:-2]):
        acc = fma(acc, t, c)
    return acc


def sincos_pi(u: Tensor) -> tuple[Tensor, Tensor]:
    """(sin(pi u), cos(pi u)) from one shared reduction and two short polynomials (float32: max abs error
    about 1.9e-7 for |u| < 2**22, where the rounding constant holds round(u) exactly); float64 inputs use
    torch.sin / torch.cos of pi u."""
    if u.dtype == torch.float64:
        return torch.sin(u * math.pi), torch.cos(u * math.pi)
    f, t, sign_bit = _reduce_half_turns(u)
    return _with_sign(f, sign_bit) * _horner(t, SIN_COEFFS), _with_sign(_horner(t, COS_COEFFS), sign_bit)


def cos_pi(u: Tensor) -> Tensor:
    """cos(pi u), as :func:`sincos_pi`."""
    if u.dtype == torch.float64:
        return torch.cos(u * math.pi)
    _, t, sign_bit = _reduce_half_turns(u)
    return _with_sign(_horner(t, COS_COEFFS), sign_bit)


def _half_turns(frequencies: Tensor, phases: Tensor) -> tuple[Tensor, Tensor]:
    """(w / pi, -phi / pi): u = (w / pi) x - phi / pi is the argument w x - phi in half turns (a multiply
    by 1/pi, not a division: a division costs ~10 multiplies wherever inductor puts it)."""
    return frequencies * (1 / math.pi), phases * (-1 / math.pi)


def _term_columns(x: Tensor, channel_dim: int, *per_term: Tensor) -> list[list[Tensor]]:
    """Each ``[K]`` (or ``[C, K]``) per-term coefficient tensor as K columns, all computed once a call into one
    materialised buffer (:func:`columns`): inductor would otherwise recompute every product of coefficients,
    and the scalings by 1/pi and 1/k!, for each vector of x."""
    K = per_term[0].shape[-1]
    flat = columns(torch.cat(per_term, dim=-1), x, channel_dim, contiguous=True, materialise=True)
    return [flat[i * K : (i + 1) * K] for i in range(len(per_term))]


class _FourierCompiled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, amplitudes, phases, frequencies, channel_dim: int):
        ctx.save_for_backward(x, bias, amplitudes, phases, frequencies)
        ctx.channel_dim = channel_dim
        dtype = compute_dtype(x)
        xf = x.to(dtype)
        inv_facts = amplitudes.new_tensor(inverse_factorials(amplitudes.shape[-1])[1:], dtype=dtype)
        w, phi, weight = _term_columns(xf, channel_dim, *_half_turns(frequencies.to(dtype), phases.to(dtype)),
                                       amplitudes.to(dtype) * inv_facts)
        y = torch.zeros_like(xf) + columns(bias.to(dtype), xf, channel_dim, contiguous=True)[0]
        for k in range(len(w)):  # argument in half turns: u_k = (w_k / pi) x - phi_k / pi
            y = fma(weight[k], cos_pi(fma(w[k], xf, phi[k])), y)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, bias, amplitudes, phases, frequencies = ctx.saved_tensors
        dtype = compute_dtype(x)
        cd, per_channel = ctx.channel_dim, bias.dim() == 2
        rows = row_length(x, per_channel)
        xf, g = as_rows(x.to(dtype), rows), as_rows(grad_out.to(dtype), rows)
        inv_facts = inverse_factorials(amplitudes.shape[-1])[1:]
        a, w = amplitudes.to(dtype) * amplitudes.new_tensor(inv_facts, dtype=dtype), frequencies.to(dtype)
        w_pi, phi_pi, slope = _term_columns(xf, cd, *_half_turns(w, phases.to(dtype)), -a * w)
        trig = [sincos_pi(fma(w_pi[k], xf, phi_pi[k])) for k in range(len(inv_facts))]  # (sin z_k, cos z_k)
        dydx = torch.zeros_like(xf)
        for k in range(len(inv_facts)):  # dF/dx = -sum_k (c_k / k!) w_k sin z_k
            dydx = fma(slope[k], trig[k][0], dydx)
        grad_x = tie_to_rows(g * dydx, xf, rows)
        total = lambda t: reduce_channels(t, per_channel, cd, rows)  # noqa: E731
        # One pass over the elements for dx and all 3K+1 sums. Inductor schedules the sums first and
        # fuses a pointwise node only into a later reduction, so dx would get a second pass that
        # recomputes every sine; a sum that reads dx fuses dx's loop into its own instead.
        grad_bias = total(g + zero_reading(grad_x))
        gx = g * xf
        grad_c, grad_phi, grad_w = [], [], []
        for k, ((sin_z, cos_z), inv_fact) in enumerate(zip(trig, inv_facts)):
            weight = a[..., k]  # c_k / k!
            grad_c.append(total(g * cos_z) * inv_fact)
            grad_phi.append(total(g * sin_z) * weight)
            grad_w.append(-total(gx * sin_z) * weight)
        stack = lambda t, ref: torch.stack(t, dim=-1).to(ref.dtype)  # noqa: E731
        return (grad_x.reshape(x.shape).to(x.dtype), grad_bias.reshape(bias.shape).to(bias.dtype), stack(grad_c, amplitudes),
                stack(grad_phi, phases), stack(grad_w, frequencies), None)


def fourier(x, bias, amplitudes, phases, frequencies, channel_dim=-1):
    return _FourierFunction.apply(x, bias, amplitudes, phases, frequencies, channel_dim)


def fourier_compiled(x, bias, amplitudes, phases, frequencies, channel_dim=-1):
    return _FourierCompiled.apply(x, bias, amplitudes, phases, frequencies, channel_dim)


@functools.lru_cache(maxsize=None)
def _cpu_scales(K: int, backward: bool) -> Tensor:
    """What the C++ rows multiply the values by: bias 1; w and phi 1/pi and -1/pi (the forward's half turns) or 2/pi and
    -2/pi (the backward's quarter turns); c_k 1/k!; and -1/k! for the backward's -(c_k / k!) w_k (then times w)."""
    inv_facts, turns = inverse_factorials(K)[1:], (2 if backward else 1) / math.pi
    return torch.tensor([1.0] + [turns] * K + [-turns] * K + inv_facts + ([-f for f in inv_facts] if backward else []),
                        dtype=torch.float32)


def _cpu_values(bias, amplitudes, phases, frequencies) -> list[Tensor]:
    """The values in the order the C++ reads them (bias, w, phi, c), as float32 (referenced through the call)."""
    return [cpu.as_float32(v) for v in (bias, frequencies, phases, amplitudes)]


_CPU_FORWARD_CONSTS, _CPU_BACKWARD_CONSTS = SIN_COEFFS + COS_COEFFS, QUARTER_SIN_COEFFS + QUARTER_COS_COEFFS


def _cpu_forward(x, bias, amplitudes, phases, frequencies, channel_dim):
    """One C++ call (the .cpp's ``fourier_forward_values``): it makes its coefficient rows from the values, bias, w and
    -phi in half turns and c_k / k! (the values times :func:`_cpu_scales`), then walks x."""
    K = amplitudes.shape[-1]
    return cpu.forward_pass("fourier_forward_values", K, x, bias.dim() == 2, channel_dim, _CPU_FORWARD_CONSTS,
                            *_cpu_values(bias, amplitudes, phases, frequencies), _cpu_scales(K, False))


def _cpu_backward(grad, x, bias, amplitudes, phases, frequencies, channel_dim, need_x, need_values):
    """One C++ call (``fourier_backward_values``): the rows in quarter turns, with -(c_k / k!) w_k for dF/dx =
    -sum_k (c_k / k!) w_k sin z_k; the pass, whose sums are g, then per term g cos z, g sin z and g x sin z; and from them
    the values' gradients g; g cos z / k!; g sin z c_k / k!; -g x sin z c_k / k!."""
    K = amplitudes.shape[-1]
    values = (bias, amplitudes, phases, frequencies)
    grads = [torch.empty(v.shape, dtype=torch.float32) for v in values]
    dx = cpu.backward_pass("fourier_backward_values", K, grad, x, bias.dim() == 2, channel_dim, need_x,
                           _CPU_BACKWARD_CONSTS, *grads, *_cpu_values(*values), _cpu_scales(K, True))
    return (dx, *(cpu.cast(g, v.dtype) for g, v in zip(grads, values)))


def _fit_fourier(module, x, y, dy, weight) -> dict[str, Tensor]:
    """Linear least squares over (a0, cos, sin) at frequencies k*w0 for a few w0, then L-BFGS on all."""
    n = module.degree
    k = torch.arange(1, n + 1, dtype=torch.float64)
    fact = torch.tensor([math.factorial(int(i)) for i in k], dtype=torch.float64)
    best = None
    for w0 in torch.linspace(0.1, 1.5, 15, dtype=torch.float64):
        w = k * w0
        z = x[:, None] * w
        A = torch.cat([torch.ones_like(x)[:, None], torch.cos(z), torch.sin(z)], dim=1)
        dA = torch.cat([torch.zeros_like(x)[:, None], -w * torch.sin(z), w * torch.cos(z)], dim=1)
        rw = torch.cat([weight, weight]).sqrt()
        M, b = torch.cat([A, dA]) * rw[:, None], torch.cat([y, dy]) * rw
        sol = torch.linalg.lstsq(M, b[:, None], driver="gelsd").solution[:, 0]
        residual = float(((M @ sol - b) ** 2).mean())
        if best is None or residual < best[0]:
            best = (residual, w, sol)
    _, w, sol = best
    a, b = sol[1 : n + 1], sol[n + 1 :]
    # a cos(wx) + b sin(wx) = R cos(wx - phi) with R = hypot(a, b), phi = atan2(b, a); c_k = R k!.
    start = {
        "bias": sol[:1],
        "amplitudes": torch.hypot(a, b) * fact,
        "phases": torch.atan2(b, a),
        "frequencies": w,
    }
    return lbfgs_fit(module, x, y, dy, weight, start, trainable=("bias", "amplitudes", "phases", "frequencies"))


FOURIER = register_family(Family(
    name="fourier",
    value_names=("bias", "amplitudes", "phases", "frequencies"),
    learnable=("bias", "amplitudes", "phases", "frequencies"),
    eager=fourier,
    compiled=fourier_compiled,
    triton="lit_ortho.activations.kernels.triton_fourier",
    # the C++ kernels on every layout they take: faster than the twin on each when chosen (compiled fwd+bwd, then:
    # 1.41-1.54x GELU shared, the twin 1.50-1.66x; 1.73-1.79x per channel on dim 1, the twin 1.90-2.32x). Today's
    # ratios: benchmarks/RESULTS.md
    cpu=Launchers(_cpu_forward, _cpu_backward, layouts=cpu.LAYOUTS),
    fit=_fit_fourier,
))


class FourierActivation(LearnableActivation):
    """F(x) = a_0 + sum_{k=1..n} c_k cos(w_k x - phi_k)/k!, with learnable a_0, c, phi and w."""

    family = "fourier"

    def _create_parameters(self) -> None:
        n = self.degree
        self.bias = self._coef(1)
        self.amplitudes = self._coef(n)
        self.phases = self._coef(n)
        self.frequencies = self._coef(n)

    def _init_paper(self) -> None:
        # cos(kx - pi/4) carries half the energy of the sin-cos pair the theory assumes: amplitude c*sqrt(2).
        self._init_phase_form(amplitude=FOURIER_C * math.sqrt(2.0))

    def _init_torchortho(self) -> None:
        self._init_phase_form(amplitude=FOURIER_C)

    def _init_phase_form(self, amplitude: float) -> None:
        n = self.degree
        self.set_shared(
            bias=[FOURIER_C * math.sqrt(1.0 - 1.0 / math.factorial(n) ** 2)],
            amplitudes=torch.full((n,), amplitude),
            phases=torch.full((n,), math.pi / 4),
            frequencies=torch.arange(1, n + 1, dtype=torch.float32),
        )

    def scale_output(self, alpha: float, beta: float) -> None:
        with torch.no_grad():
            self.amplitudes.mul_(alpha)
            self.bias.mul_(alpha).add_(beta)


register_activation(FourierActivation.family, FourierActivation)
