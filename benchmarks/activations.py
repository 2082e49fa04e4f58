"""Forward+backward time and memory: lit-ortho and torchortho against nn.GELU, in one run.

    python benchmarks/activations.py                       # CPU, fp32, 2 threads, 6.3 M elements
    python benchmarks/activations.py --numel 1000000 --no-torchortho
    python benchmarks/activations.py --compile --shape 12288x3072      # CPU, torch.compile'd, vs compiled GELU
    python benchmarks/activations.py --compile --shape 12288x3072 --per-channel   # [C, K] coefficients
    python benchmarks/activations.py --layouts             # CPU, eager: every layout below, one table
    python benchmarks/activations.py --layouts --compile   # the same, torch.compile'd (--modes eager,compile: both)
    python benchmarks/activations.py --layouts --dry-run   # tiny shapes, one step: checks that it runs, times nothing
    python benchmarks/activations.py --device cuda         # GPU: GPT-2-small's MLP shape, bf16

Allocator (CPU numbers). With glibc's default malloc every tensor above its mmap threshold (dynamic,
at most 32 MiB) is a fresh ``mmap`` on every call and is page-faulted in again, so each large forward
and backward pays for page faults that a training loop (which reuses its buffers) does not. By default
this script therefore re-executes itself, before importing torch, with
``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=10737418240 MALLOC_TOP_PAD_=1073741824``
(freed blocks stay in the heap and are reused); it keeps a jemalloc/tcmalloc/mimalloc that ``LD_PRELOAD``
already names (jemalloc with ``MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1`` unless ``MALLOC_CONF`` is set: by
default it gives large allocations' pages back at once), and ``--default-malloc`` runs with glibc's defaults. With
the tuned heap it first touches 32x the largest input's bytes of heap once (``prefault_heap``), so that no step pays
for faulting in fresh heap that a training loop would already have. Even so that heap fragments in a long table: in
the NHWC rows (154 MB tensors) it grew 5.9 -> 12 GB, a GiB at a time inside GELU's backward, with a tensor's worth of
page faults each time. So ``--layouts`` runs a timed step again when it faulted a heap growth's worth of pages
(``step_times``' ``redo_heap_growth``) and counts those steps on its last line; jemalloc set as above does not fault
there. The output's first line says which allocator ran, with the page faults of one reused 64 MiB allocation as
evidence, and the heap touched.

CPU (default): time ratio and saved-for-backward-bytes ratio to nn.GELU, for ours (backend "auto",
which is eager on CPU) and torchortho; GELU and the measured module take turns step by step. ``--compile``: ours and GELU both ``torch.compile``'d
(inductor); torchortho is left out.

``--layouts``: one markdown table over the layouts (12288, 3072); (256, 160, 16, 16) NCHW; (6300000,)
flat; (128, 56, 56, 96) NHWC; (4096, 1536), each with shared coefficients and with per-channel
coefficients on dim 1 and on dim -1 (one row when those are the same dim; none for the flat layout),
giving the elements of each row and each family's time ratio to GELU in the same mode (eager, or
compiled with ``--compile``; ``--modes eager,compile`` puts both in one table). ``--scale S`` multiplies
the first dimension of every layout (``--scale 0.001``: a quick run); ``--dry-run`` takes tiny shapes,
one step and no warm-up, and prints no timing claims.

CUDA (``--device cuda``; default shape 12x1024 tokens x 3072 = GPT-2-small's MLP, bf16): for each
family the fwd+bwd time (CUDA events, median) and the peak memory of one fwd+bwd above the input
(``torch.cuda.max_memory_allocated``), as ratios to nn.GELU, for the Triton kernels, the eager path
and torchortho (whose float32 parameters promote bf16 inputs: it computes and returns float32).

torchortho is a benchmark-only comparator (pip install torchortho==0.1.2); skipped when absent.
"""

from __future__ import annotations

import os
import sys

# ---- the allocator: decided before torch is imported (glibc reads MALLOC_* once, at start-up) ------------
MALLOC_TUNING = {
    "MALLOC_MMAP_THRESHOLD_": "1073741824",  # 1 GiB: blocks below it come from the heap, not a fresh mmap
    "MALLOC_TRIM_THRESHOLD_": "10737418240",  # 10 GiB: never give freed heap memory back to the kernel
    "MALLOC_TOP_PAD_": "1073741824",  # grow the heap 1 GiB at a time
}
PRELOADED_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
# jemalloc 5 hands allocations of 8 MiB and more to an arena that gives their pages back at once, so a reused 64 MiB
# result page-faulted 16,385 times a call (as glibc's fresh mmaps do); with purging off, 0 (measured here, 5.3.0).
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
_REEXEC_MARK = "LIT_ORTHO_BENCH_MALLOC"


def preloaded_allocator(environ=os.environ) -> str | None:
    """The jemalloc/tcmalloc/mimalloc library that ``LD_PRELOAD`` names, if any."""
    for lib in environ.get("LD_PRELOAD", "").replace(":", " ").split():
        if any(name in os.path.basename(lib) for name in PRELOADED_ALLOCATORS):
            return lib
    return None


def choose_allocator(argv: list[str], environ=os.environ) -> tuple[str, dict | None]:
    """(description of the allocator this process runs with, environment to re-exec with or None)."""
    lib = preloaded_allocator(environ)
    if lib:
        if "jemalloc" in os.path.basename(lib) and "MALLOC_CONF" not in environ:
            return "", {**environ, "MALLOC_CONF": JEMALLOC_CONF}
        conf = f", MALLOC_CONF={environ['MALLOC_CONF']}" if "MALLOC_CONF" in environ else ""
        return f"{os.path.basename(lib)} (LD_PRELOAD={lib}{conf})", None
    tuned = {k: environ.get(k) for k in MALLOC_TUNING}
    if "--default-malloc" in argv:
        if any(v is not None for v in tuned.values()):  # inherited settings: drop them, or "default" is untrue
            return "", {k: v for k, v in environ.items() if k not in MALLOC_TUNING}
        return ("glibc malloc, default settings (--default-malloc): tensors above the mmap threshold "
                "(<= 32 MiB) are fresh mmaps, page-faulted on every call"), None
    if tuned == MALLOC_TUNING:
        return "glibc malloc, " + " ".join(f"{k}={v}" for k, v in MALLOC_TUNING.items()), None
    if any(v is not None for v in tuned.values()) or environ.get(_REEXEC_MARK):
        own = " ".join(f"{k}={v}" for k, v in tuned.items() if v is not None)
        return f"glibc malloc, as the environment sets it: {own or 'defaults'}", None
    return "", {**environ, **MALLOC_TUNING, _REEXEC_MARK: "1"}


def _reexec_with_allocator() -> str:
    description, env = choose_allocator(sys.argv)
    if env is not None:
        argv = [sys.executable, *getattr(sys, "orig_argv", [sys.executable, *sys.argv])[1:]]
        sys.stdout.flush()
        os.execve(sys.executable, argv, env)
    return description


ALLOCATOR = _reexec_with_allocator() if __name__ == "__main__" else "(imported: the caller's allocator)"

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

import lit_ortho  # noqa: E402
from lit_ortho.activations import FAMILIES, backends  # noqa: E402
from lit_ortho.activations.kernels import cpu  # noqa: E402


def minor_faults() -> int:
    """This process's minor page faults so far (-1 where getrusage is missing)."""
    try:
        import resource
    except ImportError:  # not a Unix
        return -1
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def page_faults_of_reuse(mib: int = 64) -> int:
    """Minor page faults of one out-of-place op on a ``mib`` MiB tensor (its result allocated, then
    freed), after doing it twice: about ``mib * 256`` when every allocation is a fresh mmap, near 0
    when the allocator reuses freed memory."""
    x = torch.ones(mib * 2**18, dtype=torch.float32)
    for _ in range(2):
        y = x * 2.0
        del y
    before = minor_faults()
    y = x * 2.0
    del y
    return minor_faults() - before if before >= 0 else -1


def prefault_heap(nbytes: int) -> int:
    """With glibc's heap tuned as above (nothing freed goes back to the kernel), touch ``nbytes`` of it once (at most
    half the memory available) and free them, so that the steps' tensors reuse pages already faulted in, as a training
    loop's do after its first steps. Without it each row's first steps fault in fresh heap, charged to whichever module
    runs then: compiled GELU alone at 128x56x56x96 faulted 37,632 pages (one 154 MB tensor) in 8 of its first 9 steps,
    at 2.5-4x its time, while the heap's high-water mark crept from 1.3 to 3.1 GB (then no faults). Returns the bytes
    touched (0 with any other allocator)."""
    if preloaded_allocator() or any(os.environ.get(k) != v for k, v in MALLOC_TUNING.items()):
        return 0
    try:
        with open("/proc/meminfo") as meminfo:
            available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
        nbytes = min(nbytes, available // 2)
    except (OSError, StopIteration, ValueError):
        pass
    chunk = 2**26  # floats: 256 MiB blocks, below the 1 GiB mmap threshold, so they come from the heap
    blocks = [torch.zeros(chunk) for _ in range(max(1, math.ceil(nbytes / (4 * chunk))))]
    touched = 4 * chunk * len(blocks)
    del blocks
    return touched


HEAP_TOUCHED = [0]  # bytes of tuned glibc heap touched up front by allocator_line (0: another allocator)


def allocator_line(prefault_bytes: int = 0) -> str:
    touched = HEAP_TOUCHED[0] = prefault_heap(prefault_bytes) if prefault_bytes else 0
    faults = page_faults_of_reuse()
    evidence = f"; one reused 64 MiB result: {faults} page faults (a fresh mmap: ~16384)" if faults >= 0 else ""
    heap = f"; heap pre-touched: {touched / 2**30:.2f} GiB" if touched else ""
    return f"allocator: {ALLOCATOR}{evidence}{heap}"


CASES = [("hermite", 3), ("hermite", 8), ("fourier", 4), ("fourier", 5), ("tropical", 3), ("tropical", 5), ("tropical_rational", 6)]


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward (every tensor packed by the graph, coefficients included)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return total


def step_times(modules: list[nn.Module], x: torch.Tensor, repeats: int, warmup: int = 1,
               redo_heap_growth: int = 0) -> list[float]:
    """Median seconds of one forward + backward (CPU) for each module, after ``warmup`` untimed steps.
    The modules take turns, one step each per round, so drift on a shared machine hits all alike. Each step starts
    with no gradients, untimed, as a training step does after ``zero_grad`` (and as :func:`cuda_step_time`): the
    backward then hands each parameter its gradient instead of adding it in.

    ``redo_heap_growth=n``: a timed step that page-faulted :data:`HEAP_GROWTH_PAGES` or more pages grew the heap, and
    is run again, up to n times. For glibc's tuned heap only, where a step faults only when the heap grows. Over a long
    table that heap fragments: in the NHWC rows it grew 1 GiB at a time inside GELU's backward, each time faulting a
    154 MB tensor's pages, and on this VM those steps took 235-612 ms instead of 20 ms. A training loop pays that once,
    not every few steps. :data:`LAST_REDONE_STEPS` counts the steps run again."""
    grad = torch.ones_like(x)
    times: list[list[float]] = [[] for _ in modules]
    faults = redone = 0
    for i in range(repeats + warmup):
        for module, timings in zip(modules, times):
            attempts = 1 + (redo_heap_growth if i >= warmup else 0)
            for attempt in range(attempts):
                x.grad = None
                module.zero_grad(set_to_none=True)
                before = minor_faults()
                start = time.perf_counter()
                module(x).backward(grad)
                elapsed, faulted = time.perf_counter() - start, minor_faults() - before
                if faulted < HEAP_GROWTH_PAGES or attempt == attempts - 1:
                    break
                redone += 1
            if i >= warmup:
                timings.append(elapsed)
                faults += faulted
    LAST_FAULTS_PER_STEP[0] = faults / max(1, repeats * len(modules))
    LAST_REDONE_STEPS[0] = redone
    return [statistics.median(t) for t in times]


HEAP_GROWTH_PAGES = 4096  # 16 MiB of 4 KiB pages: a step that faults this many grew the heap (the smallest layout
# tensor is 6,152 pages; a step on a warm heap faults 0-3)
LAST_REDONE_STEPS = [0]  # steps run again by the last step_times call
LAST_FAULTS_PER_STEP = [0.0]  # minor page faults per timed step of the last step_times call


def cuda_step_time(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, repeats: int, warmup: int = 3) -> float:
    """Median seconds of one forward + backward on the GPU (CUDA events around each step)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(repeats + warmup):
        x.grad = None
        module.zero_grad(set_to_none=True)
        start.record()
        module(x).backward(grad)
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def cuda_peak_bytes(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> int:
    """Peak bytes allocated during one forward + backward, above what was allocated before it."""
    x.grad = None
    module.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    module(x).backward(grad)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    x.grad = None
    module.zero_grad(set_to_none=True)
    return peak


def torchortho_module(family: str, degree: int):
    import torchortho

    cls = {
        "hermite": torchortho.HermiteActivation,
        "fourier": torchortho.FourierActivation,
        "tropical": torchortho.TropicalActivation,
        "tropical_rational": torchortho.TropicalRationalActivation,
    }[family]
    return cls(degree)


def spec(args, family: str, degree: int, shape) -> dict:
    """Our activation: shared coefficients, or ``--per-channel`` ones along the last dim."""
    return {"name": family, "degree": degree, "per_channel": shape[-1] if args.per_channel else None}


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.lower().replace("*", "x").split("x"))


def have_torchortho(wanted: bool) -> bool:
    if not wanted:
        return False
    try:
        import torchortho  # noqa: F401
    except ImportError:
        print("torchortho not installed: its columns are skipped (pip install torchortho==0.1.2)")
        return False
    return True


def cpu_table(args, shape) -> None:
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or "float32")
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    numel = x.numel()
    use_reference = have_torchortho(not args.no_torchortho and not args.compile and not args.per_channel)
    wrap = (lambda m: torch.compile(m, fullgraph=True)) if args.compile else (lambda m: m)  # noqa: E731
    warmup = 0 if args.dry_run else 2 if args.compile else 1

    gelu = wrap(nn.GELU())
    gelu_time, = step_times([gelu], x, args.repeats, warmup)
    gelu_faults = LAST_FAULTS_PER_STEP[0]
    gelu_bytes = saved_bytes(gelu, x)
    mode = "torch.compile'd (inductor)" if args.compile else "eager"
    mode += ", per-channel coefficients" if args.per_channel else ""
    print(f"CPU {args.dtype or 'float32'}, {args.threads} threads, {numel:,} elements {tuple(shape)}, forward+backward, "
          f"{mode}; nn.GELU: {gelu_time * 1e3:.1f} ms, {gelu_bytes / 2**20:.1f} MiB saved, "
          f"{gelu_faults:.0f} page faults per step"
          + (" -- DRY RUN: one step, the times are not measurements" if args.dry_run else ""))
    plain_eager = not args.compile  # "auto" compiles large CPU inputs lazily: also time backend="eager"
    header = f"{'family':<18} {'degree':>6} {'ours time':>10} {'first call':>11} {'ours mem':>9}"
    if plain_eager:
        header += f" {'backend=eager':>14}"
    if use_reference:
        header += f" {'torchortho time':>16} {'torchortho mem':>15}"
    print(header)
    print("-" * len(header))
    for family, degree in CASES:
        ours = wrap(lit_ortho.build_activation(spec(args, family, degree, shape)))
        first = first_call_seconds(ours, x)
        gelu_time, ours_time = step_times([gelu, ours], x, args.repeats, warmup)
        row = f"{family:<18} {degree:>6} {ours_time / gelu_time:>9.2f}x {first:>10.2f}s {saved_bytes(ours, x) / gelu_bytes:>8.2f}x"
        if plain_eager:
            eager = lit_ortho.build_activation({**spec(args, family, degree, shape), "backend": "eager"})
            gelu_time, eager_time = step_times([gelu, eager], x, max(1, args.repeats // 2), warmup)
            row += f" {eager_time / gelu_time:>13.2f}x"
        if use_reference:
            ref = torchortho_module(family, degree)
            gelu_time, ref_time = step_times([gelu, ref], x, max(1, args.repeats // 3), warmup=0 if args.dry_run else 1)
            row += f" {ref_time / gelu_time:>15.1f}x {saved_bytes(ref, x) / gelu_bytes:>14.1f}x"
        print(row, flush=True)
    if plain_eager:
        threshold = backends.lazy_compile_threshold()
        with_kernels = _shared_cpu_families()
        others = sorted({name for name, _ in CASES} - set(with_kernels))
        lazy = "compiled" if threshold is not None and numel >= threshold else "eager"
        print(f"ours: backend='auto' (lit_ortho's default), which runs the family's C++ kernels where it has them "
              f"({', '.join(with_kernels)} here; built once per machine and degree into {cpu.CACHE_ENV} or "
              f"~/.cache/lit_ortho/kernels), else a lazily compiled CPU kernel from {threshold:,} elements "
              f"({backends.LAZY_COMPILE_ENV}; {', '.join(others) + ': ' + lazy if others else 'no family'} here); "
              f"first call: seconds of the first forward+backward (compiling or building, where it does; 0 if the "
              f"kernels were built before); backend=eager: PyTorch ops only", flush=True)


def first_call_seconds(module: nn.Module, x: torch.Tensor) -> float:
    """Seconds of the module's first forward+backward in this process (its compilation, where it compiles)."""
    start = time.perf_counter()
    module(x).backward(torch.ones_like(x))
    x.grad = None
    return time.perf_counter() - start


def cuda_table(args, shape) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    device = torch.device("cuda")
    dtype = getattr(torch, args.dtype or "bfloat16")
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(shape, device=device, dtype=dtype)
    use_reference = have_torchortho(not args.no_torchortho and not args.per_channel)

    def measure(module):
        module = module.to(device)
        if args.compile:
            module = torch.compile(module, fullgraph=True)
        t = cuda_step_time(module, x, grad, args.repeats)
        return t, cuda_peak_bytes(module, x, grad)

    gelu_time, gelu_peak = measure(nn.GELU())
    name = torch.cuda.get_device_name(device)
    print(f"{name}, {args.dtype or 'bfloat16'}, shape {tuple(shape)} ({x.numel():,} elements), forward+backward"
          f"{', torch.compile' if args.compile else ''}; nn.GELU: {gelu_time * 1e6:.0f} us, "
          f"peak {gelu_peak / 2**20:.0f} MiB above the input")
    cols = ["triton", "eager"] + (["torchortho"] if use_reference else [])
    header = f"{'family':<18} {'degree':>6}" + "".join(f" {c + ' time':>16} {c + ' peak':>16}" for c in cols)
    print(header)
    print("-" * len(header))
    for family, degree in CASES:
        gelu_time = statistics.median([gelu_time, measure(nn.GELU())[0]])  # GELU again: drift check
        row = f"{family:<18} {degree:>6}"
        for col in cols:
            if col == "torchortho":
                module = torchortho_module(family, degree)
            else:
                module = lit_ortho.build_activation({**spec(args, family, degree, shape), "backend": col})
            try:
                t, peak = measure(module)
                row += f" {t / gelu_time:>15.2f}x {peak / gelu_peak:>15.2f}x"
            except torch.cuda.OutOfMemoryError:
                row += f" {'OOM':>16} {'OOM':>16}"
            del module
            torch.cuda.empty_cache()
        print(row, flush=True)


def _shared_cpu_families() -> list[str]:
    """The families whose C++ kernels ``"auto"`` runs on shared coefficients (this benchmark's case)."""
    return [name for name, record in FAMILIES.items() if record.cpu is not None and "shared" in record.cpu.layouts]


# ---- --layouts: every layout, shared and per-channel coefficients, one table --------------------------
LAYOUTS = [  # (name, shape)
    ("GPT-2 MLP", (12288, 3072)),
    ("NCHW", (256, 160, 16, 16)),
    ("flat", (6_300_000,)),
    ("NHWC", (128, 56, 56, 96)),
    ("rows", (4096, 1536)),
]
LAYOUT_FAMILIES = [("hermite", 3), ("fourier", 5), ("tropical", 5), ("tropical_rational", 6)]
DRY_RUN_SCALE = 1 / 4096


def layout_scale(args) -> float:
    """--scale, else the dry run's tiny one, else 1."""
    return args.scale if args.scale is not None else (DRY_RUN_SCALE if args.dry_run else 1.0)


def scaled(shape: tuple[int, ...], scale: float) -> tuple[int, ...]:
    """``shape`` with its first dimension multiplied by ``scale`` (at least 1)."""
    return (max(1, round(shape[0] * scale)),) + tuple(shape[1:])


def layout_rows(scale: float) -> list[tuple[str, tuple[int, ...], int | None]]:
    """(layout name, shape, channel dim or None for shared coefficients) for every row of the table:
    shared, then per-channel on dim 1 and on dim -1 (one row when they coincide; none for 1-D)."""
    rows = []
    for name, shape in LAYOUTS:
        shape = scaled(shape, scale)
        rows.append((name, shape, None))
        if len(shape) >= 2:
            dims = [1] if len(shape) == 2 else [1, -1]
            rows.extend((name, shape, d) for d in dims)
    return rows


def layout_spec(family: str, degree: int, shape, channel_dim: int | None) -> dict:
    if channel_dim is None:
        return {"name": family, "degree": degree}
    return {"name": family, "degree": degree, "per_channel": shape[channel_dim], "channel_dim": channel_dim}


def coefficients_label(shape, channel_dim: int | None) -> str:
    if channel_dim is None:
        return "shared"
    dim = channel_dim if channel_dim >= 0 else f"{channel_dim} (= {len(shape) - 1})" if len(shape) > 2 else channel_dim
    return f"per-channel, dim {dim}, C={shape[channel_dim]}"


def layouts_table(args) -> list[str]:
    """The --layouts table (markdown): one row per layout and coefficient placement. With ``--runs N`` the whole
    table is measured N times, one pass after another, and each cell is the median of its N ratios: a shared host
    can slow one cell several-fold for a while (seen here: 10x, with page faults), which one pass would record."""
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or "float32")
    scale = layout_scale(args)
    families = [(f, int(d)) for f, _, d in (c.partition(":") for c in args.families.split(","))]
    modes = [m.strip() for m in args.modes.split(",")] if args.modes else (["compile"] if args.compile else ["eager"])
    repeats, warmup = (1, 0) if args.dry_run else (args.repeats, 1)
    runs = 1 if args.dry_run else args.runs
    cols = [f"{f}:{d}" + (f" {m}" if len(modes) > 1 else "") for f, d in families for m in modes]
    mode_text = " and ".join("torch.compile'd (inductor)" if m == "compile" else "eager" for m in modes)
    lines = [f"CPU {args.dtype or 'float32'}, {args.threads} threads, forward+backward, {mode_text}, "
             f"scale {scale:g} of the first dim; time ratio to nn.GELU in the same mode"
             + (f"; median of {runs} runs of the whole table" if runs > 1 else "")
             + (" -- DRY RUN: tiny shapes, one step, the numbers are not measurements" if args.dry_run else ""), ""]
    lines.append("| layout | shape | coefficients | elements | " + " | ".join(f"GELU {m} ms" for m in modes) + " | "
                 + " | ".join(cols) + " | page faults / step |")
    lines.append("|" + "---|" * (5 + len(modes) + len(cols)))
    for line in lines:
        print(line, flush=True)
    rows = layout_rows(scale)
    measured = [[] for _ in rows]  # per row, per run: (GELU ms per mode, {cell: ratio}, faults per step)
    redo = 2 if HEAP_TOUCHED[0] else 0  # glibc's tuned heap: steps that grew it run again (step_times)
    for run in range(runs):
        for index, (name, shape, channel_dim) in enumerate(rows):
            measured[index].append(_layout_row(shape, channel_dim, families, modes, dtype, repeats, warmup, redo))
            if run == runs - 1:
                row = _layout_line(name, shape, channel_dim, families, modes, measured[index])
                lines.append(row)
                print(row, flush=True)
    spread = [f"{name} {coefficients_label(shape, cd)} {key[0]}:{key[1]}: "
              + ", ".join(f"{r[1][key]:.2f}x" for r in measured[i])
              for i, (name, shape, cd) in enumerate(rows) for key in measured[i][0][1]
              if runs > 1 and max(r[1][key] for r in measured[i]) > 1.5 * min(r[1][key] for r in measured[i])]
    if spread:
        lines += ["", "Cells whose runs differ by more than 1.5x (each run's ratio): " + "; ".join(spread)]
        print(lines[-1], flush=True)
    redone = sum(r[3] for row in measured for r in row)
    if redo:
        timed = runs * len(rows) * len(families) * len(modes) * 2 * repeats
        lines += ["", f"Timed steps run again because they grew the heap (>= {HEAP_GROWTH_PAGES} page faults): "
                  f"{redone} of {timed}"]
        print(lines[-1], flush=True)
    return lines


def _layout_row(shape, channel_dim, families, modes, dtype, repeats, warmup, redo_heap_growth=0):
    """One measurement of a row: (GELU ms per mode, {(family, degree, mode): ratio to GELU}, mean faults per step,
    steps run again after growing the heap)."""
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    gelu_ms, cells, faults, redone = [], {}, [], 0
    for mode in modes:
        wrap = _wrapper(mode)
        gelu = wrap(nn.GELU())
        gelu_times = []
        for family, degree in families:
            ours = wrap(lit_ortho.build_activation(layout_spec(family, degree, shape, channel_dim)))
            gelu_time, ours_time = step_times([gelu, ours], x, repeats, warmup if mode == "eager" else warmup + 1,
                                              redo_heap_growth)
            gelu_times.append(gelu_time)
            faults.append(LAST_FAULTS_PER_STEP[0])
            redone += LAST_REDONE_STEPS[0]
            cells[(family, degree, mode)] = ours_time / gelu_time
        gelu_ms.append(statistics.median(gelu_times) * 1e3)
    return gelu_ms, cells, statistics.mean(faults), redone


def _layout_line(name, shape, channel_dim, families, modes, runs) -> str:
    """The markdown row of a layout: each number the median over the runs."""
    gelu_ms = [statistics.median(r[0][i] for r in runs) for i in range(len(modes))]
    ratio = {key: statistics.median(r[1][key] for r in runs) for key in runs[0][1]}
    faults = statistics.median(r[2] for r in runs)
    return (f"| {name} | {'x'.join(map(str, shape))} | {coefficients_label(shape, channel_dim)} | {math.prod(shape):,} | "
            + " | ".join(f"{t:.1f}" for t in gelu_ms) + " | "
            + " | ".join(f"{ratio[(f, d, m)]:.2f}x" for f, d in families for m in modes)
            + f" | {faults:.0f} |")


def _wrapper(mode: str):
    if mode == "eager":
        return lambda m: m  # noqa: E731
    if mode != "compile":
        raise SystemExit(f"--modes: unknown mode {mode!r} (eager, compile)")
    torch._dynamo.reset()  # a fresh cache for each row: the table's many shapes never reach the recompile limit
    return lambda m: torch.compile(m, fullgraph=True, dynamic=False)  # noqa: E731


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--numel", type=int, default=6_300_000, help="CPU input size (1-D) when --shape is not given")
    parser.add_argument("--shape", type=str, default=None,
                        help="input shape, e.g. 12288x3072 (default on CUDA: 12288x3072, GPT-2-small's MLP)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per case (default 5 CPU, 20 CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile ours and GELU (fullgraph=True)")
    parser.add_argument("--per-channel", action="store_true",
                        help="ours with per-channel coefficients along the last dim (torchortho has none: it is skipped)")
    parser.add_argument("--no-torchortho", action="store_true", help="skip the reference library")
    parser.add_argument("--layouts", action="store_true",
                        help="CPU: one table over every layout, shared and per-channel coefficients (dim 1, dim -1)")
    parser.add_argument("--modes", default=None,
                        help="--layouts: comma-separated eager,compile (default: compile with --compile, else eager)")
    parser.add_argument("--families", default=",".join(f"{f}:{d}" for f, d in LAYOUT_FAMILIES),
                        help="--layouts: the families (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=1,
                        help="--layouts: measure the whole table this many times; each cell the median (default 1)")
    parser.add_argument("--scale", type=float, default=None,
                        help="--layouts: multiply every layout's first dim (default 1; --dry-run: 1/4096)")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes, one step, no warm-up: checks that the benchmark runs; times nothing")
    parser.add_argument("--default-malloc", action="store_true",
                        help="CPU: glibc's default malloc (every large tensor a fresh, page-faulted mmap)")
    args = parser.parse_args()
    if args.per_channel and (args.shape is None or len(parse_shape(args.shape)) < 2):
        parser.error("--per-channel needs a --shape with a channel dim last, e.g. --shape 12288x3072")
    if args.layouts and args.device != "cpu":
        parser.error("--layouts is a CPU table (on a GPU: benchmarks/gpu_check.sh)")
    torch.manual_seed(0)
    largest = (max(math.prod(shape) for _, shape, _ in layout_rows(layout_scale(args))) if args.layouts
               else math.prod(parse_shape(args.shape) if args.shape else (args.numel,)))
    # the heap the steps will reuse: x, its gradient and each module's output and dx, several rows' worth
    print(allocator_line(0 if args.device == "cuda" or args.dry_run else 32 * 4 * largest), flush=True)
    if args.device == "cuda":
        args.repeats = 1 if args.dry_run else args.repeats or 20
        cuda_table(args, parse_shape(args.shape or "12288x3072"))
    elif args.layouts:
        args.repeats = args.repeats or 5
        layouts_table(args)
    else:
        args.repeats = 1 if args.dry_run else args.repeats or 5
        if args.dry_run and args.shape is None:
            args.numel = min(args.numel, 4096)
        cpu_table(args, parse_shape(args.shape) if args.shape else (args.numel,))


if __name__ == "__main__":
    main()
