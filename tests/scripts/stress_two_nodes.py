"""How each rank of the two-node CPU recipe exits on a loaded machine: start ``lit-ortho fit`` on
cli_configs/gpt2_cpu_fsdp_2nodes.yaml (shrunk as tests/test_fsdp_multinode.py shrinks it: a 2-layer model, 20 steps, a sharded checkpoint every 5,
validation at the end, the recipe's TensorBoard logger)
``--runs`` times, ``--jobs`` jobs at a time, while ``--load`` busy loops keep the cores busy, and count the exit
statuses of every rank. A clean job is exit 0 on both ranks; the bug this watches for is a rank that finishes its
work and then aborts at interpreter exit (status -6).

    python tests/scripts/stress_two_nodes.py --runs 10 --jobs 2 --load 2 --out /tmp/stress
    python tests/scripts/stress_two_nodes.py ... --pythonpath /tmp/before   # another checkout of lit-ortho

Prints one line per job and a table of counts; exits 1 unless every rank of every job exited 0.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from launch import REPO, TESTS, launch_nodes, python  # noqa: E402


def override(out: Path, steps: int) -> Path:
    config = {
        "trainer": {
            "max_steps": steps, "val_check_interval": steps, "limit_val_batches": 2, "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(out / "ckpt"), "filename": "{step}", "every_n_train_steps": 5,
                                         "save_top_k": -1, "save_last": True}}],
        },
        "model": {"init_args": {"n_layer": 2, "n_embd": 64, "n_head": 2}},
        "data": {"init_args": {"seq_length": 32, "batch_size": 4}},
    }  # fmt: skip
    path = out / "override.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2, help="jobs (of 2 processes each) at a time")
    parser.add_argument("--load", type=int, default=2, help="busy loops running meanwhile")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pythonpath", default=str(REPO), help="the lit-ortho checkout to run (default: this one)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    config = REPO / "cli_configs" / "gpt2_cpu_fsdp_2nodes.yaml"
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    counts: collections.Counter = collections.Counter()
    try:
        for first in range(0, args.runs, args.jobs):
            started = []
            for run in range(first, min(first + args.jobs, args.runs)):
                out = args.out / f"run{run}"
                out.mkdir(parents=True, exist_ok=True)
                argv = python("-m", "lit_ortho.cli", "fit", "--config", config, "--config", override(out, args.steps))
                env = dict(PYTHONPATH=os.pathsep.join([args.pythonpath, str(TESTS)]), LIT_ORTHO_CACHE=str(args.out / "cache"))
                started.append((run, time.monotonic(), launch_nodes(argv, out, tag="fit", **env)))
            for run, t0, job in started:
                job.wait(args.timeout)
                counts.update(f"rank {r}: exit {rc}" for r, rc in enumerate(job.returncodes))
                print(f"run {run}: exit statuses {job.returncodes}, {time.monotonic() - t0:.0f} s, logs {args.out / f'run{run}'}",
                      flush=True)  # fmt: skip
    finally:
        for p in busy:
            p.kill()
    print(f"\n{args.runs} jobs, {args.jobs} at a time, {args.load} busy loops, {os.cpu_count()} cores, {args.pythonpath}")
    print("| rank | exit status | jobs |\n|---|---|---|")
    for key, n in sorted(counts.items()):
        rank, status = key.split(": ")
        print(f"| {rank.split()[1]} | {status.split()[1]} | {n} |")
    return 0 if set(counts) <= {"rank 0: exit 0", "rank 1: exit 0"} else 1


if __name__ == "__main__":
    sys.exit(main())
