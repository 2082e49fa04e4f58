"""Bytes kept for backward: MLPs with a learnable activation, recomputing its output, against GELU's (CPU).

    python benchmarks/mlp_memory.py             # GPT-2-small block (1 x 1024 tokens), GPT-2 tiny, ConvNeXt-atto
    python benchmarks/mlp_memory.py --dry-run   # tiny shapes: checks that it runs

A plain MLP keeps three tensors for backward: the first Linear's input, the activation's input and its output.
``lit_ortho.models.mlp`` keeps the activation's output only as a recipe and recomputes it in backward (GPT-2's
MLP, timm's ``Mlp`` in ConvNeXt, ``LinearActivationLinear`` elsewhere). The bytes are counted with saved-tensor
hooks: the distinct storages autograd packs during the forward, parameters excluded, float32. That is the
step's activation memory and does not depend on the machine; the GPU peak (``max_memory_allocated``) is
``benchmarks/gpu_check.sh``'s. Each row also trains 3 AdamW steps with and without the recompute and says
whether the losses and gradients are bitwise the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_ortho.models import GPT, GPTConfig, create_convnext  # noqa: E402
from lit_ortho.models.convnext import RecomputeMlp  # noqa: E402

ACTIVATIONS = ["gelu", "hermite:3", "fourier:5", "tropical:5", "tropical_rational:6"]


def saved_bytes(fn, *args) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of ``fn(*args)``, parameters excluded."""
    seen: dict[int, int] = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    out.float().sum().backward()
    return sum(seen.values())


def gpt_block(activation: str, recompute: bool, dry: bool) -> torch.nn.Module:
    """One block of GPT-2 small (768 wide, 12 heads) or, for --dry-run, of a 64-wide model."""
    torch.manual_seed(0)
    size = dict(n_embd=64, n_head=4, block_size=64) if dry else {}
    config = GPTConfig.from_name("gpt2", n_layer=1, vocab_size=257, activation=activation,
                                 recompute_activation=recompute, **size)
    return GPT(config).transformer.h[0]


def gpt_tiny(activation: str, recompute: bool, dry: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    size = dict(n_layer=2, n_embd=64, block_size=64) if dry else {}
    return GPT(GPTConfig.from_name("tiny", vocab_size=257, activation=activation, recompute_activation=recompute, **size))


def convnext_atto(activation: str, recompute: bool, dry: bool) -> torch.nn.Module:
    """timm's ConvNeXt-atto; ``recompute=False`` gives its MLPs back timm's plain ``Mlp``."""
    from timm.layers import Mlp

    torch.manual_seed(0)
    model = create_convnext("convnext_atto", activation=activation, num_classes=10)
    if not recompute:
        for module in model.modules():
            if isinstance(module, RecomputeMlp):
                module.__class__ = Mlp
    return model


def cases(dry: bool):
    """(name, input description, model builder, input, loss of the model's output)."""
    tokens = torch.randint(0, 257, (2, 64) if dry else (8, 256), generator=torch.Generator().manual_seed(0))
    hidden = torch.randn((1, 64, 64) if dry else (1, 1024, 768), generator=torch.Generator().manual_seed(0))
    images = torch.randn((2, 3, 32, 32) if dry else (8, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    yield ("GPT-2 small, one block", "x".join(map(str, hidden.shape)) + " hidden", gpt_block, hidden)
    yield ("GPT-2 tiny, whole model", "x".join(map(str, tokens.shape)) + " tokens", gpt_tiny, tokens)
    yield ("ConvNeXt-atto, whole model", "x".join(map(str, images.shape)) + " images", convnext_atto, images)


def _output(model, inputs):
    out = model(inputs)
    return out[..., :257].logsumexp(-1) if out.dim() == 3 and out.shape[-1] >= 257 else out


def train_steps(model, inputs, steps: int = 3):
    """Losses and final gradients of ``steps`` AdamW steps on the mean square of the output."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = _output(model, inputs).float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def rows(dry: bool = False, activations=ACTIVATIONS):
    """One dict per (case, activation): bytes saved plain and recomputing, and the GELU model's plain bytes."""
    out = []
    for name, described, build, inputs in cases(dry):
        def saved(activation: str, recompute: bool) -> int:
            model = build(activation, recompute, dry)  # outside the hooks: an initialisation may fit with autograd
            return saved_bytes(lambda i: _output(model, i), inputs)

        gelu = saved("gelu", False)
        for activation in activations:
            plain, recomputed = saved(activation, False), saved(activation, True)
            losses_a, grads_a = train_steps(build(activation, False, dry), inputs)
            losses_b, grads_b = train_steps(build(activation, True, dry), inputs)
            bitwise = torch.equal(losses_a, losses_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
            out.append(dict(case=name, input=described, activation=activation, gelu=gelu, plain=plain,
                            recompute=recomputed, bitwise=bitwise))
    return out


def table(results) -> list[str]:
    mib = lambda n: f"{n / 2**20:.1f}"  # noqa: E731
    lines = ["| model | input | activation | saved, plain MLP (MiB) | saved, recomputing MLP (MiB) | recomputing / GELU's plain "
             "| 3 steps bitwise the same |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['case']} | {r['input']} | {r['activation']} | {mib(r['plain'])} | {mib(r['recompute'])} | "
                     f"{r['recompute'] / r['gelu']:.2f}x | {'yes' if r['bitwise'] else 'NO'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes: checks that it runs")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"CPU float32, torch {torch.__version__}; bytes autograd keeps for backward (saved-tensor hooks, distinct "
          f"storages, parameters excluded); ratio to the GELU model with timm's / GPT-2's plain MLP"
          + (" (--dry-run: tiny shapes)" if args.dry_run else ""))
    print()
    print("\n".join(table(rows(args.dry_run))))


if __name__ == "__main__":
    main()
