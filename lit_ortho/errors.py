"""User errors: one message that names the bad value and the valid choices.

The bottom layer of lit_ortho: it imports nothing of the package, so every other module may use it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = ["UsageError", "did_you_mean", "unknown_choice", "check_choice", "check_positive_int"]


class UsageError(ValueError):
    """Bad input from the user (a value, a path, a spec): the CLI prints its message alone, no traceback."""


def did_you_mean(value: Any, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_choice(what: str, value: Any, choices: Iterable[Any]) -> UsageError:
    """The error for a value outside a fixed set: ``unknown <what> 'x'; valid choices: a, b. Did you mean 'a'?``"""
    choices = [str(c) for c in choices]
    return UsageError(f"unknown {what} {value!r}; valid choices: {', '.join(choices)}.{did_you_mean(value, choices)}")


def check_choice(value: Any, choices: Iterable[Any], what: str) -> Any:
    """``value`` if it is one of ``choices``, else :func:`unknown_choice`."""
    choices = list(choices)
    if value not in choices:
        raise unknown_choice(what, value, choices)
    return value


def check_positive_int(value: Any, what: str, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) in ``[minimum, maximum]``; the error names ``what``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise UsageError(f"{what} must be an integer {bounds}, got {value!r}")
    return value
