"""The one way the tests start other processes: a clean environment, a hard timeout, output kept in a log.

    result = run(script("import_callbacks.py"), tmp_path, timeout=300)
    assert result.ok, result.describe()
    nodes = launch_nodes(python("-m", "lit_ortho.cli", "fit", ...), tmp_path, num_nodes=2).wait(600)

Each process gets its own process group (a timeout kills it and its children) and writes stdout and
stderr to ``<cwd>/<tag>[.node<R>].log``. Scripts the tests run live in ``tests/scripts/``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
SCRIPTS = TESTS / "scripts"
LAUNCH_VARS = {"MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK"}


def python(*args: str) -> list[str]:
    """``python <args>`` with this interpreter."""
    return [sys.executable, *map(str, args)]


def script(name: str, *args: str) -> list[str]:
    """``python tests/scripts/<name> <args>``."""
    return python(SCRIPTS / name, *args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment minus what a distributed run left in it (ranks, ports, SLURM), with the
    repository and tests/ importable, one thread per process (2-core CI), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith(("PL_", "TORCHELASTIC", "SLURM_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]),
        OMP_NUM_THREADS="1",
        LITDATA_DISABLE_VERSION_CHECK="1",
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Launched:
    """Processes started together; ``wait`` kills what outlives its timeout (returncode -9)."""

    def __init__(self, procs: list[subprocess.Popen], logs: list[Path]):
        self.procs, self.logs = procs, logs
        self.returncodes: list[Optional[int]] = [None] * len(procs)
        self.exit_times: list[Optional[float]] = [None] * len(procs)

    def wait(self, timeout: float, ranks: Optional[Sequence[int]] = None) -> "Launched":
        """Wait for every process (or those of ``ranks``); after ``timeout`` seconds kill what is left, so a hang
        fails a test instead of blocking it."""
        deadline = time.monotonic() + timeout
        waited = list(range(len(self.procs))) if ranks is None else list(ranks)
        while any(self.returncodes[i] is None for i in waited):
            for i, p in enumerate(self.procs):
                if self.returncodes[i] is None and p.poll() is not None:
                    self.returncodes[i], self.exit_times[i] = p.returncode, time.time()
            if time.monotonic() > deadline:
                self.kill()
                break
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
                self.returncodes[i] = -9
            elif self.returncodes[i] is None:
                self.returncodes[i] = p.returncode

    @property
    def ok(self) -> bool:
        return all(rc == 0 for rc in self.returncodes)

    def output(self, rank: int = 0, tail: Optional[int] = 4000) -> str:
        text = self.logs[rank].read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def describe(self) -> str:
        return "\n".join(f"--- process {r} (exit {rc}) ---\n{self.output(r)}" for r, rc in enumerate(self.returncodes))


def _start(argv: Sequence[str], cwd: Path, log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def launch_nodes(argv: Sequence[str], cwd: Path, num_nodes: int = 2, tag: str = "run", **env_extra: str) -> Launched:
    """Start ``num_nodes`` processes of ``argv`` as the nodes of one job on loopback (MASTER_ADDR=127.0.0.1, a
    free MASTER_PORT, NODE_RANK=0..n-1), output in ``<cwd>/<tag>.node<R>.log``."""
    port = str(free_port())
    procs, logs = [], []
    for node in range(num_nodes):
        env = clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node), **env_extra)
        log = Path(cwd) / f"{tag}.node{node}.log"
        procs.append(_start(argv, cwd, log, env))
        logs.append(log)
    return Launched(procs, logs)


def start(argv: Sequence[str], cwd: Path, tag: str = "run", log_dir: Optional[Path] = None, **env_extra: str) -> Launched:
    """Start one process of ``argv`` in ``cwd``, output in ``<log_dir or cwd>/<tag>.log``; call ``wait`` on the result."""
    log = Path(log_dir or cwd) / f"{tag}.log"
    return Launched([_start(argv, cwd, log, clean_env(**env_extra))], [log])


def run(argv: Sequence[str], cwd: Path, timeout: float, tag: str = "run", log_dir: Optional[Path] = None,
        **env_extra: str) -> Launched:  # fmt: skip
    """Run one process of ``argv`` to the end (killed after ``timeout`` seconds)."""
    return start(argv, cwd, tag, log_dir, **env_extra).wait(timeout)
