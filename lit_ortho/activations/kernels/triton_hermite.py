"""Triton kernels of the Hermite family: F = sum_k a_k P_k, P_{k+1} = (x P_k - P_{k-1}) / (k + 1), P_k' = P_{k-1}."""

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

_HERMITE_LIMIT = tl.constexpr(1e30)  # as the eager path: saturate P_k above degree 8 (no inf - inf)


# ---------------------------------------------------------------------------------------------------
# Hermite: F = sum_k a_k P_k, P_{k+1} = (x P_k - P_{k-1}) / (k + 1), P_k' = P_{k-1}
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _hermite_fwd_kernel(x_ptr, a_ptr, y_ptr, numel, width, K: tl.constexpr, CLAMP: tl.constexpr,
                        PER_CHANNEL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                        INT64: tl.constexpr):
    offs, mask, cols, cmask = tile(tl.program_id(0), tl.program_id(1), numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = coef(a_ptr, 1, cols, cmask, K, PER_CHANNEL) * x + coef(a_ptr, 0, cols, cmask, K, PER_CHANNEL)
    p_prev = tl.zeros_like(x) + 1.0
    p = x
    for k in tl.static_range(1, K - 1):
        p_next = (x * p - p_prev) * (1.0 / (k + 1))
        if CLAMP:
            p_next = tl.minimum(tl.maximum(p_next, -_HERMITE_LIMIT), _HERMITE_LIMIT)
        y += coef(a_ptr, k + 1, cols, cmask, K, PER_CHANNEL) * p_next
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
    acc = acc_zeros(KP, BLOCK_R, BLOCK_C, PER_CHANNEL)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < width
    for rb in range(pid_r, n_row_blocks, tl.num_programs(0)):
        offs, mask, _, _ = tile(rb, pid_c, numel, width, BLOCK_R, BLOCK_C, INT64, PER_CHANNEL)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # masked lanes: g = 0
        dydx = tl.zeros_like(x) + coef(a_ptr, 1, cols, cmask, K, PER_CHANNEL)
        if NEED_COEF:
            acc = acc_add(acc, g, 0, KP, PER_CHANNEL)
            acc = acc_add(acc, g * x, 1, KP, PER_CHANNEL)
        p_prev = tl.zeros_like(x) + 1.0
        p = x
        for k in tl.static_range(1, K - 1):
            dydx += coef(a_ptr, k + 1, cols, cmask, K, PER_CHANNEL) * p
            p_next = (x * p - p_prev) * (1.0 / (k + 1))
            if CLAMP:
                p_next = tl.minimum(tl.maximum(p_next, -_HERMITE_LIMIT), _HERMITE_LIMIT)
            if NEED_COEF:
                acc = acc_add(acc, g * p_next, k + 1, KP, PER_CHANNEL)
            p_prev = p
            p = p_next
        if NEED_X:
            tl.store(dx_ptr + offs, (g * dydx).to(dx_ptr.dtype.element_ty), mask=mask)
    if NEED_COEF:
        acc_store(part_ptr, acc, pid_r, width, cols, cmask, 0, K, K, KP, PER_CHANNEL)


# ---- per family: forward(x, *values, channel_dim) and backward(grad, x, *values, ...) ---------------
def forward(x, coefficients, channel_dim):
    (a,) = contiguous_values(coefficients)
    K = a.shape[-1]
    return launch_forward(_hermite_fwd_kernel, x, [a], a.dim() == 2, channel_dim, K=K, CLAMP=K > 9)


def backward(grad, x, coefficients, channel_dim, need_x, need_values):
    (a,) = contiguous_values(coefficients)
    K = a.shape[-1]
    dx, sums = launch_backward(_hermite_bwd_kernel, grad, x, [a], a.dim() == 2, channel_dim, K, need_x, need_values,
                           K=K, KP=triton.next_power_of_2(K), CLAMP=K > 9)
    return dx, sums
