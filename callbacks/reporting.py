"""Getting numbers and pictures into whatever loggers the Trainer has.

Scalars go to every logger (``Logger.log_metrics``). Pictures and the TensorBoard custom-scalars
layout go only to loggers that support them: TensorBoard-style ``experiment.add_image`` /
``experiment.add_custom_scalars``, or a logger-level ``log_image`` (W&B). Everything here runs on
global rank 0 only: other ranks hold a dummy experiment, and rendering is not free.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional

import numpy as np

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_warn


def log_scalars(trainer: "pl.Trainer", metrics: Mapping[str, float], step: int) -> None:
    if not trainer.is_global_zero or not metrics:
        return
    for logger in trainer.loggers:
        if not _write_tensorboard_event(logger, metrics, step):
            logger.log_metrics(dict(metrics), step=step)


def _write_tensorboard_event(logger: object, metrics: Mapping[str, float], step: int) -> bool:
    """Write every scalar of a logged step as ONE TensorBoard event (a ``Summary`` with a value per tag) where
    ``logger`` is Lightning's ``TensorBoardLogger`` on torch's ``SummaryWriter``; False for any other logger.

    TensorBoard reads it as the same scalars, under the same tags and step, that ``log_metrics`` writes one
    event each (``add_scalar``): ~40 us per scalar there, ~1 us here, for the hundreds of scalars a logged
    step of a ConvNeXt has (34 ms of a 60 ms logged-step overhead before this).
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    if not isinstance(logger, TensorBoardLogger):
        return False
    try:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboardX's writer: Lightning's own path
        return False
    experiment = logger.experiment
    if not isinstance(experiment, SummaryWriter):
        return False
    values = [Summary.Value(tag=_tag_as_logged(logger, tag), simple_value=float(v)) for tag, v in metrics.items()]
    experiment._get_file_writer().add_summary(Summary(value=values), step)  # what add_scalar calls, once
    return True


def _tag_as_logged(logger: object, tag: str) -> str:
    """The tag under which ``logger.log_metrics`` stores ``tag`` (TensorBoardLogger's ``prefix`` option)."""
    prefix = getattr(logger, "_prefix", "")
    return f"{prefix}{getattr(logger, 'LOGGER_JOIN_CHAR', '-')}{tag}" if prefix else tag


# TensorBoard honours one custom-scalars layout per run (the latest): every monitor's charts written to the
# same writer are merged here and the union is written each time.
_LAYOUTS: "weakref.WeakKeyDictionary[object, dict[str, dict[str, list[str]]]]" = weakref.WeakKeyDictionary()


def add_custom_scalars(trainer: "pl.Trainer", charts: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
    """Add to the TensorBoard custom-scalars layout: ``{category: {chart title: [tags on one multi-line chart]}}``."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if not hasattr(experiment, "add_custom_scalars"):
            continue
        merged = _LAYOUTS.setdefault(experiment, {})
        for category, chart in charts.items():
            for title, tags in chart.items():
                known = merged.setdefault(category, {}).setdefault(title, [])
                known.extend(tag for tag in (_tag_as_logged(logger, t) for t in tags) if tag not in known)
        layout = {
            category: {title: ["Multiline", [re.escape(t) + "$" for t in tags]] for title, tags in sorted(c.items())}
            for category, c in merged.items()
        }
        experiment.add_custom_scalars(layout)


def log_image(trainer: "pl.Trainer", tag: str, image: np.ndarray, step: int) -> None:
    """Send an ``[H, W, 3]`` uint8 image to every logger that takes images; others are skipped."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image(tag, image, global_step=step, dataformats="HWC")
        elif hasattr(logger, "log_image"):
            logger.log_image(key=tag, images=[image], step=step)


_RENDER_THREAD: Optional[ThreadPoolExecutor] = None  # one for all monitors: matplotlib is not thread-safe


class BackgroundImages:
    """Renders pictures and sends them to the loggers on a background thread (shared by all monitors, so
    pictures are drawn one at a time), so a training step never waits ~0.3 s for matplotlib. ``wait``
    (called at the end of training) blocks until this monitor's pictures are logged."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, Future]] = []

    def submit(self, trainer: "pl.Trainer", tag: str, render: Callable[[], np.ndarray], step: int) -> None:
        global _RENDER_THREAD
        if _RENDER_THREAD is None:
            _RENDER_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callbacks-images")
        self._report(done_only=True)
        self._pending.append((tag, _RENDER_THREAD.submit(lambda: log_image(trainer, tag, render(), step))))

    def wait(self) -> None:
        self._report(done_only=False)

    def _report(self, done_only: bool) -> None:
        pending = []
        for tag, future in self._pending:
            if done_only and not future.done():
                pending.append((tag, future))
                continue
            error = future.exception()
            if error is not None:
                rank_zero_warn(f"Could not draw {tag!r}: {type(error).__name__}: {error}")
        self._pending = pending

    def __getstate__(self) -> dict:  # callbacks get pickled (ddp_spawn) and deep-copied: futures cannot be
        return {"_pending": []}


def any_logger_takes_images(trainer: "pl.Trainer") -> bool:
    """Checked before rendering, so a CSV-only run never pays for matplotlib."""
    return any(
        hasattr(getattr(logger, "experiment", None), "add_image") or hasattr(logger, "log_image")
        for logger in trainer.loggers
    )
