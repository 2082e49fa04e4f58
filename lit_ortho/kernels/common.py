"""Tensor helpers shared by the eager autograd Functions and their compile-friendly twins."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def inverse_factorials(n: int) -> list[float]:
    """[1/0!, 1/1!, ..., 1/n!]: the Hermite basis normalisation and the Fourier term weights."""
    return [1.0 / math.factorial(k) for k in range(n + 1)]


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for every input dtype (bf16/fp16 included), float64 only for float64 (gradcheck)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def channel_view(coef: Tensor, x: Tensor, channel_dim: int) -> Tensor:
    """Shape a per-layer ``[]`` or per-channel ``[C]`` coefficient to broadcast against ``x``."""
    if coef.dim() == 0:
        return coef
    shape = [1] * x.dim()
    shape[channel_dim] = coef.shape[0]
    return coef.reshape(shape)


def column(coef: Tensor, k: int, x: Tensor, channel_dim: int) -> Tensor:
    """Column k of a ``[K]`` or ``[C, K]`` coefficient tensor, shaped to broadcast against ``x``."""
    return channel_view(coef[..., k], x, channel_dim)


def reduce_channels(t: Tensor, per_channel: bool, channel_dim: int) -> Tensor:
    """Sum over every element (shared coefficients) or over all but the channel dimension."""
    if not per_channel:
        return t.sum()
    dim = channel_dim % t.dim()
    return t.sum(dim=[d for d in range(t.dim()) if d != dim])
