"""Triton kernels of the Fourier family: F = b + sum_k c'_k cos(w_k x - phi_k), c'_k = c_k / k! scaled on the host."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lit_ortho.activations.kernels.triton_common import (
    acc_add,
    acc_store,
    acc_zeros,
    coef,
    contiguous_values,
    interpret,
    inverse_factorials_on_device,
    launch_backward,
    launch_forward,
    own,
    tile,
)

# sin/cos: z = j*pi + r, r in [-pi/2, pi/2], sign (-1)^j; pi in three parts (8, 11 and 24 significant
# bits, so j * part is exact for |j| < 2**13). Then MUFU sin.approx/cos.approx of r for 16-bit
# inputs on NVIDIA GPUs, else a degree-4 sine and degree-5 cosine polynomial in r^2 (max abs error 1.5e-7; the CPU
# paths in lit_ortho.activations.fourier use a degree-4 cosine, 1.6e-7).
_INV_PI = tl.constexpr(0.3183098861837907)
_PI_1 = tl.constexpr(3.140625)
_PI_2 = tl.constexpr(9.67502593994140625e-4)
_PI_3 = tl.constexpr(1.509957990978376432e-7)
_S1, _S2, _S3, _S4 = (tl.constexpr(c) for c in (-0.16666658222675323, 0.008333050645887852,
                                                 -0.00019809075456578285, 2.6052248358610086e-06))
_C2, _C3, _C4, _C5 = (tl.constexpr(c) for c in (0.04166663810610771, -0.0013888361863791943,
                                                 2.476016197761055e-05, -2.605149518331018e-07))

if hasattr(tl, "extra") and hasattr(tl.extra, "cuda"):
    from triton.language.extra.cuda import libdevice as _cuda_libdevice
else:  # pragma: no cover - non-CUDA builds of triton
    _cuda_libdevice = None

@triton.jit
def _reduce_pi(z):
    j = tl.floor(z * _INV_PI + 0.5)
    r = z - j * _PI_1
    r = r - j * _PI_2
    r = r - j * _PI_3
    sign = 1.0 - 2.0 * (j - 2.0 * tl.floor(j * 0.5))
    return r, sign


@triton.jit
def _cos_poly(t):
    return (((((_C5 * t + _C4) * t + _C3) * t + _C2) * t) - 0.5) * t + 1.0


@triton.jit
def _sin_poly(r, t):
    return ((((_S4 * t + _S3) * t + _S2) * t + _S1) * t) * r + r


@triton.jit
def _cos(z, FAST_TRIG: tl.constexpr):
    r, sign = _reduce_pi(z)
    if FAST_TRIG:  # MUFU cos.approx: abs error < 2**-20.9 on [-pi, pi]
        c = _cuda_libdevice.fast_cosf(r)
    else:
        c = _cos_poly(r * r)
    return sign * c


@triton.jit
def _sincos(z, FAST_TRIG: tl.constexpr):
    r, sign = _reduce_pi(z)
    if FAST_TRIG:
        s = _cuda_libdevice.fast_sinf(r)
        c = _cuda_libdevice.fast_cosf(r)
    else:
        t = r * r
        s = _sin_poly(r, t)
        c = _cos_poly(t)
    return sign * s, sign * c


# ---------------------------------------------------------------------------------------------------
# Fourier: F = b + sum_k c'_k cos(w_k x - phi_k), with c'_k = c_k / k! scaled on the host
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _fourier_fwd_kernel(x_ptr, b_ptr, c_ptr, phi_ptr, w_ptr, y_ptr, numel, width, N: tl.constexpr,
                        FAST_TRIG: tl.constexpr, PER_CHANNEL: tl.constexpr, BLOCK_R: tl.constexpr,
                        BLOCK_C: tl.constexpr, INT64: tl.constexpr):
    offs, mask, cols, cmask = tile(tl.program_id(0), tl.program_id(1), numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.zeros_like(x) + coef(b_ptr, 0, cols, cmask, 1, PER_CHANNEL)
    for k in tl.static_range(N):
        w = coef(w_ptr, k, cols, cmask, N, PER_CHANNEL)
        phi = coef(phi_ptr, k, cols, cmask, N, PER_CHANNEL)
        y += coef(c_ptr, k, cols, cmask, N, PER_CHANNEL) * _cos(w * x - phi, FAST_TRIG)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fourier_bwd_kernel(x_ptr, g_ptr, b_ptr, c_ptr, phi_ptr, w_ptr, dx_ptr, part_ptr, numel, width,
                        n_row_blocks, N: tl.constexpr, NP: tl.constexpr, FAST_TRIG: tl.constexpr,
                        NEED_X: tl.constexpr, NEED_COEF: tl.constexpr, PER_CHANNEL: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, INT64: tl.constexpr):
    """Partial sums per program: [sum g, sum g cos z_k, sum g sin z_k, sum g x sin z_k] (1 + 3N)."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    acc_b = acc_zeros(1, BLOCK_R, BLOCK_C, PER_CHANNEL)
    acc_cos = acc_zeros(NP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    acc_sin = acc_zeros(NP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    acc_xsin = acc_zeros(NP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < width
    for rb in range(pid_r, n_row_blocks, tl.num_programs(0)):
        offs, mask, _, _ = tile(rb, pid_c, numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gx = g * x
        dydx = tl.zeros_like(x)
        if NEED_COEF:
            acc_b = acc_add(acc_b, g, 0, 1, PER_CHANNEL)
        for k in tl.static_range(N):
            w = coef(w_ptr, k, cols, cmask, N, PER_CHANNEL)
            phi = coef(phi_ptr, k, cols, cmask, N, PER_CHANNEL)
            s, c = _sincos(w * x - phi, FAST_TRIG)
            dydx -= (coef(c_ptr, k, cols, cmask, N, PER_CHANNEL) * w) * s
            if NEED_COEF:
                acc_cos = acc_add(acc_cos, g * c, k, NP, PER_CHANNEL)
                acc_sin = acc_add(acc_sin, g * s, k, NP, PER_CHANNEL)
                acc_xsin = acc_add(acc_xsin, gx * s, k, NP, PER_CHANNEL)
        if NEED_X:
            tl.store(dx_ptr + offs, (g * dydx).to(dx_ptr.dtype.element_ty), mask=mask)
    if NEED_COEF:
        G: tl.constexpr = 1 + 3 * N
        acc_store(part_ptr, acc_b, pid_r, width, cols, cmask, 0, 1, G, 1, PER_CHANNEL)
        acc_store(part_ptr, acc_cos, pid_r, width, cols, cmask, 1, N, G, NP, PER_CHANNEL)
        acc_store(part_ptr, acc_sin, pid_r, width, cols, cmask, 1 + N, N, G, NP, PER_CHANNEL)
        acc_store(part_ptr, acc_xsin, pid_r, width, cols, cmask, 1 + 2 * N, N, G, NP, PER_CHANNEL)


def forward(x, bias, amplitudes, phases, frequencies, channel_dim):
    b, c, phi, w = contiguous_values(bias, amplitudes, phases, frequencies)
    n = c.shape[-1]
    c_scaled = (c * inverse_factorials_on_device(n, c)).contiguous()
    return launch_forward(_fourier_fwd_kernel, x, [b, c_scaled, phi, w], c.dim() == 2, channel_dim, N=n,
                       FAST_TRIG=_fast_trig(x))


def backward(grad, x, bias, amplitudes, phases, frequencies, channel_dim, need_x, need_values):
    b, c, phi, w = contiguous_values(bias, amplitudes, phases, frequencies)
    n = c.shape[-1]
    inv_fact = inverse_factorials_on_device(n, c)
    c_scaled = (c * inv_fact).contiguous()
    dx, sums = launch_backward(_fourier_bwd_kernel, grad, x, [b, c_scaled, phi, w], c.dim() == 2, channel_dim,
                           1 + 3 * n, need_x, need_values, N=n, NP=triton.next_power_of_2(n),
                           FAST_TRIG=_fast_trig(x))
    s_b, s_cos, s_sin, s_xsin = sums[..., :1], sums[..., 1 : 1 + n], sums[..., 1 + n : 1 + 2 * n], sums[..., 1 + 2 * n :]
    return dx, own(s_b.reshape(bias.shape)), s_cos * inv_fact, s_sin * c_scaled, -s_xsin * c_scaled


def _fast_trig(x: torch.Tensor) -> bool:
    """MUFU sin/cos (on the reduced argument) for 16-bit inputs on NVIDIA GPUs, whose outputs cannot
    resolve its ~5e-7 error; float32 inputs (and the interpreter) get the 1.5e-7 polynomials."""
    return (not interpret()) and x.is_cuda and torch.version.hip is None and x.dtype != torch.float32
