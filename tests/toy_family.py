"""A toy learnable family, defined the way a user adds one: one file with its math, record and class.

F(x) = sum_k a_k x^k (plain monomials: fine for a test, not for training). No kernels and no fitter of
its own, so it runs eager and compiled and fits by the generic L-BFGS.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_ortho.activations import Family, LearnableActivation, register_activation, register_family


class _MonomialFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coefficients: Tensor, channel_dim: int) -> Tensor:
        ctx.save_for_backward(x, coefficients)
        return sum(coefficients[k] * x**k for k in range(coefficients.shape[-1]))

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, coefficients = ctx.saved_tensors
        K = coefficients.shape[-1]
        dydx = sum(k * coefficients[k] * x ** (k - 1) for k in range(1, K))
        grad_a = torch.stack([(grad * x**k).sum() for k in range(K)])
        return grad * dydx, grad_a, None


def monomial(x: Tensor, coefficients: Tensor, channel_dim: int = -1) -> Tensor:
    return _MonomialFunction.apply(x, coefficients, channel_dim)


register_family(Family(name="monomial", value_names=("coefficients",), learnable=("coefficients",), eager=monomial))


class MonomialActivation(LearnableActivation):
    """F(x) = sum_{k=0..n} a_k x^k."""

    family = "monomial"

    def _create_parameters(self) -> None:
        self.coefficients = self._coef(self.degree + 1)

    def _init_paper(self) -> None:
        self.set_shared(coefficients=[0.0, 1.0] + [0.0] * (self.degree - 1))  # the identity

    def scale_output(self, alpha: float, beta: float) -> None:
        with torch.no_grad():
            self.coefficients.mul_(alpha)
            self.coefficients[..., 0] += beta


register_activation("monomial", MonomialActivation, overwrite=True)
