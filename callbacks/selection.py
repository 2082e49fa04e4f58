"""Which modules and parameters a monitor watches, and the stable names it logs them under."""

from __future__ import annotations

import fnmatch
import importlib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from .protocol import is_self_recording_activation

# Element-wise activation modules watched by default (nn.Softmax & co. are normalisations, not activations).
DEFAULT_ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Hardshrink, nn.Softshrink, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.GLU, nn.Threshold,
)  # fmt: skip
# Learnable activations of any library (lit_ortho's among them) are recognised by the protocol they implement,
# callbacks.protocol.SelfRecordingActivation, not by class.

# Activation classes of model libraries (timm's GELU is not an nn.GELU); used only when already imported.
LIBRARY_ACTIVATION_MODULES = ("timm.layers.activations", "timm.layers.activations_me", "transformers.activations")


def default_activation_types() -> tuple[type[nn.Module], ...]:
    """torch's activation classes, plus those of timm/transformers if the model uses them (learnable
    activations are recognised by protocol instead: :func:`is_activation`)."""
    types = list(DEFAULT_ACTIVATION_TYPES)
    for module_name in LIBRARY_ACTIVATION_MODULES:
        module = sys.modules.get(module_name)
        if module is not None:
            types += [
                c for c in vars(module).values()
                if isinstance(c, type) and issubclass(c, nn.Module) and c.__module__ == module_name
            ]  # fmt: skip
    return tuple(types)


def is_activation(module: nn.Module, types: tuple[type, ...]) -> bool:
    """An activation watched by default: an instance of ``types`` (:func:`default_activation_types`) or a
    learnable activation implementing :class:`callbacks.protocol.SelfRecordingActivation`."""
    return isinstance(module, types) or is_self_recording_activation(module)


# Name components added by wrappers; stripped so tags stay the same with and without FSDP/checkpointing/compile.
WRAPPER_NAME_PARTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")

ModuleType = Union[str, type]


def clean_name(name: str) -> str:
    """``blocks.0._fsdp_wrapped_module._checkpoint_wrapped_module.act`` -> ``blocks.0.act``."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_NAME_PARTS)


def _wrapper_types() -> tuple[type, ...]:
    from torch._dynamo.eval_frame import OptimizedModule

    types: list[type] = [OptimizedModule]
    if torch.distributed.is_available():
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
        from torch.distributed.fsdp import FullyShardedDataParallel

        types += [FullyShardedDataParallel, CheckpointWrapper]
    return tuple(types)


def module_class(module: nn.Module) -> type:
    """The user's class of ``module``: FSDP2's ``fully_shard`` swaps in a dynamic ``FSDP<Class>`` subclass."""
    cls = type(module)
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FSDPModule

        if isinstance(module, FSDPModule):
            return next(c for c in cls.__mro__ if not issubclass(c, FSDPModule))
    return cls


@dataclass
class WatchedModule:
    name: str  # cleaned name, the tag suffix
    module: nn.Module
    kind: str  # class name, groups layers of one kind in one chart
    compiled: bool  # inside a torch.compile'd region: module hooks would be ignored there


def named_modules(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """(cleaned name, module) for every real module: wrappers (FSDP1, checkpoint, compile) are skipped."""
    wrappers = _wrapper_types()
    out = []
    for name, module in root.named_modules():
        if name and not isinstance(module, wrappers):
            out.append((clean_name(name), module))
    return out


def compiled_modules(root: nn.Module) -> set[int]:
    """ids of the modules that run inside a ``torch.compile``'d region (hooks added later are ignored there)."""
    from torch._dynamo.eval_frame import OptimizedModule

    if getattr(root, "_compiler_ctx", None) is not None or getattr(root, "_compiled_call_impl", None) is not None:
        return {id(m) for m in root.modules()}
    ids: set[int] = set()
    for module in root.modules():
        if isinstance(module, OptimizedModule) or getattr(module, "_compiled_call_impl", None) is not None:
            ids.update(id(m) for m in module.modules())
    return ids


def resolve_module_types(specs: Iterable[ModuleType], root: nn.Module) -> tuple[type, ...]:
    """Turn ``"GELU"``, ``"nn.GELU"``, ``"torch.nn.GELU"``, ``"my_pkg.MyAct"`` or a class into classes.

    A bare name is looked up in ``torch.nn``, then among the classes present in ``root``.
    """
    present = {module_class(m).__name__: module_class(m) for _, m in named_modules(root)}
    resolved = []
    for spec in specs:
        if isinstance(spec, type) and issubclass(spec, nn.Module):
            resolved.append(spec)
            continue
        cls = _lookup_type(spec, present) if isinstance(spec, str) else None
        if cls is None:
            raise ValueError(
                f"Unknown module type {spec!r}: give a torch.nn class name ('GELU'), an importable path "
                f"('package.module.Class') or the name of a class in the model. Classes in the model: "
                f"{sorted(present)}"
            )
        resolved.append(cls)
    return tuple(resolved)


def _lookup_type(spec: str, present: dict[str, type]) -> Optional[type]:
    name = spec.removeprefix("torch.").removeprefix("nn.")
    if "." not in name:
        cls = getattr(nn, name, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return cls
        return present.get(name)
    module_path, _, attr = spec.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_path), attr, None)
    except ImportError:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, nn.Module) else None


def select_modules(
    root: nn.Module,
    include_activations: bool = True,
    module_types: Sequence[ModuleType] = (),
    modules: Sequence[str] = (),
) -> list[WatchedModule]:
    """Activation modules (``include_activations``: torch's element-wise activations, timm's or transformers'
    when loaded, and learnable ones implementing :class:`callbacks.protocol.SelfRecordingActivation`, such as
    lit_ortho's) plus modules of ``module_types`` plus those whose
    cleaned name matches a glob of ``modules``, in registration order; every glob must match something."""
    candidates = named_modules(root)
    activation_types = default_activation_types()
    extra_types = resolve_module_types(module_types, root)
    chosen = {
        name
        for name, m in candidates
        if (include_activations and is_activation(m, activation_types)) or (extra_types and isinstance(m, extra_types))
    }
    for pattern in modules:
        matches = {name for name, _ in candidates if fnmatch.fnmatchcase(name, pattern)}
        if not matches:
            raise ValueError(
                f"Module glob {pattern!r} matches no module; the model's {len(candidates)} modules are named: "
                f"{_sample(candidates, limit=40)}"
            )
        chosen |= matches
    compiled = compiled_modules(root)
    return [
        WatchedModule(name, m, module_class(m).__name__, id(m) in compiled) for name, m in candidates if name in chosen
    ]


# Layers with weights, watched (their outputs) when a model has no activation module at all: activations called
# as functions (F.relu, torch.tanh, nn.Transformer's default activation) have no module a hook could see.
FALLBACK_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)  # fmt: skip
# Weight layers of model libraries that are no torch.nn subclass (GPT-2's Conv1D); used only when already imported.
LIBRARY_FALLBACK_CLASSES = (("transformers.pytorch_utils", "Conv1D"),)


def fallback_layer_types() -> tuple[type[nn.Module], ...]:
    types = list(FALLBACK_LAYER_TYPES)
    for module_name, attr in LIBRARY_FALLBACK_CLASSES:
        cls = getattr(sys.modules.get(module_name), attr, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            types.append(cls)
    return tuple(types)


def kind_summary(modules: Iterable[nn.Module], limit: int = 8) -> str:
    """``"Linear x13, LayerNorm x10, Dropout x9, ..."``: module classes by count, most frequent first."""
    counts: dict[str, int] = {}
    for module in modules:
        name = module_class(module).__name__
        counts[name] = counts.get(name, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    text = ", ".join(f"{name} x{count}" for name, count in ranked[:limit])
    return text + (f", ... ({len(ranked) - limit} more kinds)" if len(ranked) > limit else "") if ranked else "none"


def choose_layers(
    root: nn.Module,
    monitor: str,
    include_activations: bool = True,
    module_types: Sequence[ModuleType] = (),
    modules: Sequence[str] = (),
) -> list[WatchedModule]:
    """:func:`select_modules`, made to work on any model: a glob of ``modules`` that matches nothing and an
    unknown type name are still errors (naming what the model has), but a model that merely lacks a kind of
    layer is not. ``module_types`` present nowhere in the model get a warning; when nothing at all is
    selected (no activation module: the activations are functions, as in ``nn.Transformer``), the monitor warns
    once and watches the outputs of the model's Linear/Conv layers instead (nothing, if it has none either)."""
    layers = select_modules(root, include_activations, module_types, modules)
    candidates = named_modules(root)
    notes = []
    if module_types:
        absent = [
            t.__name__ for t in resolve_module_types(module_types, root) if not any(isinstance(m, t) for _, m in candidates)
        ]  # fmt: skip
        if absent:
            notes.append(f"no module of the model is of module_types {absent}")
    if layers:
        if notes:
            rank_zero_warn(f"{monitor}: {'; '.join(notes)}; watching {len(layers)} other layer(s): {_sample_layers(layers)}")
        return layers
    wanted = " or ".join(
        (["activation module (nn.ReLU, nn.GELU, ..., timm's/transformers', or a learnable one implementing "
          "callbacks.protocol.SelfRecordingActivation)"] if include_activations else [])
        + ([f"module of module_types {[str(t) for t in module_types]}"] if module_types else [])
    ) or "layer chosen to be watched (include_activations=False and no module_types/modules)"  # fmt: skip
    fallback_types = fallback_layer_types()
    compiled = compiled_modules(root)
    fallback = [
        WatchedModule(name, m, module_class(m).__name__, id(m) in compiled)
        for name, m in candidates
        if isinstance(m, fallback_types)
    ]
    found = f"found {len(candidates)} module(s): {kind_summary(m for _, m in candidates)}"
    if fallback:
        what = (
            f"watching the outputs of its {len(fallback)} Linear/Conv layer(s) instead "
            f"({kind_summary(layer.module for layer in fallback)}): {_sample_layers(fallback)}"
        )
    else:
        what = "it has no Linear/Conv layer either, so this monitor watches nothing"
    rank_zero_warn(
        f"{monitor}: the model has no {wanted} - activations called as functions (F.relu, torch.tanh, "
        f"nn.Transformer's default) have no module to hook; {found}. {what[0].upper()}{what[1:]}. "
        "Choose layers with `modules` (name globs) or `module_types`."
    )
    return fallback


def _sample_layers(layers: Sequence[WatchedModule], limit: int = 8) -> str:
    return _sample([(layer.name, None) for layer in layers], limit)


def usable_layers(layers: Sequence[WatchedModule], monitor: str, compiled_ok: bool) -> list[WatchedModule]:
    """Drop, with a warning, the layers a torch.compile'd region hides from hooks; with ``compiled_ok``
    the learnable activations implementing :class:`callbacks.protocol.SelfRecordingActivation` (lit_ortho's)
    stay (they record their own statistics there)."""

    def hidden(layer: WatchedModule) -> bool:
        return layer.compiled and not (compiled_ok and is_self_recording_activation(layer.module))

    names = [layer.name for layer in layers if hidden(layer)]
    if names:
        rank_zero_warn(
            f"{monitor}: {len(names)} watched layer(s) run inside a torch.compile'd region, where hooks are ignored, "
            f"and are not monitored: {names[:8]}{' ...' if len(names) > 8 else ''}"
            + (
                " (activations implementing callbacks.protocol.SelfRecordingActivation, such as lit_ortho's, are: "
                "they record their own statistics)." if compiled_ok else "."
            )
        )
    return [layer for layer in layers if not hidden(layer)]


def select_parameters(root: nn.Module, patterns: Sequence[str] = ()) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters (cleaned names), all of them or those matching a glob of ``patterns``."""
    params = [(clean_name(n), p) for n, p in root.named_parameters() if p.requires_grad]
    if not patterns:
        return params
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n, _ in params):
            raise ValueError(
                f"Parameter glob {pattern!r} matches no trainable parameter; they are named like: {_sample(params)}"
            )
    return [(n, p) for n, p in params if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]


def activation_parameters(root: nn.Module, named_params: Sequence[tuple[str, nn.Parameter]]) -> list[str]:
    """Names, among ``named_params``, of the parameters of learnable activations (modules implementing
    :class:`callbacks.protocol.SelfRecordingActivation`): their coefficients."""
    owners = {name for name, m in named_modules(root) if is_self_recording_activation(m)}
    return [name for name, _ in named_params if name.rpartition(".")[0] in owners]


def parameter_kinds(named_params: Sequence[tuple[str, nn.Parameter]], modules: dict[str, nn.Module],
                    root: nn.Module) -> dict[str, str]:  # fmt: skip
    """Parameter name -> ``<owning module's class>.<leaf>`` (``Linear.weight``): parameters of a kind share a chart."""
    kinds = {}
    for name, _ in named_params:
        owner, _, leaf = name.rpartition(".")
        kinds[name] = f"{module_class(modules.get(owner, root)).__name__}.{leaf}"
    return kinds


def _sample(named: Sequence[tuple[str, object]], limit: int = 12) -> str:
    names = [n for n, _ in named]
    more = f" ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
