"""Lightning callbacks that show activations and gradients exploding or vanishing through depth.

Add them to any Lightning project (no lit_ortho model needed); statistics are exact under DDP and FSDP.
In LightningCLI YAML: ``class_path: callbacks.ActivationVarianceMonitor``. Learnable activations of any
library are recognised through :class:`callbacks.protocol.SelfRecordingActivation` (lit_ortho's implement it).
This package imports nothing from lit_ortho, and every import inside it is relative: it also loads under
another name, which is what ``lit_ortho.callbacks`` does when a project's own ``callbacks`` module shadows
this one (``class_path: lit_ortho.callbacks.ActivationVarianceMonitor``; the same classes as here whenever
both import).
"""

from .activation_shape import ActivationShapeMonitor
from .activation_variance import ActivationVarianceMonitor
from .gradient_variance import GradientVarianceMonitor
from .parameter_update import ParameterUpdateMonitor
from .protocol import SelfRecordingActivation

__all__ = ["ActivationShapeMonitor", "ActivationVarianceMonitor", "GradientVarianceMonitor", "ParameterUpdateMonitor",
           "SelfRecordingActivation"]
