"""One record per learnable family: every per-family table (custom ops, compiled twins, Triton
kernels, fitters) is derived from these records, so a new family is one file that registers one.

A family's *values* are the tensors its function takes after ``x``, in order (parameters and fixed
buffers alike); ``learnable`` names those that get a gradient. The functions all have the signature
``fn(x, *values, channel_dim=-1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import Tensor

from lit_ortho.errors import unknown_choice

__all__ = ["Family", "Launchers", "FAMILIES", "register_family", "get_family"]


@dataclass(frozen=True)
class Launchers:
    """A family's entry points into compiled kernels: ``forward(x, *values, channel_dim)`` and
    ``backward(grad, x, *values, channel_dim, need_x, need_values) -> (grad_x, *grads of the learnable values)``;
    ``layouts``: where ``backend="auto"`` runs them, the layouts where they beat the compiled twin (the C++ CPU
    kernels' ``"columns"``, ``"shared"``, ``"rows"``, ``"short_rows"``: see
    :func:`lit_ortho.activations.kernels.cpu.layout`)."""

    forward: Callable[..., Tensor]
    backward: Callable[..., tuple]
    layouts: tuple[str, ...] = ("columns",)


@dataclass(frozen=True)
class Family:
    """What lit_ortho needs to know of a learnable activation family.

    Args:
        name: the spec name (``"hermite"``) and the custom-op name.
        value_names: the tensors the functions take after ``x``, in order.
        learnable: the subset of ``value_names`` that gets a gradient (the rest are fixed buffers).
        eager: ``fn(x, *values, channel_dim)``: a custom autograd Function that saves only ``x`` and
            the values for backward.
        compiled: the same function written for ``torch.compile`` (inductor), used while compiling;
            ``None``: ``eager`` traces well as it is.
        triton: dotted path of a module with ``forward(x, *values, channel_dim)`` and
            ``backward(grad, x, *values, channel_dim, need_x, need_values)`` Triton launchers (imported
            on first use); ``None``: no kernels, the family runs eager (and compiled) everywhere.
        cpu: launchers of the C++ CPU kernels (:mod:`lit_ortho.activations.kernels.cpu`) and the layouts where
            ``"auto"`` runs them; ``None``: none, the compiled twin (or eager PyTorch) runs on CPU.
        fit: ``fit(module, x, y, dy, weight) -> {value name: tensor}``: a family-specific fit to a
            target; ``None``: the generic L-BFGS fit of :mod:`lit_ortho.activations.init`.
    """

    name: str
    value_names: tuple[str, ...]
    learnable: tuple[str, ...]
    eager: Callable[..., Tensor]
    compiled: Optional[Callable[..., Tensor]] = None
    triton: Optional[str] = None
    cpu: Optional[Launchers] = None
    fit: Optional[Callable[..., dict]] = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"a family name must be an identifier, got {self.name!r}")
        unknown = [n for n in self.learnable if n not in self.value_names]
        if unknown:
            raise ValueError(f"family {self.name!r}: learnable {unknown} are not among its values {self.value_names}")

    @property
    def learnable_mask(self) -> tuple[bool, ...]:
        """For each value, whether it gets a gradient."""
        return tuple(n in self.learnable for n in self.value_names)

    def traced(self) -> Callable[..., Tensor]:
        """The function to trace under ``torch.compile``."""
        return self.compiled or self.eager


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` to :data:`FAMILIES` (re-registering the same name replaces it: module reloads)."""
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise unknown_choice("activation family", name, sorted(FAMILIES))
    return FAMILIES[name]
