"""The kernels as ``torch.library`` custom ops, with fake (meta) and autograd registrations.

For each family with Triton kernels (``Family.triton``), two ops in the ``lit_ortho`` namespace::

    lit_ortho::hermite(Tensor x, Tensor coefficients, int channel_dim) -> Tensor
    lit_ortho::hermite_backward(Tensor grad, Tensor x, Tensor coefficients, int channel_dim,
                                bool need_x, bool need_values) -> (Tensor, Tensor)

with the family's values in its record's order; the backward returns a gradient for ``x`` and for each
learnable value. Families with C++ CPU kernels (``Family.cpu``) get ``lit_ortho::hermite_cpu`` and
``lit_ortho::hermite_cpu_backward`` the same way (``op(family, "cpu")``). The forward op saves only ``x`` and
the values for backward (GELU's own footprint).
``torch.compile(fullgraph=True)`` traces them as single nodes. Double backward (``create_graph=True``)
recomputes F with the family's eager Function and differentiates that.

Ops are registered the first time :func:`op` is called for a family; registering imports no triton.
"""

from __future__ import annotations

import importlib
from typing import Sequence

import torch

from lit_ortho.activations.family import Family, get_family
from lit_ortho.activations.kernels import check_device

__all__ = ["op", "backward_op", "NAMESPACE"]

NAMESPACE = "lit_ortho"
_lib = torch.library.Library(NAMESPACE, "FRAGMENT")
_REGISTERED: set[str] = set()


def _name(family: str, kind: str) -> str:
    return family if kind == "triton" else f"{family}_{kind}"


@torch.compiler.assume_constant_result
def _registered(family: str, kind: str) -> bool:
    """Register the ops on first use. Run, not traced, by torch.compile: it cannot trace a registration, and the set of
    registered ops it would read may have changed since it last looked (another family's first call in the graph)."""
    _register(get_family(family), kind)
    return True


def op(family: str, kind: str = "triton"):
    """The forward op of a family's kernels, ``kind`` ``"triton"`` (CUDA) or ``"cpu"`` (C++):
    ``op("hermite")(x, coefficients, channel_dim)``."""
    _registered(family, kind)
    return getattr(getattr(torch.ops, NAMESPACE), _name(family, kind))


def backward_op(family: str, kind: str = "triton"):
    _registered(family, kind)
    return getattr(getattr(torch.ops, NAMESPACE), f"{_name(family, kind)}_backward")


def _launchers(record: Family, kind: str):
    if kind == "cpu":
        if record.cpu is None:
            raise RuntimeError(f"the {record.name!r} family has no CPU kernels; use backend='eager' or 'auto'")
        return record.cpu
    if record.triton is None:
        raise RuntimeError(f"the {record.name!r} family has no Triton kernels; use backend='eager' or 'auto'")
    return importlib.import_module(record.triton)


def _register(record: Family, kind: str) -> None:
    name = _name(record.name, kind)
    if name in _REGISTERED:
        return
    if (record.cpu if kind == "cpu" else record.triton) is None:
        _launchers(record, kind)  # raises, naming the family
    family = record.name
    names, learnable = record.value_names, record.learnable_mask
    n_values = len(names)
    tensors = ", ".join(f"Tensor {n}" for n in names)
    grads = ", ".join(["Tensor"] * (1 + sum(learnable)))
    _lib.define(f"{name}(Tensor x, {tensors}, int channel_dim) -> Tensor")
    _lib.define(
        f"{name}_backward(Tensor grad, Tensor x, {tensors}, int channel_dim, bool need_x, bool need_values) -> ({grads})"
    )
    qualname, bwd_qualname = f"{NAMESPACE}::{name}", f"{NAMESPACE}::{name}_backward"

    def forward_impl(x, *args):
        if kind == "triton":
            check_device(x)
        return _launchers(record, kind).forward(x, *args)

    def backward_impl(grad, x, *args):
        if kind == "triton":
            check_device(x)
        grad_x, *value_grads = _launchers(record, kind).backward(grad, x, *args)
        return (grad_x, *(g.contiguous() for g in value_grads))  # the strides the fake kernel promises

    for key in ("CPU", "CUDA") if kind == "triton" else ("CPU",):
        _lib.impl(name, forward_impl, key)
        _lib.impl(f"{name}_backward", backward_impl, key)

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
            return _differentiable_backward(record, ctx.channel_dim, grad, x, values, needs)
        need_x = bool(needs[0])
        need_values = any(n for n, learn in zip(needs[1 : 1 + n_values], learnable) if learn)
        grads = backward_op(family, kind)(grad, x, *values, ctx.channel_dim, need_x, need_values)
        grad_x, value_grads = grads[0], iter(grads[1:])
        out = [grad_x if need_x else None]
        for need, learn in zip(needs[1 : 1 + n_values], learnable):
            g = next(value_grads) if learn else None
            out.append(g if need else None)
        out.append(None)  # channel_dim
        return tuple(out)

    torch.library.register_autograd(qualname, backward, setup_context=setup_context, lib=_lib)
    _REGISTERED.add(name)


def _differentiable_backward(record: Family, channel_dim, grad, x, values, needs):
    """Gradients as a differentiable graph (double backward): recompute F with the eager autograd
    Function and differentiate it with ``create_graph=True``. Slower, but any order works."""
    wanted = [t for t, n in zip((x, *values), needs) if n]
    y = record.eager(x, *values, channel_dim=channel_dim)
    grads = iter(torch.autograd.grad(y, wanted, grad, create_graph=True, allow_unused=True))
    out = [next(grads) if n else None for n in needs[: 1 + len(values)]]
    out = [torch.zeros_like(t) if g is None and n else g for g, t, n in zip(out, (x, *values), needs)]
    return (*out, None)
