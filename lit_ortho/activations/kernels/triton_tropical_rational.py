"""Triton kernels of the Tropical rational family: F = max_k(p_k x + c_k) - max_k(q_k x + d_k)."""

from __future__ import annotations

import triton
import triton.language as tl

from lit_ortho.activations.kernels.triton_common import (
    acc_add,
    acc_store,
    acc_zeros,
    coef,
    contiguous_values,
    launch_backward,
    launch_forward,
    own,
    tile,
)

# ---------------------------------------------------------------------------------------------------
# Tropical rational: F = max_k (p_k x + c_k) - max_k (q_k x + d_k)
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _tropical_rational_fwd_kernel(x_ptr, p_ptr, c_ptr, q_ptr, d_ptr, y_ptr, numel, width, K: tl.constexpr,
                                  PER_CHANNEL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                                  INT64: tl.constexpr):
    offs, mask, cols, cmask = tile(tl.program_id(0), tl.program_id(1), numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    num = coef(p_ptr, 0, cols, cmask, K, PER_CHANNEL) * x + coef(c_ptr, 0, cols, cmask, K, PER_CHANNEL)
    den = coef(q_ptr, 0, cols, cmask, K, PER_CHANNEL) * x + coef(d_ptr, 0, cols, cmask, K, PER_CHANNEL)
    for k in tl.static_range(1, K):
        cand = coef(p_ptr, k, cols, cmask, K, PER_CHANNEL) * x + coef(c_ptr, k, cols, cmask, K, PER_CHANNEL)
        num = tl.maximum(num, cand, propagate_nan=tl.PropagateNan.ALL)
        cand = coef(q_ptr, k, cols, cmask, K, PER_CHANNEL) * x + coef(d_ptr, k, cols, cmask, K, PER_CHANNEL)
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
    acc_p = acc_zeros(KP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    acc_c = acc_zeros(KP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    acc_q = acc_zeros(KP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    acc_d = acc_zeros(KP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < width
    for rb in range(pid_r, n_row_blocks, tl.num_programs(0)):
        offs, mask, _, _ = tile(rb, pid_c, numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        slope_n = tl.zeros_like(x) + coef(p_ptr, 0, cols, cmask, K, PER_CHANNEL)
        slope_d = tl.zeros_like(x) + coef(q_ptr, 0, cols, cmask, K, PER_CHANNEL)
        num = slope_n * x + coef(c_ptr, 0, cols, cmask, K, PER_CHANNEL)
        den = slope_d * x + coef(d_ptr, 0, cols, cmask, K, PER_CHANNEL)
        arg_n = tl.zeros_like(x)
        arg_d = tl.zeros_like(x)
        for k in tl.static_range(1, K):
            p = coef(p_ptr, k, cols, cmask, K, PER_CHANNEL)
            cand = p * x + coef(c_ptr, k, cols, cmask, K, PER_CHANNEL)
            win = cand > num
            arg_n = tl.where(win, k, arg_n)
            slope_n = tl.where(win, p, slope_n)
            num = tl.maximum(num, cand)
            q = coef(q_ptr, k, cols, cmask, K, PER_CHANNEL)
            cand = q * x + coef(d_ptr, k, cols, cmask, K, PER_CHANNEL)
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
                acc_p = acc_add(acc_p, tl.where(on_n, gx, 0.0), k, KP, PER_CHANNEL)
                acc_c = acc_add(acc_c, tl.where(on_n, g, 0.0), k, KP, PER_CHANNEL)
                acc_q = acc_add(acc_q, tl.where(on_d, gx, 0.0), k, KP, PER_CHANNEL)
                acc_d = acc_add(acc_d, tl.where(on_d, g, 0.0), k, KP, PER_CHANNEL)
    if NEED_COEF:
        G: tl.constexpr = 4 * K
        acc_store(part_ptr, acc_p, pid_r, width, cols, cmask, 0, K, G, KP, PER_CHANNEL)
        acc_store(part_ptr, acc_c, pid_r, width, cols, cmask, K, K, G, KP, PER_CHANNEL)
        acc_store(part_ptr, acc_q, pid_r, width, cols, cmask, 2 * K, K, G, KP, PER_CHANNEL)
        acc_store(part_ptr, acc_d, pid_r, width, cols, cmask, 3 * K, K, G, KP, PER_CHANNEL)


def forward(x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim):
    p, c, q, d = contiguous_values(num_slopes, num_intercepts, den_slopes, den_intercepts)
    return launch_forward(_tropical_rational_fwd_kernel, x, [p, c, q, d], p.dim() == 2, channel_dim, K=p.shape[-1])


def backward(grad, x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim,
                               need_x, need_values):
    p, c, q, d = contiguous_values(num_slopes, num_intercepts, den_slopes, den_intercepts)
    K = p.shape[-1]
    dx, sums = launch_backward(_tropical_rational_bwd_kernel, grad, x, [p, c, q, d], p.dim() == 2, channel_dim,
                           4 * K, need_x, need_values, K=K, KP=triton.next_power_of_2(K))
    return dx, own(sums[..., :K]), own(sums[..., K : 2 * K]), -sums[..., 2 * K : 3 * K], -sums[..., 3 * K :]
