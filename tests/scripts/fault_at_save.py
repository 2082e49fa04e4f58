"""Runs ``lit-ortho <args>`` with a fault at the save of last.ckpt at step FAULT_STEP (FAULT_MODE):
  die:   SIGKILL itself before that save starts (after step=N.ckpt is written);
  pause: stop once PAUSE_AFTER bytes of any file under FAULT_WATCH are written (open().write or the
         os.sendfile of a cross-filesystem move), write FAULT_MARKER, and wait to be killed.

Started by tests/test_checkpoints.py through tests/launch.py."""

import builtins
import os
import signal
import sys
import time

import lightning.pytorch as pl

MODE, STEP, WATCH = os.environ["FAULT_MODE"], int(os.environ["FAULT_STEP"]), os.path.realpath(os.environ["FAULT_WATCH"])
MARKER, LIMIT = os.environ["FAULT_MARKER"], int(os.environ["FAULT_PAUSE_AFTER"])
armed = False
real_save = pl.Trainer.save_checkpoint


def save_checkpoint(self, filepath, *args, **kwargs):
    global armed
    if os.path.basename(str(filepath)) == "last.ckpt" and self.global_step == STEP:
        if MODE == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        armed = True
    return real_save(self, filepath, *args, **kwargs)


pl.Trainer.save_checkpoint = save_checkpoint


def watched(path):
    return os.path.realpath(path).startswith(WATCH + os.sep)


def pause(path):
    with real_open(MARKER, "w") as f:
        f.write(path)
    time.sleep(3600)


real_open = builtins.open


class Paused:
    def __init__(self, f, path):
        self._f, self._path, self._n = f, path, 0

    def write(self, data):
        if armed and self._n + len(data) > LIMIT:
            self._f.write(memoryview(data)[: max(LIMIT - self._n, 0)])
            self._f.flush()
            pause(self._path)
        self._n += len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def open_(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax") and watched(os.fspath(file)):
        return Paused(f, os.fspath(file))
    return f


builtins.open = open_
real_sendfile, sent = os.sendfile, {}


def sendfile(out_fd, in_fd, offset, count, *args):
    if armed and watched(os.readlink(f"/proc/self/fd/{out_fd}")):
        n = sent.get(out_fd, 0)
        if n + count > LIMIT:
            if LIMIT > n:
                real_sendfile(out_fd, in_fd, offset, LIMIT - n)
            pause(os.readlink(f"/proc/self/fd/{out_fd}"))
        sent[out_fd] = n + count
    return real_sendfile(out_fd, in_fd, offset, count, *args)


os.sendfile = sendfile
from lit_ortho.cli import main  # after the patches above

main(sys.argv[1:])
