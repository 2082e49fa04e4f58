"""The monitors on models that were not written for them: Lightning's demos, timm and torchvision CNNs, Hugging Face
transformers. Each trains 2 steps with all three monitors; none may stop ``fit`` because the model lacks some kind
of layer, each says (once) what it found and what it watches. Also: the monitors under ``lit_ortho.callbacks`` when
a project's own ``callbacks`` module shadows ours, and the depth pictures' labels."""

from __future__ import annotations

import csv
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

import callbacks
from launch import REPO, run, script
from callbacks import ActivationShapeMonitor, ActivationVarianceMonitor, GradientVarianceMonitor, plots

STEPS = 2


# ---- models ---------------------------------------------------------------------------------------------------
class Classifier(pl.LightningModule):
    """Any image or sequence classifier as a LightningModule: ``self.model(x)`` -> logits (or ``.logits``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.model(x)
        logits = getattr(out, "logits", out)
        if logits.dim() == 3:  # a language model: next-token loss
            return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        return F.cross_entropy(logits, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class BertClassifier(Classifier):
    def training_step(self, batch, batch_idx):
        x, y = batch
        hidden = self.model(input_ids=x).last_hidden_state[:, 0]
        return F.cross_entropy(self.head(hidden), y)

    def __init__(self, model: nn.Module, classes: int = 3):
        super().__init__(model)
        self.head = nn.Linear(model.config.hidden_size, classes)


def demo_transformer():
    """Lightning's demo Transformer (nn.Transformer: functional ReLU), small, fed random tokens (no WikiText2)."""
    from lightning.pytorch.demos import LightningTransformer, Transformer

    class RandomTokensTransformer(LightningTransformer):
        def __init__(self):
            super().__init__(vocab_size=50)
            self.model = Transformer(vocab_size=50, ninp=16, nhead=2, nhid=32, nlayers=1, dropout=0.0)

        def prepare_data(self):  # no download
            pass

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (8, 2, 12), generator=g)
    return RandomTokensTransformer(), DataLoader(TensorDataset(tokens[:, 0], tokens[:, 1]), batch_size=4)


def boring():
    from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset

    return BoringModel(), DataLoader(RandomDataset(32, 16), batch_size=4)


def images(classes: int = 10, size: int = 32):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, size, size, generator=g), torch.randint(0, classes, (8,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=4)


def timm_resnet():
    import timm

    return Classifier(timm.create_model("resnet18", num_classes=10)), images()


def torchvision_mobilenet():
    import torchvision

    return Classifier(torchvision.models.mobilenet_v3_small(num_classes=10)), images()


def tokens(vocab: int, classes: int = 3):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, vocab, (8, 10), generator=g), torch.randint(0, classes, (8,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=4)


def hf_bert():
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(0)
    return BertClassifier(BertModel(config, add_pooling_layer=False)), tokens(64)


def hf_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(0)
    return Classifier(GPT2LMHeadModel(config)), tokens(64)


# ---- running and reading back ----------------------------------------------------------------------------------
def all_monitors(**kwargs):
    common = {"every_n_steps": 1, "image_every_n_steps": 0, **kwargs}
    return [
        ActivationVarianceMonitor(**common),
        GradientVarianceMonitor(activation_gradients=True, **common),
        ActivationShapeMonitor(every_n_steps=1),
    ]


def fit(tmp_path: Path, model: pl.LightningModule, loader: DataLoader, monitors, loggers=None) -> tuple[set, list[str]]:
    """Train ``STEPS`` steps; return the logged tags (from metrics.csv) and every warning message."""
    loggers = loggers if loggers is not None else [CSVLogger(tmp_path, name="csv")]
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, logger=loggers, callbacks=monitors,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=1, num_sanity_val_steps=0)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader)
    assert trainer.global_step == STEPS
    return csv_tags(tmp_path), [str(w.message) for w in caught]


def csv_tags(root: Path) -> set[str]:
    tags: set[str] = set()
    for path in root.rglob("metrics.csv"):
        with open(path) as f:
            for row in csv.DictReader(f):
                tags |= {k for k, v in row.items() if v not in ("", None) and k != "step"}
    return tags


def with_prefix(tags: set[str], prefix: str) -> set[str]:
    return {t[len(prefix) + 1 :] for t in tags if t.startswith(prefix + "/")}


def matching(messages: list[str], *needles: str) -> list[str]:
    return [m for m in messages if all(n in m for n in needles)]


# ---- 1. any model, no crash ------------------------------------------------------------------------------------
def test_lightning_demo_transformer_functional_relu(tmp_path):
    """nn.Transformer applies F.relu: no activation module. Before: ActivationVarianceMonitor raised 'found no
    module to watch', ActivationShapeMonitor 'the model has none'. Now both warn once and the variance monitors
    watch the Linear layers' outputs (MultiheadAttention's out_proj never runs its forward: said once, not logged)."""
    model, loader = demo_transformer()
    tags, messages = fit(tmp_path, model, loader, all_monitors())

    act = with_prefix(tags, "activation_variance")
    assert {"model.transformer.encoder.layers.0.linear1", "model.transformer.encoder.layers.0.linear2",
            "model.transformer.decoder.layers.0.linear1", "model.decoder"} <= act, act  # fmt: skip
    assert not any("out_proj" in name for name in act)
    assert with_prefix(tags, "activation_gain") == act
    assert "model.decoder.weight" in with_prefix(tags, "gradient_variance")
    assert "model.transformer.encoder.layers.0.linear2" in with_prefix(tags, "activation_grad_variance")
    assert not with_prefix(tags, "activation_shape_forward_gain")

    for monitor in ("ActivationVarianceMonitor", "GradientVarianceMonitor"):
        fallback = matching(messages, f"{monitor}: the model has no activation module", "Linear/Conv")
        assert len(fallback) == 1, messages
        assert "F.relu" in fallback[0] and "Linear x" in fallback[0] and "encoder.layers.0.linear1" in fallback[0]
    never_ran = matching(messages, "ActivationVarianceMonitor", "never ran")
    assert len(never_ran) == 1 and "self_attn.out_proj" in never_ran[0], messages
    shape = matching(messages, "ActivationShapeMonitor", "has none")
    assert len(shape) == 1 and "no activation module at all" in shape[0], messages


def test_boring_model(tmp_path):
    """One Linear fed by data: its output is watched, and no gradient reaches its input (said once)."""
    model, loader = boring()
    tags, messages = fit(tmp_path, model, loader, all_monitors())
    assert with_prefix(tags, "activation_variance") == {"layer"}
    assert with_prefix(tags, "gradient_variance") == {"layer.weight", "layer.bias"}
    assert not with_prefix(tags, "activation_grad_variance")
    assert len(matching(messages, "ActivationVarianceMonitor: the model has no", "(Linear x1): layer")) == 1, messages
    no_grad = matching(messages, "GradientVarianceMonitor: no gradient reached the input")
    assert len(no_grad) == 1 and "['layer']" in no_grad[0], messages
    assert len(matching(messages, "ActivationShapeMonitor", "has none")) == 1


@pytest.mark.parametrize(
    "make, activations",
    [
        (timm_resnet, {"model.act1", "model.layer1.0.act1", "model.layer4.1.act2"}),
        (torchvision_mobilenet, {"model.features.0.2", "model.features.1.block.0.2", "model.classifier.1"}),
        (hf_bert, {"model.encoder.layer.0.intermediate.intermediate_act_fn",
                   "model.encoder.layer.1.intermediate.intermediate_act_fn"}),
        (hf_gpt2, {"model.transformer.h.0.mlp.act", "model.transformer.h.1.mlp.act"}),
    ],
    ids=["timm-resnet18", "torchvision-mobilenet_v3_small", "hf-bert", "hf-gpt2"],
)  # fmt: skip
def test_library_models(tmp_path, make, activations):
    """Activation modules of torch (timm, torchvision) and transformers (GELUActivation, NewGELUActivation) are
    watched as they are: no fallback warning; the shape monitor warns that they are fixed functions."""
    model, loader = make()
    tags, messages = fit(tmp_path, model, loader, all_monitors())
    act = with_prefix(tags, "activation_variance")
    assert activations <= act, sorted(act)
    assert activations <= with_prefix(tags, "activation_grad_variance")
    grads = with_prefix(tags, "gradient_variance")
    assert len(grads) >= 10 and all(name.startswith(("model.", "head.")) for name in grads), sorted(grads)
    assert not matching(messages, "the model has no activation module"), messages
    shape = matching(messages, "ActivationShapeMonitor", "has none")
    assert len(shape) == 1 and "fixed functions" in shape[0], messages


def test_explicit_glob_matching_nothing_names_the_modules(tmp_path):
    model, loader = boring()
    with pytest.raises(ValueError, match=r"glob 'blocks\.\*' matches no module; the model's 1 modules are named: layer"):
        fit(tmp_path, model, loader, [ActivationVarianceMonitor(modules=["blocks.*"])])


def test_absent_module_types_warn_and_fall_back(tmp_path):
    """A valid type the model lacks is not an error: warned, and the Linear layers are watched."""
    model, loader = boring()
    tags, messages = fit(tmp_path, model, loader, [ActivationVarianceMonitor(every_n_steps=1, module_types=["Conv2d"],
                                                                             image_every_n_steps=0)])  # fmt: skip
    assert with_prefix(tags, "activation_variance") == {"layer"}
    assert len(matching(messages, "module_types ['Conv2d']", "Linear/Conv")) == 1, messages


def test_pictures_of_a_real_run_reach_tensorboard(tmp_path):
    """BERT with a TensorBoard logger: the by_depth pictures are drawn (with kinds and names) and logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, loader = hf_bert()
    logger = TensorBoardLogger(tmp_path, name="tb")
    _, messages = fit(tmp_path, model, loader, all_monitors(image_every_n_steps=1), loggers=[logger])
    assert not matching(messages, "Could not draw"), messages
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert {"activation_variance/by_depth", "gradient_variance/by_depth",
            "activation_grad_variance/by_depth"} <= set(events.Tags()["images"]), events.Tags()  # fmt: skip
    assert "activation_variance/model.encoder.layer.0.intermediate.intermediate_act_fn" in events.Tags()["scalars"]


# ---- 2. lit_ortho.callbacks ----------------------------------------------------------------------------------------
def test_lit_ortho_callbacks_are_the_same_classes():
    import lit_ortho.callbacks as lc

    for name in ("ActivationVarianceMonitor", "GradientVarianceMonitor", "ActivationShapeMonitor",
                 "SelfRecordingActivation"):  # fmt: skip
        assert getattr(lc, name) is getattr(callbacks, name)
    assert lc.protocol is callbacks.protocol and lc.plots is callbacks.plots
    import lit_ortho.callbacks.selection as lc_selection

    assert lc_selection is sys.modules["callbacks.selection"]


USER_CALLBACKS = '''
"""A project's own callbacks module, first on sys.path: it shadows the monitors' top-level package."""
from lightning.pytorch.callbacks import Callback
MARK = "the user's"
class PrintingCallback(Callback):
    pass
'''



def _run(name: str, cwd: Path, *args: str) -> dict:
    """tests/scripts/<name> with ``cwd`` first on the path (where a user's own ``callbacks.py`` would be); its last line of output, as JSON."""
    result = run(script(name, *args), cwd, timeout=600, tag=Path(name).stem, PYTHONPATH=os.pathsep.join([str(cwd), str(REPO)]))
    assert result.ok, result.describe()
    return json.loads(result.output(tail=None).strip().splitlines()[-1])


@pytest.mark.slow
def test_lit_ortho_callbacks_work_when_a_users_callbacks_module_shadows_ours(tmp_path):
    """cwd holds the user's callbacks.py, first on sys.path: ``import callbacks`` is theirs and stays theirs;
    ``lit_ortho.callbacks`` loads ours from its file under an internal name, works from YAML, trains, and its
    monitors unpickle in a fresh process (same shadowing)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "callbacks.py").write_text(USER_CALLBACKS)
    found = _run("shadowed_callbacks.py", project, str(tmp_path))
    assert found["module"] == "lit_ortho.callbacks._monitors.activation_variance"
    assert "lit_ortho.callbacks.protocol" in found["ours_loaded_as"]
    assert found["keys"][0] == "count"
    assert with_prefix(csv_tags(tmp_path / "csv"), "activation_variance") == {"layer"}
    assert matching(found["warnings"], "ActivationShapeMonitor", "has none")

    loaded = _run("unpickle_monitor.py", project, str(tmp_path / "monitor.pkl"))
    assert loaded == {"type": "lit_ortho.callbacks._monitors.activation_variance", "every": 3, "user": "the user's"}


@pytest.mark.slow
def test_both_names_give_the_same_classes_in_either_import_order(tmp_path):
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    for order in (("callbacks", "lit_ortho.callbacks"), ("lit_ortho.callbacks", "callbacks")):
        found = _run("import_order.py", empty, *order)
        assert found == {"same": True, "yaml_same": True, "module": "callbacks.activation_variance", "internal": False}


# ---- 3. pictures ----------------------------------------------------------------------------------------------------
def test_depth_picture_labels_layers_by_name_and_kind(tmp_path):
    """Layer names (shared prefix dropped, long ones elided in the middle) on the depth axis and on the heat map,
    tick labels coloured by kind with a legend of kinds, a colour bar in log10 of what is shown."""
    names = ["model.embeddings.word_embeddings"] + [
        f"model.encoder.layer.{i}.{part}" for i in range(2)
        for part in ("attention.self.query", "attention.output.dense", "intermediate.dense",
                     "intermediate.intermediate_act_fn", "output.dense")
    ] + ["model.head_with_a_really_remarkably_long_name.and_a_long_inner_module.projection"]  # fmt: skip
    kinds = ["Embedding"] + ["Linear", "Linear", "Linear", "GELUActivation", "Linear"] * 2 + ["Conv1d"]
    steps = list(range(0, 20, 2))
    history = 10.0 ** np.random.default_rng(0).normal(0, 2, (len(names), len(steps)))
    current = history[:, -1].copy()
    current[3] = np.inf
    fig = plots.build_depth_figure("activation_variance", names, current, steps, history, 19, kinds=kinds)
    fig.savefig(tmp_path / "depth.png")
    depth_ax, heat_ax = fig.axes[:2]

    labels, prefix = plots.layer_labels(names)
    assert prefix == "model"
    assert labels[1] == "encoder.layer.0.attention.self.query" and labels[0] == "embeddings.word_embeddings"
    long = labels[-1]
    assert len(long) <= 40 and "\u2026" in long and long.endswith("projection") and long.startswith("head_with")
    fig.canvas.draw()
    for ax in (depth_ax, heat_ax):
        shown = [t.get_text() for t in ax.get_yticklabels()]
        assert shown == labels, shown
    assert heat_ax.yaxis.get_ticks_position() in ("right", "default") and heat_ax.yaxis.label_position in ("left", "right")
    colors = {t.get_text(): t.get_color() for t in depth_ax.get_yticklabels()}
    assert colors[labels[0]] != colors[labels[1]] == colors[labels[3]] != colors[labels[4]]
    legend = [t.get_text() for t in depth_ax.get_legend().get_texts()]
    assert legend == ["Embedding", "Linear", "GELUActivation", "Conv1d", "non-finite"]
    colorbar_ax = fig.axes[2]
    assert "log10(activation variance)" in colorbar_ax.get_ylabel()
    assert "activation variance" in depth_ax.get_xlabel()
    assert "model." in fig.get_suptitle()
    other = plots.build_depth_figure("update_ratio", names, current, steps, history, 19, kinds=kinds)
    assert "log10(update ratio)" in other.axes[2].get_ylabel()  # each picture says what it shows
    assert (tmp_path / "depth.png").stat().st_size > 10_000

    rgb = plots.depth_figure("activation_variance", names, current, steps, history, 19, kinds=kinds)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert_laid_out(fig)
    assert_laid_out(plots.build_depth_figure("gradient_variance", [f"h.{i}.w" for i in range(3)], np.ones(3), [0], np.ones((3, 1)), 0))


def assert_laid_out(fig) -> None:
    """Every title, axis label and layer label inside the picture, and the layer labels of each side clear of their neighbours: the depth
    axis's labels right of its axis label, the heat map's left of the colour bar and its labels."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    depth_ax, heat_ax, colorbar_ax = fig.axes[:3]
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in (depth_ax, heat_ax, colorbar_ax):
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_yticklabels()]
    for t in (t for t in texts if t.get_visible() and t.get_text()):
        box = t.get_window_extent(renderer)
        assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1 and frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1, t
    boxes = lambda labels: [t.get_window_extent(renderer) for t in labels if t.get_text()]  # noqa: E731
    ylabel = depth_ax.yaxis.label.get_window_extent(renderer)
    assert all(b.x0 > ylabel.x1 for b in boxes(depth_ax.get_yticklabels()))
    colorbar = colorbar_ax.get_tightbbox(renderer)
    assert all(b.x1 < colorbar.x0 for b in boxes(heat_ax.yaxis.get_ticklabels(which="major")) if b.x0 > heat_ax.bbox.x1 - 1)


def test_depth_picture_of_many_layers_stays_legible():
    names = [f"blocks.{i}.mlp.fc{j}.weight" for i in range(100) for j in (1, 2)]
    n = len(names)
    fig = plots.build_depth_figure("gradient_variance", names, np.ones(n), [0], np.ones((n, 1)), 0,
                                   axis_label="parameter (forward order)", kinds=["Linear.weight"] * n)  # fmt: skip
    shown = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert 50 <= len(shown) <= plots.MAX_LABELLED_LAYERS and shown[0] == "0.mlp.fc1.weight", shown[:3]
    assert fig.get_size_inches()[1] <= 18.0


def test_labels_are_distinct_and_short():
    assert plots.layer_labels(["a.b.c", "a.b.d"]) == (["c", "d"], "a.b")
    assert plots.layer_labels(["layer"]) == (["layer"], "")
    assert plots.elide("encoder.layer.11.attention.output.dense", 30) == "encoder.layer.11\u2026output.dense"
    many = [f"x.{'very_long_component_' * 3}{i}" for i in range(3)]
    labels, _ = plots.layer_labels(many)
    assert len(set(labels)) == 3 and all(len(label) <= 40 for label in labels)
