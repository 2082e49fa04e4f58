"""A project whose own callbacks.py comes first on sys.path uses lit_ortho.callbacks: from YAML, in fit, pickled.

Run by tests/test_monitors_any_model.py with the project directory first on PYTHONPATH; prints one JSON line."""

import json
import pickle
import sys
import warnings
import callbacks
assert callbacks.MARK == "the user's", callbacks.__file__
from lit_ortho.callbacks import ActivationShapeMonitor, ActivationVarianceMonitor, GradientVarianceMonitor
from lit_ortho.callbacks.protocol import STATISTICS_KEYS
import callbacks as again
assert again is callbacks and sys.modules["callbacks"].MARK == "the user's"

# LightningCLI-style YAML naming both the user's callback and ours
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback
parser = ArgumentParser()
parser.add_argument("--callbacks", type=list[Callback])
cfg = parser.parse_string("""
callbacks:
  - class_path: lit_ortho.callbacks.ActivationVarianceMonitor
    init_args: {every_n_steps: 1, image_every_n_steps: 0}
  - class_path: lit_ortho.callbacks.GradientVarianceMonitor
    init_args: {every_n_steps: 1, image_every_n_steps: 0, activation_gradients: true}
  - class_path: lit_ortho.callbacks.ActivationShapeMonitor
  - class_path: callbacks.PrintingCallback
""")
monitors = parser.instantiate_classes(cfg).callbacks
assert [type(m) for m in monitors[:3]] == [ActivationVarianceMonitor, GradientVarianceMonitor, ActivationShapeMonitor]
assert type(monitors[3]) is callbacks.PrintingCallback

import lightning.pytorch as pl
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader
from lightning.pytorch.demos.boring_classes import RandomDataset
out = sys.argv[1]
trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=CSVLogger(out, name="csv"), callbacks=monitors,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     log_every_n_steps=1)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    trainer.fit(BoringModel(), DataLoader(RandomDataset(32, 8), batch_size=4))
with open(f"{out}/monitor.pkl", "wb") as f:
    pickle.dump(ActivationVarianceMonitor(every_n_steps=3), f)
print(json.dumps({
    "module": ActivationVarianceMonitor.__module__,
    "keys": list(STATISTICS_KEYS),
    "warnings": [str(w.message) for w in caught],
    "ours_loaded_as": sorted(n for n in sys.modules if n.startswith("lit_ortho.callbacks")),
}))
