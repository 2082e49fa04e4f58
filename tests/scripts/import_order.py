"""Import ``callbacks`` and ``lit_ortho.callbacks`` in the order given on the command line; prints one JSON line:
whether both names give the same classes, also from YAML."""

import json
import sys
first, second = sys.argv[1:]
import importlib
a = importlib.import_module(first)
b = importlib.import_module(second)
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback
parser = ArgumentParser()
parser.add_argument("--callbacks", type=list[Callback])
cfg = parser.parse_string(
    "callbacks: [{class_path: callbacks.ActivationVarianceMonitor}, "
    "{class_path: lit_ortho.callbacks.ActivationVarianceMonitor}]")
x, y = parser.instantiate_classes(cfg).callbacks
print(json.dumps({
    "same": all(getattr(a, n) is getattr(b, n) for n in a.__all__),
    "yaml_same": type(x) is type(y) is a.ActivationVarianceMonitor,
    "module": a.ActivationVarianceMonitor.__module__,
    "internal": "lit_ortho.callbacks._monitors" in sys.modules,
}))
