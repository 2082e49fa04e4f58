"""timm's ConvNeXt family with the MLP activation taken from an activation spec.

    model = create_convnext("convnext_tiny", activation="hermite:3", num_classes=1000)

    # The paper's CIFAR-10 fine-tune: pretrained weights from a local file, GELU replaced by Hermite-3
    # fitted to GELU, a new 10-class head, everything frozen except the activations and the head.
    model = create_convnext("convnext_tiny", activation="hermite:3", num_classes=10,
                            pretrained="convnext_tiny.safetensors")
    freeze_all_but_activations_and_head(model)

Nothing is downloaded: ``pretrained`` is a local file (timm/Hugging Face ``.safetensors``, a ``.pth`` /
``.bin`` state dict, or the official ConvNeXt release's ``{"model": ...}`` checkpoint).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from timm.layers import Mlp
from torch import Tensor, nn

from lit_ortho.activations import LearnableActivation, activation_factory, build_activation, is_gelu, replace_activations
from lit_ortho.errors import check_choice
from lit_ortho.models.mlp import linear_activation_linear

__all__ = ["create_convnext", "convnext_names", "check_convnext_name", "freeze_all_but_activations_and_head",
           "RecomputeMlp", "recompute_mlp_activations"]


def check_convnext_name(model_name: str) -> str:
    """``model_name`` if timm can build it as a ConvNeXt, else an error listing the choices."""
    return check_choice(model_name, convnext_names(), "ConvNeXt model")


def convnext_names() -> list[str]:
    """The ConvNeXt variants timm can build (``convnext_atto`` ... ``convnext_xxlarge``, ``convnextv2_*``)."""
    import timm

    return timm.list_models("convnext*")


def create_convnext(
    model_name: str = "convnext_tiny",
    activation: Any = "gelu",
    num_classes: int = 1000,
    pretrained: Optional[str] = None,
    activation_init: Optional[str] = "gelu",
    drop_path_rate: float = 0.0,
    **kwargs: Any,
) -> nn.Module:
    """Build a timm ConvNeXt whose block activations come from ``activation`` (an activation spec).

    Args:
        model_name: a timm ConvNeXt name (see :func:`convnext_names`).
        activation: activation spec for every block's MLP (timm's ``act_layer``).
        num_classes: classifier outputs; with ``pretrained`` a different count gets a new, freshly
            initialised head.
        pretrained: local weights file. The GELU model is loaded as released, then its GELUs are
            replaced by ``activation`` (``replace_activations``), initialised as ``activation_init``.
        activation_init: init of the replacing learnable activations (``"gelu"``: fit to GELU, the
            paper's fine-tune; ``"replaced"``: fit to the module replaced; ``None``: the spec's own init).
        drop_path_rate: stochastic depth.
        kwargs: passed to ``timm.create_model`` (``in_chans``, ``ls_init_value``, ...).
    """
    import timm

    check_convnext_name(model_name)
    common = dict(num_classes=num_classes, drop_path_rate=drop_path_rate, **kwargs)
    if pretrained is None:
        return recompute_mlp_activations(timm.create_model(model_name, act_layer=activation_factory(activation), **common))

    path = os.path.expanduser(str(pretrained))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path!r} (nothing is downloaded; give a local file)")
    model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=path), **common)
    probe = build_activation(activation)
    if not is_gelu(probe):  # else the released activation: nothing to replace
        init = activation_init if isinstance(probe, LearnableActivation) else None
        replace_activations(model, activation, init=init)
    return recompute_mlp_activations(model)


class RecomputeMlp(Mlp):
    """timm's ``Mlp`` whose backward recomputes the activation's output instead of keeping it
    (:mod:`lit_ortho.models.mlp`); same parameters and names, bitwise the same result."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.drop1.p == 0 and isinstance(self.norm, nn.Identity):
            return self.drop2(linear_activation_linear(x, self.fc1, self.act, self.fc2))
        return super().forward(x)


def recompute_mlp_activations(model: nn.Module) -> nn.Module:
    """Make every timm ``Mlp`` of ``model`` a :class:`RecomputeMlp` (in place; returns the model)."""
    for module in model.modules():
        if type(module) is Mlp:
            module.__class__ = RecomputeMlp
    return model


def freeze_all_but_activations_and_head(model: nn.Module) -> list[str]:
    """Freeze every parameter except learnable activations' and the classifier's; return the trainable names.

    The classifier is timm's ``get_classifier()`` (ConvNeXt: ``head.fc``).
    """
    trainable: set[int] = set()
    for module in model.modules():
        if isinstance(module, LearnableActivation):
            trainable.update(id(p) for p in module.parameters())
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        raise ValueError(f"{type(model).__name__} has no get_classifier(); cannot find the head to keep trainable")
    trainable.update(id(p) for p in get_classifier().parameters())
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) in trainable)
        if id(p) in trainable:
            names.append(name)
    return names
