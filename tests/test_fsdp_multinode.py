"""Multi-node FSDP on this CPU machine: two "nodes" of one process each on loopback (MASTER_ADDR=127.0.0.1,
NODE_RANK=0/1, num_nodes=2, devices=1, gloo).

* 20 steps of a tiny GPT-2 + Hermite-3 under FSDP2, hybrid FSDP2 and FSDP1 give the loss curve of one process
  with the same global batch: fp32 to rtol 1e-5 (measured ~2e-7: only the order of float sums differs), bf16-mixed
  to rtol 5e-3 (measured ~3e-4: bf16 gradients of half-batches are rounded before their fp32 reduction).
* The YAML recipe (cli_configs/gpt2_cpu_fsdp_2nodes.yaml) trains, writes sharded checkpoints, and
  ``--ckpt_path last`` after a killed rank continues the uninterrupted run's loss curve exactly (same data, same LR).
* A rank that dies makes the other exit non-zero at once; a rank that hangs, within ``timeout_s``.
* Sharded checkpoints consolidate into one file that equals the gathered weights and that
  ``GPT2Module.load_from_checkpoint`` and a single-device resume accept.
* Impossible configurations fail before training starts, with a message saying what to write instead.

Every subprocess is started by tests/launch.py with a hard timeout (it is killed, and the test fails, instead of
hanging CI). The timing checks hold on a loaded machine: what a rank reacted to is read from its error message
(a closed connection vs a timeout), and the measured delays are printed (``pytest -s``) and named in failures.
Tests that start training processes are marked ``multiprocess`` and ``slow``.
"""

import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from _fsdp_helpers import read_losses
from launch import REPO, launch_nodes, python, run, script
from lit_ortho import build_activation
from lit_ortho.cli import OrthoCLI, main
from lit_ortho.distributed import (
    ConfigurationError,
    FSDP1Strategy,
    FSDP2Strategy,
    check_trainer_config,
    consolidate_checkpoint,
    is_collective_failure,
    is_sharded_checkpoint,
)
from lit_ortho.distributed.checkpoints import AtomicCheckpointsMixin
from lit_ortho.tasks import GPT2Module

CONFIGS = REPO / "cli_configs"
TWO_NODES_YAML = CONFIGS / "gpt2_cpu_fsdp_2nodes.yaml"
HARD_TIMEOUT = 600  # seconds for any launched job: a hang fails the test instead of blocking it (minutes under load)
KILL_TIMEOUT_S = 120  # the collective timeout (timeout_s) of the killed-rank run: long, so "at once" is unmistakable
HANG_TIMEOUT_S = 30  # ... and of the hung-rank run (it also bounds the start-up skew of its two processes)
FP32_RTOL, BF16_RTOL = 1e-5, 5e-3
STEPS = 20


@pytest.fixture(scope="module")
def cache(cache):
    """The module's LIT_ORTHO_CACHE (tests/conftest.py) with the built-in corpus prepared once, so the
    two nodes do not race to prepare it."""
    from lit_ortho.data import TextDataModule

    TextDataModule(tokenizer="byte").prepare_data()
    return str(cache)


def _mean_over_ranks(out: Path, world: int) -> list[float]:
    per_rank = [read_losses(out, r) for r in range(world)]
    assert all([row["step"] for row in rows] == list(range(STEPS)) for rows in per_rank), "every rank logs every step"
    return [sum(rows[i]["loss"] for rows in per_rank) / world for i in range(STEPS)]


# ---- 2 nodes x 1 process == 1 process with the same global batch ------------------------------------------
# -ac: activation checkpointing; -offload: FSDP2 CPU offload; hsdp: FSDP2Strategy(shard_size=1), replicated over nodes
SHARDED_RUNS = ["fsdp2-32", "fsdp2-bf16", "hsdp-32", "fsdp1-32", "fsdp1-bf16", "fsdp2-bf16-ac", "fsdp2-32-offload"]


@pytest.fixture(scope="module")
def equality_runs(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("equality")
    nodes = launch_nodes(script("fsdp_equality.py", out, "2", *SHARDED_RUNS), out, tag="nodes", LIT_ORTHO_CACHE=cache)
    single = run(script("fsdp_equality.py", out, "1", "single-32", "single-bf16"), out, HARD_TIMEOUT, tag="single", LIT_ORTHO_CACHE=cache)
    nodes.wait(HARD_TIMEOUT)
    assert single.returncodes == [0], single.describe()
    assert nodes.returncodes == [0, 0], nodes.describe()
    return out


@pytest.mark.parametrize("run", SHARDED_RUNS)
@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_nodes_give_the_single_process_loss_curve(equality_runs, run):
    precision = run.split("-")[1]
    two_nodes = _mean_over_ranks(equality_runs / run, 2)  # each rank's loss is over its half of the global batch
    single = _mean_over_ranks(equality_runs / f"single-{precision}", 1)
    rtol = FP32_RTOL if precision == "32" else BF16_RTOL
    for step, (a, b) in enumerate(zip(two_nodes, single)):
        assert a == pytest.approx(b, rel=rtol), f"step {step}: 2 nodes {a} vs 1 process {b}"
    print(f"{run}: max relative loss difference to 1 process {max(abs(a - b) / b for a, b in zip(two_nodes, single)):.2e}")
    assert sum(single[-3:]) / 3 < sum(single[:3]) / 3 - 1.0  # and it is training
    ranks = [read_losses(equality_runs / run, r) for r in (0, 1)]
    assert ranks[0][0]["batch0"] != ranks[1][0]["batch0"]  # the ranks read different halves of the batch
    assert [r["lr"] for r in ranks[0]] == [r["lr"] for r in read_losses(equality_runs / f"single-{precision}", 0)]

    dtypes = json.loads((equality_runs / run / "dtypes.json").read_text())  # seen inside forward
    assert dtypes["activation_coefficients"] == "torch.float32"  # always fp32, also under bf16
    assert dtypes["linear_weight"] == ("torch.bfloat16" if precision == "bf16" else "torch.float32")
    if run.startswith(("fsdp2", "hsdp")):  # the strategy's options reached fully_shard
        assert dtypes["offload_policy"] == ("CPUOffloadPolicy" if run.endswith("offload") else "OffloadPolicy")
        assert dtypes["mesh_shape"] == ([2, 1] if run.startswith("hsdp") else [2])
    if run.startswith("fsdp1"):  # one FSDP1 unit per block (+ the root), learnable activations in fp32 units
        mp = "torch.bfloat16" if precision == "bf16" else "None"
        fp32_units = ["HermiteActivation:torch.float32"] * 2 if precision == "bf16" else []
        assert dtypes["units"] == [f"Block:{mp}", f"Block:{mp}", f"GPT2Module:{mp}", *fp32_units]

    ckpt = equality_runs / run / "final.ckpt"  # a sharded checkpoint: one shard per rank
    assert is_sharded_checkpoint(ckpt) and sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]


@pytest.mark.parametrize("run", ["fsdp2-32", "fsdp1-32"])
@pytest.mark.multiprocess
@pytest.mark.slow
def test_consolidation_round_trips(equality_runs, run, tmp_path, capsys):
    full = torch.load(equality_runs / run / "full.pt")  # the weights gathered from both ranks in the job
    out = tmp_path / "model.ckpt"
    main(["consolidate", str(equality_runs / run / "final.ckpt"), str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    checkpoint = torch.load(out, weights_only=False)
    assert checkpoint["global_step"] == STEPS and len(checkpoint["optimizer_states"]) == 1
    assert sorted(checkpoint["state_dict"]) == sorted(full)
    for name, value in full.items():
        assert torch.equal(checkpoint["state_dict"][name], value), name

    model = GPT2Module.load_from_checkpoint(out)  # the file alone is enough
    assert build_activation(model.hparams.activation).spec() == build_activation("hermite:3").spec()  # either spelling
    assert model.tokenizer_name == "byte"
    for name, value in model.state_dict().items():
        assert torch.equal(value, full[name]), name

    # a single-device run resumes from it: same optimizer moments, same LR schedule position, step 20 -> 22
    from _fsdp_helpers import WindowDataModule

    seen = {}

    class Check(L.Callback):
        def on_train_start(self, trainer, pl_module):
            opt = trainer.optimizers[0]
            moments = checkpoint["optimizer_states"][0]["state"]
            for name, p in pl_module.named_parameters():
                seen[name] = torch.equal(opt.state[p]["exp_avg"], moments[name]["exp_avg"])
            seen["lr"] = opt.param_groups[0]["lr"]

    fresh = GPT2Module(size="tiny", n_layer=2, n_embd=64, n_head=2, block_size=32, vocab_size=257, activation="hermite:3",
                       lr=3e-3, warmup_steps=3)
    trainer = L.Trainer(accelerator="cpu", max_steps=STEPS + 2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, callbacks=[Check()])
    trainer.fit(fresh, WindowDataModule(batch_size=8), ckpt_path=out)
    assert trainer.global_step == STEPS + 2
    assert seen.pop("lr") == pytest.approx(checkpoint["lr_schedulers"][0]["_last_lr"][0])
    assert seen and all(seen.values()), [k for k, v in seen.items() if not v]

    slim = tmp_path / "weights.ckpt"
    main(["consolidate", str(equality_runs / run / "final.ckpt"), str(slim), "--weights-only"])
    weights_only = torch.load(slim, weights_only=False)
    assert "optimizer_states" not in weights_only and "loops" not in weights_only
    torch.testing.assert_close(GPT2Module.load_from_checkpoint(slim).state_dict(), model.state_dict(), rtol=0, atol=0)


# ---- the YAML recipe: train, checkpoint, kill, resume, hang ------------------------------------------------
def _test_config(tmp_path: Path, name: str, ckpt_dir: str, losses_dir: str, timeout_s: int, extra_callbacks=(), steps=STEPS) -> str:
    """A second --config shrinking the recipe for a test: a smaller model, 20 steps, checkpoints every 5."""
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": ckpt_dir, "filename": "{step}", "every_n_train_steps": 5, "save_top_k": -1, "save_last": True}},
        {"class_path": "_fsdp_helpers.RecordLosses", "init_args": {"out_dir": losses_dir}},
        *extra_callbacks,
    ]
    # Each job logs to its own version: jobs that start together would both take version_0 and write one config.yaml.
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
              "init_args": {"save_dir": "runs", "name": "gpt2_cpu_fsdp_2nodes", "version": Path(name).stem, "default_hp_metric": False}}
    override = {
        "trainer": {
            "max_steps": steps, "val_check_interval": steps, "limit_val_batches": 2, "enable_progress_bar": False,
            "enable_model_summary": False, "callbacks": callbacks, "logger": logger,
            "strategy": {"class_path": "lit_ortho.distributed.FSDP2Strategy", "init_args": {"timeout_s": timeout_s}},
        },
        "model": {"init_args": {"n_layer": 2, "n_embd": 64, "n_head": 2}},
        "data": {"init_args": {"seq_length": 32, "batch_size": 4}},
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(override))
    return str(path)


def _fit(config: str, *extra: str) -> list[str]:
    return python("-m", "lit_ortho.cli", "fit", "--config", TWO_NODES_YAML, "--config", config, *extra)


@pytest.fixture(scope="module")
def yaml_runs(tmp_path_factory, cache):
    root = tmp_path_factory.mktemp("yaml")
    kill = {"class_path": "_fsdp_helpers.KillRank", "init_args": {"rank": 1, "step": 13, "mode": "exit"}}
    full_cfg = _test_config(root, "full.yaml", "ckpt_full", "losses_full", KILL_TIMEOUT_S)
    kill_cfg = _test_config(root, "kill.yaml", "ckpt", "losses_killed", KILL_TIMEOUT_S, [kill])
    resume_cfg = _test_config(root, "resume.yaml", "ckpt", "losses_resumed", KILL_TIMEOUT_S)
    hang = {"class_path": "_fsdp_helpers.KillRank", "init_args": {"rank": 1, "step": 2, "mode": "hang"}}
    hang_cfg = _test_config(root, "hang.yaml", "ckpt_hang", "losses_hang", HANG_TIMEOUT_S, [hang], steps=4)

    full = launch_nodes(_fit(full_cfg), root, tag="full", LIT_ORTHO_CACHE=cache)
    killed = launch_nodes(_fit(kill_cfg), root, tag="killed", LIT_ORTHO_CACHE=cache).wait(HARD_TIMEOUT)
    after_kill = {
        "last_step": torch.load(root / "ckpt" / "last.ckpt" / "meta.pt", weights_only=False)["global_step"],
        "complete": sorted(p.name for p in (root / "ckpt").iterdir() if is_sharded_checkpoint(p)),
        "partial": sorted(p.name for p in (root / "ckpt").glob("*.partial")),
    }
    # the rerun after the failure, exactly as a user would: the same command plus --ckpt_path last
    resumed = launch_nodes(_fit(resume_cfg, "--ckpt_path", "last"), root, tag="resumed", LIT_ORTHO_CACHE=cache)
    hung = launch_nodes(_fit(hang_cfg), root, tag="hung", LIT_ORTHO_CACHE=cache)
    hung.wait(HARD_TIMEOUT, ranks=[0])
    hung.kill()  # rank 1 sleeps for an hour: end it once rank 0 has given up
    for job in (full, resumed):
        job.wait(HARD_TIMEOUT)
    return {"root": root, "full": full, "killed": killed, "after_kill": after_kill, "resumed": resumed, "hung": hung}


@pytest.mark.multiprocess
@pytest.mark.slow
def test_yaml_recipe_trains_on_two_nodes_with_sharded_checkpoints(yaml_runs):
    root, full = yaml_runs["root"], yaml_runs["full"]
    assert full.returncodes == [0, 0], full.describe()
    ckpt = root / "ckpt_full"
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.ckpt", "step=10.ckpt", "step=15.ckpt", "step=20.ckpt", "step=5.ckpt"]
    for path in ckpt.iterdir():  # directories: DCP index + one shard per rank + Lightning's meta.pt
        assert is_sharded_checkpoint(path) and len(list(path.glob("*.distcp"))) == 2, path
    assert torch.load(ckpt / "last.ckpt" / "meta.pt", weights_only=False)["global_step"] == STEPS
    loss = _mean_over_ranks(root / "losses_full", 2)
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3 - 1.0
    saved = yaml.safe_load((root / "runs" / "gpt2_cpu_fsdp_2nodes" / "full" / "config.yaml").read_text())
    assert saved["trainer"]["num_nodes"] == 2 and saved["trainer"]["precision"] == "bf16-mixed"


@pytest.mark.multiprocess
@pytest.mark.slow
def test_killed_rank_ends_the_job_and_last_checkpoint_survives(yaml_runs):
    root, killed = yaml_runs["root"], yaml_runs["killed"]
    assert killed.returncodes[1] == 1, killed.describe()  # the injected crash
    assert killed.returncodes[0] not in (0, -9), killed.describe()  # rank 0 failed by itself, was not killed by us
    delay = killed.exit_times[0] - killed.exit_times[1]
    print(f"killed rank: rank 0 exited {delay:.1f} s after rank 1 died (timeout_s={KILL_TIMEOUT_S})")
    # At once, not after the timeout: what rank 0 reacted to is in its error (the closed connection), whatever the
    # load; the delay (~3 s idle, measured up to ~Xs on a loaded 2-core machine) only has to stay below timeout_s.
    log = killed.output(0, tail=None)
    assert re.search(r"Connection (reset|closed) by peer|Broken pipe", log) and "Timed out" not in log, killed.describe()
    assert delay < KILL_TIMEOUT_S, f"rank 0 exited {delay:.1f} s after rank 1 died: it waited for timeout_s={KILL_TIMEOUT_S}"
    assert "lit-ortho: rank 0 stops: a collective failed" in log
    assert [r["step"] for r in read_losses(root / "losses_killed", 0)] == list(range(13))
    after_kill = yaml_runs["after_kill"]  # as the crash left it, before the rerun
    assert after_kill == {"last_step": 10, "complete": ["last.ckpt", "step=10.ckpt", "step=5.ckpt"], "partial": []}


@pytest.mark.multiprocess
@pytest.mark.slow
def test_resume_from_last_continues_the_uninterrupted_loss_curve(yaml_runs):
    root, resumed = yaml_runs["root"], yaml_runs["resumed"]
    assert resumed.returncodes == [0, 0], resumed.describe()
    for rank in (0, 1):
        full = read_losses(root / "losses_full", rank)
        after = read_losses(root / "losses_resumed", rank)
        assert [r["step"] for r in after] == list(range(10, STEPS))  # from the last checkpoint (step 10) on
        for row in after:  # same batches (litdata loader state), same LR step, same loss: bitwise here
            ref = full[row["step"]]
            assert row["batch0"] == ref["batch0"] and row["lr"] == ref["lr"], row
            assert row["loss"] == pytest.approx(ref["loss"], rel=1e-6), (rank, row, ref)
    # and the end state is the uninterrupted run's: weights and optimizer moments, via consolidation
    a = consolidate_checkpoint(root / "ckpt_full" / "step=20.ckpt", root / "a.ckpt")
    b = consolidate_checkpoint(root / "ckpt" / "step=20.ckpt", root / "b.ckpt")
    a, b = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
    torch.testing.assert_close(b["state_dict"], a["state_dict"], rtol=0, atol=0)
    torch.testing.assert_close(b["optimizer_states"][0]["state"], a["optimizer_states"][0]["state"], rtol=0, atol=0)
    model = GPT2Module.load_from_checkpoint(root / "b.ckpt")
    assert isinstance(model.generate("The ", max_new_tokens=10, seed=0), str)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_hung_rank_ends_the_job_after_the_collective_timeout(yaml_runs):
    hung = yaml_runs["hung"]
    assert hung.returncodes[0] not in (0, -9), hung.describe()  # rank 0 gave up by itself, before the hard timeout
    hang_lines = [line for line in hung.output(1, tail=None).splitlines() if line.startswith("KillRank: rank 1 hangs")]
    assert hang_lines, hung.describe()  # and only after rank 1 hung (not in a slow start-up)
    hang_started = float(hang_lines[0].rsplit("t=", 1)[1])
    # The collective that timed out began after rank 0 recorded its last step (step 1), so however loaded the
    # machine is, rank 0 exits at least timeout_s after that; it exits by itself well before the hard timeout.
    last_step = read_losses(yaml_runs["root"] / "losses_hang", 0)[-1]
    waited, after_hang = hung.exit_times[0] - last_step["t"], hung.exit_times[0] - hang_started
    print(f"hung rank: rank 0 exited {after_hang:.1f} s after rank 1 stopped answering, {waited:.1f} s after its own "
          f"last step (timeout_s={HANG_TIMEOUT_S}, hard timeout {HARD_TIMEOUT} s)")
    assert last_step["step"] == 1, last_step
    assert HANG_TIMEOUT_S <= waited < HARD_TIMEOUT, f"rank 0 exited {waited:.1f} s after its last step (timeout_s={HANG_TIMEOUT_S})"
    assert "Timed out" in hung.output(0) and f"timeout_s={float(HANG_TIMEOUT_S)}" in hung.output(0)


# ---- pre-flight checks ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--trainer.strategy=fsdp"], "strategy 'fsdp' \\(FSDP1\\) needs GPUs, but accelerator is cpu. On CPUs use FSDP2: strategy: fsdp2"),
        (["--trainer.strategy=fsdp_cpu_offload"], "needs GPUs"),
        (["--trainer.strategy=fsdp2", "--trainer.precision=16-mixed"], "precision '16-mixed' cannot run with FSDP2 .*gradient scaler"),
        (["--trainer.strategy=fsdp2", "--trainer.precision=64-true"], "precision '64-true' cannot run with FSDP2"),
        (["--trainer.strategy=fsdp1", "--trainer.precision=16-true"], "precision '16-true' cannot run with FSDP1 .* on cpu \\(no fp16 on CPUs\\)"),
        (["--trainer.strategy=lit_ortho.distributed.FSDP2Strategy", "--trainer.strategy.data_parallel_size=3", "--trainer.devices=2"],
         "data_parallel_size \\(3\\) x tensor_parallel_size \\(1\\) = 3 must equal the number of processes, devices x num_nodes = 2"),
        (["--trainer.strategy=lit_ortho.distributed.FSDP2Strategy", "--trainer.strategy.shard_size=2", "--trainer.devices=3"],
         "shard_size \\(2\\) must divide data_parallel_size \\(3\\)"),
        (["--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy", "--trainer.strategy.save_distributed_checkpoint=true",
          "--trainer.devices=2"], "tensor_parallel_size=2, but lit-ortho's models shard with FSDP only.*'auto' sizes mean"),
        (["--trainer.strategy=lit_ortho.distributed.FSDP2Strategy"], "is a class path without arguments, .* write it as a mapping"),
        (["--trainer.strategy=lit_ortho.distributed.FSDP2Strategy", "--trainer.strategy.timeout_s=0"], "timeout_s must be a positive"),
    ],
)
def test_misconfiguration_fails_before_training(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=f"lit-ortho fit: error: .*{message}"):
        main(["fit", "--config", str(CONFIGS / "gpt2_cpu.yaml"), *args])
    assert not torch.distributed.is_initialized() and not (tmp_path / "runs").exists()  # nothing started


def test_strategies_check_on_every_rank_before_the_process_group(tmp_path):
    """The Python API (no CLI): the strategy itself refuses impossible sizes before init_process_group."""
    module = GPT2Module(size="tiny", n_layer=1, n_embd=32, n_head=2, block_size=16, vocab_size=257)
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=FSDP2Strategy(data_parallel_size=2), logger=False, max_steps=1)
    with pytest.raises(ConfigurationError, match="data_parallel_size \\(2\\) .* devices x num_nodes = 1"):
        trainer.fit(module, [torch.zeros(2, 9, dtype=torch.long)])
    assert not torch.distributed.is_initialized()
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=FSDP1Strategy(), precision="16-mixed", logger=False, max_steps=1)
    with pytest.raises(ConfigurationError, match="precision '16-mixed' cannot run with FSDP1 .* on cpu"):
        trainer.fit(module, [torch.zeros(2, 9, dtype=torch.long)])
    assert not torch.distributed.is_initialized()



def test_end_process_groups_destroys_the_groups_once(monkeypatch):
    """What ``lit-ortho`` runs after each subcommand: a barrier, then every group destroyed; nothing to do twice."""
    from lit_ortho.distributed.strategies import _PROCESS, end_process_groups
    from launch import free_port

    monkeypatch.setitem(_PROCESS, "exit_handler", True)  # not this test's business: no exit handler for pytest
    assert not torch.distributed.is_initialized()
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        torch.distributed.new_group([0])
        assert end_process_groups(barrier=True) and not torch.distributed.is_initialized()
        assert not end_process_groups(barrier=True)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

FSDP_CONFIGS = sorted(p.name for p in CONFIGS.glob("*fsdp*.yaml"))


@pytest.mark.parametrize("name", FSDP_CONFIGS)
def test_fsdp_configs_pass_the_preflight_check_and_keep_the_recipes_batch(name, tmp_path, monkeypatch):
    raw = yaml.safe_load((CONFIGS / name).read_text())
    t = raw["trainer"]
    assert check_trainer_config(t) == []  # as written, for their own hardware
    assert t["precision"] == "bf16-mixed" and t["strategy"]["class_path"] == "lit_ortho.distributed.FSDP2Strategy"
    global_batch = raw["data"]["init_args"]["batch_size"] * t["devices"] * t["num_nodes"] * t.get("accumulate_grad_batches", 1)
    if name.startswith("gpt2_small_owt"):
        assert global_batch * raw["data"]["init_args"]["seq_length"] == 491_520  # nanoGPT's tokens per step
    elif name.startswith("convnext_tiny_imagenet"):
        assert global_batch == 4096
    else:
        assert (t["num_nodes"], t["devices"], t["accelerator"]) == (2, 1, "cpu")
    if t["num_nodes"] > 1 and t["accelerator"] == "gpu":  # on fewer GPUs the sizes stop adding up: refused up front
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ConfigurationError, match="shard_size \\(8\\) must divide data_parallel_size \\(4\\)"):
            check_trainer_config({**t, "num_nodes": 1, "devices": 4})


def test_the_two_node_yaml_instantiates_its_strategy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NODE_RANK", "0")
    cli = OrthoCLI(args=["--config", str(TWO_NODES_YAML)], run=False)
    strategy = cli.trainer.strategy
    assert isinstance(strategy, FSDP2Strategy) and strategy.timeout_s == 120 and cli.trainer.num_nodes == 2
    assert strategy._timeout.total_seconds() == 120 and str(cli.trainer.precision) == "bf16-mixed"


# ---- atomic checkpoints, consolidation errors ------------------------------------------------------------
def test_an_interrupted_save_leaves_the_previous_checkpoint_in_place(tmp_path):
    class FakeSharded:  # stands for ModelParallelStrategy.save_checkpoint: writes shards, then the index
        is_global_zero = True

        def broadcast(self, obj):
            return obj

        def barrier(self, name=None):
            pass

        def save_checkpoint(self, checkpoint, filepath, storage_options=None):
            path = Path(filepath)
            path.mkdir(parents=True, exist_ok=True)
            (path / "__0_0.distcp").write_text(str(checkpoint["step"]))
            if checkpoint.get("crash"):
                raise RuntimeError("[gloo/transport/tcp/pair.cc] Connection closed by peer")
            (path / ".metadata").write_text("")
            (path / "meta.pt").write_text("")

    class Strategy(AtomicCheckpointsMixin, FakeSharded):
        def _saves_sharded(self):
            return True

    strategy, last = Strategy(), tmp_path / "last.ckpt"
    strategy.save_checkpoint({"step": 10}, last)
    strategy.save_checkpoint({"step": 15}, last)  # replaces a complete checkpoint
    assert is_sharded_checkpoint(last) and (last / "__0_0.distcp").read_text() == "15"
    with pytest.raises(RuntimeError, match="Connection closed"):
        strategy.save_checkpoint({"step": 20, "crash": True}, last)
    assert is_sharded_checkpoint(last) and (last / "__0_0.distcp").read_text() == "15"  # still the last good one
    assert not is_sharded_checkpoint(tmp_path / "last.ckpt.partial")  # and "last" never resolves to this
    with pytest.raises(SystemExit, match="not a complete sharded Lightning checkpoint \\(missing .metadata, meta.pt\\)"):
        main(["consolidate", str(tmp_path / "last.ckpt.partial"), str(tmp_path / "x.ckpt")])
    assert is_collective_failure(RuntimeError("[gloo] Timed out waiting 10000ms for send operation to complete"))
    assert not is_collective_failure(ValueError("bad value"))


def test_consolidate_refuses_what_it_cannot_convert(tmp_path):
    with pytest.raises(SystemExit, match="lit-ortho consolidate: error: checkpoint not found: 'missing'"):
        main(["consolidate", "missing", str(tmp_path / "x.ckpt")])
    (tmp_path / "one.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit, match="is a file: already a consolidated"):
        main(["consolidate", str(tmp_path / "one.ckpt")])
    target = tmp_path / "exists.ckpt"
    target.write_bytes(b"")
    (tmp_path / "sharded").mkdir()
    for name in (".metadata", "meta.pt"):
        (tmp_path / "sharded" / name).write_bytes(b"")
    with pytest.raises(SystemExit, match="already exists"):
        main(["consolidate", str(tmp_path / "sharded"), str(target)])
