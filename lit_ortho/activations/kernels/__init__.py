"""Fused kernels for the learnable activations, behind ``torch.library`` custom ops.

* :mod:`.ops`: the ``torch.ops.lit_ortho.<family>`` / ``<family>_backward`` custom ops (and ``<family>_cpu``
  for the C++ kernels), derived from each family's record (:class:`lit_ortho.activations.family.Family`);
  registered on first use.
* :mod:`.triton_common`: tiles, coefficient loads, partial sums and the launch plan shared by all
  kernels; ``triton_<family>.py``: one family's forward and backward kernels and their launchers.
* :mod:`.cpu`: C++ CPU kernels (``cpu.cpp``, built on first use) for the layouts inductor fuses badly
  (per-channel coefficients on the innermost dim of memory or on long rows; every layout for Fourier and
  Tropical-rational); each family's launchers live with its math.

Triton inputs: CUDA tensors of dtype float32, bfloat16 or float16 (CPU tensors only under
``TRITON_INTERPRET=1``, for testing); coefficients shared ``[K]`` or per channel ``[C, K]`` along any
``channel_dim``. Importing this package imports no triton; the kernels are imported on the first call.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

__all__ = ["TRITON_AVAILABLE", "INTERPRET", "TRITON_DTYPES", "check_device"]

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
# Read once, as triton itself does when it is imported: it must be set before that.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_device(x: Tensor) -> None:
    """Raise unless the kernels can run on ``x``'s device."""
    if x.is_cuda or x.device.type == "meta" or (x.device.type == "cpu" and INTERPRET):
        return
    raise RuntimeError(
        f"backend='triton' runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1, for testing); "
        f"got a {x.device.type} tensor. Use backend='auto' to fall back to eager off the GPU."
    )
