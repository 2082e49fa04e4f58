"""What every Triton kernel of lit_ortho shares: tiles, coefficient loads, partial sums, the launch plan.

Imported lazily (by the custom-op implementations in :mod:`lit_ortho.activations.kernels.ops`), so
importing lit_ortho never imports triton. Everything computes in float32 and reads/writes the input's
dtype (float32, bfloat16 or float16); coefficients are float32. Each family's kernels live in
``triton_<family>.py`` and provide ``forward(x, *values, channel_dim)`` and
``backward(grad, x, *values, channel_dim, need_x, need_values)``.

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

from lit_ortho.activations.kernels import INTERPRET


# Launch parameters (chosen from sm_90 compiles: no register spills, 16-byte loads, no layout
# conversion inside the backward loop for shared coefficients). Tiles hold ``*tile`` elements,
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
def tile(rb, pid_c, numel, width, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, INT64: tl.constexpr,
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
def coef(ptr, k: tl.constexpr, cols, cmask, STRIDE: tl.constexpr, PER_CHANNEL: tl.constexpr):
    """Coefficient ``k``: a scalar (shared) or the ``[1, BLOCK_C]`` row of the tile's channels."""
    if PER_CHANNEL:
        v = tl.load(ptr + cols[None, :] * STRIDE + k, mask=cmask[None, :], other=0.0)
    else:
        v = tl.load(ptr + k)
    return v


@triton.jit
def acc_zeros(KP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, PER_CHANNEL: tl.constexpr):
    if PER_CHANNEL:
        acc = tl.zeros((KP, BLOCK_C), tl.float32)  # column (= channel) sums
    else:
        acc = tl.zeros((BLOCK_R, KP), tl.float32)  # row sums; rows are added up once, at the end
    return acc


@triton.jit
def acc_add(acc, v, k: tl.constexpr, KP: tl.constexpr, PER_CHANNEL: tl.constexpr):
    """acc[k] += the sums of the tile v along one axis. Shared coefficients sum each row (a
    contiguous stretch of memory held by one warp: shuffles, no barrier) into a [BLOCK_R, KP]
    accumulator laid out like the tile, and leave the cross-warp sum to acc_store; per-channel
    coefficients sum each column. The select runs on the reduced sums, not per element."""
    if PER_CHANNEL:
        kk = tl.arange(0, KP)[:, None]
        acc = tl.where(kk == k, acc + tl.sum(v, axis=0)[None, :], acc)
    else:
        kk = tl.arange(0, KP)[None, :]
        acc = tl.where(kk == k, acc + tl.sum(v, axis=1)[:, None], acc)
    return acc


@triton.jit
def acc_store(part_ptr, acc, pid_r, width, cols, cmask, OFFSET: tl.constexpr, COUNT: tl.constexpr,
               G: tl.constexpr, KP: tl.constexpr, PER_CHANNEL: tl.constexpr):
    """Write acc[:COUNT] to partial[pid_r, (channel,) OFFSET:OFFSET + COUNT] of a [..., G] buffer."""
    if PER_CHANNEL:
        kk = tl.arange(0, KP)[:, None]
        ptrs = part_ptr + (pid_r * width + cols[None, :]) * G + OFFSET + kk
        tl.store(ptrs, acc, mask=(kk < COUNT) & cmask[None, :])
    else:
        kk = tl.arange(0, KP)
        tl.store(part_ptr + pid_r * G + OFFSET + kk, tl.sum(acc, axis=0), mask=kk < COUNT)


# ---------------------------------------------------------------------------------------------------
# Host side: layouts, launch parameters, partial-sum post-processing
# ---------------------------------------------------------------------------------------------------
def interpret() -> bool:
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
        interpreting = interpret()
        cfg = INTERPRET_CONFIG if interpreting else CONFIG
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
        target = cfg["programs"] if interpreting else _sm_count(x.device) * cfg["programs_per_sm"]
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


def contiguous_values(*values: torch.Tensor) -> list[torch.Tensor]:
    return [v.contiguous() for v in values]


def own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy: custom-op outputs may not alias each other (slices of one sums buffer)."""
    return t.clone(memory_format=torch.contiguous_format)


def inverse_factorials_on_device(n: int, like: torch.Tensor) -> torch.Tensor:
    """1/k!, k = 1..n, made on the device (no host-to-device copy: CUDA-graph safe). k! is exact in
    float32 up to 13!, so these equal the eager path's float32(1/k!) there."""
    return torch.arange(1, n + 1, dtype=torch.float32, device=like.device).cumprod(0).reciprocal()


def launch_forward(kernel, x, coefs, per_channel, channel_dim, **constexprs):
    plan = _Plan(x, per_channel, channel_dim, backward=False)
    if plan.numel == 0:
        return plan.out
    xin = plan.input(x)
    target, finish = plan.output()
    kernel[plan.fwd_grid](xin, *coefs, target, plan.numel, plan.width, **constexprs, **plan.common())
    return finish()


def launch_backward(kernel, grad, x, coefs, per_channel, channel_dim, groups, need_x, need_coef, **constexprs):
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
