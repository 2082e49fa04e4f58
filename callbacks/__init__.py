"""Lightning callbacks that show activations and gradients exploding or vanishing through depth.

Add them to any Lightning project (no lit_ortho model needed); statistics are exact under DDP and FSDP.
In LightningCLI YAML: ``class_path: callbacks.ActivationVarianceMonitor``.
"""

from callbacks.activation_shape import ActivationShapeMonitor
from callbacks.activation_variance import ActivationVarianceMonitor
from callbacks.gradient_variance import GradientVarianceMonitor

__all__ = ["ActivationShapeMonitor", "ActivationVarianceMonitor", "GradientVarianceMonitor"]
