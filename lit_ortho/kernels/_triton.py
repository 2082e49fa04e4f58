"""Triton kernels for the learnable activations: one forward and one backward kernel per family.

Imported lazily (by the custom-op implementations in :mod:`lit_ortho.kernels.ops`), so importing
lit_ortho never imports triton. Everything computes in float32 and reads/writes the input's dtype
(float32, bfloat16 or float16); coefficients are float32.

Layout. Every kernel sees the input as a dense 2-D ``[rows, width]`` array in memory order:

* shared coefficients (``[K]``): the tensor's storage, flat, cut into rows of a fixed virtual
  ``width``; any dense layout works (contiguous, channels_last, ...), output has the input's strides;
* per-channel coefficients (``[C, K]``): the tensor with its channel dimension moved last and made
  contiguous, so ``width = C`` and the channel of an element is its column. ``channel_dim=-1`` on a
  contiguous input needs no copy; any other channel dimension costs one layout copy each way.

Forward: one tile per program, reads x, writes y. Backward: a fixed number of programs walk the
row blocks (grid-stride loop), write dx tile by tile, and keep the coefficient-gradient sums of the
tiles they visit in registers; at the end each program writes its partial sums to a
``[programs, G]`` (shared) or ``[programs, C, G]`` (per-channel) buffer that torch sums over the
first dimension. No atomics, so the result is deterministic on a given GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# sin/cos: z = j*pi + r, r in [-pi/2, pi/2], sign (-1)^j; pi in three parts (8, 11 and 24 significant
# bits, so j * part is exact for |j| < 2**13). Then MUFU sin.approx/cos.approx of r for 16-bit
# inputs on NVIDIA GPUs, else the polynomials of lit_ortho.kernels.compiled (max abs error 1.5e-7).
_INV_PI = tl.constexpr(0.3183098861837907)
_PI_1 = tl.constexpr(3.140625)
_PI_2 = tl.constexpr(9.67502593994140625e-4)
_PI_3 = tl.constexpr(1.509957990978376432e-7)
_S1, _S2, _S3, _S4 = (tl.constexpr(c) for c in (-0.16666658222675323, 0.008333050645887852,
                                                 -0.00019809075456578285, 2.6052248358610086e-06))
_C2, _C3, _C4, _C5 = (tl.constexpr(c) for c in (0.04166663810610771, -0.0013888361863791943,
                                                 2.476016197761055e-05, -2.605149518331018e-07))
_HERMITE_LIMIT = tl.constexpr(1e30)  # as the eager path: saturate P_k above degree 8 (no inf - inf)

if hasattr(tl, "extra") and hasattr(tl.extra, "cuda"):
    from triton.language.extra.cuda import libdevice as _cuda_libdevice
else:  # pragma: no cover - non-CUDA builds of triton
    _cuda_libdevice = None

# Launch parameters (chosen from sm_90 compiles: no register spills, 16-byte loads, no layout
# conversion inside the backward loop for shared coefficients). Tiles hold ``*_tile`` elements,
# ``shared_width`` wide for shared coefficients and at most ``channel_block`` channels wide per
# channel; ``programs_per_sm`` backward programs per SM. Under TRITON_INTERPRET=1 everything is
# small so that tests exercise masks, several programs and the grid-stride loop cheaply.
CONFIG = {"fwd_tile": 2048, "bwd_tile": 1024, "shared_width": 256, "channel_block": 128, "num_warps": 4,
          "programs_per_sm": 4}
INTERPRET_CONFIG = {"fwd_tile": 512, "bwd_tile": 256, "shared_width": 64, "channel_block": 16, "num_warps": 1,
                    "programs": 3}


# ---------------------------------------------------------------------------------------------------
# Shared device helpers
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _tile(rb, pid_c, numel, width, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, INT64: tl.constexpr,
          PER_CHANNEL: tl.constexpr):
    """Offsets and mask of row block ``rb``, column block ``pid_c``."""
    rows = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    if INT64:
        rows = rows.to(tl.int64)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < width
    if PER_CHANNEL:
        offs = rows[:, None] * width + cols[None, :]
    else:  # width == BLOCK_C: a compile-time row stride, so loads vectorize whatever numel is
        offs = rows[:, None] * BLOCK_C + cols[None, :]
    mask = cmask[None, :] & (offs < numel)
    return offs, mask, cols, cmask


@triton.jit
def _coef(ptr, k: tl.constexpr, cols, cmask, STRIDE: tl.constexpr, PER_CHANNEL: tl.constexpr):
    """Coefficient ``k``: a scalar (shared) or the ``[1, BLOCK_C]`` row of the tile's channels."""
    if PER_CHANNEL:
        v = tl.load(ptr + cols[None, :] * STRIDE + k, mask=cmask[None, :], other=0.0)
    else:
        v = tl.load(ptr + k)
    return v


@triton.jit
def _acc_zeros(KP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, PER_CHANNEL: tl.constexpr):
    if PER_CHANNEL:
        acc = tl.zeros((KP, BLOCK_C), tl.float32)  # column (= channel) sums
    else:
        acc = tl.zeros((BLOCK_R, KP), tl.float32)  # row sums; rows are added up once, at the end
    return acc


@triton.jit
def _acc_add(acc, v, k: tl.constexpr, KP: tl.constexpr, PER_CHANNEL: tl.constexpr):
    """acc[k] += the sums of the tile v along one axis. Shared coefficients sum each row (a
    contiguous stretch of memory held by one warp: shuffles, no barrier) into a [BLOCK_R, KP]
    accumulator laid out like the tile, and leave the cross-warp sum to _acc_store; per-channel
    coefficients sum each column. The select runs on the reduced sums, not per element."""
    if PER_CHANNEL:
        kk = tl.arange(0, KP)[:, None]
        acc = tl.where(kk == k, acc + tl.sum(v, axis=0)[None, :], acc)
    else:
        kk = tl.arange(0, KP)[None, :]
        acc = tl.where(kk == k, acc + tl.sum(v, axis=1)[:, None], acc)
    return acc


@triton.jit
def _acc_store(part_ptr, acc, pid_r, width, cols, cmask, OFFSET: tl.constexpr, COUNT: tl.constexpr,
               G: tl.constexpr, KP: tl.constexpr, PER_CHANNEL: tl.constexpr):
    """Write acc[:COUNT] to partial[pid_r, (channel,) OFFSET:OFFSET + COUNT] of a [..., G] buffer."""
    if PER_CHANNEL:
        kk = tl.arange(0, KP)[:, None]
        ptrs = part_ptr + (pid_r * width + cols[None, :]) * G + OFFSET + kk
        tl.store(ptrs, acc, mask=(kk < COUNT) & cmask[None, :])
    else:
        kk = tl.arange(0, KP)
        tl.store(part_ptr + pid_r * G + OFFSET + kk, tl.sum(acc, axis=0), mask=kk < COUNT)


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
# Hermite: F = sum_k a_k P_k, P_{k+1} = (x P_k - P_{k-1}) / (k + 1), P_k' = P_{k-1}
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _hermite_fwd_kernel(x_ptr, a_ptr, y_ptr, numel, width, K: tl.constexpr, CLAMP: tl.constexpr,
                        PER_CHANNEL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                        INT64: tl.constexpr):
    offs, mask, cols, cmask = _tile(tl.program_id(0), tl.program_id(1), numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = _coef(a_ptr, 1, cols, cmask, K, PER_CHANNEL) * x + _coef(a_ptr, 0, cols, cmask, K, PER_CHANNEL)
    p_prev = tl.zeros_like(x) + 1.0
    p = x
    for k in tl.static_range(1, K - 1):
        p_next = (x * p - p_prev) * (1.0 / (k + 1))
        if CLAMP:
            p_next = tl.minimum(tl.maximum(p_next, -_HERMITE_LIMIT), _HERMITE_LIMIT)
        y += _coef(a_ptr, k + 1, cols, cmask, K, PER_CHANNEL) * p_next
        p_prev = p
        p = p_next
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _hermite_bwd_kernel(x_ptr, g_ptr, a_ptr, dx_ptr, part_ptr, numel, width, n_row_blocks,
                        K: tl.constexpr, KP: tl.constexpr, CLAMP: tl.constexpr, NEED_X: tl.constexpr,
                        NEED_COEF: tl.constexpr, PER_CHANNEL: tl.constexpr, BLOCK_R: tl.constexpr,
                        BLOCK_C: tl.constexpr, INT64: tl.constexpr):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    acc = _acc_zeros(KP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < width
    for rb in range(pid_r, n_row_blocks, tl.num_programs(0)):
        offs, mask, _, _ = _tile(rb, pid_c, numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # masked lanes: g = 0
        dydx = tl.zeros_like(x) + _coef(a_ptr, 1, cols, cmask, K, PER_CHANNEL)
        if NEED_COEF:
            acc = _acc_add(acc, g, 0, KP, PER_CHANNEL)
            acc = _acc_add(acc, g * x, 1, KP, PER_CHANNEL)
        p_prev = tl.zeros_like(x) + 1.0
        p = x
        for k in tl.static_range(1, K - 1):
            dydx += _coef(a_ptr, k + 1, cols, cmask, K, PER_CHANNEL) * p
            p_next = (x * p - p_prev) * (1.0 / (k + 1))
            if CLAMP:
                p_next = tl.minimum(tl.maximum(p_next, -_HERMITE_LIMIT), _HERMITE_LIMIT)
            if NEED_COEF:
                acc = _acc_add(acc, g * p_next, k + 1, KP, PER_CHANNEL)
            p_prev = p
            p = p_next
        if NEED_X:
            tl.store(dx_ptr + offs, (g * dydx).to(dx_ptr.dtype.element_ty), mask=mask)
    if NEED_COEF:
        _acc_store(part_ptr, acc, pid_r, width, cols, cmask, 0, K, K, KP, PER_CHANNEL)


# ---------------------------------------------------------------------------------------------------
# Fourier: F = b + sum_k c'_k cos(w_k x - phi_k), with c'_k = c_k / k! scaled on the host
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _fourier_fwd_kernel(x_ptr, b_ptr, c_ptr, phi_ptr, w_ptr, y_ptr, numel, width, N: tl.constexpr,
                        FAST_TRIG: tl.constexpr, PER_CHANNEL: tl.constexpr, BLOCK_R: tl.constexpr,
                        BLOCK_C: tl.constexpr, INT64: tl.constexpr):
    offs, mask, cols, cmask = _tile(tl.program_id(0), tl.program_id(1), numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.zeros_like(x) + _coef(b_ptr, 0, cols, cmask, 1, PER_CHANNEL)
    for k in tl.static_range(N):
        w = _coef(w_ptr, k, cols, cmask, N, PER_CHANNEL)
        phi = _coef(phi_ptr, k, cols, cmask, N, PER_CHANNEL)
        y += _coef(c_ptr, k, cols, cmask, N, PER_CHANNEL) * _cos(w * x - phi, FAST_TRIG)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fourier_bwd_kernel(x_ptr, g_ptr, b_ptr, c_ptr, phi_ptr, w_ptr, dx_ptr, part_ptr, numel, width,
                        n_row_blocks, N: tl.constexpr, NP: tl.constexpr, FAST_TRIG: tl.constexpr,
                        NEED_X: tl.constexpr, NEED_COEF: tl.constexpr, PER_CHANNEL: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, INT64: tl.constexpr):
    """Partial sums per program: [sum g, sum g cos z_k, sum g sin z_k, sum g x sin z_k] (1 + 3N)."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    acc_b = _acc_zeros(1, BLOCK_R, BLOCK_C, PER_CHANNEL)
    acc_cos = _acc_zeros(NP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    acc_sin = _acc_zeros(NP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    acc_xsin = _acc_zeros(NP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < width
    for rb in range(pid_r, n_row_blocks, tl.num_programs(0)):
        offs, mask, _, _ = _tile(rb, pid_c, numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gx = g * x
        dydx = tl.zeros_like(x)
        if NEED_COEF:
            acc_b = _acc_add(acc_b, g, 0, 1, PER_CHANNEL)
        for k in tl.static_range(N):
            w = _coef(w_ptr, k, cols, cmask, N, PER_CHANNEL)
            phi = _coef(phi_ptr, k, cols, cmask, N, PER_CHANNEL)
            s, c = _sincos(w * x - phi, FAST_TRIG)
            dydx -= (_coef(c_ptr, k, cols, cmask, N, PER_CHANNEL) * w) * s
            if NEED_COEF:
                acc_cos = _acc_add(acc_cos, g * c, k, NP, PER_CHANNEL)
                acc_sin = _acc_add(acc_sin, g * s, k, NP, PER_CHANNEL)
                acc_xsin = _acc_add(acc_xsin, gx * s, k, NP, PER_CHANNEL)
        if NEED_X:
            tl.store(dx_ptr + offs, (g * dydx).to(dx_ptr.dtype.element_ty), mask=mask)
    if NEED_COEF:
        G: tl.constexpr = 1 + 3 * N
        _acc_store(part_ptr, acc_b, pid_r, width, cols, cmask, 0, 1, G, 1, PER_CHANNEL)
        _acc_store(part_ptr, acc_cos, pid_r, width, cols, cmask, 1, N, G, NP, PER_CHANNEL)
        _acc_store(part_ptr, acc_sin, pid_r, width, cols, cmask, 1 + N, N, G, NP, PER_CHANNEL)
        _acc_store(part_ptr, acc_xsin, pid_r, width, cols, cmask, 1 + 2 * N, N, G, NP, PER_CHANNEL)


# ---------------------------------------------------------------------------------------------------
# Tropical: F = s * max_k (k x + c_k); the first maximal piece wins ties, as in the eager path
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _tropical_fwd_kernel(x_ptr, c_ptr, s_ptr, y_ptr, numel, width, K: tl.constexpr, PER_CHANNEL: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, INT64: tl.constexpr):
    offs, mask, cols, cmask = _tile(tl.program_id(0), tl.program_id(1), numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    best = 0.0 * x + _coef(c_ptr, 0, cols, cmask, K, PER_CHANNEL)
    for k in tl.static_range(1, K):
        cand = k * x + _coef(c_ptr, k, cols, cmask, K, PER_CHANNEL)
        best = tl.maximum(best, cand, propagate_nan=tl.PropagateNan.ALL)
    y = best * tl.load(s_ptr)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tropical_bwd_kernel(x_ptr, g_ptr, c_ptr, s_ptr, dx_ptr, part_ptr, numel, width, n_row_blocks,
                         K: tl.constexpr, KP: tl.constexpr, NEED_X: tl.constexpr, NEED_COEF: tl.constexpr,
                         PER_CHANNEL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                         INT64: tl.constexpr):
    """Partial sums per program: sum of g over the elements where piece k wins (times s on the host)."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    scale = tl.load(s_ptr)
    acc = _acc_zeros(KP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < width
    for rb in range(pid_r, n_row_blocks, tl.num_programs(0)):
        offs, mask, _, _ = _tile(rb, pid_c, numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        best = 0.0 * x + _coef(c_ptr, 0, cols, cmask, K, PER_CHANNEL)
        arg = tl.zeros_like(x)
        for k in tl.static_range(1, K):
            cand = k * x + _coef(c_ptr, k, cols, cmask, K, PER_CHANNEL)
            arg = tl.where(cand > best, k, arg)
            best = tl.maximum(best, cand)
        if NEED_X:
            tl.store(dx_ptr + offs, (g * scale * arg).to(dx_ptr.dtype.element_ty), mask=mask)
        if NEED_COEF:
            for k in tl.static_range(K):
                acc = _acc_add(acc, tl.where(arg == k, g, 0.0), k, KP, PER_CHANNEL)
    if NEED_COEF:
        _acc_store(part_ptr, acc, pid_r, width, cols, cmask, 0, K, K, KP, PER_CHANNEL)


# ---------------------------------------------------------------------------------------------------
# Tropical rational: F = max_k (p_k x + c_k) - max_k (q_k x + d_k)
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _tropical_rational_fwd_kernel(x_ptr, p_ptr, c_ptr, q_ptr, d_ptr, y_ptr, numel, width, K: tl.constexpr,
                                  PER_CHANNEL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                                  INT64: tl.constexpr):
    offs, mask, cols, cmask = _tile(tl.program_id(0), tl.program_id(1), numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    num = _coef(p_ptr, 0, cols, cmask, K, PER_CHANNEL) * x + _coef(c_ptr, 0, cols, cmask, K, PER_CHANNEL)
    den = _coef(q_ptr, 0, cols, cmask, K, PER_CHANNEL) * x + _coef(d_ptr, 0, cols, cmask, K, PER_CHANNEL)
    for k in tl.static_range(1, K):
        cand = _coef(p_ptr, k, cols, cmask, K, PER_CHANNEL) * x + _coef(c_ptr, k, cols, cmask, K, PER_CHANNEL)
        num = tl.maximum(num, cand, propagate_nan=tl.PropagateNan.ALL)
        cand = _coef(q_ptr, k, cols, cmask, K, PER_CHANNEL) * x + _coef(d_ptr, k, cols, cmask, K, PER_CHANNEL)
        den = tl.maximum(den, cand, propagate_nan=tl.PropagateNan.ALL)
    tl.store(y_ptr + offs, (num - den).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tropical_rational_bwd_kernel(x_ptr, g_ptr, p_ptr, c_ptr, q_ptr, d_ptr, dx_ptr, part_ptr, numel, width,
                                  n_row_blocks, K: tl.constexpr, KP: tl.constexpr, NEED_X: tl.constexpr,
                                  NEED_COEF: tl.constexpr, PER_CHANNEL: tl.constexpr, BLOCK_R: tl.constexpr,
                                  BLOCK_C: tl.constexpr, INT64: tl.constexpr):
    """Partial sums per program, 4K of them: [sum gx, sum g] over the numerator's winning piece k,
    then the same for the denominator (negated on the host)."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    acc_p = _acc_zeros(KP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    acc_c = _acc_zeros(KP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    acc_q = _acc_zeros(KP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    acc_d = _acc_zeros(KP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < width
    for rb in range(pid_r, n_row_blocks, tl.num_programs(0)):
        offs, mask, _, _ = _tile(rb, pid_c, numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        slope_n = tl.zeros_like(x) + _coef(p_ptr, 0, cols, cmask, K, PER_CHANNEL)
        slope_d = tl.zeros_like(x) + _coef(q_ptr, 0, cols, cmask, K, PER_CHANNEL)
        num = slope_n * x + _coef(c_ptr, 0, cols, cmask, K, PER_CHANNEL)
        den = slope_d * x + _coef(d_ptr, 0, cols, cmask, K, PER_CHANNEL)
        arg_n = tl.zeros_like(x)
        arg_d = tl.zeros_like(x)
        for k in tl.static_range(1, K):
            p = _coef(p_ptr, k, cols, cmask, K, PER_CHANNEL)
            cand = p * x + _coef(c_ptr, k, cols, cmask, K, PER_CHANNEL)
            win = cand > num
            arg_n = tl.where(win, k, arg_n)
            slope_n = tl.where(win, p, slope_n)
            num = tl.maximum(num, cand)
            q = _coef(q_ptr, k, cols, cmask, K, PER_CHANNEL)
            cand = q * x + _coef(d_ptr, k, cols, cmask, K, PER_CHANNEL)
            win = cand > den
            arg_d = tl.where(win, k, arg_d)
            slope_d = tl.where(win, q, slope_d)
            den = tl.maximum(den, cand)
        if NEED_X:
            tl.store(dx_ptr + offs, (g * (slope_n - slope_d)).to(dx_ptr.dtype.element_ty), mask=mask)
        if NEED_COEF:
            gx = g * x
            for k in tl.static_range(K):
                on_n = arg_n == k
                on_d = arg_d == k
                acc_p = _acc_add(acc_p, tl.where(on_n, gx, 0.0), k, KP, PER_CHANNEL)
                acc_c = _acc_add(acc_c, tl.where(on_n, g, 0.0), k, KP, PER_CHANNEL)
                acc_q = _acc_add(acc_q, tl.where(on_d, gx, 0.0), k, KP, PER_CHANNEL)
                acc_d = _acc_add(acc_d, tl.where(on_d, g, 0.0), k, KP, PER_CHANNEL)
    if NEED_COEF:
        G: tl.constexpr = 4 * K
        _acc_store(part_ptr, acc_p, pid_r, width, cols, cmask, 0, K, G, KP, PER_CHANNEL)
        _acc_store(part_ptr, acc_c, pid_r, width, cols, cmask, K, K, G, KP, PER_CHANNEL)
        _acc_store(part_ptr, acc_q, pid_r, width, cols, cmask, 2 * K, K, G, KP, PER_CHANNEL)
        _acc_store(part_ptr, acc_d, pid_r, width, cols, cmask, 3 * K, K, G, KP, PER_CHANNEL)


# ---------------------------------------------------------------------------------------------------
# Host side: layouts, launch parameters, partial-sum post-processing
# ---------------------------------------------------------------------------------------------------
def _interpret() -> bool:
    from lit_ortho.kernels import INTERPRET

    return INTERPRET


def _same_layout(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` with exactly ``ref``'s (dense) strides: itself, or a copy."""
    if t.stride() == ref.stride():
        return t
    return torch.empty_like(ref).copy_(t)


class _Plan:
    """How one call maps its input onto the kernels' dense ``[rows, width]`` view."""

    def __init__(self, x: torch.Tensor, per_channel: bool, channel_dim: int, backward: bool):
        self.per_channel = per_channel
        self.out = torch.empty_like(x)  # what the op returns (and its fake implementation promises)
        interpret = _interpret()
        cfg = INTERPRET_CONFIG if interpret else CONFIG
        tile = cfg["bwd_tile" if backward else "fwd_tile"]
        if per_channel:
            self.cd = channel_dim % x.dim()
            self.width = x.shape[self.cd]
            self.block_c = min(cfg["channel_block"], triton.next_power_of_2(self.width))
        else:
            self.cd = None
            self.width = self.block_c = cfg["shared_width"]
        self.block_r = max(1, tile // self.block_c)
        self.numel = x.numel()
        n_rows = triton.cdiv(self.numel, self.width)
        self.n_row_blocks = triton.cdiv(n_rows, self.block_r)
        self.col_blocks = triton.cdiv(self.width, self.block_c)
        self.int64 = self.numel + self.block_r * self.width >= 2**31
        self.num_warps = cfg["num_warps"]
        target = cfg["programs"] if interpret else _sm_count(x.device) * cfg["programs_per_sm"]
        self.row_programs = max(1, min(self.n_row_blocks, target // self.col_blocks))

    def input(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (x or grad) in the kernels' dense view."""
        if not self.per_channel:
            return _same_layout(t, self.out)
        t = t.movedim(self.cd, -1)
        return t if t.is_contiguous() else t.contiguous()

    def output(self):
        """(tensor the kernel writes, finisher returning the op's result)."""
        if not self.per_channel:
            return self.out, lambda: self.out
        view = self.out.movedim(self.cd, -1)
        if view.is_contiguous():
            return view, lambda: self.out
        tmp = torch.empty(view.shape, dtype=view.dtype, device=view.device)

        def finish():
            self.out.copy_(tmp.movedim(-1, self.cd))
            return self.out

        return tmp, finish

    def common(self):
        return dict(PER_CHANNEL=self.per_channel, BLOCK_R=self.block_r, BLOCK_C=self.block_c, INT64=self.int64,
                    num_warps=self.num_warps)

    def partials(self, groups: int, device) -> torch.Tensor:
        shape = (self.row_programs, self.width, groups) if self.per_channel else (self.row_programs, groups)
        return torch.empty(shape, dtype=torch.float32, device=device)

    @property
    def fwd_grid(self):
        return (self.n_row_blocks, self.col_blocks)

    @property
    def bwd_grid(self):
        return (self.row_programs, self.col_blocks)


_SM_COUNT: dict = {}


def _sm_count(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def _coefs(*values: torch.Tensor) -> list[torch.Tensor]:
    return [v.contiguous() for v in values]


def _own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy: custom-op outputs may not alias each other (slices of one sums buffer)."""
    return t.clone(memory_format=torch.contiguous_format)


def _inv_factorials(n: int, like: torch.Tensor) -> torch.Tensor:
    """1/k!, k = 1..n, made on the device (no host-to-device copy: CUDA-graph safe). k! is exact in
    float32 up to 13!, so these equal the eager path's float32(1/k!) there."""
    return torch.arange(1, n + 1, dtype=torch.float32, device=like.device).cumprod(0).reciprocal()


def _launch_fwd(kernel, x, coefs, per_channel, channel_dim, **constexprs):
    plan = _Plan(x, per_channel, channel_dim, backward=False)
    if plan.numel == 0:
        return plan.out
    xin = plan.input(x)
    target, finish = plan.output()
    kernel[plan.fwd_grid](xin, *coefs, target, plan.numel, plan.width, **constexprs, **plan.common())
    return finish()


def _launch_bwd(kernel, grad, x, coefs, per_channel, channel_dim, groups, need_x, need_coef, **constexprs):
    """Run a backward kernel; returns (grad_x, summed partials of shape [G] or [C, G])."""
    plan = _Plan(x, per_channel, channel_dim, backward=True)
    gshape = (plan.width, groups) if per_channel else (groups,)
    if plan.numel == 0:
        return plan.out.zero_(), torch.zeros(gshape, dtype=torch.float32, device=x.device)
    xin, gin = plan.input(x), plan.input(grad)
    target, finish = plan.output()
    part = plan.partials(groups, x.device)
    kernel[plan.bwd_grid](xin, gin, *coefs, target, part, plan.numel, plan.width, plan.n_row_blocks,
                          NEED_X=need_x, NEED_COEF=need_coef, **constexprs, **plan.common())
    sums = part.sum(0) if need_coef else torch.zeros(gshape, dtype=torch.float32, device=x.device)
    return finish(), sums


# ---- per family: forward(x, *values, channel_dim) and backward(grad, x, *values, ...) ---------------
def hermite_forward(x, coefficients, channel_dim):
    (a,) = _coefs(coefficients)
    K = a.shape[-1]
    return _launch_fwd(_hermite_fwd_kernel, x, [a], a.dim() == 2, channel_dim, K=K, CLAMP=K > 9)


def hermite_backward(grad, x, coefficients, channel_dim, need_x, need_values):
    (a,) = _coefs(coefficients)
    K = a.shape[-1]
    dx, sums = _launch_bwd(_hermite_bwd_kernel, grad, x, [a], a.dim() == 2, channel_dim, K, need_x, need_values,
                           K=K, KP=triton.next_power_of_2(K), CLAMP=K > 9)
    return dx, sums


def fourier_forward(x, bias, amplitudes, phases, frequencies, channel_dim):
    b, c, phi, w = _coefs(bias, amplitudes, phases, frequencies)
    n = c.shape[-1]
    c_scaled = (c * _inv_factorials(n, c)).contiguous()
    return _launch_fwd(_fourier_fwd_kernel, x, [b, c_scaled, phi, w], c.dim() == 2, channel_dim, N=n,
                       FAST_TRIG=_fast_trig(x))


def fourier_backward(grad, x, bias, amplitudes, phases, frequencies, channel_dim, need_x, need_values):
    b, c, phi, w = _coefs(bias, amplitudes, phases, frequencies)
    n = c.shape[-1]
    inv_fact = _inv_factorials(n, c)
    c_scaled = (c * inv_fact).contiguous()
    dx, sums = _launch_bwd(_fourier_bwd_kernel, grad, x, [b, c_scaled, phi, w], c.dim() == 2, channel_dim,
                           1 + 3 * n, need_x, need_values, N=n, NP=triton.next_power_of_2(n),
                           FAST_TRIG=_fast_trig(x))
    s_b, s_cos, s_sin, s_xsin = sums[..., :1], sums[..., 1 : 1 + n], sums[..., 1 + n : 1 + 2 * n], sums[..., 1 + 2 * n :]
    return dx, _own(s_b.reshape(bias.shape)), s_cos * inv_fact, s_sin * c_scaled, -s_xsin * c_scaled


def tropical_forward(x, intercepts, scale, channel_dim):
    c, s = _coefs(intercepts, scale)
    return _launch_fwd(_tropical_fwd_kernel, x, [c, s], c.dim() == 2, channel_dim, K=c.shape[-1])


def tropical_backward(grad, x, intercepts, scale, channel_dim, need_x, need_values):
    c, s = _coefs(intercepts, scale)
    K = c.shape[-1]
    dx, sums = _launch_bwd(_tropical_bwd_kernel, grad, x, [c, s], c.dim() == 2, channel_dim, K, need_x,
                           need_values, K=K, KP=triton.next_power_of_2(K))
    return dx, sums * s


def tropical_rational_forward(x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim):
    p, c, q, d = _coefs(num_slopes, num_intercepts, den_slopes, den_intercepts)
    return _launch_fwd(_tropical_rational_fwd_kernel, x, [p, c, q, d], p.dim() == 2, channel_dim, K=p.shape[-1])


def tropical_rational_backward(grad, x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim,
                               need_x, need_values):
    p, c, q, d = _coefs(num_slopes, num_intercepts, den_slopes, den_intercepts)
    K = p.shape[-1]
    dx, sums = _launch_bwd(_tropical_rational_bwd_kernel, grad, x, [p, c, q, d], p.dim() == 2, channel_dim,
                           4 * K, need_x, need_values, K=K, KP=triton.next_power_of_2(K))
    return dx, _own(sums[..., :K]), _own(sums[..., K : 2 * K]), -sums[..., 2 * K : 3 * K], -sums[..., 3 * K :]


def _fast_trig(x: torch.Tensor) -> bool:
    """MUFU sin/cos (on the reduced argument) for 16-bit inputs on NVIDIA GPUs, whose outputs cannot
    resolve its ~5e-7 error; float32 inputs (and the interpreter) get the 1.5e-7 polynomials."""
    return (not _interpret()) and x.is_cuda and torch.version.hip is None and x.dtype != torch.float32


FORWARD = {
    "hermite": hermite_forward,
    "fourier": fourier_forward,
    "tropical": tropical_forward,
    "tropical_rational": tropical_rational_forward,
}
BACKWARD = {
    "hermite": hermite_backward,
    "fourier": fourier_backward,
    "tropical": tropical_backward,
    "tropical_rational": tropical_rational_backward,
}
