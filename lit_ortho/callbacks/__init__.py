"""The variance monitors under lit_ortho's name, for projects whose own ``callbacks`` module shadows ours.

In LightningCLI YAML::

    trainer:
      callbacks:
        - class_path: lit_ortho.callbacks.ActivationVarianceMonitor
          init_args: {every_n_steps: 50}

These are the classes of the top-level :mod:`callbacks` package (the same objects whenever that package is
importable under its own name), found by file location: the implementation lives in the ``callbacks``
directory installed next to ``lit_ortho``, and every import inside it is relative, so it loads under any
module name.

- If ``import callbacks`` gives ours (or already gave it), this module re-exports it.
- If a user's ``callbacks`` comes first on ``sys.path`` (or is already imported), ours is loaded from its file
  under the internal name ``lit_ortho.callbacks._monitors`` (importable again from a fresh process, so the
  monitors pickle, e.g. for ``ddp_spawn``), and the user's module is left alone.

Either way the submodules are reachable here too: ``lit_ortho.callbacks.protocol`` is ``callbacks.protocol``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

#: The module name our package is loaded under when ``callbacks`` means someone else's module.
INTERNAL_NAME = __name__ + "._monitors"

# Installed (or editable) layout: <root>/lit_ortho/callbacks/__init__.py and <root>/callbacks/__init__.py.
_SOURCE = Path(__file__).resolve().parents[2] / "callbacks"
_INIT = _SOURCE / "__init__.py"


def _is_ours(origin: object) -> bool:
    try:
        return origin is not None and Path(str(origin)).resolve() == _INIT.resolve()
    except (OSError, ValueError):
        return False


def _load() -> ModuleType:
    if not _INIT.is_file():
        raise ImportError(f"lit_ortho.callbacks: the monitors package is missing ({_INIT} not found)")
    existing = sys.modules.get("callbacks")
    if existing is not None and _is_ours(getattr(existing, "__file__", None)):
        return existing
    if existing is None:
        try:
            spec = importlib.util.find_spec("callbacks")  # finds, does not import
        except (ImportError, ValueError):
            spec = None
        if spec is not None and _is_ours(spec.origin):
            return importlib.import_module("callbacks")
    # ``callbacks`` is (or would be) someone else's module: load ours by file, under our own name.
    loaded = sys.modules.get(INTERNAL_NAME)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(INTERNAL_NAME, _INIT, submodule_search_locations=[str(_SOURCE)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[INTERNAL_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for name in [n for n in sys.modules if n == INTERNAL_NAME or n.startswith(INTERNAL_NAME + ".")]:
            del sys.modules[name]
        raise
    return module


_impl = _load()

# The submodules under this name as well (the same module objects): lit_ortho.callbacks.protocol, ...
for _name, _module in list(sys.modules.items()):
    if _name.startswith(_impl.__name__ + ".") and _module is not None:
        _sub = _name[len(_impl.__name__) + 1 :]
        if "." not in _sub:
            sys.modules.setdefault(f"{__name__}.{_sub}", _module)
            globals().setdefault(_sub, _module)
del _name, _module

ActivationShapeMonitor = _impl.ActivationShapeMonitor
ActivationVarianceMonitor = _impl.ActivationVarianceMonitor
GradientVarianceMonitor = _impl.GradientVarianceMonitor
ParameterUpdateMonitor = _impl.ParameterUpdateMonitor
SelfRecordingActivation = _impl.SelfRecordingActivation

__all__ = ["ActivationShapeMonitor", "ActivationVarianceMonitor", "GradientVarianceMonitor", "ParameterUpdateMonitor",
           "SelfRecordingActivation"]
