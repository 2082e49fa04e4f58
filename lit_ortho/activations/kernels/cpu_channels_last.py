"""C++ CPU kernels for per-channel coefficients on the innermost dimension of memory, built on first use.

With ``per_channel`` coefficients on ``channel_dim=-1`` (or on the channel dim of a channels_last tensor),
each coefficient gradient is a sum down the columns of an ``[N, C]`` array. Inductor's CPU backend in
torch 2.14 cannot compute those sums in the same pass as the row-major dx (it does not reorder loops for
fusion on CPU), so the compiled twin reads the input twice and recomputes every term: 1.6-5.7x compiled GELU.
``cpu_channels_last.cpp`` computes dx and all the sums in one pass over tiles of rows by channels.

The source is compiled once per machine and coefficient count K with the C++ compiler ``torch.compile``
uses (``-O3 -march=native -fopenmp``, about 1 s), into ``$LIT_ORTHO_KERNEL_CACHE`` (default
``~/.cache/lit_ortho/kernels``, or a temporary directory where that is not writable), written under a
temporary name and renamed, so concurrent processes never load a half-written library. Where no compiler
works, :func:`available` warns once and returns False, and the families' other paths run instead.

Each family's launchers (``forward(x, *values, channel_dim)`` and ``backward(grad, x, *values, channel_dim,
need_x, need_values)``, as the Triton ones) prepare the ``[ROWS, C]`` coefficient rows that the C++ expects
and turn its ``[SUMS, C]`` sums into gradients; they live with the family's math and call :func:`forward` and
:func:`backward` here. Inputs are computed in float32 (bf16 and fp16 are converted) and returned in their dtype.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["available", "applies", "coefficient_count", "forward", "backward", "DTYPES", "CACHE_ENV", "SOURCE"]

SOURCE = Path(__file__).with_suffix(".cpp")
CACHE_ENV = "LIT_ORTHO_KERNEL_CACHE"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
_LIBRARIES: dict[int, ctypes.CDLL] = {}
_FAILED: dict[int, str] = {}
_LOCK = threading.Lock()


def _cache_dirs() -> list[Path]:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return [Path(configured)]
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lit_ortho" / "kernels"
    return [home, Path(tempfile.gettempdir()) / f"lit_ortho_kernels_{os.getuid() if hasattr(os, 'getuid') else 0}"]


def _compiler() -> str:
    from torch._inductor.cpp_builder import get_cpp_compiler  # the compiler torch.compile's CPU backend uses

    return get_cpp_compiler()


def _build(K: int) -> ctypes.CDLL:
    """Compile (or find compiled) the kernels for K coefficients and load them."""
    source = SOURCE.read_bytes()
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), version.encode(), str(K).encode(),
                                     torch.__version__.encode()])).hexdigest()[:24]
    errors = []
    for directory in _cache_dirs():
        target = directory / f"cpu_channels_last_k{K}_{key}.so"
        if target.exists():
            return ctypes.CDLL(str(target))
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, partial = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=directory)
            os.close(fd)
        except OSError as error:  # read-only or full: the next directory
            errors.append(f"{directory}: {error}")
            continue
        try:
            done = subprocess.run([compiler, *FLAGS, f"-DLIT_K={K}", str(SOURCE), "-o", partial],
                                  capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-2000:]}")
            os.replace(partial, target)  # atomic: another process loads the whole library or none
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return ctypes.CDLL(str(target))
    raise OSError("no writable kernel cache: " + "; ".join(errors) + f" (set {CACHE_ENV} to a writable directory)")


def _library(K: int) -> Optional[ctypes.CDLL]:
    with _LOCK:
        if K not in _LIBRARIES and K not in _FAILED:
            try:
                _LIBRARIES[K] = _build(K)
            except Exception as error:  # noqa: BLE001 - no compiler, no OpenMP, a full disk: the other paths still work
                _FAILED[K] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                warnings.warn(f"lit_ortho: building the CPU kernels for per-channel coefficients failed ({_FAILED[K]}); "
                              "those layers run the compiled twin or eager PyTorch instead (slower).", stacklevel=3)
        return _LIBRARIES.get(K)


def available(K: int) -> bool:
    """Whether the kernels for K coefficients are built (building them now if need be); warns once if they cannot be."""
    return _library(K) is not None


def coefficient_count(values: Sequence[Tensor]) -> int:
    """K of a family's ``[C, K]`` values (their longest last dim: Fourier's bias is ``[C, 1]``)."""
    return max(v.shape[-1] for v in values if v.dim() == 2)


def applies(x: Tensor, values: Sequence[Tensor], channel_dim: int) -> bool:
    """Whether the kernels handle this call: a CPU input of a float32/bf16/fp16 dtype, per-channel values, and the
    channel dim innermost in memory with the rest dense (``channel_dim=-1`` on a contiguous tensor, or dim 1 of a
    channels_last one)."""
    if x.device.type != "cpu" or x.dtype not in DTYPES or x.numel() == 0 or not any(v.dim() == 2 for v in values):
        return False
    return x.movedim(channel_dim, -1).is_contiguous()


def _matrix(t: Tensor, channel_dim: int) -> Tensor:
    """``t`` as the ``[N, C]`` float32 array the kernels read (a view when ``t`` is float32)."""
    m = t.movedim(channel_dim, -1)
    return m.float().contiguous().reshape(-1, m.shape[-1])


def _pointer(t: Optional[Tensor]):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def _rows(rows: Sequence[Tensor]) -> Tensor:
    """The ``[ROWS, C]`` float32 coefficient rows, from ``[C]`` or ``[C, k]`` pieces (a piece's columns become rows)."""
    return torch.cat([r.detach().float().reshape(r.shape[0], -1).t() for r in rows]).contiguous()


def _consts(consts: Sequence[float]) -> Tensor:
    return torch.tensor([float(c) for c in consts] or [0.0], dtype=torch.float32)


def forward(family: str, K: int, x: Tensor, channel_dim: int, rows: Sequence[Tensor], consts: Sequence[float] = ()) -> Tensor:
    """F(x) by the family's C++ forward; ``rows`` in the order the .cpp's ``<family>::value`` reads them."""
    library = _library(K)
    out = torch.empty_like(x)
    xm = _matrix(x, channel_dim)
    ym = out.movedim(channel_dim, -1).view(xm.shape) if x.dtype == torch.float32 else torch.empty_like(xm)
    rows_t, consts_t = _rows(rows), _consts(consts)
    getattr(library, f"{family}_forward")(_pointer(xm), _pointer(ym), _pointer(rows_t), ctypes.c_long(xm.shape[0]),
                                          ctypes.c_long(xm.shape[1]), _pointer(consts_t), ctypes.c_int(torch.get_num_threads()))
    if x.dtype != torch.float32:
        out.movedim(channel_dim, -1).copy_(ym.reshape(out.movedim(channel_dim, -1).shape))
    return out


def backward(family: str, K: int, grad: Tensor, x: Tensor, channel_dim: int, rows: Sequence[Tensor], n_sums: int,
             need_x: bool, consts: Sequence[float] = ()) -> tuple[Tensor, Tensor]:
    """(dx, zeros unless ``need_x``; the ``[n_sums, C]`` float32 sums) by the family's C++ backward: one pass over x and grad."""
    library = _library(K)
    xm, gm = _matrix(x, channel_dim), _matrix(grad, channel_dim)
    dx = torch.empty_like(x) if need_x else torch.zeros_like(x)  # the ops return a tensor either way
    dxm = None
    if need_x:
        dxm = dx.movedim(channel_dim, -1).view(xm.shape) if x.dtype == torch.float32 else torch.empty_like(xm)
    sums = torch.empty(n_sums, xm.shape[1], dtype=torch.float32)
    rows_t, consts_t = _rows(rows), _consts(consts)
    getattr(library, f"{family}_backward")(_pointer(xm), _pointer(gm), _pointer(dxm), _pointer(sums), _pointer(rows_t),
                                           ctypes.c_long(xm.shape[0]), ctypes.c_long(xm.shape[1]), _pointer(consts_t),
                                           ctypes.c_int(torch.get_num_threads()))
    if need_x and x.dtype != torch.float32:
        dx.movedim(channel_dim, -1).copy_(dxm.reshape(dx.movedim(channel_dim, -1).shape))
    return dx, sums
