"""GPT-2 model file and the ConvNeXt builder."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_ortho import build_activation
from lit_ortho.activations import HermiteActivation, LearnableActivation
from lit_ortho.models import GPT, GPTConfig, create_convnext, freeze_all_but_activations_and_head, layer_activation_specs


def _tiny(**kw):
    cfg = dict(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32)
    cfg.update(kw)
    return GPTConfig(**cfg)


# ---- GPT-2 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_named_sizes_have_gpt2_parameter_counts(name):
    cfg = GPTConfig.from_name(name, vocab_size=50257, padding_multiple=1)
    with torch.device("meta"):
        model = GPT(cfg)
    d, L, V, T = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.block_size
    # per block: qkv (3d^2+3d) + attn proj (d^2+d) + fc (4d^2+4d) + proj (4d^2+d) + two LayerNorms (4d)
    expected = V * d + T * d + L * (12 * d * d + 13 * d) + 2 * d
    assert model.num_parameters(non_embedding=False) == expected
    if name == "gpt2":
        assert expected == 124_439_808  # the released GPT-2 small


def test_vocab_is_padded_like_nanogpt():
    assert GPTConfig.from_name("gpt2").padded_vocab_size == 50304
    assert GPTConfig.from_name("tiny", vocab_size=257).padded_vocab_size == 320


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="unknown GPT-2 size 'gpt3'.*tiny, gpt2, gpt2-medium"):
        GPTConfig.from_name("gpt3")
    with pytest.raises(ValueError, match="divisible"):
        _tiny(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="unknown activation 'hermit'"):
        GPT(_tiny(activation="hermit:3"))


def test_per_layer_activation_mapping():
    specs = layer_activation_specs({"0-1": "gelu", "3": "fourier:3", "*": "hermite:3"}, 5)
    assert specs == ["gelu", "gelu", "hermite:3", "fourier:3", "hermite:3"]
    assert layer_activation_specs({"name": "hermite", "degree": 3}, 2) == [{"name": "hermite", "degree": 3}] * 2
    assert layer_activation_specs(["gelu", "relu"], 2) == ["gelu", "relu"]
    model = GPT(_tiny(n_layer=3, activation={"0": "gelu", "*": "hermite:3"}))
    acts = [block.mlp.act for block in model.transformer.h]
    assert isinstance(acts[0], nn.GELU) and all(isinstance(a, HermiteActivation) for a in acts[1:])
    assert acts[1] is not acts[2]  # every layer owns its activation
    with pytest.raises(ValueError, match="without a spec.*'\\*'"):
        layer_activation_specs({"0": "gelu"}, 2)
    with pytest.raises(ValueError, match="outside the model's layers 0..1"):
        layer_activation_specs({"0-2": "gelu"}, 2)
    with pytest.raises(ValueError, match="more than one"):
        layer_activation_specs({"0-1": "gelu", "1": "relu"}, 2)
    with pytest.raises(ValueError, match="bad per-layer activation key 'x'"):
        layer_activation_specs({"x": "gelu"}, 2)
    with pytest.raises(ValueError, match="needs 3 entries"):
        layer_activation_specs(["gelu"], 3)


def test_init_follows_gpt2_and_leaves_activations_alone():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=512, block_size=64, n_layer=4, n_head=4, n_embd=256, activation="hermite:3")
    model = GPT(cfg)
    assert model.transformer.wte.weight is model.lm_head.weight  # tied
    block = model.transformer.h[0]
    assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.03)
    scaled = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.03)
    assert block.attn.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert torch.all(block.mlp.c_fc.bias == 0)
    fresh = build_activation("hermite:3")
    torch.testing.assert_close(block.mlp.act.coefficients, fresh.coefficients)


def test_attention_matches_explicit_causal_softmax():
    torch.manual_seed(0)
    model = GPT(_tiny()).eval()
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 7, 32)
    B, T, C = x.shape
    q, k, v = attn.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, 2, C // 2).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // 2)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
    torch.testing.assert_close(attn(x), attn.c_proj(y), rtol=1e-5, atol=1e-5)


def test_forward_is_causal_and_rejects_long_inputs():
    torch.manual_seed(0)
    model = GPT(_tiny(activation="hermite:3")).eval()
    idx = torch.randint(0, 97, (1, 10))
    changed = idx.clone()
    changed[0, 7:] = (changed[0, 7:] + 1) % 97
    a, b = model(idx), model(changed)
    assert a.shape == (1, 10, 128)  # padded vocabulary
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])
    with pytest.raises(ValueError, match="exceeds the model's block_size 32"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = GPT(_tiny(activation="hermite:3", dropout=0.0))
    idx = torch.randint(0, 97, (2, 16))

    def grads(flag):
        model.zero_grad()
        model.config.gradient_checkpointing = flag
        F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, ckpt = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(plain[name], ckpt[name], msg=name)


def test_generate_greedy_matches_a_manual_argmax_loop_and_skips_padding():
    torch.manual_seed(0)
    model = GPT(_tiny()).eval()
    with torch.no_grad():  # make the padded ids the most likely: they must still never be produced
        model.lm_head.weight[97:] = model.lm_head.weight[:97].abs().sum(0) * 10
    idx = torch.randint(0, 97, (2, 5))
    out = model.generate(idx, max_new_tokens=6, temperature=0)
    manual = idx
    for _ in range(6):
        logits = model(manual)[:, -1, :97]
        manual = torch.cat([manual, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, manual)
    sampled = model.generate(idx, max_new_tokens=20, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    assert sampled.shape == (2, 25) and int(sampled.max()) < 97


# ---- ConvNeXt ----------------------------------------------------------------------------------------
def test_convnext_uses_the_activation_spec_everywhere():
    model = create_convnext("convnext_atto", activation="hermite:3", num_classes=7)
    acts = [m for m in model.modules() if isinstance(m, LearnableActivation)]
    assert len(acts) == 2 + 2 + 6 + 2  # one per block (depths of convnext_atto)
    assert len({id(a) for a in acts}) == len(acts)
    assert not any("GELU" in type(m).__name__ for m in model.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="unknown ConvNeXt model 'convnext_huge'.*convnext_atto"):
        create_convnext("convnext_huge")


def test_convnext_pretrained_file_then_finetune_recipe(tmp_path):
    torch.manual_seed(0)
    released = create_convnext("convnext_atto", activation="gelu", num_classes=1000)  # a "pretrained" GELU model
    path = tmp_path / "convnext_atto.pth"
    torch.save(released.state_dict(), path)
    model = create_convnext("convnext_atto", activation="hermite:3", num_classes=10, pretrained=str(path))
    ref = released.state_dict()
    for name, value in model.state_dict().items():
        if name.startswith("head.fc"):
            assert value.shape[0] == 10  # a new head
        elif name in ref:
            torch.testing.assert_close(value, ref[name], msg=name)
        else:
            assert ".act." in name, name  # only the new activations are not in the file
    acts = [m for m in model.modules() if isinstance(m, HermiteActivation)]
    assert len(acts) == 12
    x = torch.linspace(-3, 3, 301)
    for act in acts:  # fitted to GELU (init="gelu"), not the variance-preserving init
        assert (act(x) - F.gelu(x)).abs().max().item() < 0.2
    trainable = freeze_all_but_activations_and_head(model)
    assert sorted({n.rsplit(".", 1)[0] for n in trainable if not n.startswith("head")}) == sorted(
        n for n, m in model.named_modules() if isinstance(m, HermiteActivation)
    )
    assert {n for n in trainable if n.startswith("head")} == {"head.fc.weight", "head.fc.bias"}
    assert all(not p.requires_grad for n, p in model.named_parameters() if n not in trainable)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_convnext("convnext_atto", pretrained=str(tmp_path / "missing.pth"))
