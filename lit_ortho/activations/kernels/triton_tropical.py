"""Triton kernels of the Tropical family: F = s * max_k (k x + c_k); the first maximal piece wins ties, as eager."""

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
    tile,
)

# ---------------------------------------------------------------------------------------------------
# Tropical: F = s * max_k (k x + c_k); the first maximal piece wins ties, as in the eager path
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _tropical_fwd_kernel(x_ptr, c_ptr, s_ptr, y_ptr, numel, width, K: tl.constexpr, PER_CHANNEL: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, INT64: tl.constexpr):
    offs, mask, cols, cmask = tile(tl.program_id(0), tl.program_id(1), numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    best = 0.0 * x + coef(c_ptr, 0, cols, cmask, K, PER_CHANNEL)
    for k in tl.static_range(1, K):
        cand = k * x + coef(c_ptr, k, cols, cmask, K, PER_CHANNEL)
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
    acc = acc_zeros(KP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < width
    for rb in range(pid_r, n_row_blocks, tl.num_programs(0)):
        offs, mask, _, _ = tile(rb, pid_c, numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        best = 0.0 * x + coef(c_ptr, 0, cols, cmask, K, PER_CHANNEL)
        arg = tl.zeros_like(x)
        for k in tl.static_range(1, K):
            cand = k * x + coef(c_ptr, k, cols, cmask, K, PER_CHANNEL)
            arg = tl.where(cand > best, k, arg)
            best = tl.maximum(best, cand)
        if NEED_X:
            tl.store(dx_ptr + offs, (g * scale * arg).to(dx_ptr.dtype.element_ty), mask=mask)
        if NEED_COEF:
            for k in tl.static_range(K):
                acc = acc_add(acc, tl.where(arg == k, g, 0.0), k, KP, PER_CHANNEL)
    if NEED_COEF:
        acc_store(part_ptr, acc, pid_r, width, cols, cmask, 0, K, K, KP, PER_CHANNEL)


def forward(x, intercepts, scale, channel_dim):
    c, s = contiguous_values(intercepts, scale)
    return launch_forward(_tropical_fwd_kernel, x, [c, s], c.dim() == 2, channel_dim, K=c.shape[-1])


def backward(grad, x, intercepts, scale, channel_dim, need_x, need_values):
    c, s = contiguous_values(intercepts, scale)
    K = c.shape[-1]
    dx, sums = launch_backward(_tropical_bwd_kernel, grad, x, [c, s], c.dim() == 2, channel_dim, K, need_x,
                           need_values, K=K, KP=triton.next_power_of_2(K))
    return dx, sums * s
