"""Compare GELU with the learnable activations on the offline CPU configs, and check two of the paper's claims.

    .venv/bin/python benchmarks/compare_activations.py                 # the default sweep (< 1 h on 2 cores)
    .venv/bin/python benchmarks/compare_activations.py "hermite(degree=3, init=unit)"   # add any spec
    .venv/bin/python benchmarks/compare_activations.py --steps 300 --seeds 5 --work-dir runs/compare300
    .venv/bin/python benchmarks/compare_activations.py --report-only   # rewrite the report from finished runs

What runs (each in its own process, one after the other):

* the sweep: ``cli_configs/gpt2_cpu.yaml`` (GPT-2 tiny, embedded corpus) and ``cli_configs/convnext_cpu.yaml``
  (ConvNeXt-atto, digits) for GELU, Hermite-3, Fourier-5, Tropical-5 and any spec given, ``--seeds`` seeds
  each, ``--steps`` optimizer steps, ActivationVarianceMonitor and GradientVarianceMonitor logging every step.
  Seed index i sets ``seed_everything(i)`` *and* the data module's shuffle seed to i: within a seed every
  activation sees the same batches in the same order and starts from the same random weights (the
  activations' own coefficients are deterministic); seeds vary initialisation and data order together.
* check 1, initialisation: a deeper GPT-2 tiny (``--init-layers``) with Hermite-3 under the paper's init,
  the same with every coefficient set to 1, and GELU for reference.
* check 2, the fine-tuning swap: the seed-0 GELU GPT-2 of the sweep, its GELUs replaced by
  ``replace_activations(spec, init="gelu")``; validation loss before, right after, and after
  ``--swap-steps`` steps of fine-tuning (GELU fine-tuned the same way as the control).

Then ``docs/RESULTS.md`` and its figures are (re)written from every finished run.

Resuming: a run is finished when its ``result.json`` exists (written last, atomically) and its job matches
the one planned; finished runs are skipped, so an interrupted sweep continues where it stopped. Runs are
kept under ``--work-dir/<config>/steps<N>-val<E>x<B>/<activation>/seed<i>`` with their TensorBoard logs
(``tensorboard --logdir runs/compare``); a different budget gets new directories.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

DEFAULT_ACTIVATIONS = ["gelu", "hermite:3", "fourier:5", "tropical:5"]
DEFAULT_SWAP_SPECS = ["hermite:3", "fourier:5", "tropical:5", "tropical_rational:6"]
CONFIG_NAMES = ("gpt2", "convnext")


def slug(spec: str) -> str:
    """A directory name for an activation spec: ``hermite:3`` -> ``hermite_3``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_").lower() or "act"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare_activations.py",
        description="GELU vs learnable activations on the offline CPU configs, 3 seeds, with the paper checks; "
        "writes docs/RESULTS.md and docs/figures/. Resumes a partly finished sweep.",
    )
    p.add_argument("specs", nargs="*", help="more activation specs to compare, e.g. 'hermite(degree=5, init=unit)'")
    p.add_argument("--activations", nargs="+", default=DEFAULT_ACTIVATIONS,
                   help=f"the activations to compare (default: {' '.join(DEFAULT_ACTIVATIONS)}); GELU is always included")
    p.add_argument("--configs", nargs="+", default=list(CONFIG_NAMES), choices=CONFIG_NAMES, help="which CPU configs")
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per run (default: 150, the configs' own)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per activation (0..N-1, default: 3)")
    p.add_argument("--val-every", type=int, default=25, help="validate every this many steps (default: 25)")
    p.add_argument("--val-batches", type=int, default=8, help="validation batches, 0 = all (default: 8)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (default: 1: steady timings on a busy 2-core machine; 0 = torch's default)")
    p.add_argument("--no-checks", action="store_true", help="skip the two paper checks")
    p.add_argument("--init-layers", type=int, default=12, help="check 1: GPT-2 tiny depth (default: 12)")
    p.add_argument("--init-steps", type=int, default=None, help="check 1: steps (default: --steps)")
    p.add_argument("--init-seeds", type=int, default=2, help="check 1: seeds per arm (default: 2)")
    p.add_argument("--swap-specs", nargs="+", default=DEFAULT_SWAP_SPECS,
                   help=f"check 2: what replaces GELU (default: {' '.join(DEFAULT_SWAP_SPECS)})")
    p.add_argument("--swap-steps", type=int, default=50, help="check 2: fine-tuning steps after the swap (default: 50)")
    p.add_argument("--swap-val-batches", type=int, default=0, help="check 2: validation batches, 0 = all (default)")
    p.add_argument("--swap-lr", type=float, default=3e-4, help="check 2: constant fine-tuning LR (default: 3e-4, the run's final LR)")
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "compare"), help="runs and their logs (default: runs/compare)")
    p.add_argument("--report", default=str(ROOT / "docs" / "RESULTS.md"), help="report to write (default: docs/RESULTS.md)")
    p.add_argument("--figures", default=None, help="figure directory (default: figures/ next to the report)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from finished runs")
    p.add_argument("--no-report", action="store_true", help="run, but do not write the report")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether they are finished, run nothing")
    p.add_argument("--in-process", action="store_true", help="run jobs in this process (faster start; no isolation)")
    p.add_argument("--quiet", action="store_true", help="one line per run, no step progress")
    return p


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = build_parser()
    a = p.parse_args(argv)
    a.raw_activations = list(a.activations)
    for name in ("steps", "seeds", "val_every", "init_layers", "init_seeds", "swap_steps"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.val_batches < 0 or a.swap_val_batches < 0 or a.threads < 0:
        p.error("--val-batches, --swap-val-batches and --threads must be >= 0")
    from lit_ortho import build_activation

    acts = []
    for spec in ["gelu"] + list(a.activations) + list(a.specs):
        try:
            build_activation(spec)
        except ValueError as err:
            p.error(f"activation {spec!r}: {err}")
        if spec not in acts:
            acts.append(spec)
    a.activations = acts
    for spec in a.swap_specs:
        try:
            build_activation(spec)
        except ValueError as err:
            p.error(f"--swap-specs {spec!r}: {err}")
    a.init_steps = a.init_steps or a.steps
    a.figures = a.figures or str(Path(a.report).parent / "figures")
    return a


def command_line(a: argparse.Namespace) -> str:
    """The command that reproduces this sweep: the options that differ from the defaults (paths left out)."""
    import shlex

    parser, parts = build_parser(), []
    skip = {"work_dir", "report", "figures", "report_only", "no_report", "dry_run", "in_process", "quiet", "specs", "activations"}
    for action in parser._actions:
        dest = action.dest
        if dest in skip or dest == "help" or not action.option_strings:
            continue
        value, default = getattr(a, dest, None), action.default
        if dest == "init_steps" and value == a.steps:
            continue
        if value == default or value is None:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag] + [shlex.quote(str(v)) for v in value]
        else:
            parts += [flag, str(value)]
    raw = getattr(a, "raw_activations", DEFAULT_ACTIVATIONS)
    if raw != DEFAULT_ACTIVATIONS:
        parts += ["--activations"] + [shlex.quote(v) for v in raw]
    parts += [shlex.quote(v) for v in a.specs]
    return " ".join([".venv/bin/python benchmarks/compare_activations.py"] + parts)


# ---- planning --------------------------------------------------------------------------------------------
class Job:
    """One unit of work: a directory, the job dict the worker reads, and a label for progress."""

    def __init__(self, group: str, label: str, directory: Path, spec: dict, after: Optional["Job"] = None):
        self.group, self.label, self.dir, self.spec, self.after = group, label, directory, spec, after

    @property
    def result_file(self) -> Path:
        return self.dir / "result.json"

    def done(self) -> bool:
        if not self.result_file.exists():
            return False
        try:
            stored = json.loads(self.result_file.read_text()).get("job", {})
        except (OSError, json.JSONDecodeError):
            return False
        return _comparable(stored) == _comparable(self.spec)

    def result(self) -> Optional[dict]:
        return json.loads(self.result_file.read_text()) if self.done() else None


def _comparable(job: dict) -> dict:
    """The parts of a job that decide its result (not threads, not file locations)."""
    return {k: v for k, v in job.items() if k not in ("threads", "weights", "vocab_size")}


def budget_dir(work: Path, config: str, steps: int, val_every: int, val_batches: int) -> Path:
    return work / config / f"steps{steps}-val{val_every}x{val_batches or 'all'}"


def plan(a: argparse.Namespace) -> dict[str, list[Job]]:
    work = Path(a.work_dir)
    common = {"kind": "train", "val_every": a.val_every, "val_batches": a.val_batches, "threads": a.threads}
    jobs: dict[str, list[Job]] = {"sweep": [], "init": [], "swap": []}
    for config in a.configs:
        base = budget_dir(work, config, a.steps, a.val_every, a.val_batches)
        for seed in range(a.seeds):
            for act in a.activations:
                spec = dict(common, config=config, activation=act, seed=seed, steps=a.steps)
                if config == "gpt2" and act == "gelu" and seed == 0:
                    spec["save_weights"] = True  # the fine-tuning swap starts from this model
                jobs["sweep"].append(Job("sweep", f"{config} {act} seed {seed}", base / slug(act) / f"seed{seed}", spec))
    if a.no_checks:
        return jobs
    base = budget_dir(work, "gpt2_init", a.init_steps, a.val_every, a.val_batches) / f"layers{a.init_layers}"
    arms = [("paper", "hermite:3", None), ("ones", "hermite:3", 1.0), ("gelu", "gelu", None)]
    for seed in range(a.init_seeds):
        for arm, act, fill in arms:
            spec = dict(common, config="gpt2", activation=act, seed=seed, steps=a.init_steps,
                        model={"n_layer": a.init_layers}, watch_blocks=True, arm=arm)  # fmt: skip
            if fill is not None:
                spec["coefficient_fill"] = fill
            jobs["init"].append(Job("init", f"init check {arm} ({act}, {a.init_layers} layers) seed {seed}",
                                    base / arm / f"seed{seed}", spec))  # fmt: skip
    gelu0 = next((j for j in jobs["sweep"] if j.spec.get("save_weights")), None)
    if gelu0 is None:  # no GPT-2 in this sweep: plan its GELU seed-0 run for the swap anyway
        base = budget_dir(work, "gpt2", a.steps, a.val_every, a.val_batches)
        spec = dict(common, config="gpt2", activation="gelu", seed=0, steps=a.steps, save_weights=True)
        gelu0 = Job("sweep", "gpt2 gelu seed 0 (for the swap check)", base / "gelu" / "seed0", spec)
        jobs["init"].insert(0, gelu0)
    swap = {
        "kind": "swap", "threads": a.threads, "specs": list(a.swap_specs), "finetune_steps": a.swap_steps,
        "finetune_lr": a.swap_lr, "seed": 1000, "base_job": dict(gelu0.spec, val_batches=a.swap_val_batches, save_weights=False),
        "trained_job": _comparable(gelu0.spec),
    }  # fmt: skip
    swap_dir = gelu0.dir.parent.parent.parent / f"swap-steps{a.swap_steps}"
    jobs["swap"].append(Job("swap", f"swap check ({', '.join(a.swap_specs)})", swap_dir, swap, after=gelu0))
    return jobs


# ---- running ---------------------------------------------------------------------------------------------
def _run_job(job: Job, a: argparse.Namespace, log) -> bool:
    job.dir.mkdir(parents=True, exist_ok=True)
    spec = dict(job.spec)
    if job.after is not None:
        trained = job.after.result()
        if trained is None:
            log(f"    skipped: needs {job.after.label}, which has not finished")
            return False
        spec["weights"] = str(job.after.dir / trained["weights"])
        spec["vocab_size"] = trained["vocab_size"]
    (job.dir / "job.json").write_text(json.dumps(spec, indent=1))
    logfile = job.dir / "log.txt"
    if a.in_process:
        import contextlib

        import _compare_worker

        with open(logfile, "w") as f, contextlib.redirect_stdout(f):
            try:
                _compare_worker.main([str(job.dir / "job.json")])
            except Exception as err:  # noqa: BLE001 - report it and go on with the other runs
                import traceback

                traceback.print_exc(file=f)
                log(f"    FAILED: {type(err).__name__}: {err} (log: {logfile})")
                return False
        return job.result_file.exists()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(logfile, "w") as f:
        proc = subprocess.Popen([sys.executable, str(HERE / "_compare_worker.py"), str(job.dir / "job.json")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(ROOT))  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if not a.quiet and line.startswith("  "):
                log("  " + line.rstrip())
        rc = proc.wait()
    if rc != 0 or not job.result_file.exists():
        tail = logfile.read_text().strip().splitlines()[-5:]
        log(f"    FAILED (exit {rc}); last lines of {logfile}:\n      " + "\n      ".join(tail))
        return False
    return True


def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def machine_info() -> dict[str, Any]:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import lightning

    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "lightning": lightning.__version__,
        "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}",
    }  # fmt: skip


def run_all(a: argparse.Namespace, jobs: dict[str, list[Job]]) -> int:
    def log(msg: str) -> None:
        print(msg, flush=True)

    todo = [j for group in ("sweep", "init", "swap") for j in jobs[group]]
    pending = [j for j in todo if not j.done()]
    log(f"{len(todo)} runs planned, {len(todo) - len(pending)} already finished, {len(pending)} to run "
        f"(work dir {a.work_dir})")  # fmt: skip
    if a.dry_run:
        for j in todo:
            log(f"  [{'done' if j.done() else '    '}] {j.label}: {j.dir}")
        return 0
    sweep_file = Path(a.work_dir) / "sweep.json"
    sweep_file.parent.mkdir(parents=True, exist_ok=True)
    history = json.loads(sweep_file.read_text()) if sweep_file.exists() else {"sessions": []}
    session = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:], "machine": machine_info(),
               "load_start": list(os.getloadavg()), "ran": 0, "failed": 0}  # fmt: skip
    history["sessions"].append(session)
    t_start, durations, failed = time.perf_counter(), {}, 0
    for k, job in enumerate(pending, 1):
        eta = ""
        if durations:
            def guess(j):  # the mean duration of the job's group, else of every job so far
                if durations.get(j.group):
                    return sum(durations[j.group]) / len(durations[j.group])
                return sum(sum(v) for v in durations.values()) / sum(len(v) for v in durations.values())

            eta = f", about {_fmt_s(sum(guess(j) for j in pending[k - 1:]))} left"
        log(f"[{k}/{len(pending)}] {job.label} (elapsed {_fmt_s(time.perf_counter() - t_start)}{eta})")
        t0 = time.perf_counter()
        ok = _run_job(job, a, log)
        took = time.perf_counter() - t0
        durations.setdefault(job.group, []).append(took)
        if ok:
            r = job.result() or {}
            final = r.get("final") or {}
            summary = ", ".join(f"{key} {value:.4f}" for key, value in final.items())
            log(f"    done in {_fmt_s(took)}" + (f": {summary}" if summary else ""))
            session["ran"] += 1
        else:
            failed += 1
            session["failed"] += 1
        session["wall_s"] = time.perf_counter() - t_start
        session["load_end"] = list(os.getloadavg())
        sweep_file.write_text(json.dumps(history, indent=1))
    session["wall_s"] = time.perf_counter() - t_start
    session["load_end"] = list(os.getloadavg())
    sweep_file.write_text(json.dumps(history, indent=1))
    log(f"ran {len(pending) - failed} runs in {_fmt_s(time.perf_counter() - t_start)}" + (f"; {failed} failed" if failed else ""))
    return failed


def main(argv: Optional[list[str]] = None) -> int:
    a = parse_args(argv)
    jobs = plan(a)
    failed = 0
    if not a.report_only:
        failed = run_all(a, jobs)
        if a.dry_run:
            return 0
    if not a.no_report:
        import _compare_report

        path = _compare_report.write_report(a, jobs)
        print(f"wrote {path} and figures in {a.figures}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
