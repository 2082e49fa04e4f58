"""Learnable activations: Hermite, Fourier, Tropical and Tropical rational.

Every family is an element-wise ``nn.Module`` and a drop-in replacement for ``nn.GELU``. The eager
path is a custom ``autograd.Function`` per family that saves only the input for backward (GELU's own
footprint) and recomputes the basis there, so no ``[..., degree + 1]`` intermediate is ever stored.

Numerics: coefficients are float32 parameters; the activation computes in float32 (float64 when the
input is float64, for ``gradcheck``) whatever the autocast dtype, and returns the input's dtype.
"""

from __future__ import annotations

import math
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from lit_ortho import kernels
from lit_ortho.kernels.common import column, compute_dtype, inverse_factorials, reduce_channels

__all__ = [
    "LearnableActivation",
    "HermiteActivation",
    "FourierActivation",
    "TropicalActivation",
    "TropicalRationalActivation",
    "BACKENDS",
    "INITS",
]

# "auto": Triton kernels on CUDA inputs, eager otherwise. See lit_ortho.kernels for the rules.
BACKENDS = ("auto", "eager", "triton")
# Named initialisations; any other ``init`` value is read as the spec of a target activation to fit.
INITS = ("paper", "unit", "torchortho")
MAX_DEGREE = 32
FOURIER_C = 1.0 / math.sqrt(1.0 + sum(1.0 / math.factorial(k) ** 2 for k in range(1, 40)))  # 1/sqrt(I0(2))


class _Columns:
    """Indexes column ``k`` of an ``[K]`` or ``[C, K]`` coefficient tensor, viewed to broadcast with ``x``."""

    def __init__(self, coef: Tensor, x: Tensor, channel_dim: int):
        self.coef, self.x, self.channel_dim = coef, x, channel_dim

    def __getitem__(self, k: int) -> Tensor:
        return column(self.coef, k, self.x, self.channel_dim)


def _stack_grads(grads: list[Tensor]) -> Tensor:
    return torch.stack(grads, dim=-1)


# --------------------------------------------------------------------------------------------------
# Hermite: F(x) = sum_k a_k He_k(x)/k!. The recurrence He_{k+1} = x He_k - k He_{k-1} needs no division
# (the 1/k! goes into the tiny coefficient tensor), and He_k' = k He_{k-1}, so dF/dx = sum a_k He_{k-1}/(k-1)!.
# --------------------------------------------------------------------------------------------------
def _hermite_basis(x: Tensor, n: int):
    """Yield He_2(x) .. He_n(x) by He_{k+1} = x He_k - k He_{k-1}, two passes each, two held at a time.

    Above degree 8 a float32 He_k can overflow for |x| ~ 1e3 and inf - inf would give NaN, so there
    it saturates at +-1e30 instead.
    """
    limit = (1e30 if x.dtype != torch.float64 else 1e300) if n > 8 else None
    he_prev, he = None, x  # He_0 = 1 stays implicit
    for k in range(1, n):
        he_next = x * he
        if he_prev is None:
            he_next.sub_(1.0)
        else:
            he_next.sub_(he_prev, alpha=k)
        if limit is not None:
            he_next.clamp_(-limit, limit)
        yield he_next
        he_prev, he = he, he_next


def _as_tensor(values: list[float], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _dot(g: Tensor, h: Tensor, per_channel: bool, channel_dim: int) -> Tensor:
    """sum(g * h) overall or per channel; one fused pass in the shared case."""
    if not per_channel:
        return torch.dot(g.reshape(-1), h.reshape(-1)) if h.shape == g.shape else (g * h).sum()
    return reduce_channels(g * h, per_channel, channel_dim)


def hermite_forward(x: Tensor, coefficients: Tensor, channel_dim: int = -1) -> Tensor:
    """Evaluate sum_k a_k He_k(x)/k! by the three-term recurrence (x in its compute dtype)."""
    n = coefficients.shape[-1] - 1  # >= 1
    a = _Columns(coefficients * _as_tensor(inverse_factorials(n), coefficients), x, channel_dim)
    y = x * a[1]
    y.add_(a[0])
    for k, he in enumerate(_hermite_basis(x, n), start=2):
        y.addcmul_(he, a[k])
    return y


class _HermiteFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coefficients: Tensor, channel_dim: int) -> Tensor:
        ctx.save_for_backward(x, coefficients)
        ctx.channel_dim = channel_dim
        dtype = compute_dtype(x)
        return hermite_forward(x.to(dtype), coefficients.to(dtype), channel_dim).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, coefficients = ctx.saved_tensors
        dtype = compute_dtype(x)
        xf, g = x.to(dtype), grad_out.to(dtype)
        cd, per_channel = ctx.channel_dim, coefficients.dim() == 2
        n = coefficients.shape[-1] - 1
        inv_fact = _as_tensor(inverse_factorials(n), xf)
        # dF/da_k = He_k/k!;  dF/dx = sum_{k>=1} a_k He_{k-1}/(k-1)!.
        slope = _Columns(coefficients.to(dtype)[..., 1:] * inv_fact[:-1], xf, cd)
        raw = [reduce_channels(g, per_channel, cd), _dot(g, xf, per_channel, cd)]  # sum g He_k, k = 0, 1
        dydx = xf * slope[1] if n >= 2 else torch.zeros_like(xf)
        dydx.add_(slope[0])
        for k, he in enumerate(_hermite_basis(xf, n), start=2):
            raw.append(_dot(g, he, per_channel, cd))
            if k < n:
                dydx.addcmul_(he, slope[k])
        grad_x = (g * dydx).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_a = (_stack_grads(raw) * inv_fact).to(coefficients.dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_a, None


# --------------------------------------------------------------------------------------------------
# Fourier: F(x) = a_0 + sum_k c_k cos(w_k x - phi_k) / k!
# --------------------------------------------------------------------------------------------------
class _FourierFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, amplitudes, phases, frequencies, channel_dim: int):
        ctx.save_for_backward(x, bias, amplitudes, phases, frequencies)
        ctx.channel_dim = channel_dim
        dtype = compute_dtype(x)
        xf = x.to(dtype)
        c = _Columns(amplitudes.to(dtype), xf, channel_dim)
        phi = _Columns(phases.to(dtype), xf, channel_dim)
        w = _Columns(frequencies.to(dtype), xf, channel_dim)
        y = torch.zeros_like(xf) + _Columns(bias.to(dtype), xf, channel_dim)[0]
        for k, inv_fact in enumerate(inverse_factorials(amplitudes.shape[-1])[1:]):
            y = y + (c[k] * inv_fact) * torch.cos(w[k] * xf - phi[k])
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, bias, amplitudes, phases, frequencies = ctx.saved_tensors
        dtype = compute_dtype(x)
        xf, g = x.to(dtype), grad_out.to(dtype)
        cd, per_channel = ctx.channel_dim, bias.dim() == 2
        c = _Columns(amplitudes.to(dtype), xf, cd)
        phi = _Columns(phases.to(dtype), xf, cd)
        w = _Columns(frequencies.to(dtype), xf, cd)
        dydx = torch.zeros_like(xf)
        grad_c, grad_phi, grad_w = [], [], []
        gx = g * xf
        for k, inv_fact in enumerate(inverse_factorials(amplitudes.shape[-1])[1:]):
            z = w[k] * xf - phi[k]
            cos_z, sin_z = torch.cos(z), torch.sin(z)
            ck = c[k] * inv_fact
            dydx = dydx - (ck * w[k]) * sin_z
            grad_c.append(reduce_channels(g * cos_z, per_channel, cd) * inv_fact)
            # dF/dphi = ck sin z,  dF/dw = -ck x sin z: reduce first, scale by the coefficient after.
            s_g = reduce_channels(g * sin_z, per_channel, cd)
            s_gx = reduce_channels(gx * sin_z, per_channel, cd)
            grad_phi.append(s_g * amplitudes[..., k].to(dtype) * inv_fact)
            grad_w.append(-s_gx * amplitudes[..., k].to(dtype) * inv_fact)
        grad_x = (g * dydx).to(x.dtype)
        grad_bias = reduce_channels(g, per_channel, cd).reshape(bias.shape).to(bias.dtype)
        return (
            grad_x,
            grad_bias,
            _stack_grads(grad_c).to(amplitudes.dtype),
            _stack_grads(grad_phi).to(phases.dtype),
            _stack_grads(grad_w).to(frequencies.dtype),
            None,
        )


# --------------------------------------------------------------------------------------------------
# Tropical: F(x) = s * max_k (k x + c_k); tropical rational: max_k(p_k x + c_k) - max_k(q_k x + d_k)
# --------------------------------------------------------------------------------------------------
@torch.no_grad()  # values flow through the autograd Functions; argmax has no gradient
def _max_plus(x: Tensor, slopes, intercepts: _Columns, K: int, with_argmax: bool = False):
    """Running max over the K lines without a [..., K] tensor; the argmax (uint8) only when asked."""
    best = slopes[0] * x + intercepts[0]
    arg = torch.zeros(x.shape, dtype=torch.uint8, device=x.device) if with_argmax else None
    cand = torch.empty_like(best)
    for k in range(1, K):
        torch.add(slopes[k] * x, intercepts[k], out=cand)
        if with_argmax:
            arg.masked_fill_(cand > best, k)
        torch.maximum(best, cand, out=best)
    return best, arg


def _scatter_by_argmax(weights: Tensor, arg: Tensor, K: int, per_channel: int, channel_dim: int) -> Tensor:
    """Sum ``weights`` grouped by argmax piece (and channel): a bincount, not K masked reductions."""
    w = weights.reshape(-1)
    if not per_channel:
        return torch.bincount(arg.reshape(-1).long(), weights=w, minlength=K).to(weights.dtype)
    shape = [1] * arg.dim()
    shape[channel_dim] = per_channel
    channel = torch.arange(per_channel, device=arg.device).reshape(shape).expand(arg.shape)
    index = channel.reshape(-1) * K + arg.reshape(-1).long()
    return torch.bincount(index, weights=w, minlength=per_channel * K).reshape(per_channel, K).to(weights.dtype)


class _FixedSlopes:
    def __getitem__(self, k: int) -> float:
        return float(k)


class _TropicalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, intercepts, scale, channel_dim: int):
        ctx.save_for_backward(x, intercepts, scale)
        ctx.channel_dim = channel_dim
        dtype = compute_dtype(x)
        xf = x.to(dtype)
        c = _Columns(intercepts.to(dtype), xf, channel_dim)
        best, _ = _max_plus(xf, _FixedSlopes(), c, intercepts.shape[-1])
        return (best * scale.to(dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, intercepts, scale = ctx.saved_tensors
        dtype = compute_dtype(x)
        xf, g = x.to(dtype), grad_out.to(dtype) * scale.to(dtype)
        K = intercepts.shape[-1]
        c = _Columns(intercepts.to(dtype), xf, ctx.channel_dim)
        _, arg = _max_plus(xf, _FixedSlopes(), c, K, with_argmax=True)
        grad_x = (g * arg.to(dtype)).to(x.dtype)
        per_channel = intercepts.shape[0] if intercepts.dim() == 2 else 0
        grad_c = _scatter_by_argmax(g, arg, K, per_channel, ctx.channel_dim)
        return grad_x, grad_c.to(intercepts.dtype), None, None


class _TropicalRationalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim: int):
        ctx.save_for_backward(x, num_slopes, num_intercepts, den_slopes, den_intercepts)
        ctx.channel_dim = channel_dim
        dtype = compute_dtype(x)
        xf = x.to(dtype)
        col = lambda t: _Columns(t.to(dtype), xf, channel_dim)  # noqa: E731
        K = num_slopes.shape[-1]
        num, _ = _max_plus(xf, col(num_slopes), col(num_intercepts), K)
        den, _ = _max_plus(xf, col(den_slopes), col(den_intercepts), K)
        return (num - den).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, p, c, q, d = ctx.saved_tensors
        dtype = compute_dtype(x)
        cd = ctx.channel_dim
        xf, g = x.to(dtype), grad_out.to(dtype)
        col = lambda t: _Columns(t.to(dtype), xf, cd)  # noqa: E731
        K = p.shape[-1]
        per_channel = p.shape[0] if p.dim() == 2 else 0
        _, arg_num = _max_plus(xf, col(p), col(c), K, with_argmax=True)
        _, arg_den = _max_plus(xf, col(q), col(d), K, with_argmax=True)
        gx = g * xf
        grad_p = _scatter_by_argmax(gx, arg_num, K, per_channel, cd)
        grad_c = _scatter_by_argmax(g, arg_num, K, per_channel, cd)
        grad_q = -_scatter_by_argmax(gx, arg_den, K, per_channel, cd)
        grad_d = -_scatter_by_argmax(g, arg_den, K, per_channel, cd)
        slope_num = _gather_columns(p.to(dtype), arg_num, cd)
        slope_den = _gather_columns(q.to(dtype), arg_den, cd)
        grad_x = (g * (slope_num - slope_den)).to(x.dtype)
        return grad_x, grad_p.to(p.dtype), grad_c.to(c.dtype), grad_q.to(q.dtype), grad_d.to(d.dtype), None


def _gather_columns(coef: Tensor, arg: Tensor, channel_dim: int) -> Tensor:
    """coef[..., arg] element-wise: the slope of the winning piece at every element."""
    if coef.dim() == 1:
        return coef[arg.long()]
    C, K = coef.shape
    shape = [1] * arg.dim()
    shape[channel_dim] = C
    channel = torch.arange(C, device=arg.device).reshape(shape)
    return coef.reshape(-1)[channel * K + arg.long()]


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------
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
            See :mod:`lit_ortho.kernels`.
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
        from lit_ortho.spec import check_choice, check_degree  # one place for argument validation

        self.degree = check_degree(degree, self.family)
        if per_channel is not None and (isinstance(per_channel, bool) or not isinstance(per_channel, int) or per_channel < 1):
            raise ValueError(f"{self.family}: per_channel must be None or a positive int, got {per_channel!r}")
        self.per_channel = per_channel
        self.channel_dim = int(channel_dim)
        self.backend = check_choice(backend, BACKENDS, f"{self.family} backend")
        if not isinstance(init, str):
            raise ValueError(f"{self.family}: init must be a string, one of {INITS} or an activation spec such as 'gelu'; got {init!r}")
        self.init = init
        self.record_statistics = False
        self.register_buffer("statistics", torch.zeros(6, dtype=torch.float64), persistent=False)
        self._create_parameters()
        self.reset_parameters()

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
        from lit_ortho import fitting

        if self.init == "paper":
            self._init_paper()
        elif self.init == "torchortho":
            self._init_torchortho()
        elif self.init == "unit":
            fitting.init_unit_gain(self)
        else:
            fitting.fit_activation(self, self.init)

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

    # Names of the tensors (parameters, then buffers) the family's function takes, in order.
    value_names: ClassVar[tuple[str, ...]] = ()

    @staticmethod
    def function(x: Tensor, *values: Tensor, channel_dim: int = -1) -> Tensor:
        """The family's F(x) for explicit coefficient tensors (the custom autograd Function)."""
        raise NotImplementedError

    def _activate(self, x: Tensor) -> Tensor:
        self._check_channels(x)
        values = tuple(getattr(self, n).float() for n in self.value_names)
        return kernels.dispatch(self.family, self.backend, x, values, self.channel_dim, self.function)

    def shared_values(self) -> dict[str, Tensor]:
        """Channel 0's coefficients in float64: what the init and fitting routines work on."""
        values = {}
        for name in self.value_names:
            t = getattr(self, name).detach().double()
            values[name] = (t[0] if self.per_channel is not None and t.dim() == 2 else t).clone()
        return values

    def _accumulate_statistics(self, x: Tensor, y: Tensor) -> None:
        """Add (count, sum, sum of squares) of input and output: compile-friendly, no host sync."""
        xd, yd = x.detach().double(), y.detach().double()
        finite = torch.isfinite(yd)
        yd = torch.where(finite, yd, torch.zeros_like(yd))
        self.statistics += torch.stack(
            [
                torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device),
                xd.sum(),
                (xd * xd).sum(),
                yd.sum(),
                (yd * yd).sum(),
                (~finite).sum().double(),
            ]
        )

    def reset_statistics(self) -> None:
        self.statistics.zero_()

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
        if self.per_channel is not None and x.shape[self.channel_dim] != self.per_channel:
            raise ValueError(
                f"{self.family}: per_channel={self.per_channel} but input dim {self.channel_dim} has size "
                f"{x.shape[self.channel_dim]} (input shape {tuple(x.shape)}); set channel_dim to the channel axis"
            )


class HermiteActivation(LearnableActivation):
    """F(x) = sum_{k=0..n} a_k He_k(x)/k!: the paper's polynomial activation (probabilists' Hermite)."""

    family = "hermite"

    def _create_parameters(self) -> None:
        self.coefficients = self._coef(self.degree + 1)

    def _init_paper(self) -> None:
        n = self.degree
        a = torch.full((n + 1,), math.exp(-0.5))
        a[0] = math.exp(-0.5) * math.sqrt(1.0 - 1.0 / math.factorial(n))
        self.set_shared(coefficients=a)

    def scale_output(self, alpha: float, beta: float) -> None:
        with torch.no_grad():
            self.coefficients.mul_(alpha)
            self.coefficients[..., 0] += beta

    value_names = ("coefficients",)

    @staticmethod
    def function(x, coefficients, channel_dim=-1):
        return _HermiteFunction.apply(x, coefficients, channel_dim)


class FourierActivation(LearnableActivation):
    """F(x) = a_0 + sum_{k=1..n} c_k cos(w_k x - phi_k)/k!, with learnable a_0, c, phi and w."""

    family = "fourier"

    def _create_parameters(self) -> None:
        n = self.degree
        self.bias = self._coef(1)
        self.amplitudes = self._coef(n)
        self.phases = self._coef(n)
        self.frequencies = self._coef(n)

    def _init_paper(self) -> None:
        # cos(kx - pi/4) carries half the energy of the sin-cos pair the theory assumes: amplitude c*sqrt(2).
        self._init_phase_form(amplitude=FOURIER_C * math.sqrt(2.0))

    def _init_torchortho(self) -> None:
        self._init_phase_form(amplitude=FOURIER_C)

    def _init_phase_form(self, amplitude: float) -> None:
        n = self.degree
        self.set_shared(
            bias=[FOURIER_C * math.sqrt(1.0 - 1.0 / math.factorial(n) ** 2)],
            amplitudes=torch.full((n,), amplitude),
            phases=torch.full((n,), math.pi / 4),
            frequencies=torch.arange(1, n + 1, dtype=torch.float32),
        )

    def scale_output(self, alpha: float, beta: float) -> None:
        with torch.no_grad():
            self.amplitudes.mul_(alpha)
            self.bias.mul_(alpha).add_(beta)

    value_names = ("bias", "amplitudes", "phases", "frequencies")

    @staticmethod
    def function(x, bias, amplitudes, phases, frequencies, channel_dim=-1):
        return _FourierFunction.apply(x, bias, amplitudes, phases, frequencies, channel_dim)


class TropicalActivation(LearnableActivation):
    """F(x) = s * max_{k=0..n}(k x + c_k): max-plus polynomial with fixed slopes 0..n, learnable c_k.

    ``s`` is a fixed buffer: sqrt(2)/n in the paper; the unit-gain init chooses it so E[F'^2] = 1.
    """

    family = "tropical"

    def _create_parameters(self) -> None:
        self.intercepts = self._coef(self.degree + 1)
        self.register_buffer("scale", torch.tensor(math.sqrt(2.0) / self.degree))

    def _init_paper(self) -> None:
        # Equal intercepts c give sqrt(2) ReLU(x) + sqrt(2) c/n: c = 0 makes both gains exactly 1
        # (torchortho's c = 1 inflates the forward gain to 1 + 4/(n sqrt(2 pi)) + 2/n^2).
        self.scale.fill_(math.sqrt(2.0) / self.degree)
        self.set_shared(intercepts=torch.zeros(self.degree + 1))

    def _init_torchortho(self) -> None:
        self.scale.fill_(math.sqrt(2.0) / self.degree)
        self.set_shared(intercepts=torch.ones(self.degree + 1))

    def _init_unit_start(self) -> None:
        # Breakpoints at the N(0, 1) quantiles k/(n+1): every slope wins on an equal share of inputs.
        n = self.degree
        probs = torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)
        self.scale.fill_(1.0)
        self.set_breakpoints(torch.special.ndtri(probs))

    def set_breakpoints(self, breakpoints: Tensor) -> None:
        """Intercepts such that slope k wins exactly on [t_k, t_{k+1}) (t increasing): no dead pieces."""
        c = torch.zeros(self.degree + 1, dtype=torch.float64)
        c[1:] = -torch.cumsum(torch.as_tensor(breakpoints, dtype=torch.float64), 0)
        self.set_shared(intercepts=c)

    def scale_output(self, alpha: float, beta: float) -> None:
        with torch.no_grad():
            self.scale.mul_(alpha)
            self.intercepts.add_(beta / float(self.scale))

    value_names = ("intercepts", "scale")

    @staticmethod
    def function(x, intercepts, scale, channel_dim=-1):
        return _TropicalFunction.apply(x, intercepts, scale, channel_dim)


class TropicalRationalActivation(LearnableActivation):
    """F(x) = max_k(p_k x + c_k) - max_k(q_k x + d_k): a difference of two max-plus polynomials.

    Any continuous piecewise-linear function is one; the paper uses it to fine-tune from GELU, so the
    ``paper`` init fits GELU (there is no closed-form variance-preserving init).
    """

    family = "tropical_rational"

    def _create_parameters(self) -> None:
        K = self.degree + 1
        self.num_slopes, self.num_intercepts = self._coef(K), self._coef(K)
        self.den_slopes, self.den_intercepts = self._coef(K), self._coef(K)

    def _init_paper(self) -> None:
        from lit_ortho import fitting

        fitting.fit_activation(self, "gelu")

    def _init_torchortho(self) -> None:
        # torchortho 0.1.2 draws randn(n + 1) in this order: powers_num, powers_denom, coefficients_num/denom.
        K = self.degree + 1
        p, q, c, d = (torch.randn(K) for _ in range(4))
        self.set_shared(num_slopes=p, den_slopes=q, num_intercepts=c, den_intercepts=d)

    def scale_output(self, alpha: float, beta: float) -> None:
        if alpha <= 0:
            raise ValueError("tropical_rational: the output scale must be positive")
        with torch.no_grad():
            for t in (self.num_slopes, self.num_intercepts, self.den_slopes, self.den_intercepts):
                t.mul_(alpha)
            self.num_intercepts.add_(beta)

    value_names = ("num_slopes", "num_intercepts", "den_slopes", "den_intercepts")

    @staticmethod
    def function(x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim=-1):
        return _TropicalRationalFunction.apply(x, num_slopes, num_intercepts, den_slopes, den_intercepts, channel_dim)
