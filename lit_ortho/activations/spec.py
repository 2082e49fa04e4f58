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
import re
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import nn

from lit_ortho.errors import UsageError, did_you_mean, unknown_choice

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
        raise UsageError(f"activation names must be identifiers, got {name!r}")
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise UsageError(f"activation {name!r} is already registered; pass overwrite=True to replace it")
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
    parts = [p.strip() for p in parts]
    if parts == [""]:
        return []
    if "" in parts:
        raise UsageError(f"malformed activation spec arguments {text!r}: an empty argument between commas")
    return parts


_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def _parse_value(text: str) -> Any:
    """A keyword value: an int, a float, true/false, none, a quoted string, a bare word (``gelu``,
    ``tanh``) or a nested spec (``leaky_relu(negative_slope=0.1)``). Anything else is malformed."""
    if text in ("None", "none", "null"):
        return None
    if text in ("true", "True", "false", "False"):
        return text in ("true", "True")
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if _WORD.fullmatch(text) or ("(" in text and text.endswith(")") and _WORD.fullmatch(text.partition("(")[0].strip())):
        return text
    raise UsageError(
        f"cannot read the value {text!r} in an activation spec: give a number, true/false, none, a name "
        f"(gelu) or a nested spec (leaky_relu(negative_slope=0.1))"
    )


def _parse_string(spec: str) -> tuple[str, dict]:
    text = spec.strip()
    if not text:
        raise UsageError("empty activation spec; give a name such as 'gelu' or 'hermite:3'")
    if "(" in text:
        if not text.endswith(")") or text.count("(") != text.count(")"):
            raise UsageError(f"malformed activation spec {spec!r}: expected 'name(key=value, ...)'")
        name, _, inner = text.partition("(")
        kwargs: dict[str, Any] = {}
        for i, part in enumerate(_split_top_level(inner[:-1])):
            key, eq, value = part.partition("=")
            if not eq:
                if i == 0:  # hermite(3): a lone first argument is the degree
                    kwargs["degree"] = _parse_value(part)
                    continue
                raise UsageError(f"malformed activation spec {spec!r}: {part!r} is not 'key=value'")
            key = key.strip()
            if not key.isidentifier():
                raise UsageError(f"malformed activation spec {spec!r}: {key!r} is not a keyword name")
            if key in kwargs:
                raise UsageError(f"malformed activation spec {spec!r}: the keyword {key!r} is given twice")
            kwargs[key] = _parse_value(value.strip())
        return name.strip(), kwargs
    if ":" in text:
        name, _, degree = text.partition(":")
        if not _INT.fullmatch(degree.strip()):
            raise UsageError(
                f"malformed activation spec {spec!r}: after ':' comes an integer degree, got {degree!r} "
                f"(write 'hermite:3', or 'hermite(degree=3, init=gelu)' for more keywords)"
            )
        return name.strip(), {"degree": int(degree)}
    return text, {}


def parse_activation_spec(spec: Union[str, Mapping[str, Any]]) -> tuple[str, dict]:
    """Normalise a string or mapping spec to ``(registered name, keyword arguments)``."""
    if isinstance(spec, str):
        name, kwargs = _parse_string(spec)
    elif isinstance(spec, Mapping):
        kwargs = dict(spec)
        if "name" not in kwargs:
            raise UsageError(f"an activation mapping needs a 'name' key (e.g. {{name: hermite, degree: 3}}); got keys {sorted(kwargs)}")
        name = kwargs.pop("name")
        if not isinstance(name, str):
            raise UsageError(f"activation 'name' must be a string, got {name!r}")
    else:
        raise UsageError(
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
            raise UsageError(f"{name}: unknown keyword {key!r}; valid keywords: {valid}.{did_you_mean(key, accepted)}")


# ---- building ----------------------------------------------------------------------------------------
def build_activation(spec: ActivationSpec, **overrides: Any) -> nn.Module:
    """Build a new activation module from a spec; ``overrides`` replace the spec's keywords.

    Every keyword is checked here, not at the first forward pass: names against the factory's
    signature, value types against its defaults, and a fixed activation is run once on a tiny input.
    """
    if isinstance(spec, nn.Module):
        if overrides:
            raise UsageError("keyword overrides need a string or mapping spec, not a module instance")
        return copy.deepcopy(spec)
    if callable(spec) and not isinstance(spec, (str, Mapping)):
        label = getattr(spec, "__qualname__", repr(spec))
        try:
            module = spec(**overrides)
        except TypeError as err:
            raise UsageError(
                f"{label} is not an activation factory: calling it with {overrides or 'no arguments'} failed ({err}); "
                f"give an activation spec ('gelu', 'hermite:3'), an activation class (nn.SiLU) or a zero-argument factory"
            ) from None
        if not isinstance(module, nn.Module):
            raise UsageError(f"activation factory {label} returned {type(module).__name__}, not an nn.Module")
        return module
    name, kwargs = parse_activation_spec(spec)
    kwargs.update(overrides)
    _check_keywords(name, kwargs)
    _check_value_types(name, kwargs)
    try:
        module = _REGISTRY[name](**kwargs)
    except TypeError as err:  # a missing required argument, e.g. "hermite" without a degree
        raise UsageError(f"cannot build activation {name!r} from {kwargs}: {err}") from None
    if not callable(getattr(module, "config", None)):  # a fixed activation: bad values show on a first call
        try:
            with torch.no_grad():
                module(torch.zeros(2))
        except Exception as err:  # noqa: BLE001 - any failure means a bad keyword value
            raise UsageError(f"{name}: bad keyword value in {kwargs}: {err}") from None
    return module


def _check_value_types(name: str, kwargs: Mapping[str, Any]) -> None:
    """A keyword's value must have the type of the factory's default for it (a number for a float, an
    integer for an int, true/false for a bool, text for a string)."""
    try:
        params = inspect.signature(_REGISTRY[name]).parameters
    except (TypeError, ValueError):
        return
    for key, value in kwargs.items():
        default = params[key].default if key in params else inspect.Parameter.empty
        if default is inspect.Parameter.empty or default is None or value is None:
            continue
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            raise UsageError(f"{name}: {key} must be {kind}, got {value!r}")


def activation_factory(spec: ActivationSpec) -> Callable[[], nn.Module]:
    """A zero-argument factory for timm's ``act_layer=`` (each call builds a fresh module).

    The spec is validated now by building it once, so a bad value fails at configuration time, not
    deep inside a model.
    """
    build_activation(spec)
    return functools.partial(build_activation, spec)


def spec_of(module: nn.Module) -> Union[dict, str]:
    """The spec that rebuilds ``module``: its config for learnable activations; for fixed ones the
    registered name that computes the same function (so timm's own ``GELU`` class maps to ``"gelu"``)."""
    config = getattr(module, "config", None)
    if callable(config):
        return config()
    candidates = []
    for name, factory in _REGISTRY.items():
        try:
            candidate = factory()
        except TypeError:  # needs arguments (a learnable family)
            continue
        if type(candidate) is type(module):
            if repr(candidate) == repr(module):
                return name  # the very class and settings: exact
            spec = f"{name}({module.extra_repr()})"  # the same class, other settings: LeakyReLU(negative_slope=0.1)
            try:
                if repr(build_activation(spec)) == repr(module):
                    return spec
            except ValueError:
                pass
        candidates.append((name, candidate))
    probe = torch.linspace(-4, 4, 161, dtype=torch.float64)
    try:
        with torch.no_grad():
            values = copy.deepcopy(module).double()(probe)
    except Exception:  # noqa: BLE001 - not an element-wise activation
        values = None
    if values is not None and values.shape == probe.shape:
        for name, candidate in candidates:  # another class computing the same function (timm's GELU)
            with torch.no_grad():
                if torch.allclose(candidate.double()(probe), values, rtol=0, atol=1e-9):
                    return name
    raise UsageError(f"{type(module).__name__} is not a registered activation; registered: {', '.join(list_activations())}")


_register_fixed_activations()
