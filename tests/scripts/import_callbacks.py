"""``import callbacks`` in a fresh interpreter (tests/test_callbacks_standalone.py).

    python tests/scripts/import_callbacks.py OUT.json      (the repository on PYTHONPATH: tests/launch.py)

Builds every monitor, then writes to OUT.json the lit_ortho modules in sys.modules, the operators in the
``lit_ortho::`` namespace, and (the control: the check sees operators defined afterwards) those of a namespace
defined here.
"""

import json
import sys

import torch

import callbacks  # noqa: F401
from callbacks import ActivationShapeMonitor, ActivationVarianceMonitor, GradientVarianceMonitor

ActivationShapeMonitor()
ActivationVarianceMonitor(high=1.0)
GradientVarianceMonitor()


def ops(prefix):
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix))


modules = sorted(m for m in sys.modules if m == "lit_ortho" or m.startswith("lit_ortho."))
lit_ortho_ops = ops("lit_ortho::")
library = torch.library.Library("callbacks_selftest", "DEF")
library.define("probe(Tensor x) -> Tensor")
with open(sys.argv[1], "w") as f:
    json.dump({"modules": modules, "ops": lit_ortho_ops, "control": ops("callbacks_selftest::")}, f)
