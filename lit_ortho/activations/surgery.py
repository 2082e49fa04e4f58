"""Model surgery: swap the activation modules of an existing model for ones built from a spec.

The top of the activation core: it builds from the spec registry, fits with the initialisation code
and replaces modules in place, e.g. GELU by Hermite fitted to GELU before fine-tuning a pretrained
model, as in the paper.
"""

from __future__ import annotations

import fnmatch
from typing import Optional, Sequence, Union

from torch import nn

from lit_ortho.activations.base import LearnableActivation
from lit_ortho.activations.init import fit_activation
from lit_ortho.activations.spec import ActivationSpec, build_activation, spec_of

__all__ = ["replace_activations", "GELU_CLASSES", "is_gelu"]

# GELU as torch, lit_ortho (Hugging Face's formulas), timm and transformers spell it (none of the library
# classes subclasses nn.GELU): what the paper swaps out, what ``replace_activations`` replaces by default,
# what pretrained ConvNeXt, GPT-2, BERT and ViT checkpoints hold. Named by import path (whichever the
# installed versions have), so recognising them imports no model library.
GELU_CLASSES: tuple[str, ...] = (
    "torch.nn.modules.activation.GELU",
    "lit_ortho.activations.fixed.NewGELU",
    "lit_ortho.activations.fixed.FastGELU",
    "lit_ortho.activations.fixed.QuickGELU",
    "timm.layers.activations.GELU",
    "timm.layers.activations.GELUTanh",
    "transformers.activations.GELUActivation",
    "transformers.activations.NewGELUActivation",
    "transformers.activations.FastGELUActivation",
    "transformers.activations.QuickGELUActivation",
    "transformers.activations.AccurateGELUActivation",
    "transformers.activations.GELUTanh",
    "transformers.activations.PytorchGELUTanh",
    "transformers.activations.ClippedGELUActivation",
)


def is_gelu(module: nn.Module) -> bool:
    """Whether ``module`` is (a subclass of) one of :data:`GELU_CLASSES`."""
    return any(f"{cls.__module__}.{cls.__qualname__}" in GELU_CLASSES for cls in type(module).__mro__)


def replace_activations(
    model: nn.Module,
    spec: ActivationSpec,
    *,
    types: Union[Sequence[type], str, None] = "gelu",
    names: Optional[Sequence[str]] = None,
    init: Optional[str] = None,
) -> list[str]:
    """Replace activation modules of ``model`` in place and return the replaced modules' names.

    A module is replaced when it is an instance of one of ``types`` (the default ``"gelu"``: torch's
    and timm's GELU classes; ``None``: any type) and, if
    ``names`` is given, its qualified name matches one of those globs (``"blocks.*.mlp.act"``).
    ``init`` overrides the spec's init; ``init="replaced"`` fits each new activation to the module it
    replaces (e.g. to GELU before fine-tuning a pretrained model, as in the paper); fits to a
    registered activation are computed once per process, so a 12-layer model fits once.
    """
    if types is None and names is None:
        raise ValueError("replace_activations needs types=, names= or both to choose what to replace")
    if isinstance(names, str):
        names = [names]
    if types == "gelu":
        chosen, type_names = is_gelu, list(GELU_CLASSES)
    elif types is not None:
        types = tuple(types)
        chosen, type_names = (lambda module: isinstance(module, types)), [t.__name__ for t in types]
    else:
        chosen, type_names = (lambda module: True), None
    targets = [
        (qualified, module)
        for qualified, module in model.named_modules()
        if qualified
        and chosen(module)
        and (names is None or any(fnmatch.fnmatchcase(qualified, pattern) for pattern in names))
    ]
    if not targets:
        kinds = sorted({type(m).__name__ for _, m in model.named_modules()})
        raise ValueError(
            f"replace_activations matched no module (types={type_names}, "
            f"names={list(names) if names else None}); the model's module types are: {', '.join(kinds)}"
        )
    overrides = {} if init in (None, "replaced") else {"init": init}
    for qualified, old in targets:
        new = build_activation(spec, **overrides)
        if init == "replaced":
            if not isinstance(new, LearnableActivation):
                raise ValueError(f"init='replaced' fits a learnable activation; {spec!r} builds {type(new).__name__}")
            fit_activation(new, old)
            try:  # record what it was fitted to, so the module's spec says so
                new.init = spec_of(old) if not isinstance(old, LearnableActivation) else old.spec()
            except ValueError:
                pass
        parent_name, _, child = qualified.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return [q for q, _ in targets]
