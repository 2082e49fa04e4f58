"""LightningModules: GPT-2 language modelling and ConvNeXt image classification."""

# Registers the strategy names "fsdp2", "fsdp2_cpu_offload" and "fsdp1" for Trainer(strategy=...).
import lit_ortho.distributed  # noqa: F401
from lit_ortho.modules.base import OrthoModule, WarmupCosine, parameter_groups
from lit_ortho.modules.convnext import ConvNeXtModule
from lit_ortho.modules.gpt import GPT2Module

__all__ = ["GPT2Module", "ConvNeXtModule", "OrthoModule", "parameter_groups", "WarmupCosine"]
