"""Model definitions: GPT-2 (one readable file + config dataclass) and timm's ConvNeXt family."""

from lit_ortho.models.convnext import check_convnext_name, convnext_names, create_convnext, freeze_all_but_activations_and_head
from lit_ortho.models.gpt import GPT, GPT_SIZES, GPTConfig, layer_activation_specs

__all__ = [
    "GPT",
    "GPTConfig",
    "GPT_SIZES",
    "layer_activation_specs",
    "create_convnext",
    "convnext_names",
    "check_convnext_name",
    "freeze_all_but_activations_and_head",
]
