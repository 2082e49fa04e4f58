"""Step-time overhead of the monitors (callbacks package) on a CPU config: the config's own model and data.

    python benchmarks/callbacks.py                                            # cli_configs/gpt2_cpu.yaml
    python benchmarks/callbacks.py --config cli_configs/convnext_cpu.yaml
    python benchmarks/callbacks.py --steps 150 --rounds 5 --every 1 50       # the defaults
    python benchmarks/callbacks.py --dry-run                                  # 4 steps, 1 round: runs, times nothing

Configurations, each one training run of ``--steps`` timed steps (after ``--warmup``) from the same seed:

- ``baseline``: no monitor.
- ``every_n_steps=N`` (``--every``): ActivationVarianceMonitor (kurtosis and absmax included) +
  GradientVarianceMonitor (activation gradients included) + ParameterUpdateMonitor (update ratio, drift,
  coefficients) logging scalars every N steps, no pictures: the cost of a logged step and, on the other steps,
  of the monitors' mere presence.
- ``config``: exactly the monitors of the config's ``trainer.callbacks`` (their cadence, pictures and
  ActivationShapeMonitor included), as ``lit-ortho fit --config ...`` runs them.

The Trainer keeps the config's ``log_every_n_steps``, ``gradient_clip_val``, ``precision`` and
``accumulate_grad_batches``; validation and checkpoints are left out (the same in every configuration).
Configurations run interleaved, round after round, in one process, so machine noise hits all alike.

Columns. ``overhead (wall)``: each round compares the run's mean step time with that round's baseline; the
median over rounds, and the spread (min..max). ``overhead (per-step)``: from the run's own step times, less
noisy: ((sum over logged steps of (their time - the median other step)) / steps + median other step -
median baseline step) / median baseline step (every step logged: each against the baseline's median); again
median and spread over rounds. ``overhead (acting steps)``: the quiet one: only the extra time of the steps
where a monitor acts, sum(logged step - the run's median other step) / (steps x that median), median and
spread over rounds. It leaves out the other steps' machine noise, which is fair only because the monitors do
nothing on those steps (``hooks off-step`` 0). Pictures are rendered
on a background thread: their cost shows in the wall column (and in ``render s``, the rendering time spent
per run, measured on that thread). ``hooks off-step``: the most module / parameter / global hooks seen at the
start of any step that is not logged (0: the monitors do nothing there). Timings are never asserted.

Allocator: as ``benchmarks/activations.py`` (whose helper this reuses): the script re-executes itself with
glibc's heap tuned (``MALLOC_MMAP_THRESHOLD_`` etc.), keeps a ``LD_PRELOAD`` jemalloc/tcmalloc/mimalloc, and
``--default-malloc`` keeps glibc's defaults. The first line printed names the allocator.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))  # ahead of benchmarks/: `callbacks` is the package, not this script

import activations as _allocator  # noqa: E402  (benchmarks/activations.py: the allocator choice, shared)

if __name__ == "__main__":  # re-executes this script with the tuned allocator (before any timing) when needed
    _allocator.ALLOCATOR = _allocator._reexec_with_allocator()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from callbacks import (  # noqa: E402
    ActivationShapeMonitor,
    ActivationVarianceMonitor,
    GradientVarianceMonitor,
    ParameterUpdateMonitor,
)
from callbacks import reporting  # noqa: E402

MONITORS = (ActivationVarianceMonitor, GradientVarianceMonitor, ParameterUpdateMonitor, ActivationShapeMonitor)
DEFAULT_CONFIG = REPO / "cli_configs" / "gpt2_cpu.yaml"


class StepClock(pl.Callback):
    """perf_counter at each training batch start (the first callback, so it precedes every other hook's work):
    the difference of consecutive starts is a whole step, callbacks' end-of-step work and logging included
    (the last step ends after every callback's end-of-training work)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(time.perf_counter())

    def on_fit_end(self, trainer, pl_module):  # after every callback's on_train_end (last pictures, waits)
        self.starts.append(time.perf_counter())


def count_hooks(module: torch.nn.Module) -> int:
    """Every hook a monitor could leave behind: on modules, on parameters, and torch's global module hooks."""
    from torch.nn.modules import module as torch_module

    n = sum(len(getattr(m, attr, ()) or ()) for m in module.modules() for attr in
            ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))  # fmt: skip
    n += sum(len(p._backward_hooks or {}) + len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
             for p in module.parameters())  # fmt: skip
    n += sum(len(getattr(torch_module, name, {})) for name in
             ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"))  # fmt: skip
    return n


class HookSpy(pl.Callback):
    """Hooks present at each step's start, after the monitors' own on_train_batch_start (the last callback)."""

    def __init__(self) -> None:
        self.at_step: dict[int, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.at_step[trainer.fit_loop.epoch_loop._batches_that_stepped] = count_hooks(pl_module)


@contextlib.contextmanager
def timed_rendering():
    """Seconds the pictures' background thread spends rendering and logging (reporting.log_image calls)."""
    spent = [0.0]
    original = reporting.BackgroundImages.submit

    def submit(self, trainer, tag, render, step):
        def timed():
            t0 = time.perf_counter()
            try:
                return render()
            finally:
                spent[0] += time.perf_counter() - t0

        return original(self, trainer, tag, timed, step)

    reporting.BackgroundImages.submit = submit
    try:
        yield spent
    finally:
        reporting.BackgroundImages.submit = original


def build(config: Path, overrides: list[str]):
    """(model, datamodule, the config's monitors, the Trainer settings kept), fresh and seeded, from the config."""
    from lit_ortho.cli import OrthoCLI

    cli = OrthoCLI(args=["--config", str(config), *overrides], run=False)
    monitors = [cb for cb in cli.trainer.callbacks if isinstance(cb, MONITORS)]
    t = cli.config["trainer"]
    kept = {k: t[k] for k in ("log_every_n_steps", "gradient_clip_val", "precision", "accumulate_grad_batches") if t.get(k) is not None}
    return cli.model, cli.datamodule, monitors, kept


def monitors_for(row: str, every: int | None, config_monitors: list) -> list:
    if row == "baseline":
        return []
    if row == "config":
        return config_monitors
    return [ActivationVarianceMonitor(every_n_steps=every, image_every_n_steps=0),
            GradientVarianceMonitor(every_n_steps=every, activation_gradients=True, image_every_n_steps=0),
            ParameterUpdateMonitor(every_n_steps=every, image_every_n_steps=0)]  # fmt: skip


def logged_steps(monitors: list, log_every: int, total: int) -> set[int]:
    """Lightning step numbers (0-based) at which any of ``monitors`` acts: logs scalars or draws."""
    steps: set[int] = set()
    for m in monitors:
        every = m.every_n_steps or (10 * log_every if isinstance(m, ActivationShapeMonitor) else log_every)
        steps |= {i for i in range(total) if (i + 1) % every == 0}
        if isinstance(m, ActivationShapeMonitor):  # step 0: it learns the forward order (hooks) and draws at start
            steps.add(0)
        if isinstance(m, ActivationShapeMonitor) or getattr(m, "image_every_n_steps", 0) != 0:
            steps.add(total - 1)  # the last step carries the end of training: the final pictures, their wait
    return steps


def run(config: Path, overrides: list[str], row: str, every: int | None, args, log_root: Path) -> dict:
    model, datamodule, config_monitors, kept = build(config, overrides)
    monitors = monitors_for(row, every, config_monitors)
    clock, spy = StepClock(), HookSpy()
    total = args.steps + args.warmup
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=total,
        callbacks=[clock, *monitors, spy],
        logger=TensorBoardLogger(str(log_root), name=row.replace(" ", "_").replace("=", "")),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        **kept,
    )
    with timed_rendering() as rendering:
        trainer.fit(model, datamodule=datamodule)
    times = [b - a for a, b in zip(clock.starts[:-1], clock.starts[1:])][args.warmup :]
    acting = logged_steps(monitors, kept.get("log_every_n_steps", 50), total)
    logged = [t for i, t in enumerate(times, start=args.warmup) if i in acting]
    other = [t for i, t in enumerate(times, start=args.warmup) if i not in acting]
    return {"times": times, "logged": logged, "other": other, "render_s": rendering[0],
            "hooks_off_step": max((n for s, n in spy.at_step.items() if s not in acting), default=0),
            "hooks_on_step": max((n for s, n in spy.at_step.items() if s in acting), default=0)}  # fmt: skip


def spread(values: list[float]) -> str:
    if not values:
        return ""
    med = statistics.median(values)
    return f"{100 * med:+.2f}% ({100 * min(values):+.1f}..{100 * max(values):+.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="a CPU LightningCLI config (model, data, monitors)")
    parser.add_argument("--steps", type=int, default=150, help="timed steps per run, after the warm-up (the CPU configs' max_steps)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--every", type=int, nargs="*", default=[1, 50], help="rows with AVM + GVM scalars every N steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own, as lit-ortho fit runs)")
    parser.add_argument("--dry-run", action="store_true", help="4 steps, 1 round, no warm-up: checks that it runs")
    parser.add_argument("--default-malloc", action="store_true", help="glibc's default malloc (see benchmarks/activations.py)")
    parser.add_argument("overrides", nargs="*", help="extra CLI arguments for the config, e.g. --model.init_args.activation=gelu")
    args = parser.parse_args()
    if args.dry_run:
        args.steps, args.rounds, args.warmup = 4, 1, 0
    if args.threads:
        torch.set_num_threads(args.threads)
    config = args.config.resolve()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    print(_allocator.allocator_line(), flush=True)
    rows: list[tuple[str, int | None]] = [("baseline", None), *((f"every_n_steps={n}", n) for n in args.every), ("config", None)]
    results: dict[str, list[dict]] = {name: [] for name, _ in rows}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)  # the config's relative paths (runs/, checkpoints) land in a temp dir
        try:
            for r in range(args.rounds):
                for name, every in rows:
                    results[name].append(run(config, args.overrides, name, every, args, Path(work) / "logs"))
                if r + 1 < args.rounds:  # the table so far: an interrupted run still reports its complete rounds
                    print(f"\n-- after round {r + 1} of {args.rounds}:", flush=True)
                    report(config, args, rows, results, r + 1)
        finally:
            os.chdir(cwd)
    print(f"\n-- all {args.rounds} rounds:")
    report(config, args, rows, results, args.rounds)
    if args.dry_run:
        print("dry run: no timing claims")


def report(config: Path, args, rows: list, results: dict[str, list[dict]], rounds: int) -> None:
    cfg_text = "; ".join(describe_monitor(m) for m in build_monitors_only(config, args.overrides)) or "none"
    print(f"\n{config.name} ({' '.join(args.overrides) or 'as written'}), CPU, {torch.get_num_threads()} torch threads, "
          f"{rounds} rounds x {args.steps} steps (+{args.warmup} warm-up)")
    print(f"config's monitors: {cfg_text}\n")
    header = (f"| {'configuration':<18} | {'mean step ms':>12} | {'logged step ms':>14} | {'other step ms':>13} | "
              f"{'overhead (wall)':>26} | {'overhead (per-step)':>26} | {'overhead (acting steps)':>26} | {'render s':>8} | "
              f"{'hooks off-step':>14} |")  # fmt: skip
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    base_runs = results["baseline"]
    for name, every in rows:
        runs = results[name]
        all_t = [t for res in runs for t in res["times"]]
        logged = [t for res in runs for t in res["logged"]]
        other = [t for res in runs for t in res["other"]]
        wall, per_step, acting = [], [], []
        for res, base in zip(runs, base_runs):
            wall.append(statistics.fmean(res["times"]) / statistics.fmean(base["times"]) - 1)
            m_base = statistics.median(base["times"])
            ref = statistics.median(res["other"]) if res["other"] else m_base  # every step logged: vs baseline
            per_step.append((sum(t - ref for t in res["logged"]) / len(res["times"]) + ref - m_base) / m_base)
            acting.append(sum(t - ref for t in res["logged"]) / (len(res["times"]) * ref))
        cells = [f"{1e3 * statistics.fmean(all_t):>12.2f}",
                 f"{1e3 * statistics.fmean(logged):>14.2f}" if logged else f"{'':>14}",
                 f"{1e3 * statistics.median(other or all_t):>13.2f}" if other or name == "baseline" else f"{'':>13}",
                 f"{spread(wall) if name != 'baseline' else '':>26}", f"{spread(per_step) if name != 'baseline' else '':>26}",
                 f"{spread(acting) if name != 'baseline' else '':>26}",
                 f"{statistics.fmean(res['render_s'] for res in runs):>8.2f}",
                 f"{max(res['hooks_off_step'] for res in runs):>14d}"]  # fmt: skip
        print(f"| {name:<18} | " + " | ".join(cells) + " |")
    print("\nmean step ms: all timed steps; logged step ms: mean of the steps where a monitor acts; other step ms: "
          "their median\n(baseline: the median step). Overheads: median over rounds (min..max). Target: < 2 % at "
          "every_n_steps=50 and for the config's monitors.", flush=True)


def build_monitors_only(config: Path, overrides: list[str]) -> list:
    with tempfile.TemporaryDirectory() as work:
        cwd = os.getcwd()
        os.chdir(work)
        try:
            from lit_ortho.cli import OrthoCLI

            cli = OrthoCLI(args=["--config", str(config), *overrides], run=False)
            return [cb for cb in cli.trainer.callbacks if isinstance(cb, MONITORS)]
        finally:
            os.chdir(cwd)


def describe_monitor(m) -> str:
    args = [f"every_n_steps={m.every_n_steps}"]
    if hasattr(m, "image_every_n_steps"):
        args.append(f"image_every_n_steps={m.image_every_n_steps}")
    if getattr(m, "activation_gradients", False):
        args.append("activation_gradients=True")
    return f"{type(m).__name__}({', '.join(args)})"


if __name__ == "__main__":
    main()
