"""Alias of :mod:`lit_ortho.tasks`, kept so old imports and old YAML keep working.

The LightningModules moved to :mod:`lit_ortho.tasks` (this name sat confusingly beside :mod:`lit_ortho.models`,
which holds the ``nn.Module`` networks). ``from lit_ortho.modules import GPT2Module`` and
``class_path: lit_ortho.modules.GPT2Module`` give the very same classes as ``lit_ortho.tasks``; new code and
configs should use ``lit_ortho.tasks``. Only the names below are re-exported (not the old submodules).
"""

from lit_ortho.tasks import ConvNeXtModule, GPT2Module, OrthoModule, WarmupCosine, parameter_groups

__all__ = ["GPT2Module", "ConvNeXtModule", "OrthoModule", "parameter_groups", "WarmupCosine"]
