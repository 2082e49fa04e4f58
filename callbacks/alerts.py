"""Bounds on a per-layer variance: warn once, naming the first offending layer in forward order, maybe stop."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn


class VarianceAlert:
    """Checks each logged variance against ``[low, high]`` and for non-finite values.

    Each kind of problem (``non-finite``, ``below low``, ``above high``) is warned about once per series,
    so a diverging run is not drowned in repeats. ``stop=True`` also sets ``trainer.should_stop``,
    like ``EarlyStopping(check_finite=True)``: the values checked are already reduced over ranks, so
    every rank takes the same decision without another collective.
    """

    def __init__(self, low: Optional[float] = None, high: Optional[float] = None, check_finite: bool = True,
                 stop: bool = False):  # fmt: skip
        for name, bound in (("low", low), ("high", high)):
            if bound is not None and not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound >= 0):
                raise ValueError(f"{name}={bound!r}: a variance bound must be a finite number >= 0 or None")
        if low is not None and high is not None and low > high:
            raise ValueError(f"low={low} is greater than high={high}: the bounds must satisfy low <= high")
        self.low, self.high, self.check_finite, self.stop = low, high, check_finite, stop
        self.warned: set[str] = set()  # "<series>:<kind>" already reported

    @property
    def enabled(self) -> bool:
        return self.check_finite or self.low is not None or self.high is not None

    def _problem(self, value: float) -> Optional[str]:
        if not math.isfinite(value):
            return "non-finite" if self.check_finite else None
        if self.low is not None and value < self.low:
            return f"below low={self.low:g}"
        if self.high is not None and value > self.high:
            return f"above high={self.high:g}"
        return None

    def check(self, trainer: "pl.Trainer", series: str, values: Mapping[str, float], forward_order: Sequence[str],
              step: int) -> None:  # fmt: skip
        """``values`` maps layer name -> variance; ``forward_order`` lists those layers in forward order."""
        if not self.enabled:
            return
        first: dict[str, tuple[str, float]] = {}  # problem kind -> first layer in forward order
        offenders = 0
        for name in forward_order:
            problem = self._problem(values[name])
            if problem is not None:
                offenders += 1
                first.setdefault(problem, (name, values[name]))
        for problem, (name, value) in first.items():
            key = f"{series}:{problem.split(' ')[0]}"
            if key in self.warned:
                continue
            self.warned.add(key)
            rank_zero_warn(
                f"{series}: layer '{name}' is {problem} ({value:.4g}) at step {step}; it is the first such layer in "
                f"forward order ({offenders} of {len(forward_order)} layers out of bounds). Warned once.",
                category=RuntimeWarning,
            )
        if first and self.stop and not trainer.should_stop:
            trainer.should_stop = True
            rank_zero_info(f"{series}: stopping training at step {step} because a layer's variance is out of bounds.")

    def state_dict(self) -> dict[str, Any]:
        return {"warned": sorted(self.warned)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.warned = set(state.get("warned", ()))
