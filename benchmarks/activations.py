"""Forward+backward time and bytes saved for backward: lit-ortho and torchortho against nn.GELU.

    python benchmarks/activations.py                  # CPU, fp32, 2 threads, 6.3 M elements
    python benchmarks/activations.py --numel 1000000 --no-torchortho

Prints one table: family, degree, and for ours and torchortho the time ratio and saved-bytes ratio
to nn.GELU measured in the same run. torchortho is a benchmark-only comparator (pip install
torchortho==0.1.2); it is skipped when not installed.
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


def step_time(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward + backward, after one warm-up."""
    grad = torch.ones_like(x)
    times = []
    for i in range(repeats + 1):
        x.grad = None
        start = time.perf_counter()
        module(x).backward(grad)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def torchortho_module(family: str, degree: int):
    import torchortho

    cls = {
        "hermite": torchortho.HermiteActivation,
        "fourier": torchortho.FourierActivation,
        "tropical": torchortho.TropicalActivation,
        "tropical_rational": torchortho.TropicalRationalActivation,
    }[family]
    return cls(degree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numel", type=int, default=6_300_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torchortho", action="store_true", help="skip the reference library")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    x = torch.randn(args.numel, requires_grad=True)

    use_reference = not args.no_torchortho
    if use_reference:
        try:
            import torchortho  # noqa: F401
        except ImportError:
            use_reference = False
            print("torchortho not installed: its columns are skipped (pip install torchortho==0.1.2)")

    gelu = nn.GELU()
    gelu_time, gelu_bytes = step_time(gelu, x, args.repeats), saved_bytes(gelu, x)
    print(f"CPU fp32, {args.threads} threads, {args.numel:,} elements, forward+backward; "
          f"nn.GELU: {gelu_time * 1e3:.1f} ms, {gelu_bytes / 2**20:.1f} MiB saved")
    header = f"{'family':<18} {'degree':>6} {'ours time':>10} {'ours mem':>9}"
    if use_reference:
        header += f" {'torchortho time':>16} {'torchortho mem':>15}"
    print(header)
    print("-" * len(header))
    for family, degree in CASES:
        ours = lit_ortho.build_activation({"name": family, "degree": degree})
        row = (f"{family:<18} {degree:>6} {step_time(ours, x, args.repeats) / gelu_time:>9.1f}x "
               f"{saved_bytes(ours, x) / gelu_bytes:>8.2f}x")
        if use_reference:
            ref = torchortho_module(family, degree)
            repeats = max(1, args.repeats // 3)
            row += (f" {step_time(ref, x, repeats) / gelu_time:>15.1f}x"
                    f" {saved_bytes(ref, x) / gelu_bytes:>14.1f}x")
        print(row, flush=True)


if __name__ == "__main__":
    main()
