"""Every ```yaml and ```python block of README.md runs, so the README cannot drift from the code.

YAML blocks are LightningCLI config fragments: each is layered over cli_configs/gpt2_cpu.yaml and instantiated
by ``OrthoCLI`` (the callbacks fragment also trains, and its monitors must log what they promise). Python blocks
are executed as written in a temp directory; the files a block names as the user's own (a Hugging Face
checkpoint directory, a fine-tuned checkpoint) are put there first as tiny stand-ins. Each block is one case,
named by its line in README.md. The README's main job (``lit-ortho fit --config cli_configs/gpt2_cpu.yaml``)
is checked too: its monitors' scalars and pictures reach TensorBoard within its 150 steps.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

import _callback_helpers as helpers

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
GPT2_CPU = REPO / "cli_configs" / "gpt2_cpu.yaml"
CONVNEXT_CPU = REPO / "cli_configs" / "convnext_cpu.yaml"
# a smaller GPT-2 and a short run, for the fragments that train (the monitors' behaviour does not depend on size)
SMALL_GPT = ["--model.init_args.n_layer=2", "--model.init_args.n_embd=64", "--data.init_args.seq_length=64",
             "--data.init_args.batch_size=8", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]  # fmt: skip

pytestmark = pytest.mark.usefixtures("cache")  # a temp LIT_ORTHO_CACHE (tests/conftest.py)


def readme_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line of the opening fence, language, code) of every fenced block whose language is yaml or python."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang, body = i + 1, m.group(1), []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        if lang in ("yaml", "python"):
            blocks.append((start, lang, "\n".join(body) + "\n"))
    return blocks


BLOCKS = readme_blocks(README.read_text())


def test_the_readme_has_the_blocks_these_tests_run():
    langs = [lang for _, lang, _ in BLOCKS]
    assert langs.count("python") >= 5 and langs.count("yaml") >= 2, langs
    # the extractor sees every fence: an unclosed or mislabelled block would shift or swallow the others
    fences = [line for line in README.read_text().splitlines() if line.startswith("```")]
    assert len(fences) % 2 == 0


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---- YAML ------------------------------------------------------------------------------------------------
def _cli(tmp_path, fragment: str, *extra: str):
    from lit_ortho.cli import OrthoCLI

    return OrthoCLI(args=["--config", str(GPT2_CPU), "--config", _write(tmp_path, "readme.yaml", fragment), *extra], run=False)


def check_callbacks_yaml(code: str, tmp_path: Path) -> None:
    """The monitors' fragment: instantiated with its arguments, and on lit-ortho's own GPT-2 it logs what it
    promises (its globs match, the Linear layers are watched, parameters filtered to weights)."""
    from callbacks import ActivationShapeMonitor, ActivationVarianceMonitor, GradientVarianceMonitor, ParameterUpdateMonitor
    from lit_ortho.cli import main

    raw = yaml.safe_load(code)
    cli = _cli(tmp_path, code)
    kinds = (ActivationVarianceMonitor, GradientVarianceMonitor, ParameterUpdateMonitor, ActivationShapeMonitor)
    monitors = {type(cb): cb for cb in cli.trainer.callbacks if isinstance(cb, kinds)}
    # the fragment's list replaces the config's: each monitor once, with the fragment's arguments
    assert sum(isinstance(cb, kinds) for cb in cli.trainer.callbacks) == len(monitors) == len(raw["trainer"]["callbacks"])
    for entry in raw["trainer"]["callbacks"]:
        cls = {c.__name__: c for c in kinds}[entry["class_path"].rsplit(".", 1)[1]]
        cb = monitors[cls]
        for key, value in (entry.get("init_args") or {}).items():
            if key in ("low", "high", "stop_on_alert"):
                assert getattr(cb.alert, {"stop_on_alert": "stop"}.get(key, key)) == value, key
            else:
                assert getattr(cb, key) == value, key

    every = raw["trainer"]["callbacks"][0]["init_args"]["every_n_steps"]
    main(["fit", "--config", str(GPT2_CPU), "--config", _write(tmp_path, "readme.yaml", code), *SMALL_GPT,
          f"--trainer.max_steps={every}", f"--trainer.val_check_interval={every}", "--trainer.limit_val_batches=1",
          f"--trainer.log_every_n_steps={every}"])  # fmt: skip  (the monitors without every_n_steps follow it)
    scalars = helpers.read_scalars(tmp_path / "runs" / "gpt2_cpu")
    watched = {tag.split("/", 1)[1] for tag in scalars if tag.startswith("activation_variance/")}
    assert watched, "ActivationVarianceMonitor logged nothing"
    assert all(scalars[f"activation_variance/{layer}"].keys() == {every - 1} for layer in watched)
    assert {f"model.transformer.h.{i}.mlp.c_fc" for i in range(2)} <= watched  # module_types: [Linear] and the glob
    assert "model.transformer.h.0.mlp.act" in watched  # the activations stay watched
    grads = {tag.split("/", 1)[1] for tag in scalars if tag.startswith("gradient_variance/")}
    assert grads and all(name.endswith(".weight") for name in grads)
    assert any(tag.startswith("activation_grad_variance/") for tag in scalars)
    assert any(tag.startswith("activation_shape_forward_gain/") for tag in scalars)
    updates = {tag.split("/", 1)[1] for tag in scalars if tag.startswith("update_ratio/")}
    assert "model.transformer.h.0.mlp.c_fc.weight" in updates and "model.transformer.h.1.mlp.act.coefficients" in updates
    assert not any(name.endswith(".bias") for name in updates)  # the fragment's parameter globs
    assert any(tag.startswith("coefficient/model.transformer.h.0.mlp.act.coefficients/") for tag in scalars)


def check_strategy_yaml(code: str, tmp_path: Path) -> None:
    """The FSDP2 options: every one reaches the strategy (on a stand-in world of ``shard_size`` processes, which
    the pre-flight check accepts), and the model option reaches the module."""
    from lit_ortho.distributed import FSDP2Strategy

    raw = yaml.safe_load(code)
    options = raw["trainer"]["strategy"]["init_args"]
    cli = _cli(tmp_path, code, f"--trainer.devices={options['shard_size']}")
    strategy = cli.trainer.strategy
    assert type(strategy) is FSDP2Strategy
    assert (strategy.shard_size, strategy.cpu_offload, strategy.reshard_after_forward, strategy.timeout_s) == (
        options["shard_size"], options["cpu_offload"], options["reshard_after_forward"], options["timeout_s"])  # fmt: skip
    assert strategy._data_parallel_size == options["data_parallel_size"]
    assert strategy._tensor_parallel_size == options["tensor_parallel_size"]
    for key, value in raw["model"]["init_args"].items():
        assert cli.model.hparams[key] == value, key


YAML_CHECKS = [("callbacks.ActivationVarianceMonitor", check_callbacks_yaml), ("FSDP2Strategy", check_strategy_yaml)]


# ---- Python: stand-ins for the user's files, and what each block must leave behind --------------------------
def make_hf_checkpoints(tmp_path: Path) -> None:
    """checkpoints/gpt2 and checkpoints/bert (tiny Hugging Face directories) and
    runs/gpt2_finetune/checkpoints/last.ckpt (a fine-tuned GPT2Module), where the fine-tune block reads them."""
    import lightning as L
    import transformers

    from lit_ortho.tasks import GPT2Module

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    vocab = 300
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=vocab))
    gpt2.save_pretrained(tmp_path / "checkpoints" / "gpt2")
    bert = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                          intermediate_size=64, vocab_size=vocab))  # fmt: skip
    bert.save_pretrained(tmp_path / "checkpoints" / "bert")
    module = GPT2Module(pretrained=str(tmp_path / "checkpoints" / "gpt2"), activation="hermite:3")
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(torch.randint(0, vocab, (2, 17)), batch_size=2))
    trainer.save_checkpoint(tmp_path / "runs" / "gpt2_finetune" / "checkpoints" / "last.ckpt")


def check_activations(ns: dict, tmp_path: Path) -> None:
    assert ns["y"].dim() == 3 and ns["y"].shape[-1] == 3072 and torch.isfinite(ns["y"]).all()
    assert type(ns["act"]).__name__.lower().startswith("tropical") and ns["act"].per_channel == 3072


def _family(module) -> str:
    import lit_ortho

    spec = lit_ortho.spec_of(module)
    return re.split(r"[:(]", spec)[0] if isinstance(spec, str) else spec["name"]


def check_swap(ns: dict, tmp_path: Path) -> None:
    model, replaced = ns["model"], ns["replaced"]
    chosen = [n for n, _ in model.named_modules() if re.fullmatch(r"blocks\.\d+\.mlp\.act", n)]
    assert chosen and set(replaced) == set(chosen)  # the first call replaced every GELU (ViT's are all there)
    assert {_family(model.get_submodule(n)) for n in chosen} == {"fourier"}  # the second, chosen by name


def check_from_python(ns: dict, tmp_path: Path) -> None:
    assert ns["model"].hparams.activation == "hermite:3"
    assert ns["gpt"].config.n_layer == 12 and ns["net"].num_classes == 100
    assert ns["ft"].hparams.freeze_backbone and ns["ft"].trainer is not None  # the fine-tune ran


def check_fine_tune(ns: dict, tmp_path: Path) -> None:
    from lit_ortho.activations import LearnableActivation

    assert any(isinstance(m, LearnableActivation) for m in ns["bert"].modules())
    assert any(isinstance(m, LearnableActivation) for m in ns["module"].modules())


def check_callbacks(ns: dict, tmp_path: Path) -> None:
    names = {type(cb).__name__ for cb in ns["trainer"].callbacks}
    assert {"ActivationVarianceMonitor", "GradientVarianceMonitor", "ParameterUpdateMonitor", "ActivationShapeMonitor"} <= names


def check_watch(ns: dict, tmp_path: Path) -> None:
    """The plain-PyTorch block recorded its last enabled step (50) with the documented keys."""
    flat = ns["flat"]
    assert ns["step"] == 99 and flat is not None
    for tag in ("activation_variance/1", "activation_kurtosis/1", "activation_absmax/1", "gradient_variance/0.weight",
                "update_ratio/0.weight", "parameter_drift/2.weight"):
        assert tag in flat and flat[tag] > 0, tag


# (a line that identifies the block, files to make first, what to check after)
PYTHON_CHECKS = [
    ('lit_ortho.build_activation("hermite:3")', None, check_activations),
    ("lit_ortho.replace_activations(model, \"hermite:8\"", None, check_swap),
    ("from lit_ortho.data import TextDataModule", None, check_from_python),
    ('GPT.from_pretrained("checkpoints/gpt2")', make_hf_checkpoints, check_fine_tune),
    ("ActivationVarianceMonitor(high=1e4)", None, check_callbacks),
    ("stats = StepStatistics(model)", None, check_watch),
]


def _match(code: str, table: list) -> tuple:
    found = [entry for entry in table if entry[0] in code]
    assert len(found) == 1, f"a README block without exactly one check in tests/test_readme.py:\n{code}"
    return found[0]


# blocks that train for a while (the "From Python" block: 20 GPT-2 steps and a ConvNeXt fine-tune, > 20 s on 2 cores)
SLOW_BLOCKS = ("trainer.fit(model, TextDataModule",)
CASES = [pytest.param(line, lang, code, id=f"README.md:{line}-{lang}",
                      marks=[pytest.mark.slow] if any(s in code for s in SLOW_BLOCKS) else [])
         for line, lang, code in BLOCKS]  # fmt: skip


@pytest.mark.parametrize("line, lang, code", CASES)
def test_readme_block_runs(line, lang, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if lang == "yaml":
        _, check = _match(code, YAML_CHECKS)
        check(code, tmp_path)
        return
    _, prepare, check = _match(code, PYTHON_CHECKS)
    if prepare is not None:
        prepare(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - the README's own code
    check(namespace, tmp_path)


# ---- the README's main job shows the monitors -----------------------------------------------------------
def test_convnext_cpu_config_has_the_gpt2_configs_monitors():
    """The ConvNeXt config carries the same monitors at the same cadence and runs as long, so the run below (on
    the GPT-2 config; 150 ConvNeXt steps take minutes on 2 cores) shows what TensorBoard gets from both."""
    def monitors(path):
        raw = yaml.safe_load(path.read_text())
        return [c for c in raw["trainer"]["callbacks"] if c["class_path"].startswith("callbacks.")], raw["trainer"]["max_steps"]

    assert monitors(CONVNEXT_CPU) == monitors(GPT2_CPU) and len(monitors(GPT2_CPU)[0]) == 4


@pytest.mark.parametrize("config", [GPT2_CPU], ids=lambda p: p.name)
def test_cpu_configs_monitors_show_in_tensorboard_within_the_run(config, tmp_path, monkeypatch):
    """The CPU configs' monitors, at their own cadence (taken from the YAML, not restated here), give the
    variance scalars and the by-depth and activation-shape pictures within the configs' max_steps. A smaller
    model keeps it quick; the cadence, the step count and the logger are the config's."""
    from lit_ortho.cli import main

    raw = yaml.safe_load(config.read_text())
    monitors = {c["class_path"].rsplit(".", 1)[1]: c.get("init_args") or {} for c in raw["trainer"]["callbacks"]
                if c["class_path"].startswith("callbacks.")}  # fmt: skip
    assert set(monitors) == {"ActivationVarianceMonitor", "GradientVarianceMonitor", "ParameterUpdateMonitor",
                             "ActivationShapeMonitor"}  # fmt: skip
    assert raw["trainer"]["logger"]["class_path"].endswith("TensorBoardLogger")
    steps = raw["trainer"]["max_steps"]
    monkeypatch.chdir(tmp_path)
    small = SMALL_GPT if "gpt2" in config.name else [
        "--data.init_args.batch_size=8",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]  # fmt: skip
    main(["fit", "--config", str(config), *small, "--trainer.limit_val_batches=1", f"--trainer.val_check_interval={steps}"])
    log_dir = tmp_path / "runs" / raw["trainer"]["logger"]["init_args"]["name"]
    scalars, images = helpers.read_scalars(log_dir), helpers.read_images(log_dir)

    avm, gvm = monitors["ActivationVarianceMonitor"], monitors["GradientVarianceMonitor"]
    every = avm["every_n_steps"]
    expected = [s for s in range(steps) if (s + 1) % every == 0]
    assert expected, "the activation monitor never logs within the run"
    act = [t for t in scalars if t.startswith("activation_variance/")]
    grad = [t for t in scalars if t.startswith("gradient_variance/")]
    assert act and grad
    assert all(sorted(scalars[t]) == expected for t in act)
    assert all(sorted(scalars[t]) == [s for s in range(steps) if (s + 1) % gvm["every_n_steps"] == 0] for t in grad)
    if gvm.get("activation_gradients"):
        assert any(t.startswith("activation_grad_variance/") for t in scalars)
    assert any(t.startswith("activation_shape_forward_gain/") for t in scalars)
    pum = monitors["ParameterUpdateMonitor"]
    for signal in ("update_ratio", "parameter_drift", "coefficient", "activation_kurtosis", "activation_absmax"):
        tags = [t for t in scalars if t.startswith(signal + "/")]
        every_signal = pum["every_n_steps"] if signal in ("update_ratio", "parameter_drift", "coefficient") else every
        assert tags and all(sorted(scalars[t]) == [s for s in range(steps) if (s + 1) % every_signal == 0] for t in tags), signal
    for tag in ("activation_variance/by_depth", "gradient_variance/by_depth", "activation_shape/curves"):
        assert images.get(tag), f"no {tag} picture within {steps} steps"
    assert {e.step for e in images["activation_variance/by_depth"]} == {  # the cadence's, and the last logged step's
        s for s in expected if (s + 1) % avm["image_every_n_steps"] == 0} | {expected[-1]}  # fmt: skip
