"""LightningModules: GPT-2 language modelling and ConvNeXt image classification."""

from lit_ortho.modules.base import OrthoModule, WarmupCosine, parameter_groups
from lit_ortho.modules.convnext import ConvNeXtModule
from lit_ortho.modules.gpt import GPT2Module

__all__ = ["GPT2Module", "ConvNeXtModule", "OrthoModule", "parameter_groups", "WarmupCosine"]
