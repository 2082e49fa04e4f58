"""C++ CPU kernels of the learnable families, built on first use; ``"auto"`` runs them where they beat the compiled twin.

``cpu.cpp`` computes a family's forward, and its dx with every coefficient-gradient sum, in one pass over memory each
way, in two layouts (:func:`layout`):

* ``"columns"``: per-channel coefficients on the innermost dim of memory (``channel_dim=-1``, or dim 1 of a
  channels_last tensor). Each coefficient gradient is then a sum down the columns of an ``[N, C]`` array, which
  inductor's CPU backend in torch 2.14 cannot compute in dx's loop (it does not reorder loops for fusion on CPU): the
  compiled twin read the input twice and recomputed every term, 1.6-5.7x compiled GELU.
* ``"shared"``, ``"rows"``, ``"short_rows"``: a contiguous input with shared coefficients, or per-channel ones on an
  outer dim (each channel a row of the elements after it), with the coefficients broadcast along the rows.
  Tropical-rational's 28 sums take inductor two passes (it fuses at most 16 reductions into a loop); these one.

Which family takes which layouts is its record's ``Family.cpu.layouts`` (measured: benchmarks/RESULTS.md).

The source is compiled once per machine and coefficient count K with the C++ compiler ``torch.compile``
uses (``-O3 -march=native -fopenmp``, about 1 s), into ``$LIT_ORTHO_KERNEL_CACHE`` (default
``~/.cache/lit_ortho/kernels``, or a temporary directory where that is not writable), written under a
temporary name and renamed, so concurrent processes never load a half-written library. Where no compiler
works, :func:`available` warns once and returns False, and the families' other paths run instead.

Each family's launchers (``forward(x, *values, channel_dim)`` and ``backward(grad, x, *values, channel_dim,
need_x, need_values)``, as the Triton ones) prepare the ``[C, ROWS]`` coefficients that the C++ expects
and turn its sums into gradients; they live with the family's math and call :func:`forward` and :func:`backward` here
(the tropical families :func:`lines_backward`: breakpoints, pass and each line's sums in one call). They run inside the
custom ops, once a step each way, and every torch call in them costs microseconds (several times that after a kernel
has swept the caches), so they make as few as they can. Inputs are computed in float32 (bf16 and fp16 are converted)
and returned in their dtype.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["available", "layout", "coefficient_count", "forward", "backward", "lines_backward", "breakpoints", "piece_sums",
           "cast", "LAYOUTS", "DTYPES", "CACHE_ENV", "SOURCE"]

SOURCE = Path(__file__).with_suffix(".cpp")
CACHE_ENV = "LIT_ORTHO_KERNEL_CACHE"
BUILD_TIMEOUT_S = 300
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
_LIBRARIES: dict[int, ctypes.CDLL] = {}
_FAILED: dict[int, str] = {}
_LOCK = threading.Lock()
_FUNCTIONS: dict[tuple[int, str], ctypes._CFuncPtr] = {}  # (K, exported name): looked up once


def _cache_dirs() -> list[Path]:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return [Path(configured)]
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lit_ortho" / "kernels"
    return [home, Path(tempfile.gettempdir()) / f"lit_ortho_kernels_{os.getuid() if hasattr(os, 'getuid') else 0}"]


def _compiler() -> str:
    from torch._inductor.cpp_builder import get_cpp_compiler  # the compiler torch.compile's CPU backend uses

    return get_cpp_compiler()


def _cpu_identity() -> str:
    """What ``-march=native`` compiles for: the CPU's model and instruction-set flags. Part of the cache key, so that a
    cache on a home directory shared by nodes of different CPUs never hands one a library with instructions it lacks
    (an AVX-512 build on an AVX2 node dies of SIGILL)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [next((line for line in lines if line.startswith(k)), "") for k in ("model name", "flags", "Features")]
        return "\n".join(wanted)
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _build(K: int) -> ctypes.CDLL:
    """Compile (or find compiled) the kernels for K coefficients and load them."""
    source = SOURCE.read_bytes()
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), version.encode(), str(K).encode(),
                                     torch.__version__.encode(), _cpu_identity().encode()])).hexdigest()[:24]
    errors = []
    for directory in _cache_dirs():
        target = directory / f"cpu_k{K}_{key}.so"
        if target.exists():
            return ctypes.CDLL(str(target))
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, partial = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=directory)
            os.close(fd)
        except OSError as error:  # read-only or full: the next directory
            errors.append(f"{directory}: {error}")
            continue
        _remove_stale_partials(directory)
        try:
            done = subprocess.run([compiler, *FLAGS, f"-DLIT_K={K}", str(SOURCE), "-o", partial],
                                  capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            if done.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-2000:]}")
            os.replace(partial, target)  # atomic: another process loads the whole library or none
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return ctypes.CDLL(str(target))
    raise OSError("no writable kernel cache: " + "; ".join(errors) + f" (set {CACHE_ENV} to a writable directory)")


def _remove_stale_partials(directory: Path) -> None:
    """Delete the partial libraries of builds killed midway (kill -9, a node lost): older than any build may run, so
    never one that another process is still writing."""
    for partial in directory.glob("cpu_k*.so.*.tmp"):
        try:
            if time.time() - partial.stat().st_mtime > 2 * BUILD_TIMEOUT_S:
                partial.unlink()
        except OSError:  # gone already (another process cleaned it), or not ours to delete
            pass


def _library(K: int) -> Optional[ctypes.CDLL]:
    with _LOCK:
        if K not in _LIBRARIES and K not in _FAILED:
            try:
                _LIBRARIES[K] = _build(K)
            except Exception as error:  # noqa: BLE001 - no compiler, no OpenMP, a full disk: the other paths still work
                _FAILED[K] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                warnings.warn(f"lit_ortho: building the CPU kernels for {K} coefficients failed ({_FAILED[K]}); "
                              "those layers run the compiled twin or eager PyTorch instead (slower).", stacklevel=3)
        return _LIBRARIES.get(K)


def available(K: int) -> bool:
    """Whether the kernels for K coefficients are built (building them now if need be); warns once if they cannot be."""
    return _library(K) is not None


def coefficient_count(values: Sequence[Tensor]) -> int:
    """K of a family's values (their longest last dim: Fourier's bias is ``[1]`` or ``[C, 1]``)."""
    return max(v.shape[-1] for v in values if v.dim() >= 1)


#: Rows of per-channel values shorter than this many elements are walked channel by channel in the backward (the .cpp's
#: SHORT_ROW).
SHORT_ROW = 4096
LAYOUTS = ("columns", "shared", "rows", "short_rows")


def layout(x: Tensor, per_channel: bool, channel_dim: int) -> Optional[str]:
    """How the kernels walk ``x`` (one of :data:`LAYOUTS`), or None where they do not apply (another device or dtype, an
    empty or non-dense tensor):

    * ``"columns"``: per-channel values with the channel dim innermost in memory (``channel_dim=-1`` on a contiguous
      tensor, dim 1 of a channels_last one);
    * ``"shared"``: shared values on a contiguous or channels_last tensor, walked in memory order;
    * ``"rows"`` / ``"short_rows"``: per-channel values on an outer dim of a contiguous tensor, each channel a row of
      the elements after it, of at least / fewer than :data:`SHORT_ROW` elements (NHWC's dim 1 / NCHW's dim 1).
    """
    if x.device.type != "cpu" or x.dtype not in DTYPES or x.numel() == 0:
        return None
    if not per_channel:
        return "shared" if _memory_order(x) is not None else None
    if not x.is_contiguous():  # channels_last's dim 1, say: a view with the channel dim innermost (microseconds)
        return "columns" if x.movedim(channel_dim, -1).is_contiguous() else None
    # x contiguous: with its channel dim moved innermost it stays contiguous iff the dims after the channel dim hold one
    # element or the channel dim has size 1, so no view is made.
    channels, d = x.size(channel_dim), channel_dim % x.dim()  # size(): torch's IndexError for a dim out of range
    after = math.prod(x.shape[d + 1 :])
    if after == 1 or channels == 1:
        return "columns"
    return "rows" if after >= SHORT_ROW else "short_rows"


def _memory_order(x: Tensor) -> Optional[list[int]]:
    """``x``'s dims from the outermost in memory to the innermost for a contiguous or channels_last(_3d) tensor (so
    permuted, it is contiguous); None for other layouts. Checked, not sorted by stride: under ``torch.compile`` with
    dynamic shapes the strides are symbols, which Python cannot sort."""
    if x.is_contiguous():
        return list(range(x.dim()))
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return [0, 2, 3, 1]
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return [0, 2, 3, 4, 1]
    return None


def _walked_view(t: Tensor, x: Tensor, kind: str, channel_dim: int) -> Tensor:
    """``t`` (x's shape) with its dims in the order the kernels walk ``x``: a contiguous view where ``t`` is laid out as x."""
    if kind == "columns":
        return t.movedim(channel_dim, -1)
    return t.permute(_memory_order(x)) if kind == "shared" else t


def _walked(t: Tensor, x: Tensor, kind: str, channel_dim: int) -> Tensor:
    """What the kernels read for ``t``: ``t`` itself where it is float32 and laid out as x (x's memory order is the walk's,
    as :func:`layout` checked), else :func:`_walked_view` made contiguous float32. Each torch call here is a few
    microseconds, several times that after a kernel has swept the caches: the fast path makes none."""
    if t.dtype == torch.float32 and (t is x or (t.shape == x.shape and t.stride() == x.stride())):
        return t
    return as_float32(_walked_view(t, x, kind, channel_dim))


def _sizes(x: Tensor, kind: str, per_channel: bool, channel_dim: int) -> list[int]:
    """[N, C] for columns; [O, C, I] for rows (O = C = 1 for shared values)."""
    if kind == "columns":
        C = x.shape[channel_dim]
        return [x.numel() // C, C]
    if not per_channel:
        return [1, 1, x.numel()]
    d = channel_dim % x.dim()
    return [math.prod(x.shape[:d]), x.shape[d], math.prod(x.shape[d + 1 :])]


def _pointer(t: Optional[Tensor]):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def _rows(rows: Sequence[Tensor]) -> Tensor:
    """The ``[C, ROWS]`` float32 coefficients, channel by channel, from the pieces ``[C, k]`` side by side (shared:
    ``[k]``, C = 1): one ``cat``, where rows ``[ROWS, C]`` took a transpose a piece; none for one contiguous float32
    piece. (The launchers run inside the custom ops, below autograd: nothing here is recorded.)"""
    return as_float32(rows[0] if len(rows) == 1 else torch.cat(rows, dim=-1))


def _consts(consts: Sequence[float]) -> Tensor:
    """The constants as the kernels read them: pass a tuple of floats made once (a module constant) and this is one
    cache lookup."""
    return _consts_tensor(consts if type(consts) is tuple else tuple(float(c) for c in consts))


@functools.lru_cache(maxsize=64)
def _consts_tensor(consts: tuple[float, ...]) -> Tensor:
    """One tensor per set of constants, made once (the kernels only read it)."""
    return torch.tensor(list(consts) or [0.0], dtype=torch.float32)


def _function(K: int, name: str):
    function = _FUNCTIONS.get((K, name))
    if function is None:
        function = _FUNCTIONS[K, name] = getattr(_library(K), name)
    return function


def _call(K: int, name: str, kind: str, sizes: list[int], *tensors: Optional[Tensor]) -> None:
    function = _function(K, name if kind == "columns" else f"{name}_rows")
    *pointers, consts = (_pointer(t) for t in tensors)
    function(*pointers, *(ctypes.c_long(n) for n in sizes), consts, ctypes.c_int(torch.get_num_threads()))


def call(K: int, name: str, *args) -> None:
    """Call the exported C++ function ``name`` of the library for K coefficients: tensors (contiguous float32, which the
    caller keeps referenced until this returns) as their data, ints as C longs."""
    _function(K, name)(*(_pointer(a) if isinstance(a, Tensor) else ctypes.c_long(a) for a in args))


def _output(x: Tensor, kind: str, channel_dim: int, zeros: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(a tensor like ``x`` (its strides too); its view in walking order; the float32 buffer the kernels write): for
    float32 the tensor three times (its memory order is the walk's), else its view and a separate buffer for
    :func:`_into`."""
    out = torch.zeros_like(x) if zeros else torch.empty_like(x)  # x's strides: its memory order is the walk's
    if x.dtype == torch.float32:
        return out, out, out
    view = _walked_view(out, x, kind, channel_dim)
    return out, view, torch.empty(view.shape, dtype=torch.float32)


def _into(view: Tensor, buffer: Tensor) -> None:
    """Copy the kernels' float32 result into the output's view (bf16/fp16), unless they wrote it there directly."""
    if buffer is not view:
        view.copy_(buffer)


def forward(family: str, K: int, x: Tensor, per_channel: bool, channel_dim: int, rows: Sequence[Tensor],
            consts: Sequence[float] = ()) -> Tensor:
    """F(x) by the family's C++ forward; ``rows`` in the order the .cpp's ``forward_block`` reads them."""
    return forward_pass(f"{family}_forward", K, x, per_channel, channel_dim, consts, _rows(rows))


def forward_pass(name: str, K: int, x: Tensor, per_channel: bool, channel_dim: int, consts: Sequence[float],
                 *tensors: Tensor) -> Tensor:
    """F(x) by the C++ forward ``name``, which reads x in walking order, writes F(x) and also takes ``tensors`` (its
    coefficient rows, or the values it makes them from)."""
    kind = layout(x, per_channel, channel_dim)
    out, view, buffer = _output(x, kind, channel_dim)
    _call(K, name, kind, _sizes(x, kind, per_channel, channel_dim), _walked(x, x, kind, channel_dim), buffer, *tensors,
          _consts(consts))
    _into(view, buffer)
    return out


def backward(family: str, K: int, grad: Tensor, x: Tensor, per_channel: bool, channel_dim: int, rows: Sequence[Tensor],
             n_sums: int, need_x: bool, consts: Sequence[float] = ()) -> tuple[Tensor, Tensor]:
    """(dx, zeros unless ``need_x``; the float32 sums, ``[C, n_sums]`` per channel or ``[n_sums]`` shared) by the
    family's C++ backward: one pass over x and grad."""
    sums = torch.empty(*_channels(x, per_channel, channel_dim), n_sums, dtype=torch.float32)
    dx = backward_pass(f"{family}_backward", K, grad, x, per_channel, channel_dim, need_x, consts, sums, _rows(rows))
    return dx, sums


def lines_backward(family: str, K: int, grad: Tensor, x: Tensor, per_channel: bool, channel_dim: int, slopes: Tensor,
                   intercepts: Tensor, groups: int, need_x: bool, consts: Sequence[float] = ()) -> tuple[Tensor, Tensor]:
    """A tropical family's backward in one C++ call: (dx, zeros unless ``need_x``; each line's gradient sums,
    ``[groups, C, K]`` per channel or ``[groups, K]`` shared) from the M maxes' ``slopes`` and ``intercepts``
    (``[M, C, K]`` or ``[M, K]``): :func:`breakpoints`, the pass and :func:`piece_sums` (group (m, j): max m's sums of g
    (j = 0) and of g x (j = 1), negated for the second max), without the torch calls between them."""
    out = torch.empty(groups, *_channels(x, per_channel, channel_dim), K, dtype=torch.float32)
    dx = backward_pass(f"{family}_backward_lines", K, grad, x, per_channel, channel_dim, need_x, consts, out,
                       as_float32(slopes), as_float32(intercepts))
    return dx, out


def _channels(x: Tensor, per_channel: bool, channel_dim: int) -> tuple[int, ...]:
    """The leading dims of per-channel sums: ``(C,)``, or ``()`` for shared values."""
    return (x.shape[channel_dim],) if per_channel else ()


def backward_pass(name: str, K: int, grad: Tensor, x: Tensor, per_channel: bool, channel_dim: int, need_x: bool,
                  consts: Sequence[float], *tensors: Tensor) -> Tensor:
    """dx (zeros unless ``need_x``) by the C++ backward ``name``, which reads x and grad in walking order and also takes
    ``tensors`` (its outputs for the sums or gradients, then its coefficients or values): the C++ writes the outputs."""
    kind = layout(x, per_channel, channel_dim)
    dx, view, buffer = _output(x, kind, channel_dim, zeros=not need_x)  # the ops return a tensor either way
    _call(K, name, kind, _sizes(x, kind, per_channel, channel_dim), _walked(x, x, kind, channel_dim),
          _walked(grad, x, kind, channel_dim), buffer if need_x else None, *tensors, _consts(consts))
    if need_x:
        _into(view, buffer)
    return dx


def breakpoints(slopes: Tensor, intercepts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`lit_ortho.activations.tropical.breakpoints` (the same values, bit for bit) for float32 ``[..., K]`` lines,
    in C++: microseconds where the torch version takes milliseconds for thousands of channels."""
    K, shape = slopes.shape[-1], slopes.shape[:-1]
    s, c = (as_float32(t) for t in (slopes, intercepts))
    sorted_slopes, order = torch.empty(slopes.shape, dtype=torch.float32), torch.empty(slopes.shape, dtype=torch.int64)
    thresholds = torch.empty(*shape, K - 1, dtype=torch.float32)
    _function(K, "breakpoints")(_pointer(s), _pointer(c), ctypes.c_long(s.numel() // K), _pointer(sorted_slopes),
                                _pointer(order), _pointer(thresholds), ctypes.c_int(torch.get_num_threads()))
    return sorted_slopes, order, thresholds


def piece_sums(cumulative: Tensor, order: Tensor, groups: Sequence[tuple[int, float]]) -> Tensor:
    """:func:`lit_ortho.activations.tropical.piece_sums` (the same values, bit for bit) for several groups at once, in
    C++: ``cumulative`` ``[C, G * K]`` or ``[G * K]`` (a tropical backward's sums: G groups of K), ``order`` ``[M, C, K]``
    or ``[M, K]`` (the maxes' :func:`breakpoints` orders) and ``groups[g] = (max, sign)``: group g's sums use that max's
    order and are multiplied by the sign. Returns ``[G, C, K]`` or ``[G, K]``, each group's sums in line order."""
    M, K, G = order.shape[0], order.shape[-1], len(groups)
    if any(not 0 <= m < M for m, _ in groups):
        raise ValueError(f"piece_sums: groups {list(groups)} name a max outside the {M} of `order`")
    C = cumulative.numel() // (G * K)
    out = torch.empty(G, *cumulative.shape[:-1], K, dtype=torch.float32)
    maxes, signs = _piece_groups(tuple((int(m), float(s)) for m, s in groups))
    cumulative, order = as_float32(cumulative), order.contiguous()  # referenced until the call returns
    _function(K, "piece_sums")(_pointer(cumulative), _pointer(order), ctypes.c_long(C), ctypes.c_int(G),
                               _pointer(maxes), _pointer(signs), _pointer(out))
    return out


def as_float32(t: Tensor) -> Tensor:
    """``t`` as contiguous float32 memory: ``t`` itself where it is (no torch call)."""
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


def cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` without a torch call where it already is (a launcher's gradients: float32 values, mostly)."""
    return t if t.dtype == dtype else t.to(dtype)


@functools.lru_cache(maxsize=16)
def _piece_groups(groups: tuple[tuple[int, float], ...]) -> tuple[Tensor, Tensor]:
    """The groups' maxes (int32) and signs (float32) as the C++ reads them, made once."""
    maxes, signs = zip(*groups)
    return torch.tensor(maxes, dtype=torch.int32), torch.tensor(signs, dtype=torch.float32)
