"""Pretrained checkpoints in and out, checked against transformers itself (random-weight models saved with
``save_pretrained``): GPT-2 logits, the tokenizer's ids, the paper's GELU -> learnable swap, checkpoints that
record the activations a model really has, replace_activations on Hugging Face models, and export-hf."""

from __future__ import annotations

import json
import os

import pytest
import torch


transformers = pytest.importorskip("transformers")

import lightning as L  # noqa: E402

import lit_ortho  # noqa: E402
from lit_ortho.activations import LearnableActivation  # noqa: E402
from lit_ortho.models import GPT  # noqa: E402
from lit_ortho.tasks import ConvNeXtModule, GPT2Module  # noqa: E402

transformers.logging.set_verbosity_error()
VOCAB = 300


def _hf_gpt2(tmp_path, name="hf", n_layer=2, n_embd=64, n_head=4, activation="gelu_new", seed=0, **save):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=64, vocab_size=VOCAB,
                                  activation_function=activation, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    path = tmp_path / name
    model.save_pretrained(path, **save)
    return model, path


def _logits(model, idx):
    with torch.no_grad():
        out = model(idx)
    return (out.logits if hasattr(out, "logits") else out)[..., :VOCAB]


IDX = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(0))


# ---- GPT.from_pretrained ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sizes, activation", [((2, 64, 4), "gelu_new"), ((3, 96, 6), "gelu"), ((2, 64, 2), "gelu_pytorch_tanh")])
def test_logits_match_transformers(tmp_path, sizes, activation):
    hf, path = _hf_gpt2(tmp_path, n_layer=sizes[0], n_embd=sizes[1], n_head=sizes[2], activation=activation)
    ours = GPT.from_pretrained(path).eval()
    assert (_logits(hf, IDX) - _logits(ours, IDX)).abs().max() <= 1e-5
    assert ours.config.n_layer == sizes[0] and ours.config.padded_vocab_size > VOCAB


@pytest.mark.parametrize("layout", ["bin", "sharded", "single_file", "prefixed_file"])
def test_every_file_layout_loads(tmp_path, layout):
    hf, path = _hf_gpt2(tmp_path, **({"safe_serialization": False} if layout == "bin" else {}),
                        **({"max_shard_size": "40KB"} if layout == "sharded" else {}))
    if layout == "sharded":
        assert any(f.endswith(".index.json") for f in os.listdir(path))
        target = path
    elif layout == "single_file":
        target = path / "model.safetensors"
    elif layout == "prefixed_file":  # GPT2LMHeadModel.state_dict(): "transformer." keys and lm_head.weight
        from safetensors.torch import save_file

        target = tmp_path / "alone" / "weights.safetensors"
        target.parent.mkdir()
        save_file({k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"} | {"lm_head.weight": hf.lm_head.weight.clone()}, target)
        (target.parent / "config.json").write_text((path / "config.json").read_text())
    else:
        target = path
    assert (_logits(hf, IDX) - _logits(GPT.from_pretrained(target).eval(), IDX)).abs().max() <= 1e-5


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"'gpt2' .*hub name.*download.*huggingface-cli download gpt2"):
        GPT.from_pretrained("gpt2")
    _, path = _hf_gpt2(tmp_path)
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((path / "config.json").read_text())
    prefix = "transformer." if "transformer.wte.weight" in tensors else ""  # either form is a valid file
    tensors.pop(f"{prefix}h.1.mlp.c_fc.weight")
    tensors[f"{prefix}h.0.mlp.c_proj.weight"] = tensors[f"{prefix}h.0.mlp.c_proj.weight"][:, :10].contiguous()
    tensors[f"{prefix}h.0.extra.weight"] = torch.zeros(3)
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \['transformer.h.1.mlp.c_fc.weight'\].*unexpected keys "
                                         r"\['transformer.h.0.extra.weight'\].*mis-shaped keys transformer.h.0.mlp.c_proj.weight"):
        GPT.from_pretrained(broken)
    config = json.loads((path / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "activation_function": "gelu_nope"}))
    with pytest.raises(ValueError, match=r"unknown Hugging Face activation_function 'gelu_nope'.*gelu_new"):
        GPT.from_pretrained(broken)


def test_swap_fits_each_activation_to_the_checkpoints_own(tmp_path):
    hf, path = _hf_gpt2(tmp_path)
    swapped = GPT.from_pretrained(path, activation="hermite:8").eval()
    acts = [block.mlp.act for block in swapped.transformer.h]
    assert all(isinstance(a, LearnableActivation) and a.init == "gelu_new" for a in acts)
    assert swapped.config.activation == acts[0].config()
    x = torch.linspace(-3, 3, 601)
    gelu_new = lit_ortho.build_activation("gelu_new")
    assert (acts[0](x) - gelu_new(x)).abs().max() < 0.01
    # the model still computes nearly what the checkpoint does
    diff = (_logits(hf, IDX) - _logits(swapped, IDX)).abs().max()
    assert 0 < diff < 0.05


# ---- the tokenizer of the checkpoint's own files ----------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    from pydoc_data.topics import topics
    from tokenizers import ByteLevelBPETokenizer

    texts = [topics[k] for k in sorted(topics)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts[:40], vocab_size=VOCAB, special_tokens=["<|endoftext|>"])
    files = tmp_path_factory.mktemp("vocab_merges")
    bpe.save_model(str(files))
    single = tmp_path_factory.mktemp("tokenizer_json")
    bpe.save(str(single / "tokenizer.json"))
    return files, single, "\n".join(texts[40:60]) + " Ünïcödé 日本語 123 \t  spaces  "


def test_tokenizer_ids_equal_transformers(tokenizer_dirs):
    from lit_ortho.data import get_tokenizer

    files, single, text = tokenizer_dirs
    ref = transformers.GPT2TokenizerFast.from_pretrained(files)(text)["input_ids"]
    assert len(ref) > 1000
    for directory in (files, single):
        tok = get_tokenizer(str(directory))
        assert tok.encode(text) == ref and tok.decode(ref) == text
        assert tok.eot_id == ref_eot(files) and tok.vocab_size == VOCAB


def ref_eot(files):
    return transformers.GPT2TokenizerFast.from_pretrained(files).convert_tokens_to_ids("<|endoftext|>")


def test_pretrained_module_uses_the_directorys_tokenizer(tmp_path, tokenizer_dirs):
    files, _, _ = tokenizer_dirs
    _, path = _hf_gpt2(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        (path / name).write_bytes((files / name).read_bytes())
    module = GPT2Module(pretrained=str(path), activation="hermite:3")
    assert module.tokenizer_name == str(path.resolve())
    text = module.generate("The ", max_new_tokens=5, seed=0)
    assert isinstance(text, str) and text.startswith("The ")


# ---- GPT2Module(pretrained=...) and checkpoints that record the real activations -------------------------
def _trainer(tmp_path, **kw):
    return L.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, **kw)


class _Windows(L.LightningDataModule):
    vocab_size, tokenizer_name = VOCAB, None

    def train_dataloader(self):
        data = torch.randint(0, VOCAB, (16, 33), generator=torch.Generator().manual_seed(1))
        return torch.utils.data.DataLoader(data, batch_size=4)


def _saved_and_reloaded(module, tmp_path, cls=GPT2Module, data=None):
    trainer = _trainer(tmp_path)
    trainer.fit(module, data or _Windows())
    ckpt = tmp_path / "saved.ckpt"
    trainer.save_checkpoint(ckpt)
    return cls.load_from_checkpoint(ckpt, map_location="cpu").eval(), module.eval()


def test_pretrained_swap_reloads_without_the_pretrained_file(tmp_path):
    _, path = _hf_gpt2(tmp_path)
    module = GPT2Module(pretrained=str(path), activation="hermite:3", freeze=["embeddings", "attention"], lr=1e-3)
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith(("transformer.wte", "transformer.wpe")) or ".attn." in n for n in trainable)
    assert any(".mlp.act." in n for n in trainable)
    before = module.model.transformer.h[0].attn.c_attn.weight.clone()
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")  # the file is gone
    reloaded, trained = _saved_and_reloaded(module, tmp_path)
    assert torch.equal(trained.model.transformer.h[0].attn.c_attn.weight, before)  # frozen
    assert torch.equal(_logits(reloaded.model, IDX), _logits(trained.model, IDX))


def test_trainable_activations_only(tmp_path):
    _, path = _hf_gpt2(tmp_path)
    module = GPT2Module(pretrained=str(path), activation="fourier:3", trainable="activations")
    names = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert names and all(".mlp.act." in n for n in names)


@pytest.mark.parametrize("how", ["by_hand", "one_layer_by_hand", "per_layer_mapping"])
def test_gpt2_checkpoint_records_replaced_activations(tmp_path, how):
    mapping = {"0": "gelu", "*": "fourier(degree=3, init=unit)"} if how == "per_layer_mapping" else "gelu_tanh"
    module = GPT2Module(size="tiny", n_layer=2, n_embd=32, n_head=2, block_size=32, vocab_size=VOCAB, activation=mapping)
    if how == "by_hand":
        lit_ortho.replace_activations(module, "hermite:8", init="replaced")
    elif how == "one_layer_by_hand":
        lit_ortho.replace_activations(module, "tropical:4", types=None, names=["model.transformer.h.1.mlp.act"])
    reloaded, trained = _saved_and_reloaded(module, tmp_path)
    assert [type(b.mlp.act) for b in reloaded.model.transformer.h] == [type(b.mlp.act) for b in trained.model.transformer.h]
    assert torch.equal(_logits(reloaded.model, IDX[:, :32]), _logits(trained.model, IDX[:, :32]))


def test_convnext_checkpoint_records_replaced_activations(tmp_path, cache):
    from lit_ortho.data import ImageDataModule

    module = ConvNeXtModule(model_name="convnext_atto", activation="gelu", num_classes=10, lr=1e-3)
    lit_ortho.replace_activations(module, "hermite:3", init="replaced")
    data = ImageDataModule(image_size=32, batch_size=4, num_workers=0)
    reloaded, trained = _saved_and_reloaded(module, tmp_path, ConvNeXtModule, data)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert isinstance(reloaded.model.stages[0].blocks[0].mlp.act, LearnableActivation)
    with torch.no_grad():
        assert torch.equal(reloaded(images), trained(images))


# ---- replace_activations on Hugging Face models --------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gpt2", "vit", "bert"])
def test_replace_activations_on_hugging_face_models(tmp_path, kind):
    torch.manual_seed(0)
    if kind == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32))
        inputs = {"input_ids": IDX[:, :16]}
    elif kind == "vit":
        model = transformers.ViTModel(transformers.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                                             intermediate_size=64, image_size=16, patch_size=8))
        inputs = {"pixel_values": torch.randn(2, 3, 16, 16)}
    else:
        model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                                               intermediate_size=64, vocab_size=VOCAB))
        inputs = {"input_ids": IDX[:, :16]}
    model.save_pretrained(tmp_path / kind)
    model = type(model).from_pretrained(tmp_path / kind).eval()
    acts = [m for m in model.modules() if lit_ortho.activations.is_gelu(m)]
    assert len(acts) == 3 and all(lit_ortho.spec_of(a) in ("gelu", "gelu_tanh", "gelu_new") for a in acts)
    with torch.no_grad():
        before = model(**inputs)[0]
    replaced = lit_ortho.replace_activations(model, "hermite:8", init="replaced")
    assert len(replaced) == 3
    assert all(isinstance(model.get_submodule(n), LearnableActivation) for n in replaced)
    with torch.no_grad():
        after = model(**inputs)[0]
    assert torch.isfinite(after).all() and (after - before).abs().max() < 0.05 * before.abs().max()


# ---- and back: export-hf -----------------------------------------------------------------------------------------
def test_export_hf_round_trip_and_refusal(tmp_path):
    module = GPT2Module(size="tiny", n_layer=2, n_embd=64, n_head=4, block_size=64, vocab_size=VOCAB, activation="gelu_new")
    trainer = _trainer(tmp_path)
    trainer.fit(module, _Windows())
    trainer.save_checkpoint(tmp_path / "gelu.ckpt")
    from lit_ortho.cli import main

    main(["export-hf", str(tmp_path / "gelu.ckpt"), str(tmp_path / "exported")])
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "exported").eval()
    assert (_logits(hf, IDX) - _logits(module.eval().model, IDX)).abs().max() <= 1e-5
    back = GPT.from_pretrained(tmp_path / "exported").eval()
    assert torch.equal(_logits(back, IDX), _logits(module.model, IDX))

    lit_ortho.replace_activations(module, "hermite:3", init="replaced")
    with pytest.raises(ValueError, match=r"cannot export to Hugging Face.*learnable.*Keep the lit-ortho checkpoint"):
        module.save_hf(tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


# ---- the offline CPU path: README's main job with GELU -> export-hf -> pretrained + Hermite-3 -> fine-tune -----------
def _val_losses(log_root):
    import csv

    rows = []
    for metrics in sorted(log_root.rglob("metrics.csv")):
        with open(metrics) as f:
            rows += [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]
    return rows


@pytest.mark.slow
def test_offline_fine_tune_path_end_to_end(tmp_path, cache, monkeypatch):
    """The README's commands, each through ``lit_ortho.cli.main`` as the ``lit-ortho`` script runs it."""
    from launch import REPO
    from lit_ortho.cli import main

    config = str(REPO / "cli_configs" / "gpt2_cpu.yaml")

    def cli(*args, tag, cwd=tmp_path):
        cwd.mkdir(exist_ok=True)
        monkeypatch.chdir(cwd)
        main(list(args))

    def logged(name):
        return ["--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp_path / 'logs'}",
                f"--trainer.logger.name={name}"]

    cli("fit", "--config", config, "--model.init_args.activation=gelu", "--trainer.max_steps=60", "--trainer.val_check_interval=60",
        *logged("gelu"), tag="gelu")
    cli("export-hf", str(tmp_path / "runs/gpt2_cpu/checkpoints/last.ckpt"), str(tmp_path / "gelu_hf"), tag="export")
    swap = ["--model.init_args.pretrained", str(tmp_path / "gelu_hf"), "--model.init_args.activation=hermite:3"]
    cli("validate", "--config", config, *swap, *logged("swapped"), tag="swapped")
    cli("fit", "--config", config, *swap, "--model.init_args.lr=1e-3", "--model.init_args.warmup_steps=0",
        "--trainer.max_steps=20", "--trainer.val_check_interval=20", *logged("finetuned"), tag="finetuned",
        cwd=tmp_path / "finetune")  # its own runs/ directory
    gelu, swapped, finetuned = (_val_losses(tmp_path / "logs" / n) for n in ("gelu", "swapped", "finetuned"))
    print(f"val loss: GELU {gelu[-1]:.4f}, right after the swap to hermite:3 {swapped[-1]:.4f}, after 20 fine-tuning steps {finetuned[-1]:.4f}")
    assert abs(swapped[-1] - gelu[-1]) < 0.3  # the fitted activation keeps most of what the GELU model learned
    assert finetuned[-1] < swapped[-1]
