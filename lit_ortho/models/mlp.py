"""Linear -> activation -> Linear that keeps only the activation's input for backward.

A plain MLP saves three tensors for backward: the first Linear's input, the activation's input (for the
activation's own backward) and the activation's output (for the second Linear's weight gradient). The
output is cheap to recompute from the input: :class:`LinearActivationLinear` stores a recipe instead of
it and recomputes it when backward asks, as fused GeGLU kernels do. With GPT-2's 4x hidden width that
drops a quarter of what a block keeps; the result is bitwise the same (the recompute is the same
deterministic forward). Under ``torch.compile`` the partitioner makes this choice itself, so the recipe is
used in eager mode only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LinearActivationLinear", "linear_activation_linear"]


def linear_activation_linear(x: Tensor, fc: nn.Module, act: nn.Module, proj: nn.Module, recompute: bool = True) -> Tensor:
    """``proj(act(fc(x)))``, saving ``act``'s output for backward only as a recipe (``recompute=True``)."""
    h = fc(x)
    a = act(h)
    if not recompute or torch.compiler.is_compiling() or not torch.is_grad_enabled() or not a.requires_grad:
        return proj(a)

    def pack(t: Tensor) -> Any:
        if t is a or (t.data_ptr() == a.data_ptr() and t.shape == a.shape and t.dtype == a.dtype and t.stride() == a.stride()):
            return _Recompute(h.detach(), act, t.dtype)
        return t

    def unpack(saved: Any) -> Tensor:
        return saved() if isinstance(saved, _Recompute) else saved

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        return proj(a)


class _Recompute:
    """The activation's output, recomputed on demand from its (already saved) input."""

    __slots__ = ("h", "act", "dtype")

    def __init__(self, h: Tensor, act: nn.Module, dtype: torch.dtype):
        self.h, self.act, self.dtype = h, act, dtype

    def __call__(self) -> Tensor:
        with torch.no_grad():
            return self.act(self.h).to(self.dtype)


class LinearActivationLinear(nn.Module):
    """``fc -> act -> proj`` (plus dropout) whose backward recomputes the activation's output.

    Drop-in for an MLP whose submodules keep their names (``c_fc``/``act``/``c_proj`` for GPT-2 by default), so
    state dicts are unchanged.
    """

    def __init__(self, fc: nn.Module, act: nn.Module, proj: nn.Module, dropout: float = 0.0, recompute: bool = True,
                 names: tuple[str, str, str] = ("c_fc", "act", "c_proj")):  # fmt: skip
        super().__init__()
        self._names = names
        for name, module in zip(names, (fc, act, proj)):
            self.add_module(name, module)
        self.dropout = nn.Dropout(dropout)
        self.recompute = recompute

    def forward(self, x: Tensor) -> Tensor:
        fc, act, proj = (getattr(self, n) for n in self._names)
        return self.dropout(linear_activation_linear(x, fc, act, proj, self.recompute))
