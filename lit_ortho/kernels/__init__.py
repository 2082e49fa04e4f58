"""Fused kernels for the learnable activations, and the backend dispatch of ``LearnableActivation``.

Backends (the ``backend`` option of every learnable activation):

* ``"triton"``: the Triton kernels of :mod:`lit_ortho.kernels._triton`, behind the ``torch.library``
  custom ops of :mod:`lit_ortho.kernels.ops` (``torch.ops.lit_ortho.hermite`` ...). Inputs: CUDA
  tensors of dtype float32, bfloat16 or float16 (CPU tensors only under ``TRITON_INTERPRET=1``, for
  testing); coefficients shared ``[K]`` or per channel ``[C, K]`` along any ``channel_dim``
  (channel_dim = -1 on a contiguous input is native; other channel dims cost a layout copy). Asking
  for it where it cannot run raises, naming the reason.
* ``"eager"``: PyTorch ops (the custom autograd Functions in :mod:`lit_ortho.activations`). Under
  ``torch.compile`` the Fourier and tropical families trace a formulation written for inductor
  instead (:mod:`lit_ortho.kernels.compiled`: no data-dependent shapes, one shared sine/cosine
  range reduction), so a model compiles with ``fullgraph=True`` on any device.
* ``"auto"`` (default): ``"triton"`` for CUDA inputs of a supported dtype when triton is installed,
  ``"eager"`` otherwise (CPU, float64, no triton).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable, Sequence

import torch
from torch import Tensor

from lit_ortho.kernels import compiled, ops

__all__ = ["TRITON_AVAILABLE", "INTERPRET", "TRITON_DTYPES", "use_triton", "check_device", "dispatch"]

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
# Read once, as triton itself does when it is imported: it must be set before that.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def use_triton(backend: str, x: Tensor) -> bool:
    """Whether ``backend`` runs the Triton kernels on ``x``; raises where ``"triton"`` cannot."""
    if backend == "eager":
        return False
    if backend == "auto":
        return TRITON_AVAILABLE and x.is_cuda and x.dtype in TRITON_DTYPES
    if not TRITON_AVAILABLE:
        raise RuntimeError("backend='triton' needs the triton package (pip install triton); use backend='auto'")
    if x.dtype not in TRITON_DTYPES:
        raise TypeError(f"backend='triton' takes float32, bfloat16 or float16 inputs, got {x.dtype}; "
                        "use backend='auto' to fall back to eager")
    check_device(x)
    return True


def check_device(x: Tensor) -> None:
    if x.is_cuda or x.device.type == "meta" or (x.device.type == "cpu" and INTERPRET):
        return
    raise RuntimeError(
        f"backend='triton' runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1, for testing); "
        f"got a {x.device.type} tensor. Use backend='auto' to fall back to eager off the GPU."
    )


def dispatch(family: str, backend: str, x: Tensor, values: Sequence[Tensor], channel_dim: int,
             eager: Callable[..., Tensor]) -> Tensor:
    """F(x) by the chosen backend; ``eager`` is the family's ``LearnableActivation.function``."""
    if use_triton(backend, x):
        return ops.op(family)(x, *values, channel_dim)
    if torch.compiler.is_compiling():
        fn = compiled.FUNCTIONS.get(family)
        if fn is not None:
            return fn(x, *values, channel_dim=channel_dim)
    return eager(x, *values, channel_dim=channel_dim)
