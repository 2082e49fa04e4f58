"""lit-ortho: learnable Hermite, Fourier and tropical activations for PyTorch Lightning."""

from lit_ortho.activations import (
    ActivationSpec,
    FourierActivation,
    HermiteActivation,
    LearnableActivation,
    TropicalActivation,
    TropicalRationalActivation,
    activation_factory,
    build_activation,
    fit_activation,
    gaussian_gains,
    list_activations,
    parse_activation_spec,
    register_activation,
    replace_activations,
    spec_of,
)

__version__ = "0.1.0"

__all__ = [
    "ActivationSpec",
    "FourierActivation",
    "HermiteActivation",
    "LearnableActivation",
    "TropicalActivation",
    "TropicalRationalActivation",
    "activation_factory",
    "build_activation",
    "fit_activation",
    "gaussian_gains",
    "list_activations",
    "parse_activation_spec",
    "register_activation",
    "replace_activations",
    "spec_of",
]
