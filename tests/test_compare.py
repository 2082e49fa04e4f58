"""benchmarks/compare_activations.py end to end at a trivial budget: runs, results, report, figures, resume."""

import json
import math
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import compare_activations  # noqa: E402

TINY = [
    "--steps", "3", "--seeds", "1", "--activations", "gelu", "hermite:3", "--configs", "gpt2", "convnext",
    "--val-every", "2", "--val-batches", "2", "--init-layers", "2", "--init-steps", "2", "--init-seeds", "1",
    "--swap-steps", "2", "--swap-specs", "hermite:3", "--swap-val-batches", "2", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One trivial sweep in a temp dir (data cache included), shared by the tests below."""
    root = tmp_path_factory.mktemp("compare")
    mp = pytest.MonkeyPatch()
    mp.setenv("LIT_ORTHO_CACHE", str(root / "cache"))
    args = TINY + ["--work-dir", str(root / "work"), "--report", str(root / "docs" / "RESULTS.md")]
    assert compare_activations.main(args + ["--in-process"]) == 0
    yield root, args
    mp.undo()


def _jobs(args):
    return compare_activations.plan(compare_activations.parse_args(args))


def test_every_run_wrote_a_parseable_result(sweep):
    root, args = sweep
    jobs = _jobs(args)
    assert [len(jobs[g]) for g in ("sweep", "init", "swap")] == [4, 3, 1]  # 2 configs x 2 activations; 3 arms; swap
    for job in jobs["sweep"] + jobs["init"]:
        assert job.done(), job.label
        r = json.loads(job.result_file.read_text())
        assert r["job"]["activation"] == job.spec["activation"] and r["job"]["seed"] == 0
        assert len(r["train_loss"]) == job.spec["steps"] and r["finite"]
        assert r["val"][-1]["step"] == job.spec["steps"]  # a last validation even when steps % val_every != 0
        metric = "val/ppl" if job.spec["config"] == "gpt2" else "val/acc1"
        assert math.isfinite(r["final"]["val/loss"]) and math.isfinite(r["final"][metric])
        assert r["step_time"]["median"] > 0
        var = r["activation_variance"]
        assert var["first_step"] == 0 and var["last_step"] == job.spec["steps"] - 1
        n_act = {"gpt2": job.spec.get("model", {}).get("n_layer", 4), "convnext": 12}[job.spec["config"]]
        assert sum(layer.endswith("act") for layer in var["layers"]) == n_act
        if job.spec["activation"] == "hermite:3":
            assert len(r["shapes_end"]) == n_act and len(next(iter(r["shapes_end"].values()))["y"]) == 81
        else:
            assert r["shapes_end"] == {}
    ones = next(j for j in jobs["init"] if j.spec["arm"] == "ones").result()
    start = next(iter(ones["shapes_start"].values()))
    assert start["spec"].startswith("hermite") and start["forward_gain"] == pytest.approx(1 + 1 + 1 / 2 + 1 / 6, rel=1e-3)
    blocks = [layer for layer in ones["activation_variance"]["layers"] if not layer.endswith("act")]
    assert len(blocks) == 2  # the init check also watches the transformer blocks' outputs
    swap = jobs["swap"][0].result()
    assert [row["spec"] for row in swap["rows"]] == ["gelu", "hermite:3"]
    for row in swap["rows"]:
        assert all(math.isfinite(row[k]) for k in ("val_loss_before", "val_loss_swapped", "val_loss_finetuned"))
    assert swap["rows"][0]["val_loss_swapped"] == swap["rows"][0]["val_loss_before"]  # GELU control: no swap
    assert swap["rows"][1]["replaced"] == 4


def test_report_has_the_table_checks_and_figures(sweep):
    root, _ = sweep
    report = (root / "docs" / "RESULTS.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| activation | GPT-2 val loss"))
    assert "ConvNeXt val top-1 (%)" in header and "time/step vs GELU" in header
    for act in ("gelu", "hermite:3"):
        row = next(line for line in report.splitlines() if line.startswith(f"| `{act}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == len(header.strip("|").split("|"))
        assert re.fullmatch(r"\d+\.\d+", cells[1]) and re.fullmatch(r"\d+\.\d+", cells[4])  # loss, top-1 (1 seed: no ±)
    assert "| `gelu` |" in report and "1.00×" in report
    for section in ("## Check 1", "## Check 2", "## What this shows and what it does not", "**Machine**", "torch "):
        assert section in report
    assert "| GELU (control) |" in report and "| `hermite:3` |" in report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {Path(link).name for link in links} >= {"val_curves.png", "variance_depth.png", "shapes_gpt2.png",
                                                   "shapes_convnext.png", "init_check.png"}  # fmt: skip
    for link in links:
        png = (root / "docs" / link).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_skips_finished_runs_and_redoes_missing_ones(sweep, capsys):
    root, args = sweep
    jobs = _jobs(args)
    everything = jobs["sweep"] + jobs["init"] + jobs["swap"]
    stamps = {j.label: j.result_file.stat().st_mtime_ns for j in everything}
    capsys.readouterr()
    assert compare_activations.main(args + ["--in-process", "--no-report"]) == 0
    assert f"{len(everything)} runs planned, {len(everything)} already finished, 0 to run" in capsys.readouterr().out
    assert {j.label: j.result_file.stat().st_mtime_ns for j in everything} == stamps
    # an interrupted sweep: one run lost its result (and a half-written temp file is left): only it runs again,
    # in its own process (the default)
    lost = jobs["sweep"][1]
    lost.result_file.unlink()
    (lost.dir / "result.tmp").write_text("{")
    assert compare_activations.main(args + ["--no-report"]) == 0
    out = capsys.readouterr().out
    assert "1 to run" in out and lost.label in out
    assert lost.done()
    assert all(j.result_file.stat().st_mtime_ns == stamps[j.label] for j in everything if j is not lost)


def test_a_changed_budget_is_a_new_run(sweep):
    _, args = sweep
    jobs = _jobs(args + ["--steps", "4"])
    assert not any(j.done() for j in jobs["sweep"])
    assert all("steps4" in str(j.dir) for j in jobs["sweep"])


def test_extra_specs_and_bad_specs():
    a = compare_activations.parse_args(["hermite(degree=3, init=unit)", "--activations", "tropical:5", "--no-checks"])
    assert a.activations == ["gelu", "tropical:5", "hermite(degree=3, init=unit)"]  # GELU always: the baseline
    jobs = compare_activations.plan(a)
    assert jobs["init"] == [] and jobs["swap"] == []
    assert {j.dir.parent.name for j in jobs["sweep"]} == {"gelu", "tropical_5", "hermite_degree_3_init_unit"}
    with pytest.raises(SystemExit):
        compare_activations.parse_args(["hermit:3"])
    with pytest.raises(SystemExit):
        compare_activations.parse_args(["--steps", "0"])
