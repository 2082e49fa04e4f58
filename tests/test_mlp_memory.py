"""The MLP keeps only its activation's input for backward (lit_ortho.models.mlp): fewer bytes saved than a
GELU MLP, and bitwise the same losses and gradients (CPU, fp32). Bytes are counted with saved-tensor hooks
(unique storages), which does not depend on the machine's speed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lit_ortho.models import GPT, GPTConfig, create_convnext

_spec = importlib.util.spec_from_file_location("_bench_mlp_memory", Path(__file__).parent.parent / "benchmarks" / "mlp_memory.py")
mlp_memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mlp_memory)
saved_bytes = mlp_memory.saved_bytes  # distinct storages packed for backward, parameters excluded


def _gpt(activation, recompute, n_layer=1):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=257, block_size=64, n_layer=n_layer, n_head=4, n_embd=128, activation=activation,
                         recompute_activation=recompute))


@pytest.mark.parametrize("activation", ["hermite:3", "fourier:5", "tropical:5", "tropical_rational:6"])
def test_gpt2_block_saves_at_most_0_8_of_a_gelu_block(activation):
    x = torch.randn(4, 64, 128, requires_grad=True)
    gelu = saved_bytes(_gpt("gelu", recompute=False).transformer.h[0], x)
    ours = saved_bytes(_gpt(activation, recompute=True).transformer.h[0], x)
    print(f"{activation}: {ours / gelu:.3f}x the GELU block's saved bytes")
    assert ours <= 0.8 * gelu


def _train(model, steps=3, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, 257, (4, 65), generator=torch.Generator().manual_seed(seed))
    losses = []
    for _ in range(steps):
        logits = model(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def test_gpt2_tiny_step_is_lighter_than_gelu_and_bitwise_the_same():
    idx = torch.randint(0, 257, (4, 64))
    step = lambda m: saved_bytes(lambda i: m(i)[..., :257].logsumexp(-1), idx)  # noqa: E731
    gelu = step(_gpt("gelu", recompute=False, n_layer=4))
    ours = step(_gpt("hermite:3", recompute=True, n_layer=4))
    print(f"GPT-2 tiny step: hermite:3 with recompute saves {ours / gelu:.3f}x the GELU model's bytes")
    assert ours < gelu
    assert torch.equal(_train(_gpt("hermite:3", recompute=True, n_layer=2)), _train(_gpt("hermite:3", recompute=False, n_layer=2)))


def test_convnext_mlp_recomputes_and_matches_bitwise():
    def run(recompute):
        torch.manual_seed(0)
        model = create_convnext("convnext_atto", activation="hermite:3", num_classes=10)
        if not recompute:
            from timm.layers import Mlp

            for module in model.modules():
                if type(module).__name__ == "RecomputeMlp":
                    module.__class__ = Mlp
        images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        nbytes = saved_bytes(model, images)
        return nbytes, [p.grad for p in model.parameters()]

    plain, plain_grads = run(False)
    ours, grads = run(True)
    assert ours < 0.8 * plain
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads))


def test_the_benchmark_table_shows_every_recomputing_mlp_lighter_and_bitwise_the_same():
    """benchmarks/mlp_memory.py --dry-run's rows: GPT-2 block, GPT-2 tiny and ConvNeXt-atto, each family."""
    results = mlp_memory.rows(dry=True)
    assert {r["activation"] for r in results} == set(mlp_memory.ACTIVATIONS) and len(results) == 3 * len(mlp_memory.ACTIVATIONS)
    for r in results:
        assert r["recompute"] <= 0.8 * r["gelu"] and r["recompute"] < r["plain"], r
        assert r["bitwise"], r
    lines = mlp_memory.table(results)
    assert len(lines) == 2 + len(results) and all(line.count("|") == 8 for line in lines)
