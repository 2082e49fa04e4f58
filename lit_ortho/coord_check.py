"""``lit-ortho coord-check``: a coordinate check in the style of μP's, across widths (and depths).

For a training config and one or more activation specs, build the model at several widths (``n_embd``, with
the config's head size kept) and depths (``n_layer``), train each a few steps on the same batches at a
constant learning rate, and record for every layer and step the RMS of its output, the RMS of the gradient
with respect to its output and its weights' update ratio ||W_after - W_before|| / ||W_before||. A
parametrisation that keeps training stable across sizes keeps these flat against width; one that does not
shows them growing or shrinking with it.

``--config deep-mlp`` checks the setting the variance-preserving theory describes instead: a deep network
without normalisation or residuals (:class:`DeepMLP`), fed N(0, 1) inputs, where each activation's gains
alone decide whether activations and gradients keep their scale through depth.

Writes ``OUTPUT/coord_check.csv`` (columns :data:`COLUMNS`), one PNG per activation (RMS against width,
one line per step, one panel per kind of layer) and the same numbers to TensorBoard under ``OUTPUT/tb``.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import yaml
from torch import Tensor, nn

from lit_ortho.activations import LearnableActivation, is_gelu
from lit_ortho.errors import UsageError

__all__ = ["coord_check", "COLUMNS", "main"]

COLUMNS = ("activation", "width", "depth", "step", "layer", "kind", "activation_rms", "update_ratio", "grad_rms")
ACTIVATION_TYPES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Hardswish, nn.Softplus)


def _watched(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear and embedding layers and the activations: the layers whose coordinates a width change moves."""
    return [
        (name, m) for name, m in model.named_modules()
        if name and (isinstance(m, (nn.Linear, nn.Embedding, LearnableActivation) + ACTIVATION_TYPES) or is_gelu(m))
    ]  # fmt: skip


def _rms(t: Tensor) -> float:
    return float(t.detach().double().pow(2).mean().sqrt())


DEEP_MLP = "deep-mlp"  # the built-in config: DeepMLP on Gaussian data
DEEP_MLP_DEPTH, DEEP_MLP_BATCH, DEEP_MLP_LR = 16, 256, 1e-3


class DeepMLP(nn.Module):
    """``depth`` x (Linear(width, width, no bias, weights N(0, 1/width)) -> activation), then a linear head: no
    normalisation and no residual, so a layer's output variance is its input's times the activation's
    forward gain E[F(x)^2], and depth multiplies the gains (the mean-field setting of the paper's init)."""

    def __init__(self, width: int, depth: int, activation: str):
        super().__init__()
        from lit_ortho.activations import build_activation

        self.layers = nn.ModuleList()
        for _ in range(depth):
            block = nn.Module()
            block.fc = nn.Linear(width, width, bias=False)
            nn.init.normal_(block.fc.weight, std=width**-0.5)
            block.act = build_activation(activation)
            self.layers.append(block)
        self.head = nn.Linear(width, 1, bias=False)
        nn.init.normal_(self.head.weight, std=width**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.layers:
            x = block.act(block.fc(x))
        return self.head(x)


class _DeepMLPTask:
    """What :func:`_train` needs of a task: ``.model`` and ``._loss(batch)`` (regression on a random teacher)."""

    def __init__(self, model: DeepMLP):
        self.model = model

    def _loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, None]:
        x, y = batch
        return nn.functional.mse_loss(self.model(x), y), None


def _deep_mlp_batches(width: int, steps: int) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(12345)  # not the weights' seed (0): the same stream would correlate them
    teacher = torch.randn(width, 1, generator=g) / math.sqrt(width)
    batches = []
    for _ in range(steps):
        x = torch.randn(DEEP_MLP_BATCH, width, generator=g)
        batches.append((x, torch.tanh(x @ teacher)))
    return batches


def _load_config(path: str) -> dict[str, Any]:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path!r}") from None
    for key in ("model", "data"):
        if not isinstance(config.get(key), dict) or "class_path" not in config[key]:
            raise UsageError(f"{path!r} has no {key}.class_path: coord-check needs a model and a data module")
    return config


def _class(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _batches(config: dict[str, Any], steps: int) -> tuple[list[Tensor], int]:
    data = _class(config["data"]["class_path"])(**(config["data"].get("init_args") or {}))
    data.prepare_data()
    data.setup("fit")
    batches = []
    for batch in data.train_dataloader():
        batches.append(batch)
        if len(batches) == steps:
            break
    return batches, int(getattr(data, "vocab_size"))


def _model(config: dict[str, Any], activation: str, width: int, depth: Optional[int], vocab_size: int):
    cls = _gpt2_class(config)
    init_args = dict(config["model"].get("init_args") or {})
    probe = cls(**{**init_args, "vocab_size": vocab_size})
    head_size = probe.model.config.head_size
    if width % head_size:
        raise UsageError(f"width {width} is not a multiple of the config's head size {head_size} (n_embd / n_head)")
    shape = {"n_embd": width, "n_head": width // head_size, **({"n_layer": depth} if depth else {})}
    module = cls(**{**init_args, **shape, "activation": activation, "vocab_size": vocab_size, "dropout": 0.0})
    return module, float(init_args.get("lr", probe.hparams.lr))


def _gpt2_class(config: dict[str, Any]):
    from lit_ortho.tasks import GPT2Module

    cls = _class(config["model"]["class_path"])
    if not issubclass(cls, GPT2Module):
        raise UsageError(f"coord-check varies GPT-2's n_embd and n_layer; {cls.__name__} is not a GPT2Module")
    return cls


def _train(module, lr: float, batches: Sequence[Tensor]) -> list[dict[str, Any]]:
    """Rows of (step, layer, kind, activation_rms, update_ratio, grad_rms) for each step."""
    from lit_ortho.tasks.base import parameter_groups

    model = module.model
    layers = _watched(model)
    groups = parameter_groups(model, weight_decay=0.0)
    for g in groups:
        g.pop("param_names")
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    rows = []
    for step, batch in enumerate(batches):
        out_rms, grad_rms, handles = {}, {}, []

        def record(name, mod, args, output):
            if isinstance(output, Tensor) and output.is_floating_point():
                out_rms[name] = _rms(output)
                if output.requires_grad:
                    output.register_hook(lambda g, name=name: grad_rms.__setitem__(name, _rms(g)))

        for name, layer in layers:
            handles.append(layer.register_forward_hook(lambda mod, a, o, name=name: record(name, mod, a, o)))
        before = {name: [p.detach().clone() for p in layer.parameters(recurse=False)] for name, layer in layers}
        try:
            loss, _ = module._loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        finally:
            for h in handles:
                h.remove()
        for name, layer in layers:
            old = before[name]
            now = list(layer.parameters(recurse=False))
            den = math.sqrt(sum(float(o.double().pow(2).sum()) for o in old))
            num = math.sqrt(sum(float((n.detach().double() - o.double()).pow(2).sum()) for n, o in zip(now, old)))
            rows.append({"step": step, "layer": name, "kind": _kind(name, layer), "activation_rms": out_rms.get(name, math.nan),
                         "update_ratio": num / den if old and den > 0 else math.nan, "grad_rms": grad_rms.get(name, math.nan)})  # fmt: skip
    return rows


def _kind(name: str, layer: nn.Module) -> str:
    """The layer's role, the same at every width and depth: ``mlp.c_fc``, ``attn.c_proj``, ``wte``, ..."""
    parts = [p for p in name.split(".") if not p.isdigit() and p not in ("transformer", "h")]
    return ".".join(parts[-2:]) if parts else type(layer).__name__


def coord_check(config_path: str, widths: Sequence[int], activations: Sequence[str], steps: int = 3,
                depths: Sequence[Optional[int]] = (None,), output: str = "runs/coord") -> Path:  # fmt: skip
    """Run the check and write its CSV, pictures and TensorBoard events; returns the CSV's path."""
    if not widths or not activations:
        raise UsageError("give at least one width (--widths 64,128) and one activation (--activation gelu)")
    if config_path == DEEP_MLP:
        from lit_ortho.activations import build_activation

        for activation in activations:
            build_activation(activation)  # a bad spec fails before anything runs

        def build(activation: str, width: int, depth: Optional[int]):
            torch.manual_seed(0)
            depth = depth or DEEP_MLP_DEPTH
            return _DeepMLPTask(DeepMLP(width, depth, activation)), DEEP_MLP_LR, _deep_mlp_batches(width, steps), depth
    else:
        config = _load_config(config_path)
        _gpt2_class(config)  # before any data is prepared
        batches, vocab_size = _batches(config, steps)

        def build(activation: str, width: int, depth: Optional[int]):
            module, lr = _model(config, activation, width, depth, vocab_size)
            return module, lr, batches, module.model.config.n_layer

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for activation in activations:
        for depth in depths:
            for width in widths:
                task, lr, task_batches, depth_used = build(activation, width, depth)
                for row in _train(task, lr, task_batches):
                    rows.append({"activation": activation, "width": width, "depth": depth_used, **row})
    return _write(rows, out)


def _write(rows: list[dict[str, Any]], out: Path) -> Path:
    """The CSV (written beside, then renamed into place) and the pictures."""
    csv_path = out / "coord_check.csv"
    partial = csv_path.with_name(csv_path.name + ".partial")
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(csv_path)
    _pictures(rows, out)
    return csv_path


def _pictures(rows: list[dict[str, Any]], out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"))
    for activation in sorted({r["activation"] for r in rows}):
        mine = [r for r in rows if r["activation"] == activation]
        kinds = sorted({r["kind"] for r in mine})
        cols = min(4, len(kinds))
        fig = Figure(figsize=(4 * cols, 3.2 * math.ceil(len(kinds) / cols)))
        FigureCanvasAgg(fig)
        for i, kind in enumerate(kinds):
            ax = fig.add_subplot(math.ceil(len(kinds) / cols), cols, i + 1)
            drawn = False
            for step in sorted({r["step"] for r in mine}):
                pts = {}
                for r in mine:
                    if r["kind"] == kind and r["step"] == step and math.isfinite(r["activation_rms"]) and r["activation_rms"] > 0:
                        pts.setdefault(r["width"], []).append(r["activation_rms"])
                widths = sorted(pts)
                if widths:  # every RMS of this kind may have vanished to 0 or overflowed: nothing to draw
                    ax.plot(widths, [sum(pts[w]) / len(pts[w]) for w in widths], marker="o", label=f"step {step}")
                    drawn = True
            ax.set_xscale("log", base=2)
            if drawn:
                ax.set_yscale("log")
            else:
                ax.text(0.5, 0.5, "no finite, positive RMS", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(kind, fontsize=9)
            ax.set_xlabel("width (n_embd)")
            ax.set_ylabel("output RMS")
        if fig.axes[0].get_legend_handles_labels()[0]:
            fig.axes[0].legend(fontsize=7)
        fig.suptitle(f"coordinate check: {activation}")
        fig.tight_layout()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in activation)
        fig.savefig(out / f"coord_check_{safe}.png", dpi=90)
        writer.add_figure(f"coord_check/{safe}", fig)
        for r in mine:
            tag = f"coord_check/{safe}/{r['kind']}/width_{r['width']}_depth_{r['depth']}"
            if math.isfinite(r["activation_rms"]):
                writer.add_scalar(f"{tag}/activation_rms", r["activation_rms"], r["step"])
    writer.close()


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas (64,128,256), got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lit-ortho coord-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help=f"a GPT-2 training YAML (its model and data sections are used), or "
                   f"{DEEP_MLP!r}: {DEEP_MLP_DEPTH} unnormalised Linear+activation layers on Gaussian data")
    p.add_argument("--widths", type=_ints, required=True, help="n_embd values, e.g. 64,128,256")
    p.add_argument("--depths", type=_ints, default=None, help=f"n_layer values (default: the config's; {DEEP_MLP}: "
                   f"{DEEP_MLP_DEPTH})")
    p.add_argument("--activation", action="append", required=True, help="an activation spec; repeat for several")
    p.add_argument("--steps", type=int, default=3, help="training steps per model (default: 3)")
    p.add_argument("--output", default="runs/coord", help="where the CSV, pictures and TensorBoard events go")
    return p


def main(argv: Sequence[str]) -> Path:
    a = parser().parse_args(argv)
    path = coord_check(a.config, a.widths, a.activation, a.steps, a.depths or (None,), a.output)
    print(f"wrote {path} and the pictures beside it; tensorboard --logdir {Path(a.output) / 'tb'}")
    return path
