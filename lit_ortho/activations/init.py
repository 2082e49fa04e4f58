"""Initialisation by numbers: Gaussian gains, the unit-gain init, and fitting to a classical activation.

Works on any module of a registered family (:mod:`lit_ortho.activations.family`) through its record's
function and its ``shared_values`` / ``set_shared`` / ``scale_output`` methods. A family may bring
its own fit (``Family.fit``: Hermite's closed-form least squares, good starts for the others); the
rest get :func:`lbfgs_fit` from the paper init. All of it runs in float64 on a fixed grid, so it is
deterministic, takes milliseconds to a second, prints nothing and writes no file.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import torch
from torch import Tensor, nn

from lit_ortho.activations.family import FAMILIES, Family
from lit_ortho.activations.spec import build_activation, spec_of

__all__ = ["gaussian_gains", "init_unit_gain", "fit_activation", "fit_error", "lbfgs_fit", "FIT_RANGE"]

# Fits match value and derivative on [-FIT_RANGE, FIT_RANGE] (99.7 % of unit-variance inputs; the
# paper's GPT-2 pre-activations have std ~0.2-0.55), weighted by a N(0, FIT_SIGMA^2) density so the
# typical inputs count most. Against uniform weights on [-4, 4] this cut Hermite-8's max error on
# [-3, 3] from 0.015 to 0.002.
FIT_RANGE = 3.0
FIT_SIGMA = 2.0
_FIT_POINTS = 801
_FIT_ITERS = 150
_QUAD_RANGE, _QUAD_POINTS = 12.0, 240_001
# Fits of fixed, registered targets are deterministic: keep them for the process (never on disk),
# so 12 layers of "hermite(degree=3, init=gelu)" fit once.
_FIT_CACHE: dict[tuple, dict[str, Tensor]] = {}


def _family_of(module) -> Family | None:
    """The record of a learnable activation module, None for any other module."""
    name = getattr(type(module), "family", None)
    return FAMILIES.get(name) if isinstance(name, str) else None


def _values_fn(module, values: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
    record = _family_of(module)
    return lambda x: record.eager(x, *(values[n] for n in record.value_names))


def _value_and_slope(fn: Callable[[Tensor], Tensor], x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = fn(x)
        (dy,) = torch.autograd.grad(y.sum(), x, create_graph=create_graph)
    return (y, dy) if create_graph else (y.detach(), dy.detach())


def gaussian_gains(fn: Union[nn.Module, Callable[[Tensor], Tensor]]) -> dict[str, float]:
    """E[F], E[F^2] (forward gain) and E[F'^2] (backward gain) under x ~ N(0, 1).

    Trapezoid rule on a fine float64 grid over [-12, 12]: exact to ~1e-9 also for the kinks of the
    tropical families, where Gauss-Hermite quadrature would not be.
    """
    if _family_of(fn) is not None:
        fn = _values_fn(fn, fn.shared_values())
    x = torch.linspace(-_QUAD_RANGE, _QUAD_RANGE, _QUAD_POINTS, dtype=torch.float64)
    y, dy = _value_and_slope(fn, x)
    w = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    integrate = lambda f: float(torch.trapezoid(f * w, x))  # noqa: E731
    return {"mean": integrate(y), "forward_gain": integrate(y * y), "backward_gain": integrate(dy * dy)}


@torch.no_grad()
def init_unit_gain(module) -> None:
    """Set F to alpha*F0 + beta so that E[F'^2] = 1 and E[F^2] = 1 exactly under N(0, 1).

    alpha fixes the backward gain; beta then solves beta^2 + 2 alpha beta E[F0] + alpha^2 E[F0^2] = 1.
    A root always exists: the Gaussian Poincare inequality gives Var(alpha F0) <= E[(alpha F0')^2] = 1.
    The smaller root is taken (beta = 0 for Hermite: scaling the paper init already balances both gains).
    """
    module._init_unit_start()
    gains = gaussian_gains(module)
    alpha = 1.0 / math.sqrt(gains["backward_gain"])
    mean, second = alpha * gains["mean"], alpha * alpha * gains["forward_gain"]
    disc = max(mean * mean - second + 1.0, 0.0)
    roots = (-mean + math.sqrt(disc), -mean - math.sqrt(disc))
    beta = min(roots, key=abs)
    module.scale_output(alpha, beta)


# ---- fitting to a classical activation ---------------------------------------------------------------
def _target_fn(target) -> tuple[Callable[[Tensor], Tensor], str | None]:
    """A float64 callable for the target, and its registered name when it is a fixed activation
    (the key under which its fits are cached; learnable targets carry trained values, so none)."""
    if isinstance(target, nn.Module):
        module = target
    else:
        module = build_activation(target)
    if _family_of(module) is not None:
        name = None
        fn = _values_fn(module, module.shared_values())
    else:
        try:
            name = spec_of(module)
        except ValueError:
            name = None
        module = module.double()
        fn = module
    return fn, name


def fit_activation(module, target, *, x_range: float = FIT_RANGE) -> float:
    """Fit ``module`` to a target activation (spec or module) in value and derivative; return the error.

    The family's own ``fit`` when it has one (Hermite is linear in its coefficients: a closed-form
    least-squares solve; the others start a short deterministic L-BFGS from a family-specific guess),
    else :func:`lbfgs_fit` of every learnable value from the current (paper) init. Returns the max
    |F - g| on the fit range.
    """
    fn, name = _target_fn(target)
    key = (type(module), module.degree, name, x_range) if name is not None else None
    if key in _FIT_CACHE:
        with torch.no_grad():
            module.set_shared(**_FIT_CACHE[key])
        return fit_error(module, fn, x_range)
    x = torch.linspace(-x_range, x_range, _FIT_POINTS, dtype=torch.float64)
    y, dy = _value_and_slope(fn, x)
    weight = torch.exp(-0.5 * (x / FIT_SIGMA) ** 2)
    weight = weight / weight.mean()
    fitter = _family_of(module).fit or _fit_all_learnable
    values = fitter(module, x, y, dy, weight)
    if key is not None:
        _FIT_CACHE[key] = values
    with torch.no_grad():
        module.set_shared(**values)
    return fit_error(module, fn, x_range)


def fit_error(module, target, x_range: float = 3.0) -> float:
    """max |F(x) - g(x)| over [-x_range, x_range] (the figure the README quotes)."""
    fn = target if callable(target) and not isinstance(target, str) else _target_fn(target)[0]
    x = torch.linspace(-x_range, x_range, 6001, dtype=torch.float64)
    with torch.no_grad():
        ours = _values_fn(module, module.shared_values())(x)
        theirs = fn(x)
    return float((ours - theirs).abs().max())


def lbfgs_fit(module, x, y, dy, weight, start: dict[str, Tensor], trainable: tuple[str, ...]) -> dict[str, Tensor]:
    """Deterministic L-BFGS on the weighted value-and-slope error from ``start``, moving ``trainable``."""
    values = {k: v.clone().requires_grad_(k in trainable) for k, v in start.items()}
    params = [values[k] for k in trainable]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=_FIT_ITERS, line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-14)
    fn = _values_fn(module, values)

    def closure():
        opt.zero_grad()
        f, df = _value_and_slope(fn, x, create_graph=True)
        loss = (weight * ((f - y) ** 2 + (df - dy) ** 2)).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return {k: v.detach() for k, v in values.items()}


def _fit_all_learnable(module, x, y, dy, weight) -> dict[str, Tensor]:
    """The generic fit: every learnable value, from the module's current values."""
    return lbfgs_fit(module, x, y, dy, weight, module.shared_values(), trainable=_family_of(module).learnable)
