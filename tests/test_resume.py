"""Resuming ``Trainer.fit(ckpt_path=...)`` continues the same run: every training batch after the checkpoint is
the batch the uninterrupted run saw at that step, across epoch boundaries, for both data modules, in one process
and in two (DDP, FSDP2 on CPU + gloo).

Each case runs ``tests/scripts/resume_run.py`` once: an uninterrupted run that writes checkpoints (mid-epoch,
one step before an epoch boundary, on the boundary), then one resumed run per checkpoint,
recording ``(global_step, epoch, batch_idx, digest of the batch)`` of every training batch on every rank.
"""

from __future__ import annotations

import json

import pytest

from launch import launch_nodes, run, script

pytestmark = [pytest.mark.usefixtures("cache")]  # a temp LIT_ORTHO_CACHE (tests/conftest.py)

# 429,668 tokens in the built-in corpus: windows of 256 tokens, 128 a batch -> 13 batches an epoch in one
# process, 6 per rank in two.
TEXT = {"tokenizer": "byte", "seq_length": 255, "batch_size": 128, "num_workers": 0}
# 1,437 training digits, 128 a batch -> 11 batches an epoch; a transform without randomness (full-image crop,
# no flip or jitter), so a batch is a function of which images are in it.
IMAGES = {
    "dataset": "digits",
    "image_size": 8,
    "batch_size": 128,
    "num_workers": 0,
    "scale": [1.0, 1.0],
    "ratio": [1.0, 1.0],
    "hflip": 0.0,
    "color_jitter": 0.0,
    "crop_pct": 1.0,
}


def _launch(tmp_path, cfg, processes: int, timeout: float) -> list[dict]:
    argv = script("resume_run.py", str(tmp_path), json.dumps(cfg))
    if processes == 1:
        result = run(argv, tmp_path, timeout=timeout)
    else:
        result = launch_nodes(argv, tmp_path, num_nodes=processes).wait(timeout)
    assert result.ok, result.describe()
    return [json.loads((tmp_path / f"records.rank{r}.json").read_text()) for r in range(processes)]


def _epochs(rows) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for step, epoch, _, dig in rows:
        out.setdefault(epoch, []).append(dig)
    return out


def _check(records: list[dict], cfg: dict, boundaries: list[int]) -> None:
    """Resumed runs equal the uninterrupted run from their first step on, on every rank."""
    for rank, rec in enumerate(records):
        full = rec["full"]
        assert [r[0] for r in full] == list(range(cfg["max_steps"])), f"rank {rank}: the full run skipped steps"
        starts = [r[0] for r in full if r[2] == 0][1:]
        assert starts == boundaries, f"rank {rank}: epochs start at {starts}, expected {boundaries}"
        epochs = _epochs(full)
        for e in range(len(boundaries)):
            assert epochs[e + 1] != epochs[e][: len(epochs[e + 1])], f"rank {rank}: epoch {e + 1} repeats epoch {e}'s batches"
        assert set(rec["resumed"]) == {f"step{s}" for s in cfg["save_steps"]}
        for name, resumed in rec["resumed"].items():
            assert resumed, f"rank {rank}, resumed from {name}: no training batch"
            first = resumed[0][0]
            assert first == int(name[4:]), f"rank {rank}: the checkpoint of {name} resumed at step {first}"
            expected = [r for r in full if r[0] >= first]
            bad = [(a, b) for a, b in zip(expected, resumed) if a != b]
            assert not bad and len(resumed) == len(expected), (
                f"rank {rank}, resumed from {name}: {len(bad)} of {len(expected)} batches differ from the uninterrupted "
                f"run, first at step {bad[0][0][0] if bad else '-'} (uninterrupted, resumed: {bad[0] if bad else '-'}); "
                f"{len(resumed)} batches recorded, {len(expected)} expected"
            )


# ---- one process ---------------------------------------------------------------------------------------------
def test_text_resume_matches_uninterrupted_run_over_two_epoch_boundaries(tmp_path):
    """Full epochs of 13 batches; checkpoints mid-epoch 0, one step before the first boundary, on it, mid-epoch 1,
    one step before the second boundary."""
    cfg = {"data": "text", "data_args": TEXT, "max_steps": 33, "save_steps": [5, 12, 13, 19, 25]}
    _check(_launch(tmp_path, cfg, 1, timeout=300), cfg, boundaries=[13, 26])


def test_text_resume_with_validation_limited_epochs_and_workers(tmp_path):
    """``limit_train_batches`` (epochs of 5 of the 13 batches), validation every 3 steps, 2 loader workers."""
    cfg = {
        "data": "text",
        "data_args": {**TEXT, "num_workers": 2},
        "max_steps": 13,
        "limit_train_batches": 5,
        "val_check_interval": 3,
        "save_steps": [2, 4, 5, 7],
    }
    _check(_launch(tmp_path, cfg, 1, timeout=300), cfg, boundaries=[5, 10])


def test_images_resume_with_limited_epochs_and_workers(tmp_path):
    """Digits, epochs of 5 of the 11 batches, 2 loader workers. The train loader's workers used to be persistent:
    their copies of the dataset kept the epoch they started with, so even the uninterrupted run repeated epoch 0's
    batches in every epoch, and a resumed run replayed the checkpoint's position."""
    cfg = {
        "data": "images",
        "data_args": {**IMAGES, "num_workers": 2},
        "max_steps": 13,
        "limit_train_batches": 5,
        "save_steps": [2, 4, 5, 8],
    }
    _check(_launch(tmp_path, cfg, 1, timeout=300), cfg, boundaries=[5, 10])


# ---- two processes -------------------------------------------------------------------------------------------
def test_text_resume_ddp_two_processes(tmp_path):
    """Two DDP ranks of 6 batches an epoch each; every rank's batches equal its uninterrupted ones."""
    cfg = {"data": "text", "data_args": TEXT, "strategy": "ddp", "max_steps": 14, "save_steps": [3, 5, 8]}
    _check(_launch(tmp_path, cfg, 2, timeout=420), cfg, boundaries=[6, 12])


def test_images_resume_ddp_two_processes(tmp_path):
    cfg = {"data": "images", "data_args": IMAGES, "strategy": "ddp", "max_steps": 12, "save_steps": [2, 4, 7]}
    _check(_launch(tmp_path, cfg, 2, timeout=420), cfg, boundaries=[5, 10])


def test_text_resume_fsdp2_two_processes(tmp_path):
    """FSDP2 (ModelParallelStrategy, data_parallel_size=2) takes the same data path: sharded checkpoints."""
    cfg = {"data": "text", "data_args": TEXT, "strategy": "fsdp2", "max_steps": 14, "save_steps": [5, 8]}
    _check(_launch(tmp_path, cfg, 2, timeout=420), cfg, boundaries=[6, 12])
