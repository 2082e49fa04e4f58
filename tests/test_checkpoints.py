"""Nothing lost: atomic, checksummed checkpoints, ``--ckpt_path last`` = the newest complete checkpoint, and one
rule for the hyperparameters of ``--ckpt_path`` (a path or ``last``). Faults are injected, not assumed:

* a training process is killed with SIGKILL in the middle of writing ``last.ckpt`` (its writes into the watched
  directory stop after 64 KiB, the test kills it there), with ``$TMPDIR`` on another filesystem (``/dev/shm``)
  and on the same one;
* a training process is killed between writing ``step=2.ckpt`` and ``last.ckpt``;
* 64 bytes inside a checkpoint are flipped.

The training processes run ``lit-ortho fit`` on the CPU recipe (cli_configs/gpt2_cpu.yaml, a smaller GPT-2),
each with a hard timeout.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from launch import Launched, script, start
from lit_ortho import durable
from lit_ortho.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    ModelCheckpoint,
    VerifiedLoading,
    find_resume_checkpoint,
    verify_checkpoint,
)
from lit_ortho.cli import OrthoCLI, main
from lit_ortho.distributed.checkpoints import AtomicCheckpointsMixin, is_sharded_checkpoint
from lit_ortho.tasks import GPT2Module

REPO = Path(__file__).resolve().parents[1]
GPT2_CPU = str(REPO / "cli_configs" / "gpt2_cpu.yaml")
CONVNEXT_CPU = str(REPO / "cli_configs" / "convnext_cpu.yaml")
SMALL = ["--model.init_args.n_layer=2", "--model.init_args.n_embd=64", "--data.init_args.seq_length=64", "--data.init_args.batch_size=8"]
HARD_TIMEOUT = 300  # seconds for a training process: a hang fails the test instead of blocking it
PAUSE_AFTER = 64 * 1024  # bytes of last.ckpt written before the injected fault
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def cache(cache):
    """The module's LIT_ORTHO_CACHE with the built-in corpus prepared once (the training processes share it)."""
    from lit_ortho.data import TextDataModule

    TextDataModule(tokenizer="byte").prepare_data()
    return cache


pytestmark = pytest.mark.usefixtures("cache")


def _override(path: Path, ckpt_dir: Path, steps: int = 4, every: int = 2) -> str:
    """A second --config: ``steps`` steps, checkpoints every ``every`` (Lightning's own ModelCheckpoint, as a
    user's YAML names it), logs under the test's directory."""
    path.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "max_steps": steps,
                    "val_check_interval": steps,
                    "limit_val_batches": 1,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": str(path.parent / "runs"), "name": "t"}},
                    "callbacks": [
                        {
                            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                            "init_args": {"dirpath": str(ckpt_dir), "filename": "{step}", "every_n_train_steps": every, "save_top_k": -1, "save_last": True},
                        }
                    ],
                }
            }
        )
    )
    return str(path)


def _fit_args(root: Path, ckpt_dir: Path, *extra: str, steps: int = 4) -> list[str]:
    return ["fit", "--config", GPT2_CPU, "--config", _override(root / f"override{steps}.yaml", ckpt_dir, steps), *SMALL, *QUIET, *extra]


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _temporaries(directory: Path) -> list[str]:
    return [n for n in _names(directory) if durable.is_temporary(n) or n.endswith(".old")]


def _flip_64_bytes(path: Path) -> None:
    """Flip 64 bytes in the middle of the largest tensor of a torch.save archive (as a failing disk would: the
    modification time stays): ``torch.load`` still reads it."""
    mtime = path.stat().st_mtime_ns
    with zipfile.ZipFile(path) as z:
        record = max(z.infolist(), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(record.header_offset)
        name_len, extra_len = struct.unpack("<HH", f.read(30)[26:30])
        offset = record.header_offset + 30 + name_len + extra_len + record.file_size // 2
        f.seek(offset)
        data = f.read(64)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))
    os.utime(path, ns=(mtime, mtime))


# ---- the training processes that get killed ------------------------------------------------------------
def _start(root: Path, mode: str, step: int, watch: Path, tmpdir: Path) -> tuple[Launched, Path]:
    """tests/scripts/fault_at_save.py training in ``root`` (output in ``root/train.log``), ``$TMPDIR`` at ``tmpdir``."""
    root.mkdir(parents=True, exist_ok=True)
    tmpdir.mkdir(parents=True, exist_ok=True)
    launched = start(script("fault_at_save.py", *_fit_args(root, root / "ckpt")), root, tag="train", TMPDIR=tmpdir,
                     FAULT_MODE=mode, FAULT_STEP=step, FAULT_WATCH=watch, FAULT_MARKER=root / "paused",
                     FAULT_PAUSE_AFTER=PAUSE_AFTER)  # fmt: skip
    return launched, root


def _wait(launched: Launched, root: Path, deadline: float) -> int:
    """Wait until the process pauses (then SIGKILL it, as a node failure would) or ends; return its exit code."""
    proc = launched.procs[0]
    while proc.poll() is None and not (root / "paused").exists():
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    launched.kill()
    code = launched.returncodes[0]
    assert code == -signal.SIGKILL, f"exit code {code}:\n{launched.output()}"
    return code


@pytest.fixture(scope="module")
def killed(tmp_path_factory, cache):
    """Three training runs (4 steps, checkpoints at 2 and 4), run side by side and killed:

    * ``other_fs``: during the save of last.ckpt at step 4, $TMPDIR on another filesystem (/dev/shm);
    * ``same_fs``: the same, $TMPDIR beside the checkpoints (both under the test's directory);
    * ``between``: after step=2.ckpt was written, before last.ckpt."""
    base = tmp_path_factory.mktemp("killed")
    runs, shm = {}, None
    if Path("/dev/shm").is_dir() and os.stat("/dev/shm").st_dev != os.stat(base).st_dev:
        shm = Path("/dev/shm") / f"lit_ortho_test_{os.getpid()}"
        runs["other_fs"] = _start(base / "other_fs", "pause", 4, base / "other_fs" / "ckpt", shm)
    runs["same_fs"] = _start(base / "same_fs", "pause", 4, base / "same_fs", base / "same_fs" / "tmp")
    runs["between"] = _start(base / "between", "die", 2, base / "between" / "ckpt", base / "between" / "tmp")
    deadline = time.monotonic() + HARD_TIMEOUT
    for proc, root in runs.values():
        _wait(proc, root, deadline)
    yield {name: root for name, (_, root) in runs.items()} | {"shm": shm}
    if shm is not None:
        shutil.rmtree(shm, ignore_errors=True)


# ---- 6: a kill during a save never costs the previous checkpoint, and leaves nothing behind -------------
def test_kill_during_save_with_tmpdir_on_another_filesystem_keeps_last_loadable(killed, monkeypatch, capsys):
    if killed["shm"] is None:
        pytest.skip("no /dev/shm on another filesystem here")
    root = killed["other_fs"]
    ckpt = root / "ckpt"
    assert (root / "paused").read_text().startswith(str(ckpt)), "the fault hit a write into the checkpoint directory"
    last = torch.load(ckpt / "last.ckpt", weights_only=True, map_location="cpu")  # not truncated: the step-2 one
    assert last["global_step"] == 2
    monkeypatch.chdir(root)
    main(_fit_args(root, ckpt, "--ckpt_path", "last", steps=6))
    err = capsys.readouterr().err
    assert f"using the newest complete checkpoint {ckpt / 'step=4.ckpt'}: it is newer than {ckpt / 'last.ckpt'}" in err
    assert "removed what interrupted saves left in" in err
    assert _temporaries(ckpt) == [] and not any(killed["shm"].iterdir())
    names = [n for n in _names(ckpt) if n.endswith(".ckpt")]
    assert names == ["last.ckpt", "step=2.ckpt", "step=4.ckpt", "step=6.ckpt"]  # went on from step 4: no step=4-v1
    assert torch.load(ckpt / "last.ckpt", weights_only=True)["global_step"] == 6
    assert all((ckpt / (n + ".sha256")).is_file() for n in names)


def test_kill_during_save_leaves_no_temporary_behind(killed, monkeypatch, capsys):
    root = killed["same_fs"]
    ckpt, tmpdir = root / "ckpt", root / "tmp"
    assert (root / "paused").exists()
    monkeypatch.chdir(root)
    main(_fit_args(root, ckpt, "--ckpt_path", "last"))  # start-up, resume at step 4 of 4
    big = [p for p in tmpdir.rglob("*") if p.is_file() and p.stat().st_size > PAUSE_AFTER / 2]
    assert big == [], f"checkpoint temporaries leaked into $TMPDIR: {big}"
    assert _temporaries(ckpt) == []
    assert [n for n in _names(ckpt) if not n.endswith((".ckpt", ".sha256"))] == []
    assert f"removed what interrupted saves left in {ckpt}: .last.ckpt.tmp-" in capsys.readouterr().err
    durable.verify_file(ckpt / "last.ckpt")  # the previous last.ckpt, intact


# ---- 7: "last" is the newest complete checkpoint ---------------------------------------------------------
def test_killed_between_step_checkpoint_and_last_resumes_from_the_step_checkpoint(killed, monkeypatch, capsys):
    root = killed["between"]
    ckpt = root / "ckpt"
    assert [n for n in _names(ckpt) if n.endswith(".ckpt")] == ["step=2.ckpt"]  # what the kill left
    monkeypatch.chdir(root)
    main(_fit_args(root, ckpt, "--ckpt_path", "last"))
    assert [n for n in _names(ckpt) if n.endswith(".ckpt")] == ["last.ckpt", "step=2.ckpt", "step=4.ckpt"]  # no step=2-v1
    err = capsys.readouterr().err
    assert f"--ckpt_path last: using the newest complete checkpoint {ckpt / 'step=2.ckpt'}: there is no last.ckpt" in err
    assert torch.load(ckpt / "step=4.ckpt", weights_only=True)["global_step"] == 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache):
    """A finished 4-step run: step=2.ckpt, step=4.ckpt, last.ckpt (and their checksums)."""
    root = tmp_path_factory.mktemp("trained")
    old = os.getcwd()
    os.chdir(root)
    try:
        main(_fit_args(root, root / "ckpt"))
    finally:
        os.chdir(old)
    return root


def _copy(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained / "ckpt", tmp_path / "ckpt", symlinks=True)
    for name in ("step=2.ckpt", "step=4.ckpt", "last.ckpt"):  # keep their order in time
        os.utime(tmp_path / "ckpt" / name, ns=(os.stat(trained / "ckpt" / name).st_mtime_ns,) * 2)
    return tmp_path / "ckpt"


def test_corrupt_last_resumes_from_the_newest_complete_checkpoint(trained, tmp_path, monkeypatch, capsys):
    ckpt = _copy(trained, tmp_path)
    _flip_64_bytes(ckpt / "last.ckpt")
    monkeypatch.chdir(tmp_path)
    cli = OrthoCLI(args=["validate", "--config", GPT2_CPU, "--config", _override(tmp_path / "o.yaml", ckpt), *QUIET, "--ckpt_path", "last"])
    err = capsys.readouterr().err
    assert f"using the newest complete checkpoint {ckpt / 'step=4.ckpt'}: checkpoint {str(ckpt / 'last.ckpt')!r} is corrupt" in err
    assert cli.config.validate.ckpt_path == str(ckpt / "step=4.ckpt")
    (ckpt / "last.ckpt").unlink()
    (ckpt / "step=4.ckpt.sha256").write_text("0" * 64 + "  step=4.ckpt\n")  # a checksum that does not match
    path, message = find_resume_checkpoint([ckpt])
    assert path == ckpt / "step=2.ckpt" and "step=4.ckpt" in message and "does not match" in message


# ---- 8: checksums, verified on load ------------------------------------------------------------------------
def test_flipped_bytes_are_an_error_naming_the_file_and_the_previous_checkpoint(trained, tmp_path, monkeypatch):
    ckpt = _copy(trained, tmp_path)
    bad = ckpt / "step=4.ckpt"
    _flip_64_bytes(bad)
    assert torch.load(bad, weights_only=True)["global_step"] == 4  # torch itself does not notice
    monkeypatch.chdir(tmp_path)
    expected = (
        re.escape(f"checkpoint {str(bad)!r} is corrupt: its SHA-256 ") + ".* does not match " + re.escape(repr(str(bad) + ".sha256"))
        + ".*" + re.escape(f"; the previous checkpoint there is {str(ckpt / 'step=2.ckpt')!r}")
    )
    with pytest.raises(SystemExit, match=expected):
        main(_fit_args(tmp_path, ckpt, "--ckpt_path", str(bad)))
    assert all((ckpt / f"{n}.sha256").is_file() for n in ("step=2.ckpt", "step=4.ckpt", "last.ckpt"))

    assert issubclass(GPT2Module, VerifiedLoading)  # every OrthoModule checks what it loads
    with pytest.raises(CheckpointError, match=expected):
        GPT2Module.load_from_checkpoint(bad)
    with pytest.raises(CheckpointError, match=expected):
        AtomicCheckpointIO().load_checkpoint(bad)
    verify_checkpoint(ckpt / "step=2.ckpt")  # the one it points to is sound


def test_a_kill_between_the_renames_never_makes_a_checkpoint_look_corrupt(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, target)
    real_replace = os.replace

    def killed_at_the_checkpoint_rename(src, dst):
        if Path(dst) == target:
            raise KeyboardInterrupt  # stands for the kill: the sidecar already lists both digests
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_the_checkpoint_rename)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, target)
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(durable.checksum_path(target).read_text().splitlines()) == 2
    assert durable.verify_file(target) and AtomicCheckpointIO().load_checkpoint(target) == {"step": 1}
    assert _temporaries(tmp_path) == []  # an exception (not a kill) cleans up after itself
    AtomicCheckpointIO().save_checkpoint({"step": 3}, target)
    assert len(durable.checksum_path(target).read_text().splitlines()) == 1


def test_last_as_a_symlink_is_replaced_atomically_and_checked_through_its_target(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 2}, tmp_path / "step=2.ckpt")
    io.save_checkpoint({"global_step": 1}, tmp_path / "last.ckpt")  # a copy, with its own checksum
    ModelCheckpoint._link_checkpoint(_FakeTrainer(), str(tmp_path / "step=2.ckpt"), str(tmp_path / "last.ckpt"))
    assert os.readlink(tmp_path / "last.ckpt") == "step=2.ckpt" and not (tmp_path / "last.ckpt.sha256").exists()
    time.sleep(0.01)
    io.save_checkpoint({"global_step": 4}, tmp_path / "step=4.ckpt")
    real_symlink = os.symlink
    monkeypatch.setattr(os, "symlink", lambda *a: (_ for _ in ()).throw(AssertionError("only beside the target")) if Path(a[1]).name == "last.ckpt" else real_symlink(*a))
    ModelCheckpoint._link_checkpoint(_FakeTrainer(), str(tmp_path / "step=4.ckpt"), str(tmp_path / "last.ckpt"))
    assert os.readlink(tmp_path / "last.ckpt") == "step=4.ckpt" and _temporaries(tmp_path) == []
    assert io.load_checkpoint(tmp_path / "last.ckpt") == {"global_step": 4}
    assert ModelCheckpoint(dirpath=str(tmp_path))._find_last_checkpoints(None) == {str(tmp_path / "last.ckpt")}
    _flip_64_bytes_of_file(tmp_path / "step=4.ckpt")  # the target is corrupt: so is last.ckpt
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {str(tmp_path / 'last.ckpt')!r} is corrupt")):
        io.load_checkpoint(tmp_path / "last.ckpt")
    assert ModelCheckpoint(dirpath=str(tmp_path))._find_last_checkpoints(None) == {str(tmp_path / "step=2.ckpt")}


class _FakeTrainer:
    is_global_zero = True

    class strategy:
        @staticmethod
        def barrier(name=None):
            pass


def _flip_64_bytes_of_file(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def test_sharded_checkpoints_carry_a_checksum_of_every_shard(tmp_path):
    class FakeSharded:  # stands for ModelParallelStrategy: DCP shards, the index, Lightning's meta.pt
        is_global_zero = True

        def broadcast(self, obj):
            return obj

        def barrier(self, name=None):
            pass

        def save_checkpoint(self, checkpoint, filepath, storage_options=None):
            path = Path(filepath)
            path.mkdir(parents=True, exist_ok=True)
            for rank in (0, 1):
                (path / f"__{rank}_0.distcp").write_bytes(os.urandom(4096))
            (path / ".metadata").write_bytes(b"index")
            (path / "meta.pt").write_bytes(b"meta")

        def load_checkpoint(self, checkpoint_path, weights_only=None):
            return {"loaded": str(checkpoint_path)}

    class Strategy(AtomicCheckpointsMixin, FakeSharded):
        def _saves_sharded(self):
            return True

    strategy = Strategy()
    for name in ("step=5.ckpt", "step=10.ckpt"):
        strategy.save_checkpoint({}, tmp_path / name)
        time.sleep(0.01)
    manifest = (tmp_path / "step=10.ckpt" / durable.MANIFEST_NAME).read_text()
    assert sorted(line.split("  ")[1] for line in manifest.splitlines()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert strategy.load_checkpoint(tmp_path / "step=10.ckpt") == {"loaded": str(tmp_path / "step=10.ckpt")}
    shard = tmp_path / "step=10.ckpt" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[100:164] = bytes(b ^ 0xFF for b in data[100:164])
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"step=10.ckpt.* is corrupt: '__1_0.distcp' has SHA-256 .*previous checkpoint there is .*step=5.ckpt"):
        strategy.load_checkpoint(tmp_path / "step=10.ckpt")
    path, message = find_resume_checkpoint([tmp_path])
    assert path == tmp_path / "step=10.ckpt"  # complete: its shards are checked by every rank when loaded
    # what a kill leaves in the middle of a sharded save, removed (or put back) at start-up
    os.replace(tmp_path / "step=5.ckpt", tmp_path / "step=5.ckpt.old")
    (tmp_path / "last.ckpt.partial").mkdir()
    (tmp_path / ".last.ckpt.sha256.tmp-99").write_text("x")
    assert sorted(durable.remove_stale_temporaries(tmp_path)) == [".last.ckpt.sha256.tmp-99", "last.ckpt.partial", "step=5.ckpt.old"]
    assert is_sharded_checkpoint(tmp_path / "step=5.ckpt") and _temporaries(tmp_path) == []


# ---- 9: one rule for --ckpt_path FILE and --ckpt_path last ------------------------------------------------
def test_ckpt_path_file_and_last_follow_one_rule_for_hyperparameters(trained, tmp_path, monkeypatch, capsys):
    ckpt = _copy(trained, tmp_path)
    monkeypatch.chdir(tmp_path)
    override = _override(tmp_path / "o.yaml", ckpt)
    models = {}
    for form in (str(ckpt / "last.ckpt"), "last"):
        # n_layer / n_embd are not given: they come from the checkpoint; lr is given: it wins, and says so
        cli = OrthoCLI(args=["validate", "--config", GPT2_CPU, "--config", override, "--data.init_args.seq_length=64", *QUIET, "--model.init_args.lr=0.5", "--ckpt_path", form])
        err = capsys.readouterr().err
        assert "lit-ortho: model.init_args.lr: 0.5 given, 0.003 in the checkpoint: using 0.5" in err, form
        assert sum("lit-ortho: model.init_args." in line for line in err.splitlines()) == 1, err
        models[form] = dict(cli.model.hparams)
        assert (models[form]["lr"], models[form]["n_layer"], models[form]["n_embd"], models[form]["activation"]) == (0.5, 2, 64, "hermite:3")
        saved = yaml.safe_load(next((tmp_path / "runs" / "t").glob("version_*/config.yaml")).read_text())
        assert saved["model"]["init_args"]["lr"] == 0.5 and saved["model"]["init_args"]["n_layer"] == 2
        shutil.rmtree(tmp_path / "runs")
    assert models[str(ckpt / "last.ckpt")] == models["last"]


def test_checkpoint_of_another_model_class_is_refused_before_any_model_is_built(trained, tmp_path, monkeypatch):
    from lit_ortho.tasks import OrthoModule

    def built(self, *args, **kwargs):
        raise AssertionError(f"a {type(self).__name__} was built")

    monkeypatch.setattr(OrthoModule, "save_hyperparameters", built)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"lit-ortho validate: error: --ckpt_path .*last.ckpt holds a lit_ortho.tasks.GPT2Module, but the configuration builds a lit_ortho.tasks.ConvNeXtModule"):
        main(["validate", "--config", CONVNEXT_CPU, "--ckpt_path", str(trained / "ckpt" / "last.ckpt")])
