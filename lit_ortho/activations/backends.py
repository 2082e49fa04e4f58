"""Which code computes a learnable activation: the ``backend`` option of every family.

* ``"triton"``: the family's fused kernels (:mod:`lit_ortho.activations.kernels`), behind
  ``torch.library`` custom ops. Asking for it where it cannot run raises, naming the reason.
* ``"eager"``: PyTorch ops: the family's custom autograd Function; while ``torch.compile`` traces,
  the family's compile-friendly twin (``Family.compiled``) instead, so a model compiles with
  ``fullgraph=True`` on any device.
* ``"auto"`` (default): ``"triton"`` for CUDA inputs of a supported dtype when triton is installed and
  the family has kernels; on CPU, for inputs of at least :data:`LAZY_COMPILE_MIN_ELEMENTS` elements (float32,
  bf16, fp16), the compile-friendly twin through ``torch.compile``, compiled on first use (a lazily compiled
  kernel: one pass over memory each way where eager PyTorch makes one per operation); ``"eager"`` otherwise
  (smaller CPU inputs, float64, no triton). Set ``LIT_ORTHO_LAZY_COMPILE`` to ``off`` to keep CPU calls
  eager, or to a number of elements to move the threshold (``0``: always). If compiling fails (no C++
  compiler, say) the family warns once and stays eager. Where a family's C++ kernels are faster than its compiled
  twin, CPU inputs run them instead (:func:`use_cpu_kernels`), in eager code and under ``torch.compile``: for the
  built-in families every contiguous or channels_last input (per-channel values on the innermost dim of memory
  included, whose coefficient sums inductor cannot fuse with dx); the compiled twin then runs on other layouts.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from lit_ortho.activations.family import Family
from lit_ortho.activations.kernels import TRITON_AVAILABLE, TRITON_DTYPES, check_device, cpu, ops
from lit_ortho.errors import UsageError

__all__ = ["BACKENDS", "LAZY_COMPILE_MIN_ELEMENTS", "CPU_KERNEL_MIN_ELEMENTS", "lazy_compile_threshold", "use_triton",
           "use_cpu_kernels", "run"]

BACKENDS = ("auto", "eager", "triton")

#: Below this many elements a CPU call stays eager: compiling (1.5-8 s per family and shape on 2 cores) would
#: cost a short run more than it saves (benchmarks/RESULTS.md, "eager CPU ... lazily compiled kernel").
LAZY_COMPILE_MIN_ELEMENTS = 1 << 22
#: From this many elements an eager CPU call runs the family's C++ kernels where its record lists the layout (built
#: once per machine and degree, ~1 s; below this the Python around a call costs more than eager PyTorch saves).
CPU_KERNEL_MIN_ELEMENTS = 1 << 16
LAZY_COMPILE_ENV = "LIT_ORTHO_LAZY_COMPILE"
_COMPILED: dict[str, Callable[..., Tensor]] = {}
_EAGER_ONLY: set[str] = set()  # families whose compilation failed here: eager from then on


def lazy_compile_threshold() -> Optional[int]:
    """The element count from which ``"auto"`` compiles CPU calls (``LIT_ORTHO_LAZY_COMPILE``); None: never."""
    value = os.environ.get(LAZY_COMPILE_ENV, "").strip().lower()
    if value in ("", "auto"):
        return LAZY_COMPILE_MIN_ELEMENTS
    if value == "off":
        return None
    if value.isdigit():
        return int(value)
    raise UsageError(f"{LAZY_COMPILE_ENV}={value!r}: valid values are 'off', 'auto' or a number of elements "
                     f"(0: compile every CPU call; default {LAZY_COMPILE_MIN_ELEMENTS})")


def _lazily_compiled(family: Family, backend: str, x: Tensor) -> Optional[Callable[..., Tensor]]:
    """The family's compiled kernel where ``"auto"`` uses one for ``x`` (see the module docstring), else None."""
    if backend != "auto" or x.device.type != "cpu" or x.dtype not in TRITON_DTYPES or family.name in _EAGER_ONLY:
        return None
    threshold = lazy_compile_threshold()
    if threshold is None or x.numel() < threshold or torch._C._are_functorch_transforms_active():
        return None
    if family.name not in _COMPILED:
        _COMPILED[family.name] = torch.compile(family.traced(), fullgraph=True)
    return _COMPILED[family.name]


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


def use_cpu_kernels(family: Family, backend: str, x: Tensor, values: Sequence[Tensor], channel_dim: int) -> bool:
    """Whether ``"auto"`` runs the family's C++ CPU kernels on ``x``: in a layout its record lists (``Family.cpu.layouts``:
    every contiguous or channels_last input for the built-in families; :mod:`~lit_ortho.activations.kernels.cpu`), under
    ``torch.compile`` or from :data:`CPU_KERNEL_MIN_ELEMENTS` elements, unless ``LIT_ORTHO_LAZY_COMPILE=off``."""
    per_channel = any(v.dim() == 2 for v in values)
    if backend != "auto" or family.cpu is None or cpu.layout(x, per_channel, channel_dim) not in family.cpu.layouts:
        return False
    if not torch.compiler.is_compiling():
        threshold = lazy_compile_threshold()
        if threshold is None or x.numel() < min(threshold, CPU_KERNEL_MIN_ELEMENTS) or torch._C._are_functorch_transforms_active():
            return False
    return _cpu_kernels_built(cpu.coefficient_count(values))


@torch.compiler.assume_constant_result  # run, not traced, by torch.compile: it may compile C++
def _cpu_kernels_built(K: int) -> bool:
    return cpu.available(K)


def run(family: Family, backend: str, x: Tensor, values: Sequence[Tensor], channel_dim: int) -> Tensor:
    """F(x) for the family's value tensors, by the chosen backend."""
    if use_triton(backend, x, family):
        return ops.op(family.name)(x, *values, channel_dim)
    if use_cpu_kernels(family, backend, x, values, channel_dim):
        return ops.op(family.name, "cpu")(x, *values, channel_dim)
    if torch.compiler.is_compiling():
        return family.traced()(x, *values, channel_dim=channel_dim)
    compiled = _lazily_compiled(family, backend, x)
    if compiled is not None:
        try:
            return compiled(x, *values, channel_dim=channel_dim)
        except Exception as error:  # noqa: BLE001 - no C++ compiler, an inductor limitation: eager still works
            _EAGER_ONLY.add(family.name)
            warnings.warn(f"{family.name}: compiling the CPU kernel failed ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}); running eager PyTorch instead "
                          f"(slower for large tensors). Set {LAZY_COMPILE_ENV}=off to skip the attempt.", stacklevel=2)
    return family.eager(x, *values, channel_dim=channel_dim)
