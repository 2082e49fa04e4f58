"""The report of ``compare_activations.py``: docs/RESULTS.md and its PNG figures, from finished runs only."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

FIGSIZE, DPI = (9, 5), 100
NAMES = {"gpt2": "GPT-2 tiny", "convnext": "ConvNeXt-atto"}
PALETTE = ["#222222", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


# ---- small statistics ------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def pm(values: list[float], digits: int = 3, scale: float = 1.0) -> str:
    m, s = mean_std([v * scale for v in values if v is not None])
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if not math.isnan(s) else f"{m:.{digits}f}"


def step_time(r: dict) -> float:
    """A run's step time: the 10th percentile of its timed steps. Other work on the machine only ever adds
    time, and it came and went during the sweep; the fast steps are the ones it left alone (the median
    moved by up to 2x between seeds of one activation on the shared machine, the 10th percentile by < 10 %)."""
    times = sorted(r.get("step_times", [])[10:])
    if len(times) < 5:
        return r["step_time"]["median"]
    return times[len(times) // 10]


def rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start).replace(os.sep, "/")


def gelu_curve(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from math import erf, pi, sqrt

    phi = np.array([0.5 * (1 + erf(v / sqrt(2))) for v in x])
    pdf = np.exp(-0.5 * x * x) / sqrt(2 * pi)
    return x * phi, phi + x * pdf


# ---- gathering ---------------------------------------------------------------------------------------------
def collect(a, jobs) -> dict[str, Any]:
    data: dict[str, Any] = {"sweep": {}, "init": {}, "swap": None, "missing": []}
    for job in jobs["sweep"]:
        r = job.result()
        if r is None:
            data["missing"].append(job.label)
            continue
        data["sweep"].setdefault(job.spec["config"], {}).setdefault(job.spec["activation"], []).append(r)
    for job in jobs["init"]:
        if job.spec.get("arm") is None:
            continue
        r = job.result()
        if r is None:
            data["missing"].append(job.label)
            continue
        data["init"].setdefault(job.spec["arm"], []).append(r)
    for job in jobs["swap"]:
        data["swap"] = job.result()
        if data["swap"] is None:
            data["missing"].append(job.label)
    return data


def colors(activations: list[str]) -> dict[str, str]:
    return {act: PALETTE[i % len(PALETTE)] for i, act in enumerate(activations)}


def depth_values(r: dict, key: str = "activation_variance", which: str = "first", suffix: Optional[str] = "act"):
    d = r.get(key) or {}
    if not d:
        return [], []
    pairs = [(layer, v) for layer, v in zip(d["layers"], d[which]) if suffix is None or layer.endswith(suffix)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def geo_mean_rows(rows: list[list[float]]) -> np.ndarray:
    arr = np.array([[max(v, 1e-30) for v in row] for row in rows], dtype=float)
    return np.exp(np.log(arr).mean(0))


# ---- figures -------------------------------------------------------------------------------------------------
def fig_curves(data, acts, col, out: Path) -> Optional[Path]:
    configs = [c for c in ("gpt2", "convnext") if c in data["sweep"]]
    if not configs:
        return None
    fig, axes = plt.subplots(1, len(configs), figsize=FIGSIZE, dpi=DPI, squeeze=False)
    for ax, config in zip(axes[0], configs):
        metric, label, scale = ("val/loss", "validation loss (nats/token)", 1.0) if config == "gpt2" else ("val/acc1", "validation top-1 (%)", 100.0)
        for act in acts:
            runs = data["sweep"][config].get(act, [])
            if not runs:
                continue
            steps = sorted({row["step"] for r in runs for row in r["val"]})
            vals = np.array([[next((row[metric] * scale for row in r["val"] if row["step"] == s), np.nan) for s in steps] for r in runs])
            m, sd = np.nanmean(vals, 0), (np.nanstd(vals, 0, ddof=1) if len(runs) > 1 else np.zeros(len(steps)))
            ax.plot(steps, m, "o-", color=col[act], label=act, lw=1.6, ms=3)
            ax.fill_between(steps, m - sd, m + sd, color=col[act], alpha=0.15, lw=0)
        ax.set_title(f"{NAMES[config]} ({len(runs)} seeds, mean ± std)", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "val_curves.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def fig_variance(data, acts, col, out: Path) -> Optional[Path]:
    configs = [c for c in ("gpt2", "convnext") if c in data["sweep"]]
    if not configs:
        return None
    fig, axes = plt.subplots(len(configs), 2, figsize=(FIGSIZE[0], 2.8 * len(configs) + 0.4), dpi=DPI, squeeze=False)
    fig.suptitle("Variance of each activation's output against depth (geometric mean over seeds)", fontsize=10)
    for row, config in enumerate(configs):
        for c, which in enumerate(("first", "last")):
            ax = axes[row][c]
            step_label = None
            for act in acts:
                runs = data["sweep"][config].get(act, [])
                series = [depth_values(r, which=which)[1] for r in runs if r.get("activation_variance")]
                series = [s for s in series if s]
                if not series or len({len(s) for s in series}) != 1:
                    continue
                ax.semilogy(range(len(series[0])), geo_mean_rows(series), "o-", color=col[act], label=act, lw=1.5, ms=3)
                step_label = runs[0]["activation_variance"]["first_step" if which == "first" else "last_step"]
            when = "step 0 (initialisation)" if which == "first" else f"end of training (step {step_label})"
            ax.set_title(f"{NAMES[config]}, {when}", fontsize=9)
            ax.set_xlabel("activation layer (forward order)")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_ylabel("variance of act. output", fontsize=8)
            ax.grid(alpha=0.3, which="both")
            if row == 0 and c == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "variance_depth.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def fig_shapes(data, acts, config: str, out: Path) -> Optional[Path]:
    runs = data["sweep"].get(config, {})
    learnable = [act for act in acts if runs.get(act) and runs[act][0].get("shapes_end")]
    if not learnable:
        return None
    fig, axes = plt.subplots(2, len(learnable), figsize=(max(FIGSIZE[0], 3 * len(learnable)), 5.5), dpi=DPI, squeeze=False)
    x = np.linspace(-4, 4, 81)
    g, dg = gelu_curve(x)
    for c, act in enumerate(learnable):
        r = sorted(runs[act], key=lambda r: r["job"]["seed"])[0]
        layers = list(r["shapes_end"])
        picks = sorted({0, len(layers) // 2, len(layers) - 1})
        start = r["shapes_start"].get(layers[0])
        for row, key in enumerate(("y", "dy")):
            ax = axes[row][c]
            ax.plot(x, g if key == "y" else dg, ":", color="black", lw=1.2, label="GELU")
            if start:
                ax.plot(x, start[key], "--", color="gray", lw=1.2, label="init")
            for i, idx in zip(("first", "middle", "last"), picks) if len(picks) == 3 else zip(("first", "last"), picks):
                ax.plot(x, r["shapes_end"][layers[idx]][key], lw=1.6, label=f"{i} (layer {idx})")
            ax.set_ylim(*((-2, 5) if key == "y" else (-1.5, 3)))
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"{act}: F(x) after training", fontsize=9)
            else:
                ax.set_title("F'(x)", fontsize=9)
                ax.set_xlabel("x")
            if c == 0 and row == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"{NAMES[config]}: learned activations, seed 0, end of training", fontsize=10)
    fig.tight_layout()
    path = out / f"shapes_{config}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def smooth(values: list[float], alpha: float = 0.1) -> np.ndarray:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else (1 - alpha) * acc + alpha * v
        out.append(acc)
    return np.array(out)


INIT_ARMS = {"paper": ("Hermite-3, paper init", "#1f77b4"), "ones": ("Hermite-3, all coefficients 1", "#d62728"),
             "gelu": ("GELU", "#222222")}  # fmt: skip


def fig_init(data, out: Path) -> Optional[Path]:
    arms = {arm: runs for arm, runs in data["init"].items() if runs}
    if not arms:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(FIGSIZE[0] + 2, FIGSIZE[1] - 0.5), dpi=DPI)
    for arm, runs in arms.items():
        label, color = INIT_ARMS.get(arm, (arm, None))
        for ax, suffix, title in ((axes[0], "act", "MLP activation output"), (axes[1], None, "block output (residual stream)")):
            series = []
            for r in runs:
                layers, vals = depth_values(r, which="first", suffix=suffix)
                if suffix is None:  # block outputs: names without ".mlp.act"
                    vals = [v for layer, v in zip(layers, vals) if not layer.endswith("act")]
                series.append(vals)
            if series and series[0]:
                ax.semilogy(range(len(series[0])), geo_mean_rows(series), "o-", color=color, label=label, lw=1.5, ms=3)
            if suffix is None:  # the residual stream at the end of training too, dashed
                end = [[v for layer, v in zip(*depth_values(r, which="last", suffix=None)) if not layer.endswith("act")] for r in runs]
                if end and end[0]:
                    ax.semilogy(range(len(end[0])), geo_mean_rows(end), "--", color=color, lw=1.2)
            ax.set_title(f"{title}: variance at step 0" + (" (dashed: end)" if suffix is None else ""), fontsize=9)
            ax.set_xlabel("layer")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.grid(alpha=0.3, which="both")
        losses = [np.array([v for _, v in r["train_loss"]]) for r in runs]
        n = min(len(v) for v in losses)
        curve = smooth(list(np.mean([v[:n] for v in losses], 0)))
        axes[2].plot(range(1, n + 1), curve, color=color, label=label, lw=1.5)
        vsteps = [row["step"] for row in runs[0]["val"]]
        vloss = np.mean([[row["val/loss"] for row in r["val"]] for r in runs], 0)
        axes[2].plot(vsteps, vloss, "o", color=color, ms=4)
    axes[2].set_title("train loss (EMA 0.1; dots: validation)", fontsize=9)
    axes[2].set_xlabel("optimizer step")
    axes[2].set_ylim(top=min(6.0, axes[2].get_ylim()[1]))
    axes[2].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    n_layer = next(iter(arms.values()))[0]["job"]["model"]["n_layer"]
    fig.suptitle(f"Check 1: GPT-2 tiny with {n_layer} layers, mean over {len(next(iter(arms.values())))} seed(s)", fontsize=10)
    fig.tight_layout()
    path = out / "init_check.png"
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- the report ------------------------------------------------------------------------------------------
def _delta_words(diff: float, se: float, better_low: bool) -> str:
    if math.isnan(diff):
        return "not comparable"
    if math.isnan(se) or se == 0:
        return "one seed only, no error estimate"
    direction = ("better" if (diff < 0) == better_low else "worse")
    if abs(diff) < 2 * se:
        return f"within seed noise (difference {diff:+.3f}, 2 standard errors {2 * se:.3f})"
    return f"{direction} than GELU by more than 2 standard errors ({diff:+.3f}, 2 s.e. {2 * se:.3f})"


def _compare(values: list[float], base: list[float]) -> tuple[float, float]:
    m, s = mean_std(values)
    mb, sb = mean_std(base)
    n, nb = len(values), len(base)
    se = math.sqrt(s * s / n + sb * sb / nb) if n > 1 and nb > 1 else float("nan")
    return m - mb, se


# Everything from this line on in the report is kept when the report is regenerated.
KEEP_MARKER = "<!-- below: kept when compare_activations.py rewrites this file -->"


def write_report(a, jobs) -> Path:
    import compare_activations

    report = Path(a.report)
    figures = Path(a.figures)
    figures.mkdir(parents=True, exist_ok=True)
    report.parent.mkdir(parents=True, exist_ok=True)
    data = collect(a, jobs)
    acts = list(a.activations)
    col = colors(acts)
    figs = {
        "curves": fig_curves(data, acts, col, figures),
        "variance": fig_variance(data, acts, col, figures),
        "shapes_gpt2": fig_shapes(data, acts, "gpt2", figures),
        "shapes_convnext": fig_shapes(data, acts, "convnext", figures),
        "init": fig_init(data, figures),
    }
    sweep_file = Path(a.work_dir) / "sweep.json"
    sessions = json.loads(sweep_file.read_text())["sessions"] if sweep_file.exists() else []
    all_results = [r for cfg in data["sweep"].values() for runs in cfg.values() for r in runs]
    all_results += [r for runs in data["init"].values() for r in runs] + ([data["swap"]] if data["swap"] else [])
    loads = [v for r in all_results for v in r.get("load_avg", [])]
    machine = sessions[-1]["machine"] if sessions else None
    if machine is None:
        machine = compare_activations.machine_info()
    process_total = sum(r.get("process_s", 0.0) for r in all_results)
    threads = sorted({r.get("threads") for r in all_results if r.get("threads")})

    L: list[str] = []
    w = L.append
    w("# GELU against the learnable activations: a comparison you can rerun")
    w("")
    w(f"Generated by `benchmarks/compare_activations.py` on {time.strftime('%Y-%m-%d')}. Rerun it (it resumes a partly "
      "finished sweep and rewrites this file and `docs/figures/`):")  # fmt: skip
    w("")
    w("```bash")
    w(compare_activations.command_line(a))
    w("```")
    w("")
    w("## Set-up")
    w("")
    w(f"- **Models and data**: `cli_configs/gpt2_cpu.yaml` (GPT-2 tiny: 4 layers, d=128, byte tokens of Python's "
      f"documentation topics) and `cli_configs/convnext_cpu.yaml` (ConvNeXt-atto, scikit-learn's 8x8 digits upscaled "
      f"to 32x32), unchanged except: **{a.steps} optimizer steps** per run, validation every {a.val_every} steps on "
      f"{'all' if not a.val_batches else a.val_batches} validation batches (GPT-2; ConvNeXt validates on all 360 held-out "
      f"digits), no checkpoints.")  # fmt: skip
    w(f"- **Activations**: {', '.join(f'`{x}`' for x in acts)}, each replacing GELU in every MLP (GPT-2 "
      "`c_fc → act → c_proj`, ConvNeXt `pwconv1 → act → pwconv2`), default `paper` initialisation.")
    w(f"- **Seeds**: {a.seeds} per activation. Seed index *i* sets `seed_everything(i)` and the data module's shuffle "
      "seed to *i*: for a given *i* every activation starts from the same random weights (the activations' own "
      "coefficients are deterministic) and sees the same batches in the same order; seeds vary initialisation and "
      "data order together. With one thread on a CPU a run is deterministic: rerunning the GPT-2 Hermite-3 seed-0 "
      "run by hand gave the same losses to the last bit.")  # fmt: skip
    w("- **Callbacks**: `ActivationVarianceMonitor` and `GradientVarianceMonitor` log every step (the variance-by-depth "
      "figures read their TensorBoard scalars); the learned shapes are evaluated from the trained modules.")
    w("- **Step time**: forward + backward + optimizer step (plus the monitors' per-step work), from "
      "`on_train_batch_start` to `on_train_batch_end`, the first 10 steps and validation left out. Per run the 10th "
      "percentile of those step times (the machine's other work only ever adds time, and it came and went; the "
      "median is listed too), then the ratio to GELU's run with the same seed, mean ± std over seeds.")
    cores = machine.get("cores")
    load_txt = (f"1-minute load average during the runs {min(loads):.1f} to {max(loads):.1f} (mean {statistics.fmean(loads):.1f})"
                if loads else "load not recorded")  # fmt: skip
    w(f"- **Machine**: {machine.get('cpu')}, {cores} cores, {machine.get('os')}; Python {machine.get('python')}, "
      f"torch {machine.get('torch')} (CPU), Lightning {machine.get('lightning')}; "
      f"{', '.join(str(t) for t in threads) or '?'} torch thread(s) per run, one run at a time; {load_txt}. "
      "The machine was shared with other work, so absolute times are noisy; ratios of runs made back to back are "
      "steadier.")  # fmt: skip
    if sessions:
        walls = sum(s.get("wall_s", 0.0) for s in sessions)
        w(f"- **Cost**: {len(all_results)} runs, {process_total / 60:.0f} min of run time in all "
          f"({walls / 60:.0f} min wall clock over {len(sessions)} invocation(s) of the script, resumes included).")
    if data["missing"]:
        w(f"- **Not finished** (left out of everything below): {', '.join(data['missing'])}.")
    w("")

    summary: list[str] = []
    summary_at = len(L)

    # ---- main table ----
    w("## Results")
    w("")
    have = {c: data["sweep"].get(c, {}) for c in ("gpt2", "convnext")}
    head = ["activation"]
    if have["gpt2"]:
        head += ["GPT-2 val loss", "GPT-2 val ppl", "GPT-2 time/step vs GELU"]
    if have["convnext"]:
        head += ["ConvNeXt val top-1 (%)", "ConvNeXt val loss", "ConvNeXt time/step vs GELU"]
    w("| " + " | ".join(head) + " |")
    w("|" + "---|" * len(head))

    def ratio(config: str, act: str) -> str:
        runs, base = have[config].get(act, []), {r["job"]["seed"]: r for r in have[config].get("gelu", [])}
        ratios = [step_time(r) / step_time(base[r["job"]["seed"]]) for r in runs if r["job"]["seed"] in base]
        return pm(ratios, 2) + "×" if ratios else "–"

    for act in acts:
        row = [f"`{act}`"]
        if have["gpt2"]:
            runs = have["gpt2"].get(act, [])
            row += [pm([r["final"]["val/loss"] for r in runs], 3), pm([r["final"]["val/ppl"] for r in runs], 2), ratio("gpt2", act)]
        if have["convnext"]:
            runs = have["convnext"].get(act, [])
            row += [pm([r["final"]["val/acc1"] for r in runs], 1, 100.0), pm([r["final"]["val/loss"] for r in runs], 3), ratio("convnext", act)]
        w("| " + " | ".join(row) + " |")
    w("")
    base_times = []
    for config in ("gpt2", "convnext"):
        runs = have[config].get("gelu", [])
        if runs:
            base_times.append(f"{NAMES[config]} {statistics.fmean(step_time(r) for r in runs) * 1000:.0f} ms "
                              f"(median {statistics.fmean(r['step_time']['median'] for r in runs) * 1000:.0f} ms)")
    if base_times:
        w(f"Mean ± std over {a.seeds} seed{'s' if a.seeds > 1 else ''}, final validation after {a.steps} steps. GELU's step time: "
          f"{', '.join(base_times)}.")  # fmt: skip
        w("")
        w("Step times by run (ms, 10th percentile of the timed steps; the median in brackets shows how much the "
          "machine's other work slowed each run):")
        w("")
        for config in ("gpt2", "convnext"):
            if not have[config]:
                continue
            cells = []
            for act in acts:
                runs = sorted(have[config].get(act, []), key=lambda r: r["job"]["seed"])
                if runs:
                    cells.append(f"`{act}` " + ", ".join(f"{step_time(r) * 1000:.0f} ({r['step_time']['median'] * 1000:.0f})" for r in runs))
            w(f"- {NAMES[config]}: " + "; ".join(cells) + ".")
    w("")
    # data-driven sentences
    notes: list[str] = []
    verdicts: dict[str, dict[str, list[str]]] = {}
    for config, key, better_low, scale, unit in (("gpt2", "val/loss", True, 1.0, "validation loss"),
                                                 ("convnext", "val/acc1", False, 100.0, "top-1 (points)")):  # fmt: skip
        base = [r["final"][key] * scale for r in have[config].get("gelu", [])]
        if not base:
            continue
        for act in acts[1:]:
            vals = [r["final"][key] * scale for r in have[config].get(act, [])]
            if vals:
                diff, se = _compare(vals, base)
                notes.append(f"{NAMES[config]} {unit}, `{act}`: {_delta_words(diff, se, better_low)}.")
                verdict = ("n/a" if math.isnan(se) or se == 0 else "same" if abs(diff) < 2 * se
                           else "better" if (diff < 0) == better_low else "worse")  # fmt: skip
                verdicts.setdefault(config, {}).setdefault(verdict, []).append(f"`{act}` ({diff:+.{3 if better_low else 1}f})")
    for config, what in (("gpt2", "final validation loss"), ("convnext", "final top-1, in points")):
        v = verdicts.get(config)
        if not v:
            continue
        parts = []
        if v.get("better"):
            parts.append("better than GELU: " + ", ".join(v["better"]))
        if v.get("worse"):
            parts.append("worse: " + ", ".join(v["worse"]))
        if v.get("same"):
            parts.append("no difference beyond the seeds' spread: " + ", ".join(v["same"]))
        if v.get("n/a"):
            parts.append("one seed, no verdict: " + ", ".join(v["n/a"]))
        summary.append(f"**{NAMES[config]}** ({what}, difference from GELU): " + "; ".join(parts) + ".")
    speed = []
    for config in ("gpt2", "convnext"):
        if have[config].get("gelu"):
            speed.append(f"{NAMES[config]} " + ", ".join(f"`{act}` {ratio(config, act).split(' ')[0].rstrip('×')}×"
                                                         for act in acts[1:] if have[config].get(act)))  # fmt: skip
    if speed:
        summary.append("**Time per step** relative to GELU (CPU, one thread): " + "; ".join(speed) + ".")
    if notes:
        w("Against GELU (difference of means; standard error from the seeds' spread):")
        w("")
        for n in notes:
            w(f"- {n}")
        w("")
    unstable = [f"{r['job']['config']} {r['job']['activation']} seed {r['job']['seed']}"
                for cfg in data["sweep"].values() for runs in cfg.values() for r in runs if not r.get("finite", True)]  # fmt: skip
    if unstable:
        w(f"Non-finite training loss in: {', '.join(unstable)}.")
        w("")
    for key, caption in (("curves", "Validation curves (mean ± std over seeds)"),
                         ("variance", "Variance of each activation's output against depth, at step 0 and at the end "
                                      "(ActivationVarianceMonitor; geometric mean over seeds)"),
                         ("shapes_gpt2", "Learned activations of GPT-2 tiny: first, middle and last layer after training "
                                         "(seed 0), the initial curve dashed, GELU dotted"),
                         ("shapes_convnext", "Learned activations of ConvNeXt-atto: first, middle and last layer "
                                             "(seed 0)")):  # fmt: skip
        if figs[key]:
            w(f"**{caption}.**")
            w("")
            w(f"![{caption}]({rel(figs[key], report.parent)})")
            w("")
    spreads = []
    for config in ("gpt2", "convnext"):
        for r in have[config].get("gelu", []):
            var, gain = r.get("activation_variance") or {}, r.get("activation_gain") or {}
            if var and gain and var["layers"] == gain["layers"]:
                stds = [math.sqrt(v / g) for v, g in zip(var["first"], gain["first"]) if g > 0]
                if stds:
                    spreads.append((config, min(stds), max(stds)))
    if spreads:
        parts = []
        for config in ("gpt2", "convnext"):
            lo = [s_[1] for s_ in spreads if s_[0] == config]
            hi = [s_[2] for s_ in spreads if s_[0] == config]
            if lo:
                parts.append(f"{NAMES[config]} {min(lo):.2f}–{max(hi):.2f}")
        w("At step 0 every activation's output variance is far below 1 because its input is small: the standard "
          f"deviation of the activations' inputs at initialisation (from the monitors' gain, GELU runs) is "
          f"{', '.join(parts)}, not the 1 that the variance-preserving initialisations assume. Which activation has "
          "the larger output variance at step 0 is then decided by its slope near 0, not by its gain "
          "under N(0, 1).")  # fmt: skip
        w("")
    gains = []
    for config in ("gpt2", "convnext"):
        for act in acts:
            runs = have[config].get(act, [])
            if runs and runs[0].get("shapes_end"):
                end = [(v["forward_gain"], v["backward_gain"]) for r in runs for v in r["shapes_end"].values()]
                start = [(v["forward_gain"], v["backward_gain"]) for v in runs[0]["shapes_start"].values()][:1]
                inner = [i for i, v in enumerate(np.linspace(-4, 4, 81)) if -2 <= v <= 2]
                moved = [max(abs(e["y"][i] - r["shapes_start"][layer]["y"][i]) for i in inner)
                         for r in runs for layer, e in r["shapes_end"].items() if layer in r["shapes_start"]]  # fmt: skip
                if start:
                    gains.append(f"| {NAMES[config]} | `{act}` | {start[0][0]:.2f} / {start[0][1]:.2f} | "
                                 f"{min(e[0] for e in end):.2f} – {max(e[0] for e in end):.2f} | "
                                 f"{min(e[1] for e in end):.2f} – {max(e[1] for e in end):.2f} | "
                                 f"{min(moved):.2f} – {max(moved):.2f} |")  # fmt: skip
    if gains:
        w("Gains of the learned activations under x ~ N(0, 1), E[F(x)²] (forward) and E[F'(x)²] (backward), "
          "at initialisation and their range over all layers and seeds after training, and how far training moved "
          "each curve (largest |F_end(x) − F_init(x)| for x in [-2, 2], range over layers and seeds):")
        w("")
        w("| model | activation | at init (fwd / bwd) | after: forward | after: backward | curve moved by |")
        w("|---|---|---|---|---|---|")
        L.extend(gains)
        w("")
        remarks = []
        if any("fourier" in act for act in acts):
            remarks.append("Fourier's `paper` init is variance-preserving for inputs uniform on one period (the paper's "
                           "derivation), not for N(0, 1), hence gains near 2 here (`init=unit` would give 1).")
        trop = [act for act in acts if act.startswith("tropical") and have["gpt2"].get(act)]
        if trop:
            remarks.append(f"`{trop[0]}` starts as √2·ReLU (equal intercepts) and its intercepts hardly move in "
                           f"{a.steps} steps, so here it behaves as a ReLU with gain √2; whether its results come from "
                           "the ReLU shape or from that gain is not separated (add `relu` to the sweep to see).")
        if remarks:
            w(" ".join(remarks))
            w("")

    # ---- check 1 ----
    if data["init"]:
        arms = data["init"]
        first = next(iter(arms.values()))[0]
        n_layer = first["job"]["model"]["n_layer"]
        w("## Check 1: does the initialisation matter?")
        w("")
        w(f"The paper's central claim is that its variance-preserving initialisation keeps activations and gradients "
          f"from exploding or vanishing with depth. Here: GPT-2 tiny made deeper ({n_layer} layers, d=128), Hermite-3 "
          f"with the paper's init (a_k = e^-1/2, forward/backward gain 0.92 under N(0, 1)) against the same network with "
          f"every coefficient set to 1 (gains 2.67 / 2.5), GELU for reference; {first['job']['steps']} steps, "
          f"{len(next(iter(arms.values())))} seed(s) each, same seeds and batches across the arms.")  # fmt: skip
        w("")
        w("| arm | final val loss | activation variance at step 0: first → last layer | block output variance at step 0: first → last | block output variance at the end: first → last | non-finite loss |")
        w("|---|---|---|---|---|---|")
        for arm, runs in arms.items():
            label = INIT_ARMS.get(arm, (arm,))[0]
            act0 = [depth_values(r, which="first")[1] for r in runs]
            blocks0 = [[v for l_, v in zip(*depth_values(r, which="first", suffix=None)) if not l_.endswith("act")] for r in runs]
            blocks1 = [[v for l_, v in zip(*depth_values(r, which="last", suffix=None)) if not l_.endswith("act")] for r in runs]

            def span(series):
                if not series or not series[0]:
                    return "–"
                g = geo_mean_rows(series)
                return f"{g[0]:.3g} → {g[-1]:.3g}"

            bad = sum(not r.get("finite", True) for r in runs)
            w(f"| {label} | {pm([r['final']['val/loss'] for r in runs], 3)} | {span(act0)} | {span(blocks0)} | {span(blocks1)} | {bad} of {len(runs)} |")
        w("")
        if figs["init"]:
            w(f"![Check 1: variance against depth at step 0 and training curves]({rel(figs['init'], report.parent)})")
            w("")
        if "paper" in arms and "ones" in arms:
            diff, se = _compare([r["final"]["val/loss"] for r in arms["ones"]], [r["final"]["val/loss"] for r in arms["paper"]])
            a0 = geo_mean_rows([depth_values(r, which="first")[1] for r in arms["paper"]])
            a1 = geo_mean_rows([depth_values(r, which="first")[1] for r in arms["ones"]])
            ratio_txt = f"{float(np.mean(a1 / a0)):.1f}×"
            ends = {arm: geo_mean_rows([[v for l_, v in zip(*depth_values(r, which="last", suffix=None))
                                             if not l_.endswith("act")] for r in runs]) for arm, runs in arms.items()}  # fmt: skip
            noise = "" if math.isnan(se) else (" — within the seeds' spread" if abs(diff) < 2 * se else " — beyond the seeds' spread")
            text = (f"At step 0 the all-ones arm's activation outputs have {ratio_txt} the paper arm's variance on "
                    f"average over layers, and the residual stream grows faster with depth. Final validation loss, "
                    f"all-ones minus paper init: {diff:+.3f}"
                    + (f" (2 standard errors {2 * se:.3f}){noise}." if not math.isnan(se) else " (one seed)."))  # fmt: skip
            if "gelu" in ends and all(len(v) for v in ends.values()):
                text += (f" By the end of training the residual stream's variance (mean over blocks) is "
                         f"{float(np.mean(ends['paper'])) / float(np.mean(ends['gelu'])):.0f}× GELU's with the paper init "
                         f"and {float(np.mean(ends['ones'])) / float(np.mean(ends['gelu'])):.0f}× with all-ones, "
                         "consistent with the cubic's fast growth once training widens its inputs"
                         + ("; the validation loss does not separate the two inits at this budget."
                            if not math.isnan(se) and abs(diff) < 2 * se else "."))  # fmt: skip
            w(text)
            w("")
            summary.append(f"**Check 1, initialisation** ({n_layer}-layer GPT-2 tiny, Hermite-3): all coefficients 1 "
                           f"instead of the paper's init changes the final validation loss by {diff:+.3f}"
                           + (f" (2 s.e. {2 * se:.3f}){noise}." if not math.isnan(se) else " (one seed)."))  # fmt: skip

    # ---- check 2 ----
    swap = data["swap"]
    if swap:
        rows = swap["rows"]
        steps = swap["job"]["finetune_steps"]
        w("## Check 2: the fine-tuning swap")
        w("")
        w(f"The paper swaps GELU in a trained network for a learnable activation fitted to GELU, then fine-tunes. Here: "
          f"the sweep's seed-0 GELU GPT-2 tiny ({swap['job']['base_job']['steps']} steps), every GELU replaced by "
          f"`replace_activations(model, spec, init=\"gelu\")` (value and slope least-squares fit on [-3, 3]), validation "
          f"loss on the whole validation split right after the swap and after {steps} steps of fine-tuning "
          f"(everything trainable, AdamW at a constant {swap['job']['finetune_lr']:g}, new batch order); the GELU model "
          f"fine-tuned the same way is the control.")  # fmt: skip
        w("")
        w(f"| activation | val loss before | right after the swap (change) | after {steps} steps (vs GELU control) |")
        w("|---|---|---|---|")
        control = next((r for r in rows if r["spec"] == "gelu"), None)
        for r in rows:
            d0 = r["val_loss_swapped"] - r["val_loss_before"]
            d1 = r["val_loss_finetuned"] - control["val_loss_finetuned"] if control else float("nan")
            name = "GELU (control)" if r["spec"] == "gelu" else f"`{r['spec']}`"
            w(f"| {name} | {r['val_loss_before']:.4f} | {r['val_loss_swapped']:.4f} ({d0:+.4f}) | "
              f"{r['val_loss_finetuned']:.4f} ({d1:+.4f}) |")
        w("")
        swapped = [r for r in rows if r["spec"] != "gelu"]
        if swapped:
            summary.append(
                "**Check 2, fine-tuning swap** (GELU-trained GPT-2 tiny, `replace_activations(init=\"gelu\")`): "
                "validation loss change right after the swap "
                + ", ".join(f"`{r['spec']}` {r['val_loss_swapped'] - r['val_loss_before']:+.4f}" for r in swapped)
                + (f"; after {steps} fine-tuning steps all are within "
                   f"{max(abs(r['val_loss_finetuned'] - control['val_loss_finetuned']) for r in swapped):.4f} of GELU "
                   "fine-tuned alike." if control else ".")
            )  # fmt: skip
        ranges = swap.get("input_ranges") or {}
        if ranges:
            stds = ", ".join(f"{v['std']:.2f}" for v in ranges.values())
            tails = ", ".join(f"{v['p999_abs']:.1f}" for v in ranges.values())
            w(f"What the fit has to cover: the trained GELU layers' inputs have standard deviation {stds} (layers 0–"
              f"{len(ranges) - 1}) and 99.9th percentile of |x| {tails} on one validation batch; the fit weights "
              "[-3, 3] by a N(0, 2²) density, so a polynomial's error outside that range grows fast.")  # fmt: skip
            w("")

    # ---- honesty ----
    w("## What this shows and what it does not")
    w("")
    w(f"- **Scale.** Two tiny models (GPT-2 with 0.8 M non-embedding parameters; ConvNeXt-atto, 3.4 M) trained for "
      f"{a.steps} steps on a CPU — minutes, not the paper's GPU-scale training. At this budget GPT-2 is still far from "
      "converged and the digits are nearly solved, so neither result says which activation wins on OpenWebText or "
      "ImageNet. The paper's comparisons are at 124 M parameters and 300 epochs; none of its numbers is reproduced here.")  # fmt: skip
    w(f"- **Statistics.** {a.seeds} seed{'s' if a.seeds > 1 else ''} give a rough error bar, not a significance test; differences smaller than "
      "the seeds' spread mean *no detectable difference at this scale*, not *equal*.")
    w("- **Hyper-parameters.** Every activation uses the configs' learning rate and schedule, tuned for nothing in "
      "particular (the paper, too, used one recipe for all activations); a different LR could change the order.")
    w("- **Speed.** Times are for these CPU models with one thread on a shared machine, eager PyTorch, fp32: they "
      "show the relative cost of the learnable activations' element-wise work inside a small model, not GPU "
      "throughput (where lit_ortho has Triton kernels) and not large models, where the matrix products dominate more. "
      "Every run also pays for the variance monitors at every step, which slightly dilutes the ratios.")
    n_init = a.init_layers
    w(f"- **The checks** test the mechanisms, not the paper's headline numbers: check 1 asks whether a badly scaled "
      f"init hurts a {n_init}-layer pre-LayerNorm transformer at this budget (LayerNorm before every block re-normalises "
      "the activation's input, so depth compounds far less than in the un-normalised networks the theory "
      "describes); check 2 asks whether the fitted swap keeps a trained model's loss before any fine-tuning. Check 1 "
      "has few seeds and check 2 one trained model and one fine-tuning order: differences of a few thousandths there "
      "are within noise.")
    w("")
    if summary:
        L[summary_at:summary_at] = ["## In short", ""] + [f"- {line}" for line in summary] + [
            "", "Details, figures and caveats below; what the numbers do not show is at the end.", ""]
    kept = ""
    if report.exists():  # sections other tools wrote below the marker (the coordinate check) stay
        old = report.read_text()
        if KEEP_MARKER in old:
            kept = "\n" + old[old.index(KEEP_MARKER):]
    partial = report.with_name(report.name + ".partial")
    partial.write_text("\n".join(L) + kept)
    partial.replace(report)
    return report
