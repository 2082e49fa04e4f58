"""The activation core: learnable Hermite, Fourier and tropical activations behind one activation spec.

Layers, bottom to top (a module imports only modules above it in this list, never below):

* ``lit_ortho.errors``: user-error messages ("unknown X; valid choices ...");
* :mod:`.spec`: the registry of activation names and the spec parser (``"hermite:3"``, mappings);
* :mod:`.fixed`: fixed activations torch lacks (Hugging Face's exact GELU formulas);
* :mod:`.elementwise`: compute dtype, coefficient broadcasting, channel sums;
* :mod:`.family`: one record per learnable family, from which every per-family table is derived;
* :mod:`.kernels`: Triton and C++ CPU kernels and the ``torch.ops.lit_ortho`` custom ops;
* :mod:`.backends`: which code computes F (eager, the compiled twin, or the kernels);
* :mod:`.init`: Gaussian gains, the unit-gain init, fitting to a target activation;
* :mod:`.base`: ``LearnableActivation``, the nn.Module base class;
* :mod:`.hermite`, :mod:`.fourier`, :mod:`.tropical`: each family's math, record and module class;
* :mod:`.surgery`: ``replace_activations`` on an existing model.
"""

from lit_ortho.activations.backends import BACKENDS
from lit_ortho.activations.base import INITS, MAX_DEGREE, MIN_DEGREE, LearnableActivation
from lit_ortho.activations.family import FAMILIES, Family, register_family
from lit_ortho.activations.fixed import HF_ACTIVATIONS, hf_activation_name, spec_for_hf_activation
from lit_ortho.activations.fourier import FOURIER_C, FourierActivation
from lit_ortho.activations.hermite import HermiteActivation
from lit_ortho.activations.init import fit_activation, gaussian_gains
from lit_ortho.activations.spec import (
    ActivationSpec,
    activation_factory,
    build_activation,
    list_activations,
    parse_activation_spec,
    register_activation,
    spec_of,
)
from lit_ortho.activations.surgery import GELU_CLASSES, is_gelu, replace_activations
from lit_ortho.activations.tropical import TropicalActivation, TropicalRationalActivation

__all__ = [
    "ActivationSpec",
    "BACKENDS",
    "FAMILIES",
    "FOURIER_C",
    "Family",
    "FourierActivation",
    "GELU_CLASSES",
    "HF_ACTIVATIONS",
    "HermiteActivation",
    "INITS",
    "LearnableActivation",
    "MAX_DEGREE",
    "MIN_DEGREE",
    "TropicalActivation",
    "TropicalRationalActivation",
    "activation_factory",
    "build_activation",
    "fit_activation",
    "gaussian_gains",
    "hf_activation_name",
    "is_gelu",
    "list_activations",
    "parse_activation_spec",
    "register_activation",
    "register_family",
    "replace_activations",
    "spec_for_hf_activation",
    "spec_of",
]
