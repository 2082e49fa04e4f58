"""One job of the activation comparison, run in its own process: ``python _compare_worker.py job.json``.

Jobs (the JSON's ``kind``):

* ``train``: one training run of an offline CPU config (``cli_configs/gpt2_cpu.yaml`` or
  ``convnext_cpu.yaml``) with one activation and seed, the variance callbacks on. Writes
  ``result.json`` in its directory last, so a run is finished exactly when that file exists.
* ``swap``: the fine-tuning swap check: a GELU-trained GPT-2 tiny (a ``train`` run's saved weights),
  its GELUs replaced by learnable activations with ``replace_activations(init="gelu")``; validation
  loss before the swap, right after it, and after a short fine-tune (GELU fine-tuned alike as control).

Kept separate from ``compare_activations.py`` so each run gets a fresh process (memory, threads, RNG)
and an interrupted sweep loses at most the run in progress.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

import lightning.pytorch as pl  # noqa: E402

CONFIGS = {"gpt2": ROOT / "cli_configs" / "gpt2_cpu.yaml", "convnext": ROOT / "cli_configs" / "convnext_cpu.yaml"}
SHAPE_GRID = (-4.0, 4.0, 81)  # where learned activation curves are evaluated


def natural_key(name: str) -> list:
    """``h.10`` after ``h.9``: layer names sorted by depth."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=True))
    tmp.replace(path)  # atomic: a result file is either complete or absent


# ---- callbacks ---------------------------------------------------------------------------------------
class Recorder(pl.Callback):
    """Step times (forward + backward + optimizer step, without data loading and validation), the
    validation metrics after each validation, and the learnable activations' curves at the start."""

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self.val: list[dict[str, float]] = []
        self.start_curves: dict[str, dict[str, list[float]]] = {}
        self.load: list[float] = []
        self._t0: Optional[float] = None

    def on_train_start(self, trainer, pl_module):
        self.start_curves = activation_curves(pl_module)
        self.load.append(os.getloadavg()[0])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._t0 is not None:
            self.step_times.append(time.perf_counter() - self._t0)
            self._t0 = None
        if trainer.global_step % 25 == 0:
            self.load.append(os.getloadavg()[0])

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        row = {"step": int(trainer.global_step)}
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val/"):
                row[key] = float(value)
        self.val.append(row)


class FillCoefficients(pl.Callback):
    """Set every learnable activation's parameters to a constant before the first step (the init check's
    "all coefficients 1" arm)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def on_train_start(self, trainer, pl_module):
        from lit_ortho.activations import LearnableActivation

        with torch.no_grad():
            for module in pl_module.modules():
                if isinstance(module, LearnableActivation):
                    for p in module.parameters(recurse=False):
                        p.fill_(self.value)


class Progress(pl.Callback):
    """One line every ``every`` steps (the sweep's log shows how far each run got)."""

    def __init__(self, every: int, total: int) -> None:
        self.every, self.total, self.t0 = every, total, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every == 0 or step == self.total:
            loss = trainer.callback_metrics.get("train/loss")
            loss = f" train/loss {float(loss):.4f}" if loss is not None else ""
            print(f"  step {step}/{self.total}{loss} ({time.perf_counter() - self.t0:.0f} s)", flush=True)


# ---- reading the model -------------------------------------------------------------------------------
def learnable_activations(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from lit_ortho.activations import LearnableActivation

    found = [(name, m) for name, m in module.named_modules() if isinstance(m, LearnableActivation)]
    return sorted(found, key=lambda item: natural_key(item[0]))


def activation_curves(pl_module: torch.nn.Module) -> dict[str, dict[str, list[float]]]:
    """F(x), F'(x) on the shape grid and the Gaussian gains of every learnable activation."""
    from callbacks.activation_shape import evaluate_curve, full_parameters
    from lit_ortho.activations.init import gaussian_gains

    x = torch.linspace(SHAPE_GRID[0], SHAPE_GRID[1], int(SHAPE_GRID[2]))
    curves = {}
    for name, module in learnable_activations(pl_module):
        params = full_parameters(module)
        y, dy = evaluate_curve(module, params, x)
        gains = gaussian_gains(copy.deepcopy(module).cpu().double() if module.per_channel is None else module)
        curves[name] = {
            "y": [round(v, 6) for v in y.mean(0).tolist()],
            "dy": [round(v, 6) for v in dy.mean(0).tolist()],
            "forward_gain": gains["forward_gain"],
            "backward_gain": gains["backward_gain"],
            "spec": module.spec(),
        }
    return curves


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 1, "tensors": 1})
    acc.Reload()
    return {tag: [(int(e.step), float(e.value)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def by_depth(scalars: dict[str, list[tuple[int, float]]], prefix: str) -> dict[str, Any]:
    """``prefix/<layer>`` series -> layers in depth order, values at the first and the last logged step."""
    layers = sorted((tag[len(prefix) + 1 :] for tag in scalars if tag.startswith(prefix + "/")), key=natural_key)
    if not layers:
        return {}
    first = {layer: scalars[f"{prefix}/{layer}"][0] for layer in layers}
    last = {layer: scalars[f"{prefix}/{layer}"][-1] for layer in layers}
    return {
        "layers": layers,
        "first_step": min(step for step, _ in first.values()),
        "last_step": max(step for step, _ in last.values()),
        "first": [first[layer][1] for layer in layers],
        "last": [last[layer][1] for layer in layers],
    }


def mean_series(scalars: dict[str, list[tuple[int, float]]], prefix: str) -> list[tuple[int, float]]:
    """The mean over layers of ``prefix/<layer>`` at every logged step (in log10 space for variances)."""
    tags = [tag for tag in scalars if tag.startswith(prefix + "/")]
    steps: dict[int, list[float]] = {}
    for tag in tags:
        for step, value in scalars[tag]:
            steps.setdefault(step, []).append(value)
    return [(s, float(sum(v) / len(v))) for s, v in sorted(steps.items())]


# ---- building a run from the CLI config ----------------------------------------------------------------
def build_cli(job: dict, run_dir: Path, extra_callbacks: list[pl.Callback]):
    """The config's model, data and Trainer, with the comparison's overrides: step budget, validation
    cadence, seed (model init and data order together), the variance callbacks, logs in ``run_dir``."""
    from lit_ortho.cli import OrthoCLI

    steps = int(job["steps"])
    val_every = min(int(job["val_every"]), steps)
    monitor: dict[str, Any] = {"every_n_steps": int(job.get("monitor_every", 1)), "image_every_n_steps": 0}
    activation_monitor = dict(monitor)
    if job.get("watch_blocks"):
        activation_monitor["module_types"] = ["Block"]
    trainer: dict[str, Any] = {
        "max_steps": steps,
        "val_check_interval": val_every,
        "check_val_every_n_epoch": None,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        # no_grad, not inference_mode, for Trainer.validate too: after a validate under inference mode the
        # modules' torchmetrics states are inference tensors and the next fit's validation fails
        "inference_mode": False,
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(run_dir), "name": "tb", "version": 0, "default_hp_metric": False},
        },
        "callbacks": [
            {"class_path": "callbacks.ActivationVarianceMonitor", "init_args": activation_monitor},
            {"class_path": "callbacks.GradientVarianceMonitor", "init_args": monitor},
        ]
        if monitor["every_n_steps"] > 0
        else [],
    }
    if job["config"] == "gpt2":  # 0: the whole split (the config says 8); ConvNeXt validates on all 360 digits
        trainer["limit_val_batches"] = int(job["val_batches"]) if job.get("val_batches") else 1.0
    override = run_dir / "override.yaml"
    override.write_text(yaml.safe_dump({"trainer": trainer}))
    seed = int(job["seed"])
    args = [
        "--config", str(CONFIGS[job["config"]]),
        "--config", str(override),
        f"--seed_everything={seed}",
        f"--data.init_args.seed={seed}",
        f"--model.init_args.activation={job['activation']}",
    ]  # fmt: skip
    for key, value in (job.get("model") or {}).items():
        args.append(f"--model.init_args.{key}={value}")
    cli = OrthoCLI(args=args, run=False)
    for cb in extra_callbacks:
        cli.trainer.callbacks.append(cb)
    return cli


def final_metrics(config: str, val: list[dict[str, float]]) -> dict[str, float]:
    last = val[-1] if val else {}
    keys = ("val/loss", "val/ppl") if config == "gpt2" else ("val/loss", "val/acc1")
    return {key: last.get(key, float("nan")) for key in keys}


def run_train(job: dict, run_dir: Path) -> dict:
    steps = int(job["steps"])
    recorder = Recorder()
    extra: list[pl.Callback] = [recorder, Progress(max(1, steps // 6), steps)]
    if job.get("coefficient_fill") is not None:
        extra.insert(0, FillCoefficients(float(job["coefficient_fill"])))  # before Recorder reads the curves
    cli = build_cli(job, run_dir, extra)
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    wall = time.perf_counter() - t0
    if cli.trainer.global_step < steps:
        raise RuntimeError(f"the run stopped at step {cli.trainer.global_step} of {steps}")
    if not recorder.val or recorder.val[-1]["step"] != steps:  # the budget is not a multiple of val_every
        cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    scalars = read_scalars(run_dir / "tb" / "version_0")
    warm = recorder.step_times[min(job.get("skip_steps", 10), len(recorder.step_times) // 2):]
    train_loss = scalars.get("train/loss", [])
    result = {
        "job": job,
        "final": final_metrics(job["config"], recorder.val),
        "val": recorder.val,
        "train_loss": train_loss,
        "step_time": {
            "mean": sum(warm) / len(warm),
            "median": sorted(warm)[len(warm) // 2],
            "steps_timed": len(warm),
        },
        "wall_s": wall,
        "step_times": [round(t, 4) for t in recorder.step_times],
        "load_avg": recorder.load,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in cli.model.parameters()),
        "activation_variance": by_depth(scalars, "activation_variance"),
        "activation_gain": by_depth(scalars, "activation_gain"),
        "gradient_variance": by_depth(scalars, "gradient_variance"),
        "activation_variance_mean_log10": [
            (s, v) for s, v in mean_series({k: [(s, math.log10(max(v, 1e-30))) for s, v in vals]
                                             for k, vals in scalars.items()}, "activation_variance")
        ],  # fmt: skip
        "shapes_start": recorder.start_curves,
        "shapes_end": activation_curves(cli.model),
        "finite": all(math.isfinite(v) for _, v in train_loss),
    }
    if job.get("save_weights"):
        torch.save(cli.model.state_dict(), run_dir / "model.pt")
        result["weights"] = "model.pt"
        result["vocab_size"] = int(cli.model.hparams.vocab_size)
    return result


# ---- the fine-tuning swap check ------------------------------------------------------------------------
def input_ranges(model: torch.nn.Module, batch: torch.Tensor) -> dict[str, dict[str, float]]:
    """std and 99.9th percentile of |x| of each MLP activation's input on one batch."""
    stats, hooks = {}, []
    for name, module in model.named_modules():
        if name.endswith("mlp.act"):
            def hook(mod, inputs, output, name=name):
                x = inputs[0].detach().flatten().float()
                stats[name] = {"std": float(x.std()), "p999_abs": float(torch.quantile(x.abs()[:200_000], 0.999))}
            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(batch[:, :-1].long())
    for h in hooks:
        h.remove()
    return dict(sorted(stats.items(), key=lambda kv: natural_key(kv[0])))


def run_swap(job: dict, run_dir: Path) -> dict:
    from lit_ortho import replace_activations

    base = dict(job["base_job"])
    steps = int(job["finetune_steps"])
    weights = torch.load(job["weights"], map_location="cpu", weights_only=True)

    def fresh(tag: str):
        sub = run_dir / tag
        sub.mkdir(exist_ok=True)
        ft = dict(base, steps=steps, val_every=steps, seed=int(job["seed"]), model={"vocab_size": int(job["vocab_size"])})
        cli = build_cli(ft, sub, [])  # the model is built now (vocab_size given): load the trained weights
        cli.trainer.callbacks[:] = [cb for cb in cli.trainer.callbacks if type(cb).__module__.startswith("lightning")]
        cli.model.load_state_dict(weights)
        # fine-tune at the original run's final LR, constant, no warmup
        cli.model.hparams.lr = cli.model.hparams.min_lr = float(job["finetune_lr"])
        cli.model.hparams.warmup_steps = 0
        return cli

    def validate(cli) -> float:
        out = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
        return float(out[0]["val/loss"])

    rows, ranges = [], None
    for spec in ["gelu"] + list(job["specs"]):
        cli = fresh(re.sub(r"[^A-Za-z0-9]+", "_", spec))
        before = validate(cli)
        if ranges is None:
            batch = next(iter(cli.datamodule.val_dataloader()))
            ranges = input_ranges(cli.model.model.eval(), batch)
        t0 = time.perf_counter()
        replaced = [] if spec == "gelu" else replace_activations(cli.model.model, spec, init="gelu")
        fit_s = time.perf_counter() - t0
        swapped = validate(cli)
        cli.trainer.fit(cli.model, cli.datamodule)
        after = float(cli.trainer.callback_metrics["val/loss"])
        rows.append({
            "spec": spec, "replaced": len(replaced), "fit_s": fit_s,
            "val_loss_before": before, "val_loss_swapped": swapped, "val_loss_finetuned": after,
            "shapes": activation_curves(cli.model) if replaced else {},
        })  # fmt: skip
        print(f"  {spec}: before {before:.4f} swapped {swapped:.4f} after {steps} steps {after:.4f}", flush=True)
    return {"job": job, "rows": rows, "input_ranges": ranges}


def main(argv: list[str]) -> None:
    job_file = Path(argv[0])
    job = json.loads(job_file.read_text())
    run_dir = job_file.parent
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import warnings

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    result = {"train": run_train, "swap": run_swap}[job["kind"]](job, run_dir)
    result["process_s"] = time.perf_counter() - t0
    result["torch"] = torch.__version__
    write_json(run_dir / "result.json", result)


if __name__ == "__main__":
    main(sys.argv[1:])
