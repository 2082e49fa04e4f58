"""Unpickle a monitor saved by shadowed_callbacks.py, in a fresh process where the user's callbacks.py shadows ours; prints one JSON line."""

import json
import pickle
import sys
import callbacks
with open(sys.argv[1], "rb") as f:
    monitor = pickle.load(f)
print(json.dumps({"type": type(monitor).__module__, "every": monitor.every_n_steps, "user": callbacks.MARK}))
