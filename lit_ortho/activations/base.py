"""The base class of the learnable activations: options, float32 coefficients, init and statistics.

A family subclasses :class:`LearnableActivation` next to its math (``hermite.py``, ...), names its
:class:`~lit_ortho.activations.family.Family` record in ``family``, creates its coefficient tensors
and gives its ``paper`` init; the rest (validation, backends, the ``unit`` init, fitting, the spec
round trip, the monitors' statistics) is shared here.

Numerics: coefficients are float32 parameters; the activation computes in float32 (float64 when the
input is float64, for ``gradcheck``) whatever the autocast dtype, and returns the input's dtype.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from lit_ortho.activations.backends import BACKENDS, run
from lit_ortho.activations.elementwise import power_sums
from lit_ortho.activations.family import FAMILIES, Family, get_family
from lit_ortho.activations.init import fit_activation, init_unit_gain
from lit_ortho.activations.spec import parse_activation_spec
from lit_ortho.errors import UsageError, check_choice, check_positive_int

__all__ = ["LearnableActivation", "INITS", "MIN_DEGREE", "MAX_DEGREE"]

# Named initialisations; any other ``init`` value is read as the spec of a target activation to fit.
INITS = ("paper", "unit", "torchortho")
MIN_DEGREE, MAX_DEGREE = 1, 32


class LearnableActivation(nn.Module):
    """Base of the learnable families: shared options, float32 coefficients, init and statistics.

    Args:
        degree: the family's degree n (1 to 32).
        init: ``"paper"`` (the paper's variance-preserving init, the reference library's slips fixed),
            ``"unit"`` (forward and backward gain exactly 1 under x ~ N(0, 1)), ``"torchortho"``
            (the reference library 0.1.2's values), or the spec of an activation to fit (``"gelu"``).
        per_channel: ``None`` for one set of coefficients shared by every element (the paper), or a
            channel count C to give each channel its own (like ``nn.PReLU(num_parameters=C)``).
        channel_dim: the input dimension that indexes channels when ``per_channel`` is set
            (-1 for ``[..., C]`` MLP/NHWC inputs, 1 for NCHW).
        backend: ``"auto"`` (Triton kernels for CUDA inputs of dtype float32/bfloat16/float16 when
            triton is installed, eager otherwise), ``"eager"`` (PyTorch ops; compile-friendly under
            ``torch.compile``) or ``"triton"`` (always the kernels; raises where they cannot run).
            See :mod:`lit_ortho.activations.backends`.
    """

    family: ClassVar[str] = ""

    def __init__(
        self,
        degree: int,
        init: str = "paper",
        per_channel: Optional[int] = None,
        channel_dim: int = -1,
        backend: str = "auto",
    ):
        super().__init__()
        get_family(self.family)  # a subclass must name a registered family
        self.degree = check_positive_int(degree, f"{self.family}: degree", MIN_DEGREE, MAX_DEGREE)
        if per_channel is not None and (isinstance(per_channel, bool) or not isinstance(per_channel, int) or per_channel < 1):
            raise UsageError(f"{self.family}: per_channel must be None or a positive int, got {per_channel!r}")
        self.per_channel = per_channel
        if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
            raise UsageError(f"{self.family}: channel_dim must be an integer dimension (-1 for [..., C], 1 for NCHW), got {channel_dim!r}")
        self.channel_dim = channel_dim
        self.backend = check_choice(backend, BACKENDS, f"{self.family} backend")
        self.init = self._check_init(init)
        self.record_statistics = False
        self.register_buffer("statistics", torch.zeros(len(self.STATISTICS_KEYS), dtype=torch.float64), persistent=False)
        self._create_parameters()
        self.reset_parameters()

    def _check_init(self, init) -> str:
        """``init`` is a named initialisation or the spec of an activation to fit."""
        named = ", ".join(INITS)
        if not isinstance(init, str):
            raise UsageError(f"{self.family}: init must be one of {named} or an activation spec to fit (gelu, ...); got {init!r}")
        if init not in INITS:
            try:
                parse_activation_spec(init)
            except ValueError as err:
                raise UsageError(
                    f"{self.family}: unknown init {init!r}; valid choices: {named}, or the spec of an activation to "
                    f"fit, e.g. gelu, silu, leaky_relu(negative_slope=0.1) ({err})"
                ) from None
        return init

    # ---- parameters -------------------------------------------------------------------------------
    def _coef(self, size: int, fill: float = 0.0) -> nn.Parameter:
        shape = (size,) if self.per_channel is None else (self.per_channel, size)
        return nn.Parameter(torch.full(shape, float(fill), dtype=torch.float32))

    def _create_parameters(self) -> None:
        raise NotImplementedError

    def set_shared(self, **values: "Tensor | list[float]") -> None:
        """Copy per-layer values into the named parameters/buffers (broadcast over channels)."""
        with torch.no_grad():
            for name, value in values.items():
                target = getattr(self, name)
                target.copy_(torch.as_tensor(value, dtype=target.dtype).expand_as(target))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re)initialise according to ``self.init``."""
        if self.init == "paper":
            self._init_paper()
        elif self.init == "torchortho":
            self._init_torchortho()
        elif self.init == "unit":
            init_unit_gain(self)
        else:
            fit_activation(self, self.init)

    def _init_paper(self) -> None:
        raise NotImplementedError

    def _init_torchortho(self) -> None:
        self._init_paper()

    def _init_unit_start(self) -> None:
        """The shape the unit-gain init rescales; the paper's unless a family needs better."""
        self._init_paper()

    def scale_output(self, alpha: float, beta: float) -> None:
        """Make this F into alpha * F + beta by changing coefficients (used by the unit-gain init)."""
        raise NotImplementedError

    # ---- forward -----------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        y = self._activate(x)
        if self.record_statistics:
            self._accumulate_statistics(x, y)
        return y

    @property
    def record(self) -> Family:
        """The family's record: its functions and value names."""
        return FAMILIES[self.family]

    @property
    def function(self):
        """The family's ``F(x, *values, channel_dim=-1)`` for explicit value tensors (eager autograd Function)."""
        return self.record.eager

    @property
    def value_names(self) -> tuple[str, ...]:
        """The tensors (parameters and fixed buffers) the family's function takes after ``x``, in order."""
        return self.record.value_names

    def _activate(self, x: Tensor) -> Tensor:
        self._check_channels(x)
        # float32 coefficients whatever the module's dtype, except a float64 module (gradcheck): as it is
        values = tuple(v if v.dtype == torch.float64 else v.float() for v in (getattr(self, n) for n in self.value_names))
        return run(self.record, self.backend, x, values, self.channel_dim)

    def shared_values(self) -> dict[str, Tensor]:
        """Channel 0's coefficients in float64: what the init and fitting routines work on."""
        values = {}
        for name in self.value_names:
            t = getattr(self, name).detach().double()
            values[name] = (t[0] if self.per_channel is not None and t.dim() == 2 else t).clone()
        return values

    def _accumulate_statistics(self, x: Tensor, y: Tensor) -> None:
        """Add the input's and output's power sums (and keep the largest |output|): compile-friendly, no
        host sync."""
        finite = (y * 0) == 0  # torch.isfinite, in 2 vector ops instead of 3 passes
        (x_sum, x_sumsq), _ = power_sums(x.detach(), 2)
        y_sums, _ = power_sums(torch.where(finite, y.detach(), torch.zeros_like(y)), 4)
        absmax = y.detach().abs().amax().double()  # inf or NaN where the output is
        count = torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)
        sums = torch.stack([count, x_sum, x_sumsq, y_sums[0], y_sums[1], (~finite).sum().double(), *y_sums[2:]])
        self.statistics[:-1] += sums
        self.statistics[-1] = torch.maximum(self.statistics[-1], absmax)

    def reset_statistics(self) -> None:
        self.statistics.zero_()

    # The monitors' protocol (``callbacks``): statistics by name, never by position.
    STATISTICS_KEYS = ("count", "input_sum", "input_sum_of_squares", "output_sum", "output_sum_of_squares", "output_nonfinite",
                       "output_sum_of_cubes", "output_sum_of_fourth_powers", "output_absmax")

    def recorded_statistics(self) -> dict[str, Tensor]:
        """The sums kept while ``record_statistics`` is on, by name (float64 scalars)."""
        return dict(zip(self.STATISTICS_KEYS, self.statistics.unbind()))

    # ---- description ----------------------------------------------------------------------------------
    def config(self) -> dict:
        """The activation spec that rebuilds this module (``build_activation(m.config())``)."""
        cfg = {"name": self.family, "degree": self.degree, "init": self.init}
        if self.per_channel is not None:
            cfg.update(per_channel=self.per_channel, channel_dim=self.channel_dim)
        if self.backend != "auto":
            cfg["backend"] = self.backend
        return cfg

    def spec(self) -> str:
        """The config as a one-line spec string, e.g. ``hermite(degree=3, init=paper)``."""
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{self.family}({args})"

    def extra_repr(self) -> str:
        return self.spec()[len(self.family) + 1 : -1]

    def _check_channels(self, x: Tensor) -> None:
        if self.per_channel is None:
            return
        if x.dim() == 0:
            raise UsageError(f"{self.family}: per_channel={self.per_channel} needs an input with a channel axis, got a 0-D tensor")
        if not -x.dim() <= self.channel_dim < x.dim():
            raise UsageError(
                f"{self.family}: channel_dim={self.channel_dim} is not a dimension of the {x.dim()}-D input "
                f"(shape {tuple(x.shape)}); set channel_dim to the axis with per_channel={self.per_channel} channels "
                f"({-x.dim()}..{x.dim() - 1})"
            )
        if x.shape[self.channel_dim] != self.per_channel:
            raise UsageError(
                f"{self.family}: per_channel={self.per_channel} but input dim {self.channel_dim} has size "
                f"{x.shape[self.channel_dim]} (input shape {tuple(x.shape)}); set channel_dim to the channel axis"
            )
