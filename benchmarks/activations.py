"""Forward+backward time and memory: lit-ortho and torchortho against nn.GELU, in one run.

    python benchmarks/activations.py                       # CPU, fp32, 2 threads, 6.3 M elements
    python benchmarks/activations.py --numel 1000000 --no-torchortho
    python benchmarks/activations.py --compile --shape 12288x3072      # CPU, torch.compile'd, vs compiled GELU
    python benchmarks/activations.py --compile --shape 12288x3072 --per-channel   # [C, K] coefficients
    python benchmarks/activations.py --device cuda         # GPU: GPT-2-small MLP shape, bf16

CPU (default): time ratio and saved-for-backward-bytes ratio to nn.GELU, for ours (backend "auto",
which is eager on CPU) and torchortho; GELU and the measured module take turns step by step. ``--compile``: ours and GELU both ``torch.compile``'d
(inductor); torchortho is left out.

CUDA (``--device cuda``; default shape 12x1024 tokens x 3072 = GPT-2-small's MLP, bf16): for each
family the fwd+bwd time (CUDA events, median) and the peak memory of one fwd+bwd above the input
(``torch.cuda.max_memory_allocated``), as ratios to nn.GELU, for the Triton kernels, the eager path
and torchortho (whose float32 parameters promote bf16 inputs: it computes and returns float32).

torchortho is a benchmark-only comparator (pip install torchortho==0.1.2); skipped when absent.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import lit_ortho

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


def step_times(modules: list[nn.Module], x: torch.Tensor, repeats: int, warmup: int = 1) -> list[float]:
    """Median seconds of one forward + backward (CPU) for each module, after ``warmup`` untimed steps.
    The modules take turns, one step each per round, so drift on a shared machine hits all alike."""
    grad = torch.ones_like(x)
    times: list[list[float]] = [[] for _ in modules]
    for i in range(repeats + warmup):
        for module, timings in zip(modules, times):
            x.grad = None
            start = time.perf_counter()
            module(x).backward(grad)
            if i >= warmup:
                timings.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


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
    warmup = 2 if args.compile else 1

    gelu = wrap(nn.GELU())
    gelu_time, = step_times([gelu], x, args.repeats, warmup)
    gelu_bytes = saved_bytes(gelu, x)
    mode = "torch.compile'd (inductor)" if args.compile else "eager"
    mode += ", per-channel coefficients" if args.per_channel else ""
    print(f"CPU {args.dtype or 'float32'}, {args.threads} threads, {numel:,} elements {tuple(shape)}, forward+backward, "
          f"{mode}; nn.GELU: {gelu_time * 1e3:.1f} ms, {gelu_bytes / 2**20:.1f} MiB saved")
    header = f"{'family':<18} {'degree':>6} {'ours time':>10} {'ours mem':>9}"
    if use_reference:
        header += f" {'torchortho time':>16} {'torchortho mem':>15}"
    print(header)
    print("-" * len(header))
    for family, degree in CASES:
        ours = wrap(lit_ortho.build_activation(spec(args, family, degree, shape)))
        gelu_time, ours_time = step_times([gelu, ours], x, args.repeats, warmup)
        row = f"{family:<18} {degree:>6} {ours_time / gelu_time:>9.2f}x {saved_bytes(ours, x) / gelu_bytes:>8.2f}x"
        if use_reference:
            ref = torchortho_module(family, degree)
            gelu_time, ref_time = step_times([gelu, ref], x, max(1, args.repeats // 3))
            row += f" {ref_time / gelu_time:>15.1f}x {saved_bytes(ref, x) / gelu_bytes:>14.1f}x"
        print(row, flush=True)


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
    args = parser.parse_args()
    if args.per_channel and (args.shape is None or len(parse_shape(args.shape)) < 2):
        parser.error("--per-channel needs a --shape with a channel dim last, e.g. --shape 12288x3072")
    torch.manual_seed(0)
    if args.device == "cuda":
        args.repeats = args.repeats or 20
        cuda_table(args, parse_shape(args.shape or "12288x3072"))
    else:
        args.repeats = args.repeats or 5
        cpu_table(args, parse_shape(args.shape) if args.shape else (args.numel,))


if __name__ == "__main__":
    main()
