"""The MLP keeps only its activation's input for backward (lit_ortho.models.mlp): fewer bytes saved than a
GELU MLP, and bitwise the same losses and gradients (CPU, fp32). Bytes are counted with saved-tensor hooks
(unique storages), which does not depend on the machine's speed."""

from __future__ import annotations

import pytest
import torch

from lit_ortho.models import GPT, GPTConfig, create_convnext


def saved_bytes(fn, *args) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of ``fn(*args).sum()``, parameters excluded."""
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
