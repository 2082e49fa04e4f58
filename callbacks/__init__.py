"""Lightning callbacks that show activations and gradients exploding or vanishing through depth.

Add them to any Lightning project (no lit_ortho model needed); statistics are exact under DDP and FSDP.
In LightningCLI YAML: ``class_path: callbacks.ActivationVarianceMonitor``. Learnable activations of any
library are recognised through :class:`callbacks.protocol.SelfRecordingActivation` (lit_ortho's implement it).
This package imports nothing from lit_ortho.
"""

from callbacks.activation_shape import ActivationShapeMonitor
from callbacks.activation_variance import ActivationVarianceMonitor
from callbacks.gradient_variance import GradientVarianceMonitor
from callbacks.protocol import SelfRecordingActivation

__all__ = ["ActivationShapeMonitor", "ActivationVarianceMonitor", "GradientVarianceMonitor", "SelfRecordingActivation"]
