"""Hooks that feed layer moments, attached only around the forward pass of a logged training step.

Attach in ``on_train_batch_start``, detach in ``on_before_backward``: so validation, the sanity check
and the re-run of checkpointed blocks during backward are never counted, and the other steps pay nothing.
In a ``torch.compile``'d region module hooks added later are ignored, so there the learnable activations
(:class:`callbacks.protocol.SelfRecordingActivation`, e.g. lit_ortho's) count for themselves
(``record_statistics``), and the sums are collected, by name, after the forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from .protocol import read_statistics
from .selection import WatchedModule
from .statistics import ABSMAX, COUNT, NONFINITE, SUM, SUM3, SUM4, SUMSQ, LayerMoments


def _first_tensor(value: Any) -> tuple[Optional[int], Optional[Tensor]]:
    """(position, tensor) of the first floating-point tensor in a module's args or output."""
    if isinstance(value, Tensor):
        return (None, value) if value.is_floating_point() else (None, None)
    if isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            if isinstance(item, Tensor) and item.is_floating_point():
                return i, item
    if isinstance(value, dict):
        for item in value.values():
            if isinstance(item, Tensor) and item.is_floating_point():
                return None, item
    return None, None


class _Hooks:
    def __init__(self) -> None:
        self.handles: list[RemovableHandle] = []

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class CallOrder:
    """Indices in the order they are first seen during a forward pass: the depth order of layers, which
    registration order often is not (a head defined before the blocks it follows)."""

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self.order: list[int] = []

    def reset(self) -> None:
        self._seen.clear()
        self.order.clear()

    def saw(self, index: int) -> None:
        if index not in self._seen:
            self._seen.add(index)
            self.order.append(index)

    def names(self, names: Sequence[str]) -> list[str]:
        """``names`` (indexed like the calls) in call order; those never called follow in their given order."""
        called = [names[i] for i in self.order]
        return called + [name for i, name in enumerate(names) if i not in self._seen]


class ModuleOrderProbe:
    """Pre-forward hooks on ``modules`` that record the order they run in, for one forward pass."""

    def __init__(self, modules: Sequence[torch.nn.Module]):
        self.modules = list(modules)
        self.calls = CallOrder()
        self._hooks = _Hooks()

    @property
    def attached(self) -> bool:
        return bool(self._hooks.handles)

    def attach(self) -> None:
        if not self._hooks.handles:
            for i, module in enumerate(self.modules):
                self._hooks.handles.append(module.register_forward_pre_hook(partial(self._on_call, i)))

    def detach(self) -> None:
        self._hooks.remove()

    def _on_call(self, index: int, module: torch.nn.Module, args: tuple) -> None:
        self.calls.saw(index)


class ParameterOrder:
    """The order parameters are used in (their owning modules' first call in one forward pass): the depth
    order the pictures show. ``attach`` before a forward, ``finish`` after it; until then (or for modules that
    never ran, or ran compiled and unseen) registration order."""

    def __init__(self, named_params: Sequence[tuple[str, torch.nn.Parameter]], modules: dict[str, torch.nn.Module],
                 root: torch.nn.Module):  # fmt: skip
        self.names = [name for name, _ in named_params]
        owners: dict[str, torch.nn.Module] = {}
        self._owner_of: list[int] = []
        for name in self.names:
            owner = name.rpartition(".")[0]
            self._owner_of.append(list(owners).index(owner) if owner in owners else len(owners))
            owners.setdefault(owner, modules.get(owner, root))
        self._probe = ModuleOrderProbe(list(owners.values()))
        self.order: Optional[list[str]] = None

    def attach(self) -> None:
        if self.order is None:
            self._probe.attach()

    def finish(self) -> None:
        if self.order is None and self._probe.attached:
            self._probe.detach()
            position = {owner: rank for rank, owner in enumerate(self._probe.calls.order)}
            depth = [position.get(owner, len(position)) for owner in self._owner_of]
            self.order = [self.names[i] for i in sorted(range(len(self.names)), key=lambda i: (depth[i], i))]

    def detach(self) -> None:
        self._probe.detach()

    def names_in_order(self) -> list[str]:
        return self.order or list(self.names)


class ActivationProbe:
    """Adds every watched layer's input and output moments (slots ``in``, ``out``) to ``moments``."""

    SLOTS = ("in", "out")

    def __init__(self, layers: Sequence[WatchedModule], moments: LayerMoments, count_nonfinite: bool = False,
                 higher: bool = False):  # fmt: skip
        self.layers, self.moments, self.count_nonfinite = list(layers), moments, count_nonfinite
        self.higher = higher  # also x^3, x^4 sums and max |x| of outputs (kurtosis, absmax)
        self._hooks = _Hooks()
        self._recording: list[int] = []
        self.calls = CallOrder()  # layer indices in the order their forward ran

    @property
    def attached(self) -> bool:
        return bool(self._hooks.handles or self._recording)

    def attach(self) -> None:
        if self.attached:
            return
        for i, layer in enumerate(self.layers):
            if layer.compiled:  # a SelfRecordingActivation (others were rejected when the monitor was set up)
                layer.module.reset_statistics()
                layer.module.record_statistics = True
                self._recording.append(i)
            else:
                self._hooks.handles.append(layer.module.register_forward_pre_hook(partial(self._on_input, i)))
                self._hooks.handles.append(layer.module.register_forward_hook(partial(self._on_output, i)))

    def detach(self) -> None:
        """Remove the hooks and collect the sums the compiled activations kept themselves (then zero those,
        which also keeps DDP's buffer broadcast from copying rank 0's sums onto the other ranks)."""
        self._hooks.remove()
        for i in self._recording:
            module = self.layers[i].module
            module.record_statistics = False
            stats = {key: value.to(self.moments.values) for key, value in read_statistics(module).items()}
            count = stats["count"]
            self.moments.add_raw(i, "in", {COUNT: count, SUM: stats["input_sum"], SUMSQ: stats["input_sum_of_squares"]})
            out = {COUNT: count, SUM: stats["output_sum"], SUMSQ: stats["output_sum_of_squares"],
                   NONFINITE: stats["output_nonfinite"]}  # fmt: skip
            if "output_absmax" in stats:  # optional: kurtosis and outliers of compiled layers
                out.update({SUM3: stats["output_sum_of_cubes"], SUM4: stats["output_sum_of_fourth_powers"],
                            ABSMAX: stats["output_absmax"]})  # fmt: skip
            else:  # unknown: NaN (it survives the pooling maximum), so neither is logged for this layer
                out[ABSMAX] = torch.full_like(count, float("nan"))
            self.moments.add_raw(i, "out", out)
            module.reset_statistics()
        self._recording.clear()

    def _on_input(self, index: int, module: torch.nn.Module, args: tuple) -> None:
        _, x = _first_tensor(args)
        if x is not None:  # before the forward: an in-place activation overwrites its input
            self.moments.add(index, "in", x)

    def _on_output(self, index: int, module: torch.nn.Module, args: tuple, output: Any) -> None:
        _, y = _first_tensor(output)
        if y is not None:
            self.moments.add(index, "out", y, count_nonfinite=self.count_nonfinite, higher=self.higher)
        self.calls.saw(index)


class _GradientTap(torch.autograd.Function):
    """Identity whose backward hands the incoming gradient to a callback: the gradient flowing into the
    module's input through this module only (a tensor hook on the input would add its other uses)."""

    @staticmethod
    def forward(ctx, x: Tensor, callback: Callable[[Tensor], None], copy: bool) -> Tensor:
        ctx.callback = callback
        # An in-place module (ReLU(inplace=True)) may not modify a custom Function's view: give it a copy.
        return x.clone() if copy else x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        ctx.callback(grad)
        return grad, None, None


class GradientProbe:
    """Adds the moments of the gradient w.r.t. each watched layer's input (``grad_in``, the part flowing
    through the layer) and output (``grad_out``) to ``moments`` during the backward of a logged step.

    The forward hooks only plant tensor-level taps; they can be detached before backward, and the taps
    fire once even when the block is checkpointed and re-run.
    """

    SLOTS = ("grad_in", "grad_out")

    def __init__(self, layers: Sequence[WatchedModule], moments: LayerMoments):
        self.layers, self.moments = list(layers), moments
        self._hooks = _Hooks()
        self.calls = CallOrder()

    @property
    def attached(self) -> bool:
        return bool(self._hooks.handles)

    def attach(self) -> None:
        if self.attached:
            return
        for i, layer in enumerate(self.layers):
            self._hooks.handles.append(layer.module.register_forward_pre_hook(partial(self._on_input, i)))
            self._hooks.handles.append(layer.module.register_forward_hook(partial(self._on_output, i)))

    def detach(self) -> None:
        self._hooks.remove()

    def _on_input(self, index: int, module: torch.nn.Module, args: tuple) -> Optional[tuple]:
        position, x = _first_tensor(args)
        if x is None or position is None or not x.requires_grad:
            return None
        copy = bool(getattr(module, "inplace", False))
        tapped = _GradientTap.apply(x, partial(self.moments.add, index, "grad_in"), copy)
        return args[:position] + (tapped,) + args[position + 1 :]

    def _on_output(self, index: int, module: torch.nn.Module, args: tuple, output: Any) -> None:
        _, y = _first_tensor(output)
        if y is not None and y.requires_grad:
            y.register_hook(partial(self._on_output_grad, index))
        self.calls.saw(index)

    def _on_output_grad(self, index: int, grad: Tensor) -> None:
        self.moments.add(index, "grad_out", grad)
