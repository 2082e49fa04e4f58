"""The coordinate check on the paper's central claim (docs/RESULTS.md, "Check 3"): the unnormalised deep network.

    python benchmarks/coord_study.py                       # widths 64,256,1024, 16 layers, 3 steps
    python benchmarks/coord_study.py --widths 64 --depth 4 --steps 2

Runs ``lit-ortho coord-check --config deep-mlp``'s network and training (``lit_ortho.coord_check.DeepMLP``,
N(0, 1) inputs, AdamW) for GELU, ReLU, Hermite-3 (paper, unit-gain and all-ones coefficients: the control that
is not variance-preserving), Tropical-5 (paper and unit-gain) and Fourier-5, and prints one markdown table:
each activation output's RMS at the first, middle and last layer at initialisation, the last layer's after
the last step, and the RMS of the gradient at the first and last Linear outputs at initialisation.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_ortho.activations import LearnableActivation  # noqa: E402
from lit_ortho.coord_check import DEEP_MLP_LR, DeepMLP, _DeepMLPTask, _deep_mlp_batches, _train  # noqa: E402

ARMS = ["gelu", "relu", "hermite:3", "hermite(degree=3, init=unit)", "hermite:3 all-ones", "tropical:5",
        "tropical(degree=5, init=unit)", "fourier:5"]  # fmt: skip


def network(arm: str, width: int, depth: int) -> DeepMLP:
    torch.manual_seed(0)
    all_ones = arm.endswith(" all-ones")
    net = DeepMLP(width, depth, arm.removesuffix(" all-ones"))
    if all_ones:
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, LearnableActivation):
                    for p in module.parameters():
                        p.fill_(1.0)
    return net


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="64,256,1024")
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args(argv)
    widths = [int(w) for w in a.widths.split(",")]
    last, middle = a.depth - 1, a.depth // 2 - 1
    print(f"deep MLP without normalisation: {a.depth} x (Linear(width, width), N(0, 1/width) weights, no bias -> "
          f"activation), linear head; N(0, 1) inputs; AdamW lr {DEEP_MLP_LR}; {a.steps} steps; torch {torch.__version__}\n")
    print(f"| activation | width | output RMS, layers 1 / {middle + 1} / {a.depth} (init) | layer {a.depth} after "
          f"{a.steps - 1} steps | grad RMS at Linear 1 / {a.depth} outputs (init) |")
    print("|---|---|---|---|---|")

    def fmt(v: float) -> str:
        return f"{v:.3g}" if math.isfinite(v) else ("inf" if v == v else "nan")

    for arm in ARMS:
        for width in widths:
            rows = _train(_DeepMLPTask(network(arm, width, a.depth)), DEEP_MLP_LR, _deep_mlp_batches(width, a.steps))
            at = {(r["step"], r["layer"]): r for r in rows}
            init = [at[(0, f"layers.{i}.act")]["activation_rms"] for i in (0, middle, last)]
            after = at[(a.steps - 1, f"layers.{last}.act")]["activation_rms"]
            grads = [at[(0, f"layers.{i}.fc")]["grad_rms"] for i in (0, last)]
            print(f"| `{arm}` | {width} | {' / '.join(map(fmt, init))} | {fmt(after)} | {' / '.join(map(fmt, grads))} |",
                  flush=True)


if __name__ == "__main__":
    main()
