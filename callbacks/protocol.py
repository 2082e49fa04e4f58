"""The protocol by which the monitors recognise a *learnable activation* of any library.

A module implements :class:`SelfRecordingActivation` structurally (no import of this package is needed, and
no base class): it has the attribute and the two methods below. The monitors then

- watch it as an activation by default (``ActivationVarianceMonitor``, ``GradientVarianceMonitor``),
- keep watching it inside a ``torch.compile``'d region, where hooks added after compilation are ignored:
  the module counts for itself while ``record_statistics`` is on and the monitor reads the sums after the
  forward pass, by name (``recorded_statistics``),
- draw its curve F(x) and derivative F'(x) and log its Gaussian gains (``ActivationShapeMonitor``); the
  module is evaluated as is (``torch.func.functional_call`` with its own parameters, gathered when sharded),
  so it must be element-wise.

Minimal implementation::

    class MyActivation(nn.Module):
        def __init__(self):
            super().__init__()
            self.slope = nn.Parameter(torch.ones(()))
            self.record_statistics = False
            self.register_buffer("sums", torch.zeros(6, dtype=torch.float64), persistent=False)

        def forward(self, x):
            y = self.slope * torch.tanh(x)
            if self.record_statistics:  # tensors only, no .item(): stays inside a compiled graph
                xd, yd = x.detach().double(), y.detach().double()
                finite = torch.isfinite(yd)
                yd = torch.where(finite, yd, 0.0)
                self.sums += torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device),
                                          xd.sum(), xd.square().sum(), yd.sum(), yd.square().sum(),
                                          (~finite).sum().double()])
            return y

        def reset_statistics(self):
            self.sums.zero_()

        def recorded_statistics(self):
            return dict(zip(callbacks.protocol.STATISTICS_KEYS, self.sums.unbind()))  # or spell the keys out

Optional attributes, read when present: ``per_channel`` (``None`` when one function serves every element,
else the channel count C of a per-channel activation) and ``channel_dim`` (the input dimension indexing
channels, default -1); the shape monitor then evaluates every channel's curve.

lit_ortho's activations (``lit_ortho.LearnableActivation``) implement this protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = ["HIGHER_STATISTICS_KEYS", "STATISTICS_KEYS", "SelfRecordingActivation", "is_self_recording_activation",
           "read_statistics"]

#: The keys of :meth:`SelfRecordingActivation.recorded_statistics`, each a float64 scalar tensor summed over
#: every forward pass since the last ``reset_statistics``: the number of elements of the input (= of the
#: output), the sum and sum of squares of the input, the sum and sum of squares of the finite output values,
#: and the number of non-finite output values.
STATISTICS_KEYS = ("count", "input_sum", "input_sum_of_squares", "output_sum", "output_sum_of_squares",
                   "output_nonfinite")  # fmt: skip

#: Optional keys, for ``activation_kurtosis`` and ``activation_absmax`` of compiled layers: the sums of the cubes
#: and fourth powers of the finite output values, and the largest |output| (a running maximum, not a sum).
HIGHER_STATISTICS_KEYS = ("output_sum_of_cubes", "output_sum_of_fourth_powers", "output_absmax")


@runtime_checkable
class SelfRecordingActivation(Protocol):
    """An element-wise (learnable) activation module that can record the moments of its own input and output.

    Attributes:
        record_statistics: while ``True``, every forward pass adds the moments of its input and output to
            internal float64 sums (device tensors only: no host sync, nothing that breaks a compiled graph).

    The monitors set ``record_statistics`` only around the forward pass of a logged training step, read the
    sums with :meth:`recorded_statistics` and zero them with :meth:`reset_statistics`.
    """

    record_statistics: bool

    def reset_statistics(self) -> None:
        """Zero the sums."""
        ...

    def recorded_statistics(self) -> Mapping[str, Tensor]:
        """The sums by name: a float64 scalar tensor for each key of :data:`STATISTICS_KEYS` (and, optionally,
        of :data:`HIGHER_STATISTICS_KEYS`)."""
        ...


def is_self_recording_activation(module: Any) -> bool:
    """Whether ``module`` is a ``torch.nn.Module`` implementing :class:`SelfRecordingActivation`."""
    return isinstance(module, nn.Module) and isinstance(module, SelfRecordingActivation)


def read_statistics(module: SelfRecordingActivation) -> dict[str, Tensor]:
    """``module.recorded_statistics()`` checked: every key of :data:`STATISTICS_KEYS` (and those of
    :data:`HIGHER_STATISTICS_KEYS` it has), each a scalar tensor."""
    recorded = module.recorded_statistics()
    missing = [key for key in STATISTICS_KEYS if key not in recorded]
    if missing:
        raise KeyError(
            f"{type(module).__name__}.recorded_statistics() lacks {missing}; a SelfRecordingActivation must "
            f"return the keys {list(STATISTICS_KEYS)}"
        )
    keys = STATISTICS_KEYS + tuple(key for key in HIGHER_STATISTICS_KEYS if key in recorded)
    return {key: torch.as_tensor(recorded[key]).detach().reshape(()) for key in keys}
