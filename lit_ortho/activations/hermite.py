"""Hermite: F(x) = sum_{k=0..n} a_k He_k(x)/k!, the paper's polynomial activation.

He_k are the probabilists' Hermite polynomials, evaluated by the three-term recurrence
He_{k+1} = x He_k - k He_{k-1} (no division: the 1/k! goes into the tiny coefficient tensor, and no
powers of x). He_k' = k He_{k-1}, so dF/dx = sum_k a_k He_{k-1}/(k-1)!. The eager autograd Function
traces into fused loops under ``torch.compile`` as it is, so it is also the compiled path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_ortho.activations.base import LearnableActivation
from lit_ortho.activations.elementwise import columns, compute_dtype, dot, inverse_factorials, reduce_channels
from lit_ortho.activations.family import Family, register_family
from lit_ortho.activations.spec import register_activation

__all__ = ["HermiteActivation", "hermite_basis", "hermite_forward", "hermite"]


def hermite_basis(x: Tensor, n: int):
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


def hermite_forward(x: Tensor, coefficients: Tensor, channel_dim: int = -1) -> Tensor:
    """Evaluate sum_k a_k He_k(x)/k! by the three-term recurrence (x in its compute dtype)."""
    n = coefficients.shape[-1] - 1  # >= 1
    a = columns(coefficients * coefficients.new_tensor(inverse_factorials(n)), x, channel_dim)
    y = x * a[1]
    y.add_(a[0])
    for k, he in enumerate(hermite_basis(x, n), start=2):
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
        inv_fact = xf.new_tensor(inverse_factorials(n))
        # dF/da_k = He_k/k!;  dF/dx = sum_{k>=1} a_k He_{k-1}/(k-1)!.
        slope = columns(coefficients.to(dtype)[..., 1:] * inv_fact[:-1], xf, cd)
        raw = [reduce_channels(g, per_channel, cd), dot(g, xf, per_channel, cd)]  # sum g He_k, k = 0, 1
        dydx = xf * slope[1] if n >= 2 else torch.zeros_like(xf)
        dydx.add_(slope[0])
        for k, he in enumerate(hermite_basis(xf, n), start=2):
            raw.append(dot(g, he, per_channel, cd))
            if k < n:
                dydx.addcmul_(he, slope[k])
        grad_x = (g * dydx).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_a = (torch.stack(raw, dim=-1) * inv_fact).to(coefficients.dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_a, None


def hermite(x: Tensor, coefficients: Tensor, channel_dim: int = -1) -> Tensor:
    """F(x) for explicit coefficients ``[n + 1]`` or ``[C, n + 1]`` (differentiable in both)."""
    return _HermiteFunction.apply(x, coefficients, channel_dim)


def _fit_hermite(module, x, y, dy, weight) -> dict[str, Tensor]:
    """F is linear in a_k: weighted least squares on values and slopes, closed form."""
    n = module.degree
    he = [torch.ones_like(x), x, *hermite_basis(x, n)]
    values = torch.stack(he[: n + 1], dim=1) * x.new_tensor(inverse_factorials(n))  # [N, n+1]: P_k(x)
    slopes = torch.cat([torch.zeros_like(x)[:, None], values[:, :n]], dim=1)  # P_k' = P_{k-1}
    root_w = weight.sqrt()[:, None]
    A = torch.cat([values * root_w, slopes * root_w], dim=0)
    b = torch.cat([y, dy], dim=0) * torch.cat([root_w, root_w])[:, 0]
    coefficients = torch.linalg.lstsq(A, b[:, None], driver="gelsd").solution[:, 0]
    return {"coefficients": coefficients}


HERMITE = register_family(Family(
    name="hermite",
    value_names=("coefficients",),
    learnable=("coefficients",),
    eager=hermite,
    triton="lit_ortho.activations.kernels.triton_hermite",
    fit=_fit_hermite,
))


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


register_activation(HermiteActivation.family, HermiteActivation)
