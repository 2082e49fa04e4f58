"""GPT2Module / ConvNeXtModule: optimisation rules, training, checkpoints, FSDP2 and DDP."""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lit_ortho import build_activation
from lit_ortho.activations import LearnableActivation
from lit_ortho.data import ImageDataModule, TextDataModule
from lit_ortho.modules import ConvNeXtModule, GPT2Module, WarmupCosine, parameter_groups

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("cache")  # a temp LIT_ORTHO_CACHE (tests/conftest.py)


def _trainer(tmp_path, **kw):
    args = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    args.update(kw)
    return L.Trainer(**args)


def _small_gpt(**kw):
    args = dict(size="tiny", n_layer=2, n_embd=64, n_head=2, block_size=64, activation="hermite:3", lr=3e-3, warmup_steps=3)
    args.update(kw)
    return GPT2Module(**args)


# ---- optimisation rules -------------------------------------------------------------------------------
def test_parameter_groups_follow_the_papers_rule():
    model = _small_gpt(vocab_size=257).model
    model.transformer.h[1].mlp.act = nn.Sequential(nn.Linear(4, 4))  # a plain 2-D weight: decays
    per_channel = build_activation({"name": "hermite", "degree": 3, "per_channel": 256})
    model.transformer.h[0].mlp.act = per_channel  # 2-D coefficients: still no decay
    model.transformer.h[0].ln_1.weight.requires_grad_(False)
    groups = {g["name"]: g for g in parameter_groups(model, weight_decay=0.1)}
    decay, no_decay = set(groups["decay"]["param_names"]), set(groups["no_decay"]["param_names"])
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert per_channel.coefficients.ndim == 2
    assert "transformer.h.0.mlp.act.coefficients" in no_decay
    assert {"transformer.h.1.mlp.act.0.weight", "transformer.h.0.mlp.c_fc.weight", "transformer.wpe.weight"} <= decay
    assert {"transformer.h.0.mlp.c_fc.bias", "transformer.ln_f.weight", "transformer.h.1.ln_2.bias"} <= no_decay
    assert "transformer.h.0.ln_1.weight" not in decay | no_decay  # frozen
    # the tied embedding / output matrix appears once
    tied = [n for n in decay if n in ("transformer.wte.weight", "lm_head.weight")]
    assert len(tied) == 1
    n_params = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_schedule_matches_nanogpt_get_lr():
    lr, min_lr, warmup, decay = 6e-4, 6e-5, 20, 200

    def get_lr(it):  # nanoGPT train.py
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > decay:
            return min_lr
        ratio = (it - warmup) / (decay - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(warmup, decay, min_lr / lr))
    for it in range(230):
        assert opt.param_groups[0]["lr"] == pytest.approx(get_lr(it), rel=1e-9, abs=1e-15), it
        opt.step()
        sched.step()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown GPT-2 size 'huge'.*gpt2-xl"):
        GPT2Module(size="huge")
    with pytest.raises(ValueError, match="unknown activation 'hermit'"):
        GPT2Module(activation="hermit:3")
    with pytest.raises(ValueError, match="fsdp_mixed_precision 'bf32'.*auto, bf16"):
        GPT2Module(fsdp_mixed_precision="bf32")
    with pytest.raises(ValueError, match="unknown ConvNeXt model"):
        ConvNeXtModule(model_name="resnet50")


def test_gpt_needs_a_vocabulary_and_a_long_enough_context(tmp_path):
    class NoVocab(L.LightningDataModule):
        def train_dataloader(self):
            return [torch.zeros(2, 9, dtype=torch.long)]

    with pytest.raises(ValueError, match="no vocab_size: pass vocab_size"):
        _trainer(tmp_path, max_steps=1).fit(_small_gpt(), datamodule=NoVocab())
    with pytest.raises(ValueError, match="data.seq_length=128 is longer than the model's context \\(block_size=64"):
        _trainer(tmp_path, max_steps=1).fit(_small_gpt(), datamodule=TextDataModule(seq_length=128, batch_size=2))


# ---- training, checkpoints, generation -----------------------------------------------------------------
def test_gpt2_hermite_trains_reloads_and_generates(tmp_path):
    torch.manual_seed(0)
    module = _small_gpt()
    data = TextDataModule(seq_length=64, batch_size=8)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = _trainer(tmp_path, max_steps=30, limit_val_batches=2, val_check_interval=30, callbacks=[Record()])
    trainer.fit(module, data)
    assert module.hparams.vocab_size == 257 and module.tokenizer_name == "byte"
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0  # bytes: ~5.8 nats -> well under 4.8
    assert "val/loss" in trainer.callback_metrics
    torch.testing.assert_close(trainer.callback_metrics["val/ppl"], trainer.callback_metrics["val/loss"].exp())
    acts = [m for m in module.model.modules() if isinstance(m, LearnableActivation)]
    fresh = build_activation("hermite:3")
    assert all(a.coefficients.dtype == torch.float32 for a in acts)
    assert all(not torch.allclose(a.coefficients, fresh.coefficients) for a in acts)  # they learned

    path = tmp_path / "gpt.ckpt"
    trainer.save_checkpoint(path)
    reloaded = GPT2Module.load_from_checkpoint(path)  # nothing else: vocab and tokenizer come from the file
    idx = torch.randint(0, 257, (2, 16))
    module.eval()
    torch.testing.assert_close(reloaded(idx), module(idx))
    text = reloaded.generate("The ", max_new_tokens=40, seed=0)
    assert isinstance(text, str) and text.startswith("The ") and len(text) > 10
    assert reloaded.generate("The ", max_new_tokens=40, seed=0) == text  # seeded sampling is reproducible
    ids = reloaded.generate(torch.tensor([84, 104]), max_new_tokens=5, temperature=0)
    assert ids.shape == (7,) and ids[:2].tolist() == [84, 104]


def test_gpt2_under_fsdp2_keeps_activation_coefficients_fp32(tmp_path):
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)
    module = _small_gpt(activation_checkpointing=True)
    before = None
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1)
    trainer = _trainer(
        tmp_path, strategy=strategy, precision="bf16-mixed", max_steps=4, limit_val_batches=2, val_check_interval=4, gradient_clip_val=1.0
    )
    try:
        data = TextDataModule(seq_length=32, batch_size=4)
        trainer.fit(module, data)
        acts = [m for m in module.model.modules() if isinstance(m, LearnableActivation)]
        assert len(acts) == 2 and all("FSDP" in type(a).__name__ for a in acts)  # their own fp32 group
        before = build_activation("hermite:3").coefficients
        for act in acts:
            coef = act.coefficients
            assert isinstance(coef, DTensor) and coef.dtype == torch.float32
            assert not torch.allclose(coef.full_tensor(), before)
        c_fc = module.model.transformer.h[0].mlp.c_fc.weight
        assert isinstance(c_fc, DTensor) and c_fc.dtype == torch.float32  # sharded master weights stay fp32
        assert torch.isfinite(trainer.callback_metrics["train/loss"]) and "val/loss" in trainer.callback_metrics

        # ConvNeXt: one shard group per stage, same module code
        convnext = ConvNeXtModule(model_name="convnext_atto", activation="hermite:3", activation_checkpointing=True)
        images = ImageDataModule(image_size=32, batch_size=2, num_workers=0, crop_pct=1.0, hflip=0.0, color_jitter=0.0)
        trainer = _trainer(tmp_path, strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1), precision="bf16-mixed",
                           max_steps=2, limit_val_batches=1, val_check_interval=2)
        trainer.fit(convnext, images)
        assert all("FSDP" in type(stage).__name__ for stage in convnext.model.stages)
        coef = convnext.model.stages[2].blocks[0].mlp.act.coefficients
        assert isinstance(coef, DTensor) and coef.dtype == torch.float32
        assert torch.isfinite(trainer.callback_metrics["train/loss"]) and "val/acc1" in trainer.callback_metrics
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import lightning as L, torch
    from lightning.pytorch.strategies import ModelParallelStrategy
    from lit_ortho.data import TextDataModule
    from lit_ortho.modules import GPT2Module

    kind, out = sys.argv[1], sys.argv[2]
    L.seed_everything(0)
    strategy = "ddp" if kind == "ddp" else ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    module = GPT2Module(size="tiny", n_layer=2, n_embd=64, n_head=2, block_size=32, activation="hermite:3", lr=3e-3)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=3, limit_val_batches=2,
                        val_check_interval=3, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                        precision="bf16-mixed" if kind == "fsdp" else "32-true")
    trainer.fit(module, TextDataModule(seq_length=32, batch_size=4))
    coef = module.model.transformer.h[0].mlp.act.coefficients
    local = coef.to_local() if hasattr(coef, "to_local") else coef
    full = coef.full_tensor() if hasattr(coef, "full_tensor") else coef
    result = dict(rank=trainer.global_rank, val=float(trainer.callback_metrics["val/loss"]),
                  local=local.numel(), full=full.tolist(), dtype=str(coef.dtype), step=trainer.global_step)
    with open(f"{out}.{trainer.global_rank}.json", "w") as f:
        json.dump(result, f)
    """
)


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_processes_ddp_and_fsdp2(tmp_path, kind, cache):
    script = tmp_path / "run.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    # a fresh launch: drop what an earlier in-process distributed run left in the environment
    launch_vars = {"MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in launch_vars and not k.startswith(("PL_", "TORCHELASTIC"))}
    env.update(PYTHONPATH=str(REPO), LIT_ORTHO_CACHE=str(cache), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script), kind, str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    ranks = [json.loads((tmp_path / f"out.{r}.json").read_text()) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [3, 3]
    assert ranks[0]["val"] == pytest.approx(ranks[1]["val"])  # synchronised validation loss
    assert ranks[0]["full"] == pytest.approx(ranks[1]["full"])  # replicas / shards agree
    assert all(r["dtype"] == "torch.float32" for r in ranks)
    if kind == "fsdp":
        assert [r["local"] for r in ranks] == [2, 2]  # 4 Hermite-3 coefficients sharded over 2 ranks
    else:
        assert [r["local"] for r in ranks] == [4, 4]


def test_compile_keeps_parameter_names_and_results():
    torch.manual_seed(0)
    eager = _small_gpt(vocab_size=257)
    compiled = _small_gpt(vocab_size=257, compile=True)
    compiled.load_state_dict(eager.state_dict())
    compiled.configure_model()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    batch = torch.randint(0, 257, (2, 33))
    torch.testing.assert_close(compiled._loss(batch)[0], eager._loss(batch)[0], rtol=1e-4, atol=1e-4)


# ---- ConvNeXt --------------------------------------------------------------------------------------------
def test_convnext_loss_matches_timm_mixup_with_label_smoothing():
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    module = ConvNeXtModule(num_classes=10, label_smoothing=0.1)
    torch.manual_seed(0)
    logits, target = torch.randn(8, 10), torch.randint(0, 10, (8,))
    x = torch.randn(8, 3, 4, 4)
    ours = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=10)
    timms = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=10)
    torch.manual_seed(1)
    import numpy as np

    np.random.seed(1)
    _, soft = ours(x.clone(), target)
    np.random.seed(1)
    _, smoothed = timms(x.clone(), target)
    assert soft.sum(-1).allclose(torch.ones(8))
    torch.testing.assert_close(module._loss(logits, soft), SoftTargetCrossEntropy()(logits, smoothed))
    torch.testing.assert_close(module._loss(logits, target), LabelSmoothingCrossEntropy(0.1)(logits, target))


def test_convnext_trains_on_digits_and_reloads_without_the_pretrained_file(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "atto.pth"
    from lit_ortho.models import create_convnext

    torch.save(create_convnext("convnext_atto", num_classes=1000).state_dict(), weights)
    module = ConvNeXtModule(
        model_name="convnext_atto", activation="hermite:3", pretrained=str(weights), freeze_backbone=True, lr=1e-2, weight_decay=0.0
    )
    data = ImageDataModule(image_size=32, batch_size=8, val_batch_size=32, num_workers=0, hflip=0.0, color_jitter=0.0, crop_pct=1.0)
    trainer = _trainer(tmp_path, max_steps=4, limit_val_batches=1, val_check_interval=4)
    trainer.fit(module, data)
    opt = trainer.optimizers[0]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert in_opt == trainable and len(trainable) == 12 + 2  # 12 activations + head.fc weight/bias
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)
    assert {"val/acc1", "val/acc5", "val/loss", "train/loss", "train/acc1"} <= set(trainer.callback_metrics)
    path = tmp_path / "convnext.ckpt"
    trainer.save_checkpoint(path)
    weights.unlink()  # the checkpoint alone must be enough
    reloaded = ConvNeXtModule.load_from_checkpoint(path)
    assert reloaded.hparams.num_classes == 10 and reloaded.hparams.pretrained is None
    images = torch.randn(2, 3, 32, 32)
    module.eval(), reloaded.eval()
    torch.testing.assert_close(reloaded(images), module(images))


def test_validate_before_fit_leaves_metrics_usable(tmp_path):
    """validate() runs under inference mode; the fit that follows must still update its metrics."""
    torch.manual_seed(0)
    model = _small_gpt()
    data = TextDataModule(seq_length=32, batch_size=4)
    first = _trainer(tmp_path, limit_val_batches=2).validate(model, data, verbose=False)[0]["val/loss"]
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=2, val_check_interval=2)
    trainer.fit(model, data)
    assert math.isfinite(first) and math.isfinite(float(trainer.callback_metrics["val/loss"]))
