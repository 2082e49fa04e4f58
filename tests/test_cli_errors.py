"""Every bad input to ``lit-ortho`` gets one clear line and exit status 2 (lit_ortho/cli_errors.py).

Each test runs the real command (``lit_ortho.cli.main``, as the script does; in a fresh ``python -m lit_ortho.cli``
where what a real process prints matters) in a fresh directory and checks: status 2, a few
lines at most, the option, the bad value and the valid choices (or a hint) in the one error line; that
``LIT_ORTHO_DEBUG=1`` / ``--debug`` bring back the traceback or jsonargparse's usual output; and that a real bug
(not the user's input) keeps its traceback.

Unwritable directories: the tests run as root, where ``chmod 0o555`` does not stop writes, so the directory is put
under a regular file (``blocker/logs``): nobody, root included, can create it. The ``chmod`` variant runs only
for a user other than root.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import yaml

from launch import python, run
from lit_ortho.cli import main

CONFIG = str(Path(__file__).resolve().parents[1] / "cli_configs" / "gpt2_cpu.yaml")
TIMEOUT = 240
MAX_LINES = 8  # the error line, and Lightning's own start-up lines ("Seed set to 42", "GPU available: ...")

pytestmark = pytest.mark.usefixtures("cache")  # a temp LIT_ORTHO_CACHE (tests/conftest.py), passed to the child


class BuggyModule(L.LightningModule):
    """A model with a bug in its constructor: a ValueError from int(), not a check of the user's input."""

    def __init__(self, width: str = "3x"):
        super().__init__()
        self.width = int("not a number")


@pytest.fixture
def lit_ortho(tmp_path, capfd, monkeypatch):
    """``lit-ortho <args>`` in ``tmp_path``: by default ``main()`` in this process, exactly as the script calls it
    (status from its ``SystemExit``, output read from the file descriptors); with ``process=True`` a fresh
    ``python -m lit_ortho.cli``, for what a real process prints (a traceback) and imports (a user's module). A
    fresh interpreter costs ~12 s of imports on 2 cores, so only those cases pay it."""

    def call(*args: str, process: bool = False, **env: str) -> tuple[int, str]:
        if process:
            result = run(python("-m", "lit_ortho.cli", *args), tmp_path, timeout=TIMEOUT, **env)
            return result.returncodes[0], result.output(0, tail=None)
        monkeypatch.chdir(tmp_path)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        capfd.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        out, err = capfd.readouterr()
        return exited.value.code, out + err

    return call


@pytest.fixture
def fit(lit_ortho):
    return lambda *args, **kwargs: lit_ortho("fit", "--config", CONFIG, *args, **kwargs)


def _one_error_line(code: int, output: str, prog: str = "lit-ortho fit") -> str:
    """Status 2, a few lines, no traceback, and exactly one ``<prog>: error:`` line (returned)."""
    lines = output.strip().splitlines()
    assert code == 2, output
    assert len(lines) <= MAX_LINES, f"{len(lines)} lines:\n{output}"
    assert "Traceback" not in output, output
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], output
    return errors[0]


def _contains_all(line: str, *parts: str) -> None:
    for part in parts:
        assert part in line, f"{part!r} not in: {line}"


# ---- bad values and options: the option, the value, the choices --------------------------------------------------
CASES = {
    "activation name": (
        ["--model.init_args.activation=hermit"],
        ["--model.init_args.activation", "'hermit'", "valid choices: ", "hermite, ", "Did you mean 'hermite'?"],
    ),
    "degree": (
        ["--model.init_args.activation=hermite:0", "--trainer.fast_dev_run=true"],
        ["--model.init_args.activation 'hermite:0'", "degree must be an integer from 1 to 32, got 0"],
    ),
    "init": (
        ["--model.init_args.activation=hermite(degree=3, init=nonsense)", "--trainer.fast_dev_run=true"],
        [
            "--model.init_args.activation 'hermite(degree=3, init=nonsense)'",
            "unknown init 'nonsense'",
            "valid choices: paper, unit, torchortho",
        ],
    ),
    "batch_size 0": (
        ["--data.init_args.batch_size=0"],
        ["--data.init_args.batch_size", "batch_size must be an integer >= 1, got 0"],
    ),
    "batch_size abc": (
        ["--data.init_args.batch_size=abc"],
        ["--data.init_args.batch_size", "expected an integer, got 'abc'"],
    ),
    "missing data_dir": (
        ["--data.init_args.data_dir=no_such_dir"],
        ["--data.init_args.data_dir", "data directory not found: 'no_such_dir'", "Create it with: lit-ortho prepare-text"],
    ),
    "unknown model option": (
        ["--model.init_args.lrr=0.1"],
        [
            "unknown option --model.init_args.lrr",
            "GPT2Module has no argument 'lrr'",
            "valid: size, activation, ",
            "Did you mean 'lr'?",
        ],
    ),
    "unknown trainer option": (
        ["--trainer.max_stepz=3"],
        ["unknown option --trainer.max_stepz", "did you mean --trainer.max_steps?", "lit-ortho fit --help"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line(case, fit):
    args, parts = CASES[case]
    code, output = fit(*args)
    _contains_all(_one_error_line(code, output), *parts)


def test_a_real_process_prints_one_line_too(fit):
    """What a terminal shows: Lightning's start-up lines at most, then the one error line; status 2."""
    args, parts = CASES["activation name"]
    code, output = fit(*args, process=True)
    _contains_all(_one_error_line(code, output), *parts)


def test_bad_value_in_a_config_file_names_the_option(tmp_path, fit):
    (tmp_path / "bad.yaml").write_text("model:\n  init_args:\n    activation: fourrier:3\n")
    code, output = fit("--config", "bad.yaml")
    _contains_all(_one_error_line(code, output), "--model.init_args.activation 'fourrier:3'", "Did you mean 'fourier'?")


# ---- unwritable directories: refused before the Trainer, model and data exist -----------------------------------
def _refused_before_anything_is_built(output: str) -> None:
    assert "GPU available" not in output and "Params" not in output, output  # no Trainer, no model summary


def test_unwritable_log_dir(tmp_path, fit):
    (tmp_path / "blocker").write_text("a regular file: nothing can be created under it, not even by root\n")
    code, output = fit("--trainer.logger.init_args.save_dir=blocker/logs", "--trainer.max_steps=1")
    line = _one_error_line(code, output)
    _contains_all(
        line, "cannot write the log directory 'blocker/logs'", "--trainer.logger.init_args.save_dir", "'blocker' is a file"
    )
    _refused_before_anything_is_built(output)


def test_unwritable_checkpoint_dir(tmp_path, fit):
    (tmp_path / "blocker").write_text("a regular file\n")
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": "blocker/ckpt", "every_n_train_steps": 1},
        }
    ]
    (tmp_path / "ckpt.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    code, output = fit("--config", "ckpt.yaml", "--trainer.max_steps=1")
    line = _one_error_line(code, output)
    _contains_all(
        line,
        "cannot write the checkpoint directory 'blocker/ckpt'",
        "--trainer.callbacks[0].init_args.dirpath",
        "'blocker' is a file",
    )
    _refused_before_anything_is_built(output)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o555 directory anyway")
def test_read_only_log_dir(tmp_path, fit):
    (tmp_path / "ro").mkdir(mode=0o555)
    try:
        code, output = fit("--trainer.logger.init_args.save_dir=ro/logs", "--trainer.max_steps=1")
    finally:
        (tmp_path / "ro").chmod(0o755)
    _contains_all(_one_error_line(code, output), "cannot write the log directory 'ro/logs'", "'ro' is not writable")


def test_unwritable_consolidate_output(tmp_path, lit_ortho):
    (tmp_path / "blocker").write_text("a regular file\n")
    code, output = lit_ortho("consolidate", "last.ckpt", "blocker/model.ckpt")
    line = _one_error_line(code, output, prog="lit-ortho consolidate")
    _contains_all(line, "cannot write the output file 'blocker/model.ckpt'", "'blocker' is a file")


# ---- what already gave one line keeps it, now with status 2 ------------------------------------------------------
def test_preflight_configuration_error_is_one_line(fit):
    code, output = fit("--trainer.strategy=fsdp")
    _contains_all(_one_error_line(code, output), "strategy 'fsdp' (FSDP1) needs GPUs")


def test_prepare_text_data_error_is_one_line(lit_ortho):
    code, output = lit_ortho("prepare-text", "missing_input", "--output-dir", "out", "--tokenizer", "byte")
    _contains_all(_one_error_line(code, output, prog="lit-ortho prepare-text"), "input not found: 'missing_input'")


# ---- debug: the traceback / the usual output ------------------------------------------------------------------
def test_debug_env_shows_the_traceback(fit):
    code, output = fit("--model.init_args.activation=hermit", process=True, LIT_ORTHO_DEBUG="1")
    assert code != 0, output
    assert "Traceback (most recent call last)" in output and "UsageError: unknown activation 'hermit'" in output, output


def test_debug_flag_shows_the_usual_parser_output(fit):
    code, output = fit("--data.init_args.batch_size=abc", "--debug")
    assert code == 2, output
    assert "usage: " in output and "Does not validate against any of the Union subtypes" in output, output
    assert "unrecognized arguments" not in output, output  # --debug was taken out before LightningCLI parsed


# ---- a bug is not a user error ---------------------------------------------------------------------------------------
def test_a_bug_keeps_its_traceback(fit):
    """A ValueError from int() inside a constructor is a bug, not a check of a value the user gave."""
    code, output = fit("--model=test_cli_errors.BuggyModule", process=True)
    assert code not in (0, 2), output
    assert "Traceback (most recent call last)" in output and "invalid literal for int()" in output, output
