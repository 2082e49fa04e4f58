"""The activation spec: one value that Python, YAML and the command line all accept.

    build_activation("gelu")
    build_activation("hermite:3")
    build_activation("hermite(degree=3, init=gelu)")
    build_activation({"name": "fourier", "degree": 5, "per_channel": 3072})
    build_activation(nn.SiLU)                       # a module class or zero-argument factory

A registry maps names to factories (timm-style); ``register_activation`` adds your own family. The
registry sits below the activation classes: they register themselves, and the initialisation code
builds fit targets (``init="gelu"``) from it.
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
import yaml
from torch import nn

from lit_ortho.errors import did_you_mean, unknown_choice

__all__ = [
    "ActivationSpec",
    "build_activation",
    "activation_factory",
    "register_activation",
    "list_activations",
    "parse_activation_spec",
    "spec_of",
]

ActivationSpec = Union[str, Mapping[str, Any], Callable[[], nn.Module], nn.Module]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


# ---- registry --------------------------------------------------------------------------------------
def register_activation(name: str, factory: Optional[Callable[..., nn.Module]] = None, *, overwrite: bool = False):
    """Register ``factory`` (a module class or function returning a module) under ``name``.

    Usable as a decorator: ``@register_activation("mine") class Mine(nn.Module): ...``. The factory's
    keyword arguments become the spec's keywords (``"mine(degree=4)"``).
    """
    if factory is None:
        return functools.partial(register_activation, name, overwrite=overwrite)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"activation names must be identifiers, got {name!r}")
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"activation {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[key] = factory
    return factory


def list_activations() -> list[str]:
    """Every registered activation name, sorted."""
    return sorted(_REGISTRY)


def _register_fixed_activations() -> None:
    """torch's element-wise activations by name; the learnable families register themselves."""
    fixed = {
        "gelu": nn.GELU,
        "gelu_tanh": functools.partial(nn.GELU, approximate="tanh"),
        "relu": nn.ReLU,
        "relu6": nn.ReLU6,
        "leaky_relu": nn.LeakyReLU,
        "elu": nn.ELU,
        "selu": nn.SELU,
        "celu": nn.CELU,
        "silu": nn.SiLU,
        "swish": nn.SiLU,
        "mish": nn.Mish,
        "hardswish": nn.Hardswish,
        "softplus": nn.Softplus,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "identity": nn.Identity,
    }
    for name, factory in fixed.items():
        register_activation(name, factory)


# ---- parsing ---------------------------------------------------------------------------------------
def _split_top_level(text: str) -> list[str]:
    """Split ``a=1, b=f(x, y)`` on commas that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _parse_value(text: str) -> Any:
    if text in ("None", "none"):
        return None
    if "(" in text:  # a nested spec such as init=leaky_relu(negative_slope=0.1)
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"cannot read the value {text!r} in an activation spec: {err}") from None


def _parse_string(spec: str) -> tuple[str, dict]:
    text = spec.strip()
    if not text:
        raise ValueError("empty activation spec; give a name such as 'gelu' or 'hermite:3'")
    if "(" in text:
        if not text.endswith(")") or text.count("(") != text.count(")"):
            raise ValueError(f"malformed activation spec {spec!r}: expected 'name(key=value, ...)'")
        name, _, inner = text.partition("(")
        kwargs: dict[str, Any] = {}
        for i, part in enumerate(_split_top_level(inner[:-1])):
            key, eq, value = part.partition("=")
            if not eq:
                if i == 0:  # hermite(3): a lone first argument is the degree
                    kwargs["degree"] = _parse_value(part)
                    continue
                raise ValueError(f"malformed activation spec {spec!r}: {part!r} is not 'key=value'")
            key = key.strip()
            if not key.isidentifier():
                raise ValueError(f"malformed activation spec {spec!r}: {key!r} is not a keyword name")
            kwargs[key] = _parse_value(value.strip())
        return name.strip(), kwargs
    if ":" in text:
        name, _, degree = text.partition(":")
        value = _parse_value(degree.strip())
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"malformed activation spec {spec!r}: after ':' comes an integer degree, got {degree!r}")
        return name.strip(), {"degree": value}
    return text, {}


def parse_activation_spec(spec: Union[str, Mapping[str, Any]]) -> tuple[str, dict]:
    """Normalise a string or mapping spec to ``(registered name, keyword arguments)``."""
    if isinstance(spec, str):
        name, kwargs = _parse_string(spec)
    elif isinstance(spec, Mapping):
        kwargs = dict(spec)
        if "name" not in kwargs:
            raise ValueError(f"an activation mapping needs a 'name' key (e.g. {{name: hermite, degree: 3}}); got keys {sorted(kwargs)}")
        name = kwargs.pop("name")
        if not isinstance(name, str):
            raise ValueError(f"activation 'name' must be a string, got {name!r}")
    else:
        raise ValueError(
            f"an activation spec is a string ('hermite:3'), a mapping ({{name: hermite, degree: 3}}) or a module "
            f"class/factory; got {type(spec).__name__} {spec!r}"
        )
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise unknown_choice("activation", name, list_activations())
    _check_keywords(key, kwargs)
    return key, kwargs


def _accepted_keywords(factory: Callable) -> Optional[list[str]]:
    """The keywords a factory takes, or None when it takes **kwargs (anything goes)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def _check_keywords(name: str, kwargs: Mapping[str, Any]) -> None:
    accepted = _accepted_keywords(_REGISTRY[name])
    if accepted is None:
        return
    for key in kwargs:
        if key not in accepted:
            valid = ", ".join(accepted) if accepted else "none"
            raise ValueError(f"{name}: unknown keyword {key!r}; valid keywords: {valid}.{did_you_mean(key, accepted)}")


# ---- building ----------------------------------------------------------------------------------------
def build_activation(spec: ActivationSpec, **overrides: Any) -> nn.Module:
    """Build a new activation module from a spec; ``overrides`` replace the spec's keywords."""
    if isinstance(spec, nn.Module):
        if overrides:
            raise ValueError("keyword overrides need a string or mapping spec, not a module instance")
        return copy.deepcopy(spec)
    if callable(spec) and not isinstance(spec, (str, Mapping)):
        module = spec(**overrides)
        if not isinstance(module, nn.Module):
            raise ValueError(f"activation factory {spec!r} returned {type(module).__name__}, not an nn.Module")
        return module
    name, kwargs = parse_activation_spec(spec)
    kwargs.update(overrides)
    _check_keywords(name, kwargs)
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as err:  # a missing required argument, e.g. "hermite" without a degree
        raise ValueError(f"cannot build activation {name!r} from {kwargs}: {err}") from None


def activation_factory(spec: ActivationSpec) -> Callable[[], nn.Module]:
    """A zero-argument factory for timm's ``act_layer=`` (each call builds a fresh module).

    The spec is validated now, so a bad value fails at configuration time, not deep inside a model.
    """
    if isinstance(spec, (str, Mapping)):
        parse_activation_spec(spec)
    return functools.partial(build_activation, spec)


def spec_of(module: nn.Module) -> Union[dict, str]:
    """The spec that rebuilds ``module``: its config for learnable activations; for fixed ones the
    registered name that computes the same function (so timm's own ``GELU`` class maps to ``"gelu"``)."""
    config = getattr(module, "config", None)
    if callable(config):
        return config()
    probe = torch.linspace(-4, 4, 161, dtype=torch.float64)
    try:
        with torch.no_grad():
            values = copy.deepcopy(module).double()(probe)
    except Exception:  # not an element-wise activation
        values = None
    for name, factory in _REGISTRY.items():
        try:
            candidate = factory()
        except TypeError:  # needs arguments (a learnable family)
            continue
        if type(candidate) is type(module) and repr(candidate) == repr(module):
            return name
        if values is not None and values.shape == probe.shape:
            with torch.no_grad():
                if torch.allclose(candidate.double()(probe), values, rtol=0, atol=1e-9):
                    return name
    raise ValueError(f"{type(module).__name__} is not a registered activation; registered: {', '.join(list_activations())}")


_register_fixed_activations()
