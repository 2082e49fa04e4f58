"""Fixed activations that torch lacks: Hugging Face's GELU formulas, written exactly as transformers
computes them, so a pretrained checkpoint's own activation is reproduced bit for bit (``F.gelu(approximate=
"tanh")`` is not a bit-exact match of ``gelu_new``).

:data:`HF_ACTIVATIONS` maps a Hugging Face ``activation_function`` / ``hidden_act`` name to the spec that
computes it; :func:`hf_activation_name` goes the other way (for exporting).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lit_ortho.activations.spec import register_activation
from lit_ortho.errors import unknown_choice

__all__ = ["NewGELU", "FastGELU", "QuickGELU", "HF_ACTIVATIONS", "spec_for_hf_activation", "hf_activation_name"]


class NewGELU(nn.Module):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): GPT-2's activation (``gelu_new``)."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class FastGELU(nn.Module):
    """0.5 x (1 + tanh(0.7978845608 x (1 + 0.044715 x^2))) (``gelu_fast``)."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


class QuickGELU(nn.Module):
    """x sigmoid(1.702 x) (``quick_gelu``, CLIP's)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


register_activation("gelu_new", NewGELU)
register_activation("gelu_fast", FastGELU)
register_activation("quick_gelu", QuickGELU)

# Hugging Face activation name -> lit_ortho spec computing the same function the same way.
HF_ACTIVATIONS: dict[str, str] = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_new",
    "gelu_accurate": "gelu_new",  # the same formula, its constant precomputed
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "gelu_fast": "gelu_fast",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "relu6": "relu6",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "mish": "mish",
    "hardswish": "hardswish",
}


def spec_for_hf_activation(name: str) -> str:
    """The spec of a Hugging Face ``activation_function`` (``gelu_new`` -> ``gelu_new``)."""
    if name not in HF_ACTIVATIONS:
        raise unknown_choice("Hugging Face activation_function", name, sorted(HF_ACTIVATIONS))
    return HF_ACTIVATIONS[name]


def hf_activation_name(spec: str) -> str | None:
    """The Hugging Face name of a fixed activation spec (``gelu_tanh`` -> ``gelu_pytorch_tanh``), or None."""
    preferred = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_tanh": "gelu_pytorch_tanh", "gelu_fast": "gelu_fast",
                 "quick_gelu": "quick_gelu", "relu": "relu", "relu6": "relu6", "silu": "silu", "tanh": "tanh",
                 "sigmoid": "sigmoid", "mish": "mish", "hardswish": "hardswish"}  # fmt: skip
    return preferred.get(spec)
