"""The Triton kernels as ``torch.library`` custom ops, with fake (meta) and autograd registrations.

For each family, two ops in the ``lit_ortho`` namespace::

    lit_ortho::hermite(Tensor x, Tensor coefficients, int channel_dim) -> Tensor
    lit_ortho::hermite_backward(Tensor grad, Tensor x, Tensor coefficients, int channel_dim,
                                bool need_x, bool need_values) -> (Tensor, Tensor)

and likewise ``fourier`` (bias, amplitudes, phases, frequencies), ``tropical`` (intercepts, scale: a
buffer, no gradient) and ``tropical_rational`` (num_slopes, num_intercepts, den_slopes,
den_intercepts). The forward op saves only ``x`` and the coefficients for backward (GELU's own
footprint). ``torch.compile(fullgraph=True)`` traces them as single nodes: no graph breaks.
Double backward (``create_graph=True``) recomputes F with the eager Function and differentiates that.

Registering the ops imports no triton; the kernels are imported on the first real call.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["VALUE_NAMES", "LEARNABLE", "op", "backward_op"]

NAMESPACE = "lit_ortho"
# Each family's value tensors, in the order of LearnableActivation.value_names, and which of them
# get a gradient (Tropical's scale is a fixed buffer).
VALUE_NAMES: dict[str, tuple[str, ...]] = {
    "hermite": ("coefficients",),
    "fourier": ("bias", "amplitudes", "phases", "frequencies"),
    "tropical": ("intercepts", "scale"),
    "tropical_rational": ("num_slopes", "num_intercepts", "den_slopes", "den_intercepts"),
}
LEARNABLE: dict[str, tuple[bool, ...]] = {
    "hermite": (True,),
    "fourier": (True, True, True, True),
    "tropical": (True, False),
    "tropical_rational": (True, True, True, True),
}

_lib = torch.library.Library(NAMESPACE, "FRAGMENT")


def op(family: str):
    """The forward op of a family: ``op("hermite")(x, coefficients, channel_dim)``."""
    return getattr(getattr(torch.ops, NAMESPACE), family)


def backward_op(family: str):
    return getattr(getattr(torch.ops, NAMESPACE), f"{family}_backward")


def _register(family: str) -> None:
    names, learnable = VALUE_NAMES[family], LEARNABLE[family]
    n_values = len(names)
    tensors = ", ".join(f"Tensor {n}" for n in names)
    grads = ", ".join(["Tensor"] * (1 + sum(learnable)))
    _lib.define(f"{family}(Tensor x, {tensors}, int channel_dim) -> Tensor")
    _lib.define(
        f"{family}_backward(Tensor grad, Tensor x, {tensors}, int channel_dim, bool need_x, bool need_values) -> ({grads})"
    )
    qualname, bwd_qualname = f"{NAMESPACE}::{family}", f"{NAMESPACE}::{family}_backward"

    def forward_impl(x, *args):
        from lit_ortho.kernels import _triton, check_device

        check_device(x)
        return _triton.FORWARD[family](x, *args)

    def backward_impl(grad, x, *args):
        from lit_ortho.kernels import _triton, check_device

        check_device(x)
        return tuple(_triton.BACKWARD[family](grad, x, *args))

    for key in ("CPU", "CUDA"):
        _lib.impl(family, forward_impl, key)
        _lib.impl(f"{family}_backward", backward_impl, key)

    def forward_fake(x, *args):
        return torch.empty_like(x)

    def backward_fake(grad, x, *args):
        values = args[:n_values]
        out = [torch.empty_like(x)]
        out += [torch.empty(v.shape, dtype=v.dtype, device=v.device) for v, learn in zip(values, learnable) if learn]
        return tuple(out)

    torch.library.register_fake(qualname, forward_fake, lib=_lib)
    torch.library.register_fake(bwd_qualname, backward_fake, lib=_lib)

    def setup_context(ctx, inputs: Sequence, output) -> None:
        x, *values, channel_dim = inputs
        ctx.save_for_backward(x, *values)
        ctx.channel_dim = channel_dim

    def backward(ctx, grad):
        x, *values = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: the kernels' gradients are not differentiable
            return _differentiable_backward(family, ctx.channel_dim, grad, x, values, needs)
        need_x = bool(needs[0])
        need_values = any(n for n, learn in zip(needs[1 : 1 + n_values], learnable) if learn)
        grads = backward_op(family)(grad, x, *values, ctx.channel_dim, need_x, need_values)
        grad_x, value_grads = grads[0], iter(grads[1:])
        out = [grad_x if need_x else None]
        for need, learn in zip(needs[1 : 1 + n_values], learnable):
            g = next(value_grads) if learn else None
            out.append(g if need else None)
        out.append(None)  # channel_dim
        return tuple(out)

    torch.library.register_autograd(qualname, backward, setup_context=setup_context, lib=_lib)


def _differentiable_backward(family, channel_dim, grad, x, values, needs):
    """Gradients as a differentiable graph (double backward): recompute F with the eager autograd
    Function and differentiate it with ``create_graph=True``. Slower, but any order works."""
    from lit_ortho.activations import LearnableActivation

    eager = next(cls for cls in _subclasses(LearnableActivation) if cls.family == family).function
    wanted = [t for t, n in zip((x, *values), needs) if n]
    y = eager(x, *values, channel_dim=channel_dim)
    grads = iter(torch.autograd.grad(y, wanted, grad, create_graph=True, allow_unused=True))
    out = [next(grads) if n else None for n in needs[: 1 + len(values)]]
    out = [torch.zeros_like(t) if g is None and n else g for g, t, n in zip(out, (x, *values), needs)]
    return (*out, None)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


for _family in VALUE_NAMES:
    _register(_family)
