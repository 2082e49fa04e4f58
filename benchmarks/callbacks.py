"""Step-time overhead of the variance callbacks on GPT-2 tiny (lit_ortho's GPT2Module), on CPU.

    python benchmarks/callbacks.py                       # 3 rounds x 100 steps per configuration
    python benchmarks/callbacks.py --steps 300 --rounds 6 --activation gelu

Configurations: no callback (baseline), then ActivationVarianceMonitor + GradientVarianceMonitor (with
activation gradients) at every_n_steps = 1 and 50, pictures at their default cadence (10 x every_n_steps;
where that falls inside the run, a row without pictures shows their share). Configurations run
interleaved, round after round, in one process, so machine noise hits all alike.

Prints one table. "overhead (wall)" compares mean step times; at every_n_steps=50 the effect is small next
to run-to-run noise, so "overhead (per-step)" also estimates it from the same run's own step times:
(mean time of a logged step - mean time of the other steps) / every_n_steps, over the mean step time.
Target: < 2 % at every_n_steps=50. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from callbacks import ActivationVarianceMonitor, GradientVarianceMonitor  # noqa: E402
from lit_ortho.modules import GPT2Module  # noqa: E402


class StepClock(pl.Callback):
    """perf_counter at each training batch start (first callback, so it precedes every other hook's work):
    the difference of consecutive starts is a whole step, callbacks' end-of-step work and logging included."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        self.starts.append(time.perf_counter())


def run(config: str, every: int | None, pictures: bool, args, log_root: Path) -> StepClock:
    clock = StepClock()
    callbacks: list[pl.Callback] = [clock]
    if every is not None:
        image_every = None if pictures else 0  # None: the default cadence, 10 x every_n_steps
        callbacks += [
            ActivationVarianceMonitor(every_n_steps=every, image_every_n_steps=image_every),
            GradientVarianceMonitor(every_n_steps=every, activation_gradients=True, image_every_n_steps=image_every),
        ]
    torch.manual_seed(0)
    tokens = torch.randint(0, args.vocab_size, (args.batch_size * (args.steps + args.warmup), args.seq_len + 1))
    loader = torch.utils.data.DataLoader(tokens, batch_size=args.batch_size)
    model = GPT2Module(size="tiny", activation=args.activation, vocab_size=args.vocab_size)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.steps + args.warmup,
        callbacks=callbacks,
        logger=TensorBoardLogger(str(log_root), name=config),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=50,
    )
    trainer.fit(model, loader)
    return clock


def step_times(clock: StepClock, warmup: int) -> list[float]:
    return [b - a for a, b in zip(clock.starts[warmup:-1], clock.starts[warmup + 1 :])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--activation", default="hermite:3")
    parser.add_argument("--every", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    configs = [("baseline", None, False)]
    for n in args.every:
        configs.append((f"every_n_steps={n}", n, True))
        if 10 * n <= args.steps + args.warmup:  # pictures are drawn within the run: show their share
            configs.append(("  ... no pictures", n, False))
    times: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    logged: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    plain: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    with tempfile.TemporaryDirectory() as log_root:
        for _ in range(args.rounds):
            for name, every, pictures in configs:
                clock = run(name.strip(". ").replace(" ", "_"), every, pictures, args, Path(log_root))
                steps = step_times(clock, args.warmup)
                times[name] += steps
                if every is not None:
                    # step i (0-based, counting warm-up) is logged when (i + 1) % every == 0
                    for i, t in enumerate(steps, start=args.warmup):
                        (logged if (i + 1) % every == 0 else plain)[name].append(t)

    base = statistics.fmean(times["baseline"])
    print(
        f"\nGPT-2 tiny ({args.activation}), CPU, {torch.get_num_threads()} threads, batch {args.batch_size} x "
        f"{args.seq_len} tokens, {args.rounds} rounds x {args.steps} steps\n"
    )
    header = (
        f"{'configuration':<20} {'mean step ms':>13} {'overhead (wall)':>16} {'logged step ms':>15} "
        f"{'other step ms':>14} {'overhead (per-step)':>20}"
    )
    print(header)
    print("-" * len(header))
    for name, every, _ in configs:
        mean = statistics.fmean(times[name])
        row = f"{name:<20} {1e3 * mean:>13.2f} {100 * (mean / base - 1):>15.2f}%"
        if every is None:
            row += f" {'':>15} {'':>14} {'':>20}"
        else:
            t_log = statistics.fmean(logged[name]) if logged[name] else float("nan")
            t_plain = statistics.fmean(plain[name]) if plain[name] else t_log
            per_step = (t_log - t_plain) / every / mean if every > 1 else mean / base - 1
            row += f" {1e3 * t_log:>15.2f} {1e3 * t_plain:>14.2f} {100 * per_step:>19.2f}%"
        print(row)
    print("\nTarget: < 2 % at every_n_steps=50.")


if __name__ == "__main__":
    main()
