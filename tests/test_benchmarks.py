"""The benchmark scripts run: the roofline's byte counts, the allocator choice and --layouts of
benchmarks/activations.py, and benchmarks/gpu_check.sh --dry-run end to end on CPU."""

import ctypes
import importlib.util
import json
import mmap
import sys
from pathlib import Path

import pytest
import torch

from launch import Launched, python, run

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def bench(tmp_path: Path, *args: str, timeout: float = 300, **env: str) -> tuple[Launched, str]:
    """``python <args>`` from the repository root (tests/launch.py), ``env`` added to its environment; the process
    and its whole output."""
    result = run(python(*args), ROOT, timeout, tag="bench", log_dir=tmp_path, **env)
    return result, result.output(tail=None)


# ---- benchmarks/roofline.py ---------------------------------------------------------------------------------
def test_roofline_gelu_bytes_are_two_and_three_elements():
    """By hand: GELU's forward reads x and writes y, its backward reads x and dy and writes dx."""
    roofline = load("roofline")
    for dtype, elem in (("bf16", 2), ("fp32", 4)):
        assert roofline.bytes_per_element("gelu", "forward", elem, numel=12288 * 3072) == 2 * elem
        assert roofline.bytes_per_element("gelu", "backward", elem, numel=12288 * 3072) == 3 * elem
    table = roofline.rows(12288 * 3072)
    gelu = {(r["direction"], r["dtype"]): r["bytes"] for r in table if r["family"] == "gelu"}
    assert gelu == {("forward", "bf16"): 4, ("backward", "bf16"): 6, ("forward", "fp32"): 8, ("backward", "fp32"): 12}
    for r in table:  # the kernels move what GELU moves, plus a few partial sums in backward
        elem = roofline.DTYPES[r["dtype"]]
        if r["direction"] == "forward":
            assert r["bytes"] == 2 * elem
        else:
            assert 3 * elem <= r["bytes"] < 3 * elem + 0.01
        assert r["H100_ratio"] >= 0.999 and r["H200_ratio"] >= 0.999  # GELU itself is memory-bound
    assert {(r["label"]) for r in table} == {"gelu", "hermite:3", "fourier:5", "tropical:5", "tropical_rational:6"}


def test_roofline_counts_follow_the_kernels():
    roofline = load("roofline")
    # Fourier: MUFU sin/cos only for 16-bit inputs; 1 + 3N coefficient sums in backward
    assert roofline.fourier_cost("forward", 2, 5).mufu == 5 and roofline.fourier_cost("forward", 4, 5).mufu == 0
    assert roofline.fourier_cost("backward", 2, 5).special == {"sin": 5, "cos": 5}
    assert roofline.fourier_cost("backward", 4, 5).groups == 16
    # Hermite-3 forward: a1 x + a0, then two recurrence steps of (FFMA, FMUL) and an FFMA each
    h = roofline.hermite_cost("forward", 4, 3)
    assert (h.ffma, h.fmul, h.flops) == (5, 2, 12)
    assert roofline.tropical_rational_cost("backward", 2, 6).groups == 28
    assert roofline.gelu_cost("backward", 2).special == {"erf": 1, "exp": 1}


def test_roofline_script_prints_the_table(tmp_path):
    result, out = bench(tmp_path, BENCH / "roofline.py", timeout=120)
    assert result.ok, out
    assert "| gelu | forward | bf16 | 4 |" in out
    assert "| gelu | backward | fp32 | 12 |" in out
    assert "Forward + backward (predicted)" in out and "H200" in out


# ---- benchmarks/activations.py ------------------------------------------------------------------------------
def test_allocator_choice():
    activations = load("activations")
    choose = activations.choose_allocator
    tuned = activations.MALLOC_TUNING
    # default: re-exec with the tuned glibc settings
    text, env = choose(["activations.py"], {"PATH": "/bin"})
    assert env is not None and all(env[k] == v for k, v in tuned.items()) and env["PATH"] == "/bin"
    # after the re-exec: say so, no second re-exec
    text, env = choose(["activations.py"], {**tuned, activations._REEXEC_MARK: "1"})
    assert env is None and "MALLOC_MMAP_THRESHOLD_=1073741824" in text
    # a preloaded allocator is kept; jemalloc with its purging of large allocations turned off, unless set
    jemalloc = {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}
    text, env = choose(["activations.py"], jemalloc)
    assert env == {**jemalloc, "MALLOC_CONF": activations.JEMALLOC_CONF}
    text, env = choose(["activations.py"], env)
    assert env is None and "jemalloc" in text and activations.JEMALLOC_CONF in text
    text, env = choose(["activations.py"], {**jemalloc, "MALLOC_CONF": "narenas:2"})
    assert env is None and "narenas:2" in text
    text, env = choose(["activations.py"], {"LD_PRELOAD": "/opt/libtcmalloc_minimal.so.4"})
    assert env is None and "tcmalloc" in text
    # --default-malloc: glibc's defaults, inherited settings dropped first
    text, env = choose(["activations.py", "--default-malloc"], {})
    assert env is None and "default" in text
    text, env = choose(["activations.py", "--default-malloc"], dict(tuned))
    assert env is not None and not any(k in env for k in tuned)
    # someone else's settings are respected and reported
    text, env = choose(["activations.py"], {"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert env is None and "65536" in text


_PREFAULT_PROBE = """
import ctypes, importlib.util, sys, torch
prctl = getattr(ctypes.CDLL(None), "prctl", None)
if prctl:  # PR_SET_THP_DISABLE: 4 KiB pages, where transparent huge pages are "always" too
    prctl(41, 1, 0, 0, 0)
spec = importlib.util.spec_from_file_location("bench", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
MIB64 = 2**24  # floats

def faults_of(count):  # count 64 MiB tensors live at once, each written
    before = bench.minor_faults()
    blocks = [torch.ones(MIB64) for _ in range(count)]
    faults = bench.minor_faults() - before
    del blocks
    return faults

fresh = faults_of(4)  # 256 MiB of fresh heap
touched = bench.prefault_heap(2**30)
print(fresh, touched, faults_of(12))  # 768 MiB: 512 of them beyond what the first call touched
"""


def test_prefault_heap_leaves_the_steps_no_fresh_heap_to_fault(tmp_path):
    """With the tuned glibc heap, memory touched once is reused without page faults: after prefault_heap(1 GiB),
    three times the heap an earlier burst touched is allocated and written with (almost) no faults, where the fresh
    burst faulted one page per 4 KiB."""
    activations = load("activations")
    result, out = bench(tmp_path, "-c", _PREFAULT_PROBE, BENCH / "activations.py", **activations.MALLOC_TUNING)
    assert result.ok, out
    fresh, touched, after = (int(v) for v in out.strip().splitlines()[-1].split())
    assert fresh > 0.8 * 4 * 2**26 / 4096, out  # 65,536 pages: the probe sees fresh heap being faulted in
    assert touched >= 2**30
    assert after < 0.02 * 12 * 2**26 / 4096, out  # 196,608 pages without the prefault's


class _FaultsInCalls(torch.nn.Module):
    """x * w; the calls numbered in ``faulting`` first write 64 MiB of fresh anonymous memory (16,384 page faults),
    as a step that grows the heap does."""

    def __init__(self, faulting):
        super().__init__()
        self.weight, self.faulting, self.calls = torch.nn.Parameter(torch.ones(())), faulting, 0

    def forward(self, x):
        self.calls += 1
        if self.calls in self.faulting:
            with mmap.mmap(-1, 64 << 20) as fresh:
                if hasattr(mmap, "MADV_NOHUGEPAGE"):  # 4 KiB pages where transparent huge pages are "always"
                    fresh.madvise(mmap.MADV_NOHUGEPAGE)
                ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(fresh)), 1, 64 << 20)
        return x * self.weight


def test_step_times_runs_a_step_that_grew_the_heap_again():
    """With redo_heap_growth, a timed step that faulted a heap growth's worth of pages is run again and the rerun
    timed; without it, the faulting step is kept. A module that faults at every call is rerun at most n times."""
    activations = load("activations")
    x = torch.ones(8, requires_grad=True)
    module = _FaultsInCalls({2})  # call 1: warm-up, call 2: the timed step
    activations.step_times([module], x, repeats=1, warmup=1)
    assert activations.LAST_REDONE_STEPS[0] == 0 and activations.LAST_FAULTS_PER_STEP[0] >= 16384
    module = _FaultsInCalls({2})
    activations.step_times([module], x, repeats=1, warmup=1, redo_heap_growth=2)
    assert activations.LAST_REDONE_STEPS[0] == 1 and module.calls == 3
    assert activations.LAST_FAULTS_PER_STEP[0] < activations.HEAP_GROWTH_PAGES
    module = _FaultsInCalls(set(range(1, 10)))
    activations.step_times([module], x, repeats=1, warmup=1, redo_heap_growth=2)
    assert activations.LAST_REDONE_STEPS[0] == 2 and module.calls == 4
    assert activations.LAST_FAULTS_PER_STEP[0] >= 16384  # the last attempt's, kept


def test_layouts_dry_run(tmp_path):
    activations = load("activations")
    rows = activations.layout_rows(1.0)
    assert len(rows) == 11  # 2-D: shared + dim 1 (= dim -1); 4-D: shared + dim 1 + dim -1; flat: shared
    assert ("NCHW", (256, 160, 16, 16), 1) in rows and ("NHWC", (128, 56, 56, 96), -1) in rows
    result, out = bench(tmp_path, BENCH / "activations.py", "--layouts", "--dry-run", "--families", "hermite:3")
    assert result.ok, out
    lines = out.splitlines()
    allocator = next(line for line in lines if line.startswith("allocator: "))  # the first line of stdout
    assert allocator.startswith("allocator: glibc malloc, MALLOC_MMAP_THRESHOLD_=1073741824") or "LD_PRELOAD" in allocator
    assert "DRY RUN" in out
    table = [line for line in lines if line.startswith("| ") and line.split("|")[4].strip()[:1].isdigit()]
    assert len(table) == 11, out
    assert any("per-channel, dim 1, C=160" in line for line in table)
    assert any("per-channel, dim -1 (= 3), C=96" in line for line in table)


# ---- benchmarks/gpu_check.sh ------------------------------------------------------------------------------
def test_core_imports_need_neither_litdata_nor_jsonargparse(tmp_path):
    code = ("import sys, importlib; import lit_ortho.activations, lit_ortho.models; "
            "from lit_ortho.activations import FAMILIES; "
            "[importlib.import_module(r.triton) for r in FAMILIES.values() if r.triton]; "
            "bad = [m for m in ('litdata', 'jsonargparse') if m in sys.modules]; "
            "assert not bad, bad")
    result, out = bench(tmp_path, "-c", code, timeout=120)
    assert result.ok, out


def test_gpu_check_report_marks_targets(tmp_path):
    gpu_check = load("gpu_check")
    (tmp_path / "steps.json").write_text(json.dumps({"steps": [{"name": "train", "status": "ok", "seconds": 3, "limit": 9}],
                                                    "dry_run": False, "command": "benchmarks/gpu_check.sh"}))
    (tmp_path / "train.json").write_text(json.dumps({
        "size": "gpt2", "batch": 12, "seq": 1024, "autocast": True, "optimizer_groups": "x", "steps": 5, "warmup": 2,
        "results": [
            {"activation": "gelu", "time_s": 0.1, "peak_bytes": 2**30, "vs_gelu": 1.0, "peak_vs_gelu": 1.0},
            {"activation": "hermite:3", "time_s": 0.104, "peak_bytes": 2**30, "vs_gelu": 1.04, "peak_vs_gelu": 0.99},
            {"activation": "fourier:5", "time_s": 0.2, "peak_bytes": 2**30, "vs_gelu": 2.0, "peak_vs_gelu": 1.01},
        ]}))
    text = gpu_check.report(tmp_path)
    assert "| hermite:3 | 104.0 | 1.04x | meets | 1024 | 0.99x | meets |" in text
    assert "| fourier:5 | 200.0 | 2.00x | **misses** | 1024 | 1.01x | **misses** |" in text


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """Every step of the GPU check, on CPU with tiny shapes (about a minute on 2 idle cores)."""
    result = run(["bash", BENCH / "gpu_check.sh", "--dry-run"], ROOT, 1200, tag="gpu_check", log_dir=tmp_path, OUT=tmp_path,
                 PYTHON=sys.executable)  # fmt: skip
    report = (tmp_path / "gpu_check" / "gpu_check.md")
    assert result.ok, result.output(tail=6000)
    text = report.read_text()
    assert "DRY RUN" in text
    for step in ("setup", "imports", "kernels", "activation", "mlp", "train", "triton_tests"):
        assert f"| {step} | ok |" in text, text
    for heading in ("Triton kernels against eager", "Activation forward+backward", "MLP block", "GPT-2 training step"):
        assert heading in text
    assert "import without litdata/jsonargparse" in text
    assert "1 passed" in text  # the interpreted Triton test
    assert "**NO**" not in text and "error:" not in text
    kernels = json.loads((tmp_path / "gpu_check" / "kernels.json").read_text())
    assert kernels["ok"] and len(kernels["rows"]) == 8


# ---- benchmarks/callbacks.py ------------------------------------------------------------------------------
@pytest.mark.slow
def test_callbacks_benchmark_dry_run(tmp_path):
    """Every row of the monitors' overhead table is built and trained (tiny, one round); no monitor leaves a
    hook on a step where it does not act."""
    result, out = bench(tmp_path, BENCH / "callbacks.py", "--dry-run", timeout=600)
    assert result.ok, out
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines() if line.startswith("| ")}
    assert {"baseline", "every_n_steps=50", "config"} <= set(rows), out
    assert all(cells[-2].strip() == "0" for name, cells in rows.items() if name != "configuration"), out  # hooks elsewhere
    assert "dry run: no timing claims" in out
