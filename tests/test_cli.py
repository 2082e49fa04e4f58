"""The lit-ortho command: every config parses and instantiates, the CPU configs train, log, checkpoint,
resume exactly and reload; prepare-text / prepare-images work and fail clearly."""

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from lit_ortho.cli import OrthoCLI, main
from lit_ortho.data import ImageDataModule, TextDataModule, prepare_images, prepare_text
from lit_ortho.tasks import ConvNeXtModule, GPT2Module

CONFIGS = Path(__file__).resolve().parents[1] / "cli_configs"
ALL_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml"))
CPU_CONFIGS = {"gpt2_cpu.yaml", "convnext_cpu.yaml"}


pytestmark = pytest.mark.usefixtures("cache")  # a temp LIT_ORTHO_CACHE (tests/conftest.py)


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _override(tmp_path: Path, name: str, steps: int, every: int, ckpt_dir: str) -> str:
    """A second --config for a short test run (replaces the callbacks list)."""
    path = tmp_path / name
    path.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "max_steps": steps,
                    "val_check_interval": steps,
                    "limit_val_batches": 2,
                    "log_every_n_steps": 1,
                    "enable_progress_bar": False,
                    "enable_model_summary": False,
                    "callbacks": [
                        {
                            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                            "init_args": {"dirpath": ckpt_dir, "filename": "{step}", "every_n_train_steps": every, "save_top_k": -1, "save_last": True},
                        }
                    ],
                }
            }
        )
    )
    return str(path)


# ---- every config --------------------------------------------------------------------------------------
def test_configs_exist():
    assert {"gpt2_cpu.yaml", "convnext_cpu.yaml", "gpt2_small_owt.yaml", "convnext_tiny_imagenet.yaml", "convnext_tiny_cifar10_finetune.yaml"} <= set(ALL_CONFIGS)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_config_parses_and_instantiates(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(CONFIGS / name)]
    raw = yaml.safe_load((CONFIGS / name).read_text())
    data_args = raw["data"]["init_args"]
    if name not in CPU_CONFIGS:  # GPU recipes: instantiate on this CPU with the hardware settings swapped
        args += ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto", "--trainer.precision=32-true"]
        if data_args.get("data_dir"):  # a tiny stand-in for OpenWebText / ImageNet at the configured path
            if raw["data"]["class_path"].endswith("TextDataModule"):
                (tmp_path / "c.txt").write_text("hello world " * 500)
                prepare_text([str(tmp_path / "c.txt")], data_args["data_dir"], tokenizer="byte", val_fraction=0, num_workers=1, verbose=False)
            else:
                for c in ("a", "b"):
                    (tmp_path / "imgs" / c).mkdir(parents=True)
                    from PIL import Image

                    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "imgs" / c / "x.png")
                prepare_images(str(tmp_path / "imgs"), data_args["data_dir"], val_fraction=0, num_workers=1, verbose=False)
    pretrained = raw["model"]["init_args"].get("pretrained")
    if pretrained:  # a tiny stand-in for the user's Hugging Face GPT-2 directory at the configured path
        from lit_ortho.models import GPT, GPTConfig
        from lit_ortho.models.hf import save_gpt2_checkpoint

        tiny = GPT(GPTConfig(vocab_size=300, block_size=1024, n_layer=1, n_head=2, n_embd=32, activation="gelu_new"))
        save_gpt2_checkpoint(tiny.state_dict(), {**vars(tiny.config), "activation_function": "gelu_new"}, pretrained)
    cli = OrthoCLI(args=args, run=False)
    assert isinstance(cli.model, L.LightningModule) and isinstance(cli.datamodule, L.LightningDataModule)
    assert type(cli.model).__name__ == raw["model"]["class_path"].rsplit(".", 1)[1]
    assert type(cli.datamodule).__name__ == raw["data"]["class_path"].rsplit(".", 1)[1]
    for key, value in raw["model"]["init_args"].items():  # the YAML reached the module unchanged
        got = cli.model.hparams[key]
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    assert type(cli.trainer.logger).__name__ == "TensorBoardLogger"


def test_gpu_recipes_carry_the_papers_settings():
    owt = yaml.safe_load((CONFIGS / "gpt2_small_owt.yaml").read_text())
    assert owt["trainer"]["precision"] == "bf16-mixed"
    assert owt["trainer"]["strategy"]["class_path"].endswith("ModelParallelStrategy")
    m = owt["model"]["init_args"]
    assert (m["size"], m["activation"], m["lr"], m["min_lr"], m["betas"], m["weight_decay"], m["warmup_steps"]) == (
        "gpt2", "hermite:3", 6e-4, 6e-5, [0.9, 0.95], 0.1, 2000
    )
    assert owt["trainer"]["gradient_clip_val"] == 1.0 and owt["data"]["init_args"]["seq_length"] == 1024
    tokens = owt["data"]["init_args"]["batch_size"] * 1024 * owt["trainer"]["accumulate_grad_batches"] * owt["trainer"]["devices"]
    assert tokens == 491_520  # nanoGPT's batch
    imnet = yaml.safe_load((CONFIGS / "convnext_tiny_imagenet.yaml").read_text())
    m, d = imnet["model"]["init_args"], imnet["data"]["init_args"]
    assert (m["model_name"], m["lr"], m["weight_decay"], m["warmup_epochs"], m["drop_path_rate"], m["label_smoothing"]) == (
        "convnext_tiny", 4e-3, 0.05, 20, 0.1, 0.1
    )
    assert imnet["trainer"]["max_epochs"] == 300 and (d["mixup"], d["cutmix"]) == (0.8, 1.0)
    assert d["batch_size"] * imnet["trainer"]["devices"] * imnet["trainer"]["accumulate_grad_batches"] == 4096
    ft = yaml.safe_load((CONFIGS / "convnext_tiny_cifar10_finetune.yaml").read_text())
    m = ft["model"]["init_args"]
    assert (m["freeze_backbone"], m["activation_init"], m["lr"], m["min_lr"], m["weight_decay"]) == (True, "gelu", 1e-3, 1e-3, 0.0)
    assert ft["trainer"]["max_epochs"] == 10 and ft["data"]["init_args"]["batch_size"] == 128


def test_activation_is_overridable_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = OrthoCLI(args=["--config", str(CONFIGS / "gpt2_cpu.yaml"), "--model.init_args.activation=fourier:5"], run=False)
    assert cli.model.hparams.activation == "fourier:5"
    cli = OrthoCLI(
        args=["--config", str(CONFIGS / "gpt2_cpu.yaml"), '--model.init_args.activation={"0-1": gelu, "*": "hermite:3"}'], run=False
    )
    assert cli.model.hparams.activation == {"0-1": "gelu", "*": "hermite:3"}


# ---- the CPU configs run -------------------------------------------------------------------------------
SMALL_GPT = ["--model.init_args.n_layer=2", "--model.init_args.n_embd=64", "--data.init_args.seq_length=64", "--data.init_args.batch_size=8"]


def test_gpt2_cpu_config_trains_logs_resumes_exactly_and_generates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = str(CONFIGS / "gpt2_cpu.yaml")
    main(["fit", "--config", config, "--config", _override(tmp_path, "a.yaml", 12, 6, "ckpt_a"), *SMALL_GPT])
    log_dir = tmp_path / "runs" / "gpt2_cpu" / "version_0"
    scalars = _scalars(log_dir)
    loss = [v for _, v in scalars["train/loss"]]
    assert len(loss) == 12 and sum(loss[-3:]) / 3 < sum(loss[:3]) / 3 - 0.3
    assert [s for s, _ in scalars["val/loss"]] == [11]
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["model"]["init_args"]["activation"] == "hermite:3"

    # resume from step 6 with the same command: the result must equal the uninterrupted run at step 12
    main(["fit", "--config", config, "--config", _override(tmp_path, "b.yaml", 12, 6, "ckpt_b"), *SMALL_GPT, "--ckpt_path", "ckpt_a/step=6.ckpt"])
    resumed_steps = [s for s, _ in _scalars(tmp_path / "runs" / "gpt2_cpu" / "version_1")["train/loss"]]
    assert resumed_steps == list(range(6, 12))  # it did continue from step 6 (a fresh run would log 0..11)
    a = torch.load(tmp_path / "ckpt_a" / "step=12.ckpt", weights_only=False)
    b = torch.load(tmp_path / "ckpt_b" / "step=12.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 12
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, msg=name)

    # the Hermite model reloads from its checkpoint alone and writes text
    model = GPT2Module.load_from_checkpoint(tmp_path / "ckpt_a" / "last.ckpt")
    assert model.hparams.activation == "hermite:3" and model.tokenizer_name == "byte"
    text = model.generate("The ", max_new_tokens=30, seed=0)
    assert text.startswith("The ") and len(text) > 8


def test_convnext_cpu_config_trains_and_accuracy_rises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(CONFIGS / "convnext_cpu.yaml"), "--config", _override(tmp_path, "a.yaml", 12, 12, "ckpt")]
    main(args + ["--data.init_args.batch_size=16", "--data.init_args.val_batch_size=90"])
    scalars = _scalars(tmp_path / "runs" / "convnext_cpu" / "version_0")
    loss = [v for _, v in scalars["train/loss"]]
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3 - 0.2
    acc = scalars["val/acc1"][-1][1]
    assert acc > 0.3  # 10 balanced classes: chance is 0.1
    model = ConvNeXtModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    dm = ImageDataModule(image_size=32, batch_size=16, val_batch_size=90, num_workers=0, crop_pct=1.0)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=2)
    (metrics,) = trainer.validate(model, dm, verbose=False)
    assert metrics["val/acc1"] == pytest.approx(acc, abs=1e-6)  # the reloaded model scores what training logged


# ---- data preparation subcommands ------------------------------------------------------------------------
def test_prepare_text_command_and_training_on_its_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()
    for i in range(30):
        (tmp_path / "corpus" / f"{i}.txt").write_text(f"Story {i}. " + "Once upon a time there was a fox. " * 20)
    main(["prepare-text", "corpus", "--output-dir", "data/tok", "--tokenizer", "byte", "--val-fraction", "0.2", "--num-workers", "2"])
    out = capsys.readouterr().out
    assert "wrote data/tok (byte, vocabulary 257)" in out and "--data.data_dir data/tok" in out
    dm = TextDataModule(data_dir="data/tok", seq_length=32, batch_size=4)
    dm.setup("fit")
    assert dm.meta["splits"]["train"]["documents"] + dm.meta["splits"]["val"]["documents"] == 30
    with pytest.raises(SystemExit, match="input not found: 'missing_dir'"):
        main(["prepare-text", "missing_dir", "--output-dir", "data/x", "--tokenizer", "byte"])
    with pytest.raises(SystemExit):
        main(["prepare-text", "corpus", "--output-dir", "data/x", "--tokenizer", "words"])
    assert "unknown tokenizer 'words'; valid choices: gpt2, byte" in capsys.readouterr().err


def test_prepare_images_command(tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    for c in ("ant", "bee"):
        (tmp_path / "imgs" / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (9, 9), (i, 0, 0)).save(tmp_path / "imgs" / "train" / c / f"{i}.jpg")
    main(["prepare-images", "imgs", "--output-dir", "data/imgs", "--num-workers", "1"])
    assert "wrote data/imgs (2 classes): train: 6 images" in capsys.readouterr().out
    assert ImageDataModule(data_dir="data/imgs").classes == ["ant", "bee"]
    main(["prepare-images", "--dataset", "digits"])
    assert "--data.dataset digits" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="image folder not found: 'nothing'"):
        main(["prepare-images", "nothing", "--output-dir", "data/none"])


def test_help_mentions_the_data_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "prepare-text" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["prepare-text", "--help"])
    assert "--tokenizer" in capsys.readouterr().out
