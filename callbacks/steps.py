"""When the monitors act: Lightning's own logging-step convention, shared by every monitor.

Lightning logs ``self.log`` values at step ``_batches_that_stepped`` (batches that ended with an optimizer
step: once per batch whatever the number of optimizers, all accumulated micro-batches counting as one), and
it logs when ``(_batches_that_stepped + 1) % log_every_n_steps == 0`` (``LoggerConnector.should_update_logs``).
The monitors do the same with their own ``every``: values computed during a logged optimizer step are logged
at that step's number, and what is read after a step (the activation shape monitor's curves) at the number
of steps taken. ``trainer.global_step`` is not used: it counts ``optimizer.step`` calls, twice per batch
with two optimizers.
"""

from __future__ import annotations

import lightning.pytorch as pl


def batches_that_stepped(trainer: "pl.Trainer") -> int:
    """Optimizer steps taken so far: Lightning's own logging step (what ``self.log`` values are logged at).
    Inside a batch's hooks it is the number of the step in progress (0 for the first)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def is_logging_step(trainer: "pl.Trainer", every: int) -> bool:
    """True during a whole optimizer step (all its accumulated micro-batches) that is logged every ``every``
    steps: ``(steps taken + 1) % every == 0``, as Lightning decides for ``log_every_n_steps=every``."""
    return trainer.training and (batches_that_stepped(trainer) + 1) % every == 0


def ends_optimizer_step(trainer: "pl.Trainer") -> bool:
    """In ``on_train_batch_end``: this micro-batch is the last of its optimizer step (not accumulating)."""
    return not trainer.fit_loop._should_accumulate()
