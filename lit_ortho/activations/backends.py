"""Which code computes a learnable activation: the ``backend`` option of every family.

* ``"triton"``: the family's fused kernels (:mod:`lit_ortho.activations.kernels`), behind
  ``torch.library`` custom ops. Asking for it where it cannot run raises, naming the reason.
* ``"eager"``: PyTorch ops: the family's custom autograd Function; while ``torch.compile`` traces,
  the family's compile-friendly twin (``Family.compiled``) instead, so a model compiles with
  ``fullgraph=True`` on any device.
* ``"auto"`` (default): ``"triton"`` for CUDA inputs of a supported dtype when triton is installed and
  the family has kernels, ``"eager"`` otherwise (CPU, float64, no triton).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from lit_ortho.activations.family import Family
from lit_ortho.activations.kernels import TRITON_AVAILABLE, TRITON_DTYPES, check_device, ops

__all__ = ["BACKENDS", "use_triton", "run"]

BACKENDS = ("auto", "eager", "triton")


def use_triton(backend: str, x: Tensor, family: Family | None = None) -> bool:
    """Whether ``backend`` runs the Triton kernels on ``x``; raises where ``"triton"`` cannot."""
    if backend == "eager":
        return False
    has_kernels = family is None or family.triton is not None
    if backend == "auto":
        return has_kernels and TRITON_AVAILABLE and x.is_cuda and x.dtype in TRITON_DTYPES
    if not has_kernels:
        raise RuntimeError(f"backend='triton': the {family.name!r} family has no Triton kernels; use backend='auto'")
    if not TRITON_AVAILABLE:
        raise RuntimeError("backend='triton' needs the triton package (pip install triton); use backend='auto'")
    if x.dtype not in TRITON_DTYPES:
        raise TypeError(f"backend='triton' takes float32, bfloat16 or float16 inputs, got {x.dtype}; "
                        "use backend='auto' to fall back to eager")
    check_device(x)
    return True


def run(family: Family, backend: str, x: Tensor, values: Sequence[Tensor], channel_dim: int) -> Tensor:
    """F(x) for the family's value tensors, by the chosen backend."""
    if use_triton(backend, x, family):
        return ops.op(family.name)(x, *values, channel_dim)
    fn = family.traced() if torch.compiler.is_compiling() else family.eager
    return fn(x, *values, channel_dim=channel_dim)
