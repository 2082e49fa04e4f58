"""LightningModules (training tasks): GPT-2 language modelling and ConvNeXt image classification.

The networks themselves (``nn.Module``) are in :mod:`lit_ortho.models`; these wrap them with losses, metrics,
optimisation and sharding. ``lit_ortho.modules`` is an alias of this package kept for old imports and YAML.
"""

# Registers the strategy names "fsdp2", "fsdp2_cpu_offload" and "fsdp1" for Trainer(strategy=...).
import lit_ortho.distributed  # noqa: F401
from lit_ortho.tasks.base import OrthoModule, WarmupCosine, parameter_groups
from lit_ortho.tasks.convnext import ConvNeXtModule
from lit_ortho.tasks.gpt import GPT2Module

__all__ = ["GPT2Module", "ConvNeXtModule", "OrthoModule", "parameter_groups", "WarmupCosine"]
