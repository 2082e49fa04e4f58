"""GPT2Module / ConvNeXtModule: optimisation rules, options, training, checkpoints, FSDP2 and DDP."""

import ast
import importlib.util
import inspect
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lit_ortho import build_activation
from lit_ortho.activations import LearnableActivation
from lit_ortho.data import ImageDataModule, TextDataModule
from lit_ortho.tasks import ConvNeXtModule, GPT2Module, OrthoModule, WarmupCosine, parameter_groups
from launch import free_port, run, script

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


def test_train_step_benchmark_uses_the_training_parameter_groups():
    """benchmarks/train_step.py used to decay every 2-D parameter, per-channel activation coefficients too."""
    spec = importlib.util.spec_from_file_location("_train_step_benchmark", REPO / "benchmarks" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from lit_ortho.models.gpt import GPT, GPTConfig

    config = GPTConfig.from_name("tiny", n_layer=2, n_embd=32, n_head=2, block_size=16, vocab_size=257,
                                 activation={"name": "hermite", "degree": 3, "per_channel": 128})
    model = GPT(config)
    opt = bench.optimizer_for(model, torch.device("cpu"))
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    expected = {id(p): g["weight_decay"] for g in parameter_groups(model, 0.1) for p in g["params"]}
    assert decay_of == expected
    coefficients = [m.coefficients for m in model.modules() if isinstance(m, LearnableActivation)]
    assert len(coefficients) == 2 and all(c.ndim == 2 for c in coefficients)
    assert all(decay_of[id(c)] == 0.0 for c in coefficients)  # [C, K]: 2-D, and still no decay
    assert decay_of[id(model.transformer.h[0].mlp.c_fc.weight)] == 0.1


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


# ---- options: declared once (OrthoModule), resolved through **kwargs ------------------------------------
OPTIONS = {
    "lr": 6e-4, "min_lr": None, "weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8, "warmup_steps": 0, "warmup_epochs": 0.0,
    "lr_decay_steps": None, "activation_checkpointing": False, "compile": False, "fsdp_mixed_precision": "auto",
}
CONVNEXT_RECIPE = {"lr": 4e-3, "min_lr": 1e-6, "weight_decay": 0.05, "betas": (0.9, 0.999)}


def test_options_are_declared_once_and_all_saved_in_hparams():
    base = inspect.signature(OrthoModule.__init__).parameters
    assert {name: base[name].default for name in OPTIONS} == OPTIONS
    gpt = inspect.signature(GPT2Module.__init__).parameters
    convnext = inspect.signature(ConvNeXtModule.__init__).parameters
    assert not set(OPTIONS) & set(gpt) and gpt["kwargs"].kind is inspect.Parameter.VAR_KEYWORD
    # ConvNeXt re-declares only the options whose recipe defaults differ
    assert set(OPTIONS) & set(convnext) == set(CONVNEXT_RECIPE)
    assert {name: convnext[name].default for name in CONVNEXT_RECIPE} == CONVNEXT_RECIPE

    module = GPT2Module(size="tiny", lr=3e-3, warmup_steps=15)
    assert {k: module.hparams[k] for k in OPTIONS} == {**OPTIONS, "lr": 3e-3, "warmup_steps": 15}
    assert module.hparams.size == "tiny" and module.hparams.activation is None  # None: gelu, or a checkpoint's own
    assert GPT2Module(size="tiny", vocab_size=257).model.activation_specs() == "gelu"
    module = ConvNeXtModule(eps=1e-6)
    assert {k: module.hparams[k] for k in OPTIONS} == {**OPTIONS, **CONVNEXT_RECIPE, "eps": 1e-6}
    with pytest.raises(TypeError, match="unexpected keyword argument 'learning_rate'"):
        GPT2Module(learning_rate=1e-3)


@pytest.mark.parametrize("cls, defaults", [("GPT2Module", OPTIONS), ("ConvNeXtModule", {**OPTIONS, **CONVNEXT_RECIPE})])
def test_the_cli_shows_every_option_with_its_default(cls, defaults, capsys, tmp_path, monkeypatch):
    import yaml

    from lit_ortho.cli import OrthoCLI

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        OrthoCLI(args=["fit", f"--model=lit_ortho.tasks.{cls}", "--data=lit_ortho.data.TextDataModule", "--print_config"])
    init_args = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in init_args.items() if k in OPTIONS} == defaults
    cli = OrthoCLI(args=[f"--model=lit_ortho.tasks.{cls}", "--model.init_args.lr=0.01", "--model.init_args.warmup_steps=7",
                         "--data=lit_ortho.data.TextDataModule"], run=False)
    assert (cli.model.hparams.lr, cli.model.hparams.warmup_steps, cli.model.hparams.eps) == (0.01, 7, 1e-8)


def test_lit_ortho_modules_is_an_alias_of_lit_ortho_tasks(tmp_path, monkeypatch):
    import yaml

    import lit_ortho.modules
    import lit_ortho.tasks
    from lit_ortho.cli import OrthoCLI

    for name in lit_ortho.tasks.__all__:
        assert getattr(lit_ortho.modules, name) is getattr(lit_ortho.tasks, name), name
    config = yaml.safe_load((REPO / "cli_configs" / "gpt2_cpu.yaml").read_text())
    config["model"]["class_path"] = "lit_ortho.modules.GPT2Module"  # an old YAML
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    cli = OrthoCLI(args=["--config", str(old)], run=False)
    assert type(cli.model) is lit_ortho.tasks.GPT2Module and cli.model.hparams.lr == 3e-3


def _imports(path: Path, package: str) -> set[str]:
    """Every lit_ortho module a source file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {name for name in found if name.startswith("lit_ortho")}


def test_distributed_and_tasks_have_no_import_cycles():
    root = REPO / "lit_ortho"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, name if parts[-1] == "__init__" else name.rpartition(".")[0])
    graph = {name: {m for m in _imports(path, pkg) if m in modules} for name, (path, pkg) in modules.items()}

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    ours = [m for m in modules if m.startswith(("lit_ortho.distributed", "lit_ortho.tasks", "lit_ortho.modules"))]
    assert {"lit_ortho.distributed.sharding", "lit_ortho.tasks.base", "lit_ortho.modules"} <= set(ours)
    for name in ours:
        assert name not in reachable(name), f"{name} imports a module that imports it back"
        if name.startswith("lit_ortho.distributed"):
            assert not {m for m in reachable(name) if m.startswith(("lit_ortho.tasks", "lit_ortho.modules"))}, name


def test_gpt_needs_a_vocabulary_and_a_long_enough_context(tmp_path):
    class NoVocab(L.LightningDataModule):
        def train_dataloader(self):
            return [torch.zeros(2, 9, dtype=torch.long)]

    with pytest.raises(ValueError, match="no vocab_size: pass vocab_size"):
        _trainer(tmp_path, max_steps=1).fit(_small_gpt(), datamodule=NoVocab())
    with pytest.raises(ValueError, match="data.seq_length=128 is longer than the model's context \\(block_size=64"):
        _trainer(tmp_path, max_steps=1).fit(_small_gpt(), datamodule=TextDataModule(seq_length=128, batch_size=2))


# ---- training, checkpoints, generation -----------------------------------------------------------------
@pytest.mark.slow
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


def test_generate_uses_the_tokenizer_it_is_given():
    """generate(tokenizer=...) used to be ignored (set to None before it was read)."""
    torch.manual_seed(0)
    module = _small_gpt(vocab_size=257)
    assert module.tokenizer_name is None  # never saw a datamodule
    text = module.generate("ab", max_new_tokens=5, seed=0, tokenizer="byte")
    assert isinstance(text, str) and text.startswith("ab")
    with pytest.raises(ValueError, match="does not know its tokenizer"):
        module.generate("ab", max_new_tokens=5)


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


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_ddp_and_fsdp2(tmp_path, kind, cache):
    """tests/scripts/train_two_processes.py on 2 CPU processes."""
    result = run(script("train_two_processes.py", kind, tmp_path / "out"), tmp_path, timeout=600, tag=kind,
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), LIT_ORTHO_CACHE=str(cache))  # fmt: skip
    assert result.ok, result.describe()
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


@pytest.mark.slow
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


def test_convnext_test_has_its_own_metrics_and_a_test_loss(tmp_path):
    """test_step used to update (and log) the validation metric objects, and logged no test loss."""
    torch.manual_seed(0)
    module = ConvNeXtModule(model_name="convnext_atto", activation="hermite:3", num_classes=10)
    data = ImageDataModule(image_size=32, batch_size=8, val_batch_size=16, num_workers=0, hflip=0.0, color_jitter=0.0, crop_pct=1.0)
    counts = []

    class Count(L.Callback):  # Lightning resets logged metrics at epoch end: look during the test batches
        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            names = ("val_acc1", "val_acc5", "val_loss", "test_acc1", "test_acc5", "test_loss")
            counts.append({n: getattr(getattr(pl_module, n, None), "update_count", None) for n in names})

    trainer = _trainer(tmp_path, limit_val_batches=2, limit_test_batches=2, callbacks=[Count()])
    val = trainer.validate(module, data, verbose=False)[0]
    test = trainer.test(module, data, verbose=False)[0]
    assert {"test/loss", "test/acc1", "test/acc5"} <= set(test) and not any(k.startswith("val/") for k in test)
    assert [c["test_acc1"] for c in counts] == [1, 2] and [c["test_loss"] for c in counts] == [1, 2]
    assert all(c["val_acc1"] == c["val_acc5"] == c["val_loss"] == 0 for c in counts)  # the validation metrics untouched
    assert math.isfinite(test["test/loss"]) and 0.0 <= test["test/acc1"] <= 1.0
    assert set(val) == {"val/loss", "val/acc1", "val/acc5"}


def test_validate_before_fit_leaves_metrics_usable(tmp_path):
    """validate() runs under inference mode; the fit that follows must still update its metrics."""
    torch.manual_seed(0)
    model = _small_gpt()
    data = TextDataModule(seq_length=32, batch_size=4)
    first = _trainer(tmp_path, limit_val_batches=2).validate(model, data, verbose=False)[0]["val/loss"]
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=2, val_check_interval=2)
    trainer.fit(model, data)
    assert math.isfinite(first) and math.isfinite(float(trainer.callback_metrics["val/loss"]))
