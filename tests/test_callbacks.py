"""The variance callbacks: logged numbers equal numbers computed directly, read back from TensorBoard."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lightning.pytorch as pl

from callbacks import ActivationShapeMonitor, ActivationVarianceMonitor, GradientVarianceMonitor, ParameterUpdateMonitor
from launch import free_port, run, script

_spec = importlib.util.spec_from_file_location("_callback_helpers", Path(__file__).with_name("_callback_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
sys.modules["_callback_helpers"] = helpers
_spec.loader.exec_module(helpers)



def assert_close(got: float, want: float, rel: float = 1e-5, what: str = "") -> None:
    assert got == pytest.approx(want, rel=rel, abs=1e-12), f"{what}: logged {got}, expected {want}"


def assert_matches_replay(scalars: dict, reference: list[dict], steps, rel: float = 1e-5) -> None:
    """Every statistic computed directly at every step equals the logged one (TensorBoard keeps float32)."""
    for step, values in zip(steps, reference):
        for tag, want in values.items():
            assert step in scalars.get(tag, {}), f"{tag} not logged at step {step}"
            assert_close(scalars[tag][step], want, rel, f"{tag} at step {step}")


def monitors(every: int = 1, image_every: int = 0, **alerts):
    return [
        ActivationVarianceMonitor(every_n_steps=every, image_every_n_steps=image_every, **alerts),
        GradientVarianceMonitor(
            every_n_steps=every, image_every_n_steps=image_every, activation_gradients=True, **alerts
        ),
        ParameterUpdateMonitor(every_n_steps=every, image_every_n_steps=image_every),
    ]


# ---- single process: equal to a plain PyTorch replay ----------------------------------------------------------
@pytest.mark.parametrize(
    "checkpointing, precision, accumulate, inplace_relu",
    [("none", "32-true", 1, False), ("function", "32-true", 1, False), ("wrapper", "32-true", 1, False),
     ("none", "bf16-mixed", 1, False), ("none", "32-true", 2, False), ("function", "32-true", 1, True)],
    ids=["plain", "checkpoint-function", "checkpoint-wrapper", "bf16-mixed", "grad-accumulation", "inplace-relu"],
)  # fmt: skip
def test_logged_values_equal_direct_computation(tmp_path, checkpointing, precision, accumulate, inplace_relu):
    """Variance/mean/gain of GELU and Tanh outputs, parameter-gradient and activation-gradient variances, at
    every step, equal torch.var(unbiased=False) on the same tensors in a plain PyTorch loop; validation runs
    between steps (on inputs x100) and the checkpointed blocks re-run forward during backward: neither leaks in;
    checkpoint_wrapper's name part is stripped. With accumulation the statistic covers both micro-batches.
    An in-place ReLU's input is read before it is overwritten, and its gradient taps do not break autograd."""
    steps = 3
    trainer = helpers.trainer(
        tmp_path, monitors(), max_steps=steps, precision=precision, accumulate_grad_batches=accumulate,
        limit_val_batches=1, val_check_interval=accumulate, num_sanity_val_steps=1,
    )  # fmt: skip
    def act1():
        return nn.ReLU(inplace=True) if inplace_relu else None

    trainer.fit(
        helpers.TinyNet(checkpointing=checkpointing, act1=act1()),
        helpers.loader(helpers.GLOBAL_BATCH // accumulate),
        helpers.loader(helpers.GLOBAL_BATCH),
    )
    scalars = helpers.read_scalars(tmp_path)
    reference = helpers.replay(steps, accumulate=accumulate, precision=precision, model=helpers.TinyNet(act1=act1()))
    assert_matches_replay(scalars, reference, range(steps), rel=1e-5 if precision == "32-true" else 1e-3)
    stats_tags = {t for t in scalars if not t.startswith(("epoch", "hp_metric"))}
    assert stats_tags == set(reference[0]), "exactly the documented tags are logged"


def test_nothing_logged_or_hooked_on_other_steps(tmp_path):
    """every_n_steps=3 logs at Lightning's steps 2 and 5 only; every_n_steps=None follows log_every_n_steps=2.
    Hooks exist only during the forward of a logging step: never on other steps, in validation, or after fit."""

    class HookSpy(pl.Callback):
        def __init__(self):
            self.train, self.val = {}, []

        @staticmethod
        def count(module):
            act = module.block1.act
            return len(act._forward_hooks) + len(act._forward_pre_hooks)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.train[trainer.fit_loop.epoch_loop._batches_that_stepped] = self.count(pl_module)

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            self.val.append(self.count(pl_module))

    spy = HookSpy()
    callbacks = [
        ActivationVarianceMonitor(every_n_steps=3, image_every_n_steps=0),
        GradientVarianceMonitor(image_every_n_steps=0, activation_gradients=True),
        spy,  # runs after the monitors' on_train_batch_start
    ]
    model = helpers.TinyNet()
    trainer = helpers.trainer(tmp_path, callbacks, max_steps=7, log_every_n_steps=2, limit_val_batches=1,
                              val_check_interval=1)  # fmt: skip
    trainer.fit(model, helpers.loader(helpers.GLOBAL_BATCH), helpers.loader(helpers.GLOBAL_BATCH))

    scalars = helpers.read_scalars(tmp_path)
    for tag, values in scalars.items():
        if tag.startswith("activation_variance") or tag.startswith(("activation_mean", "activation_gain/")):
            assert sorted(values) == [2, 5], tag
        elif tag.startswith(("gradient_variance", "activation_grad")):
            assert sorted(values) == [1, 3, 5], tag
    assert "activation_variance/block1.act" in scalars and "gradient_variance/head.weight" in scalars
    # ActivationVarianceMonitor hooks: 2 per watched module at steps 2 and 5; GradientVarianceMonitor: 2 at 1, 3, 5.
    assert spy.train == {0: 0, 1: 2, 2: 2, 3: 2, 4: 0, 5: 4, 6: 0}
    assert spy.val and set(spy.val) == {0}
    assert HookSpy.count(model) == 0
    reference = helpers.replay(7)
    variances = [{k: v for k, v in reference[s].items() if k.startswith("activation_variance")} for s in (2, 5)]
    assert_matches_replay(scalars, variances, (2, 5))


# ---- multi-process: 2 ranks equal 1 rank on the same global batch ---------------------------------------------
def run_two_processes(mode: str, out_dir: Path) -> None:
    """tests/scripts/callback_ranks.py on 2 CPU processes (Lightning starts the second), output in ``<out_dir>/<mode>.log``."""
    result = run(script("callback_ranks.py", mode, out_dir), out_dir, timeout=600, tag=mode,
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))  # fmt: skip
    assert result.ok, f"{mode} run failed:\n{result.describe()}"


@pytest.fixture(scope="module")
def single_process_scalars(tmp_path_factory):
    """The 1-process run the 2-process runs are compared with: same model, global batch, monitors, steps."""
    log_dir = tmp_path_factory.mktemp("single")
    helpers.trainer(log_dir, helpers.distributed_run_callbacks(), max_steps=3).fit(
        helpers.distributed_run_model(), helpers.loader(helpers.GLOBAL_BATCH)
    )
    scalars = helpers.read_scalars(log_dir)
    for tag in ("activation_variance/block2.act", "gradient_variance/head.weight", "activation_grad_gain/block2.act"):
        assert sorted(scalars[tag]) == [0, 1, 2], tag
    assert sorted(scalars["activation_shape_forward_gain/block2.act"]) == [0, 1, 2, 3]
    return scalars


def assert_same_scalars(got: dict, want: dict, prefixes: tuple[str, ...]) -> None:
    tags = {t for t in want if t.startswith(prefixes)}
    assert tags and tags <= set(got), f"missing: {sorted(tags - set(got))}"
    for tag in sorted(tags):
        assert sorted(got[tag]) == sorted(want[tag]), tag
        for step, value in want[tag].items():
            assert_close(got[tag][step], value, 1e-5, f"{tag} at step {step}")


ALL_STATISTICS = ("activation_", "gradient_variance", "update_ratio", "parameter_drift", "coefficient")


@pytest.mark.multiprocess
@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(tmp_path, single_process_scalars):
    """DDP on 2 CPU processes (gloo), each with half of every global batch, logs what 1 process logs."""
    run_two_processes("ddp", tmp_path)
    assert_same_scalars(helpers.read_scalars(tmp_path), single_process_scalars, ALL_STATISTICS)
    for rank in (0, 1):  # replicas: each parameter is pooled over its own rank only; W0 saved once
        report = json.loads((tmp_path / f"peers-rank{rank}.json").read_text())
        assert set(map(tuple, report["peers"].values())) == {(rank,)}
        assert report["saved_parts"] == 1 and report["reloaded"]

    # Not vacuous: ranks hold samples of different mean and scale, so averaging per-rank variances would be off.
    model, (x, _) = helpers.TinyNet(), helpers.make_data()
    with torch.no_grad():
        out = model.block1.act(model.block1.fc(x[: helpers.GLOBAL_BATCH]))
    averaged = (helpers.population_var(out[0::2]) + helpers.population_var(out[1::2])) / 2
    exact = single_process_scalars["activation_variance/block1.act"][0]
    assert abs(averaged - exact) > 0.05 * exact


@pytest.mark.multiprocess
@pytest.mark.slow
def test_fsdp2_gradient_variance_equals_single_process(tmp_path, single_process_scalars):
    """FSDP2 (ModelParallelStrategy, 2 CPU processes): gradients are DTensor shards, uneven, one of them
    empty on rank 1; the parameter-gradient and activation variances, and the activation curves' gains
    (parameters gathered with full_tensor), equal the 1-process values."""
    run_two_processes("fsdp2", tmp_path)
    shards = [json.loads((tmp_path / f"params-rank{r}.json").read_text()) for r in (0, 1)]
    assert shards[0].pop("strategy") == "ModelParallelStrategy" and shards[1].pop("strategy") == "ModelParallelStrategy"
    assert all(info["dtensor"] for report in shards for info in report.values())
    assert shards[0]["block2.fc.weight"]["local_numel"] == 3 * helpers.HIDDEN1  # 5 rows -> 3 + 2
    assert shards[1]["head.weight"]["local_numel"] == 0  # 1 row: rank 1 holds nothing and still joins
    assert_same_scalars(helpers.read_scalars(tmp_path), single_process_scalars, ALL_STATISTICS)
    for rank in (0, 1):  # every parameter's shards are on both ranks; W0's parts of both go to the checkpoint
        report = json.loads((tmp_path / f"peers-rank{rank}.json").read_text())
        assert set(map(tuple, report["peers"].values())) == {(0, 1)}
        assert report["saved_parts"] == 2 and report["reloaded"]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_hsdp_replicas_are_not_counted_twice(tmp_path, single_process_scalars):
    """FSDP2 on a (replicate 2, shard 1) mesh (hybrid sharding): every parameter is a DTensor replicated over
    the two ranks; each rank pools its parameters over its shard group only (itself), and every statistic,
    update ratios, drift and activation coefficients included, equals 1 process."""
    run_two_processes("hsdp", tmp_path)
    shards = [json.loads((tmp_path / f"params-rank{r}.json").read_text()) for r in (0, 1)]
    assert shards[0]["block2.fc.weight"]["placements"] == ["R", "S(0)"]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"peers-rank{rank}.json").read_text())
        assert set(map(tuple, report["peers"].values())) == {(rank,)}
        assert report["saved_parts"] == 1 and report["reloaded"]
    assert_same_scalars(helpers.read_scalars(tmp_path), single_process_scalars, ALL_STATISTICS)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_fsdp1_flat_shards_equal_single_process(tmp_path, single_process_scalars):
    """FSDP1 (FULL_SHARD, use_orig_params, blocks auto-wrapped, 2 CPU processes): each parameter is a slice of
    a flat buffer, several ranks hold empty slices with grad=None; names lose `_fsdp_wrapped_module.`; the
    logged values, activation curves' gains included (gathered with summon_full_params), equal 1 process."""
    run_two_processes("fsdp1", tmp_path)
    shards = [json.loads((tmp_path / f"params-rank{r}.json").read_text()) for r in (0, 1)]
    assert shards[0].pop("strategy") == "CpuFSDPStrategy" and shards[1].pop("strategy") == "CpuFSDPStrategy"
    assert "block1._fsdp_wrapped_module.fc.weight" in shards[0]
    assert shards[0]["block1._fsdp_wrapped_module.fc.bias"]["local_numel"] == 0
    assert shards[1]["head.weight"]["local_numel"] == 0
    assert_same_scalars(helpers.read_scalars(tmp_path), single_process_scalars, ALL_STATISTICS)
    for rank in (0, 1):  # the FSDP1 shard group; W0's slices of both ranks go to the checkpoint
        report = json.loads((tmp_path / f"peers-rank{rank}.json").read_text())
        assert set(map(tuple, report["peers"].values())) == {(0, 1)}
        assert report["saved_parts"] == 2 and report["reloaded"]


# ---- alerts -------------------------------------------------------------------------------------------------
def fit_and_collect_warnings(tmp_path, model, callbacks, max_steps):
    trainer = helpers.trainer(tmp_path, callbacks, max_steps=max_steps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, helpers.loader(helpers.GLOBAL_BATCH))
    return trainer, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_alerts_warn_once_naming_first_layer_in_forward_order(tmp_path):
    """Weights x4e19: block1's GELU output variance is ~1e40 (above `high`); block2's pre-activations overflow
    float32 in part (non-finite). Each problem is warned once, naming the first such layer in forward order
    (block1.act is registered after block2.act) and the step; training goes on. The logged non-finite
    fraction is the one computed directly."""
    model = helpers.TinyNet(blow_up=4e19, act2=nn.GELU())
    with torch.no_grad():  # the first step's activations, computed directly
        x = helpers.make_data()[0][: helpers.GLOBAL_BATCH]
        out2 = model.block2.act(model.block2.fc(model.block1.act(model.block1.fc(x))))
    expected_nonfinite = (~torch.isfinite(out2)).double().mean().item()
    callbacks = [
        ActivationVarianceMonitor(every_n_steps=1, image_every_n_steps=0, high=1e6, log_nonfinite=True),
        GradientVarianceMonitor(every_n_steps=1, image_every_n_steps=0, activation_gradients=True, high=1e6),
    ]
    _, messages = fit_and_collect_warnings(tmp_path, model, callbacks, max_steps=3)
    above = [m for m in messages if m.startswith("activation_variance") and "above high" in m]
    nonfinite = [m for m in messages if m.startswith("activation_variance") and "non-finite" in m]
    assert len(above) == 1 and "'block1.act'" in above[0] and "at step 0" in above[0], messages
    assert len(nonfinite) == 1 and "'block2.act'" in nonfinite[0] and "at step 0" in nonfinite[0], messages
    assert any(m.startswith("gradient_variance") and "non-finite" in m for m in messages), messages
    scalars = helpers.read_scalars(tmp_path)
    assert sorted(scalars["activation_variance/block1.act"]) == [0, 1, 2]  # warned once, logged every step
    assert scalars["activation_variance/block1.act"][0] > 1e6
    assert np.isnan(scalars["activation_variance/block2.act"][0])
    assert 0 < expected_nonfinite < 1
    assert_close(scalars["activation_nonfinite/block2.act"][0], expected_nonfinite)
    assert scalars["activation_nonfinite/block1.act"][0] == 0.0


def test_alert_can_stop_training(tmp_path):
    monitor = ActivationVarianceMonitor(every_n_steps=1, high=100.0, stop_on_alert=True)
    trainer, messages = fit_and_collect_warnings(tmp_path, helpers.TinyNet(blow_up=1e3), [monitor], max_steps=5)
    assert any("'block1.act' is above high=100" in m for m in messages), messages
    assert trainer.global_step == 1  # stopped after the first logged step


def test_healthy_model_raises_no_alert(tmp_path):
    _, messages = fit_and_collect_warnings(tmp_path, helpers.TinyNet(), monitors(low=1e-8, high=1e3), max_steps=2)
    assert not [m for m in messages if "variance" in m], messages


# ---- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ActivationVarianceMonitor(low=2.0, high=1.0), r"low=2.0 is greater than high=1.0"),
        (lambda: GradientVarianceMonitor(every_n_steps=0), r"every_n_steps must be None or an int >= 1"),
    ],
)
def test_bad_arguments_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "callback, match",
    [
        (ActivationVarianceMonitor(module_types=["Gelu"]), r"Unknown module type 'Gelu'.*'GELU'"),
        (ActivationVarianceMonitor(module_types=["no_such_pkg.Act"]), r"Unknown module type 'no_such_pkg.Act'"),
        (ActivationVarianceMonitor(modules=["blocks.*.act"]), r"glob 'blocks.\*.act' matches no module.*block1.act"),
        (GradientVarianceMonitor(parameters=["*.kernel"]), r"glob '\*.kernel' matches no trainable.*head.weight"),
        (ActivationVarianceMonitor(every_n_steps=2, image_every_n_steps=3), r"multiple of every_n_steps=2"),
    ],
)
def test_bad_choices_fail_before_training(tmp_path, callback, match):
    with pytest.raises(ValueError, match=match):
        helpers.trainer(tmp_path, [callback], max_steps=1).fit(helpers.TinyNet(), helpers.loader(helpers.GLOBAL_BATCH))


def test_shape_monitor_on_a_model_without_learnable_activations_warns_and_training_goes_on(tmp_path):
    trainer = helpers.trainer(tmp_path, [ActivationShapeMonitor()], max_steps=1)
    with pytest.warns(UserWarning, match=r"ActivationShapeMonitor draws learnable activations .* the model has none"):
        trainer.fit(helpers.TinyNet(), helpers.loader(helpers.GLOBAL_BATCH))
    assert trainer.global_step == 1


def test_selection_by_type_and_glob(tmp_path):
    """module_types and modules add layers (Tanh by type name, block1's Linear and the head by glob);
    include_activations=False drops the default activations (the GELU); the gain of a Linear is
    var(out)/var(in) of that Linear."""
    callback = ActivationVarianceMonitor(every_n_steps=1, include_activations=False, module_types=["Tanh"],
                                         modules=["block1.f*", "head"], image_every_n_steps=0)  # fmt: skip
    helpers.trainer(tmp_path, [callback], max_steps=1).fit(helpers.TinyNet(), helpers.loader(helpers.GLOBAL_BATCH))
    scalars = helpers.read_scalars(tmp_path)
    layers = {t.split("/", 1)[1] for t in scalars if t.startswith("activation_variance/")}
    assert layers == {"block1.fc", "block2.act", "head"}
    model, (x, _) = helpers.TinyNet(), helpers.make_data()
    with torch.no_grad():
        h = model.block1.fc(x[: helpers.GLOBAL_BATCH])
    assert_close(scalars["activation_gain/block1.fc"][0], helpers.population_var(h) / helpers.population_var(x[:8]))


def test_any_logger_for_scalars_and_none_at_all(tmp_path):
    """A CSV logger gets every scalar (no pictures, no error); without any logger nothing breaks."""
    from lightning.pytorch.loggers import CSVLogger

    csv_logger = CSVLogger(str(tmp_path), name="", version="")
    for logger in (csv_logger, False):
        pl.Trainer(
            accelerator="cpu", max_steps=2, logger=logger, callbacks=monitors(image_every=1),
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        ).fit(helpers.TinyNet(), helpers.loader(helpers.GLOBAL_BATCH))  # fmt: skip
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    reference = helpers.replay(2)
    for step in (0, 1):
        row = next(r for r in rows if r["step"] == str(step) and r.get("activation_variance/block1.act"))
        assert_close(float(row["activation_variance/block1.act"]), reference[step]["activation_variance/block1.act"])


def test_timm_activations_are_watched_by_default():
    """timm's GELU (what timm's ConvNeXt uses) is not an nn.GELU, and is an activation all the same."""
    from timm.layers.activations import GELU as TimmGELU

    from callbacks.selection import select_modules

    model = nn.Sequential(nn.Linear(2, 2), TimmGELU(), nn.Linear(2, 2), nn.Softmax(-1))
    assert [(layer.name, layer.kind) for layer in select_modules(model)] == [("1", "GELU")]


# ---- pictures and chart layout ------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_steps, pictured", [(4, [1, 3]), (5, [1, 3, 4])])
def test_depth_images_and_custom_scalar_layout(tmp_path, max_steps, pictured):
    """Depth pictures at every image_every_n_steps-th step and, unless just drawn, of the last logged step
    when training ends, as decodable RGB images; a custom-scalars layout
    (TensorBoard reads the latest one: it holds both monitors' charts) with one multi-line chart per layer
    kind, whose regexes match exactly that kind's tags."""
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    helpers.trainer(tmp_path, monitors(every=1, image_every=2), max_steps=max_steps).fit(
        helpers.TinyNet(), helpers.loader(helpers.GLOBAL_BATCH)
    )
    images = helpers.read_images(tmp_path)
    series = ("activation_variance", "gradient_variance", "activation_grad_variance", "update_ratio", "parameter_drift")
    assert set(images) == {f"{s}/by_depth" for s in series}
    for events in images.values():
        assert [e.step for e in events] == pictured
        picture = np.asarray(Image.open(io.BytesIO(events[-1].encoded_image_string)))
        assert picture.shape[2] >= 3 and picture.std() > 10  # not blank

    acc = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*"))), size_guidance={"tensors": 0})
    acc.Reload()
    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    charts = {(c.title, ch.title): list(ch.multiline.tag) for c in layout.category for ch in c.chart}
    assert charts[("activation_variance", "GELU")] == [r"activation_variance/block1\.act$"]
    assert charts[("activation_variance", "Tanh")] == [r"activation_variance/block2\.act$"]
    weights = ("block1.fc.weight", "block2.fc.weight", "head.weight")
    assert sorted(charts[("gradient_variance", "Linear.weight")]) == [
        "gradient_variance/" + w.replace(".", r"\.") + "$" for w in weights
    ]


def test_state_survives_checkpoint(tmp_path):
    """Warned alerts and the heat-map history are saved and restored with the trainer checkpoint, under
    distinct state keys for differently configured monitors."""
    first = ActivationVarianceMonitor(every_n_steps=1, image_every_n_steps=1, high=1e-6)
    other = ActivationVarianceMonitor(every_n_steps=2, image_every_n_steps=2)
    trainer = helpers.trainer(tmp_path, [first, other], max_steps=2)
    trainer.fit(helpers.TinyNet(), helpers.loader(helpers.GLOBAL_BATCH))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]
    assert first.state_key != other.state_key and {first.state_key, other.state_key} <= set(saved)

    restored = ActivationVarianceMonitor(every_n_steps=1, image_every_n_steps=1, high=1e-6)
    restored.load_state_dict(saved[restored.state_key])
    assert restored.alert.warned == {"activation_variance:above"}
    assert restored.state_dict()["history"]["activation_variance"]["steps"] == [0, 1]


@pytest.mark.parametrize("optimizer, clip", [("fused-adamw", None), ("sgd", 0.05)], ids=["fused-adamw", "sgd-clipped"])
def test_update_ratio_is_the_real_update(tmp_path, optimizer, clip):
    """bf16-mixed with a fused AdamW (the update happens inside one kernel; Lightning allows no clipping there) or
    with SGD and gradient clipping: the logged update ratio and drift equal those of a plain loop that steps
    (and clips) the same way."""
    monitor = ParameterUpdateMonitor(every_n_steps=1, image_every_n_steps=0)
    trainer = helpers.trainer(tmp_path, [monitor], max_steps=3, precision="bf16-mixed", gradient_clip_val=clip)
    trainer.fit(helpers.TinyNet(optimizer=optimizer, lr=1e-2), helpers.loader(helpers.GLOBAL_BATCH))
    scalars = helpers.read_scalars(tmp_path)
    reference = helpers.replay(3, precision="bf16-mixed", model=helpers.TinyNet(optimizer=optimizer, lr=1e-2), clip=clip)
    reference = [{k: v for k, v in r.items() if k.startswith(("update_ratio", "parameter_drift"))} for r in reference]
    assert_matches_replay(scalars, reference, range(3), rel=1e-4)
    w = helpers.TinyNet().block1.fc.weight.detach()
    if optimizer == "fused-adamw":  # Adam's first step moves every weight by ~lr: ratio ~ lr sqrt(n) / ||W||
        assert scalars["update_ratio/block1.fc.weight"][0] == pytest.approx(1e-2 * w.numel() ** 0.5 / w.norm().item(), rel=0.05)
    else:  # clipped: the whole update's norm is lr x 0.05 at most
        assert scalars["update_ratio/block1.fc.weight"][0] <= 1e-2 * 0.05 / w.norm().item() * 1.001


def test_drift_continues_across_a_resume(tmp_path):
    """W0 is kept in the checkpoint: a run stopped after 4 steps and resumed logs, at steps 4-5, the drift of
    the uninterrupted 6-step run (from the first run's initial weights, not the resumed ones). One batch per
    epoch: Lightning restarts a plain DataLoader on resume, so only then is the resumed data the same."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def monitor():
        return ParameterUpdateMonitor(every_n_steps=1, image_every_n_steps=0)

    def one_batch():
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*helpers.make_data(helpers.GLOBAL_BATCH)),
                                           batch_size=helpers.GLOBAL_BATCH)  # fmt: skip

    whole, first, second = tmp_path / "whole", tmp_path / "first", tmp_path / "second"
    helpers.trainer(whole, [monitor()], max_steps=6).fit(helpers.TinyNet(), one_batch())
    save = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    helpers.trainer(first, [monitor(), save], max_steps=4, enable_checkpointing=True).fit(helpers.TinyNet(), one_batch())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        helpers.trainer(second, [monitor()], max_steps=6).fit(
            helpers.TinyNet(), one_batch(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
        )
    assert not [w for w in caught if "initial weights are not used" in str(w.message)]
    want, got = helpers.read_scalars(whole), helpers.read_scalars(second)
    tags = [t for t in want if t.startswith("parameter_drift/")]
    assert len(tags) == 6
    for tag in tags:
        assert sorted(got[tag]) == [4, 5], tag
        for step in (4, 5):
            assert_close(got[tag][step], want[tag][step], 1e-6, f"{tag} at {step}")
    assert want["parameter_drift/head.weight"][5] > want["parameter_drift/head.weight"][0] > 0


# ---- lit_ortho activations: compiled models and the shape monitor -----------------------------------------------
def test_compiled_block_counts_through_lit_ortho_statistics(tmp_path):
    """In a torch.compile'd block hooks are ignored: the Hermite activation there records its own sums and
    its logged statistics (kurtosis and absmax included) equal the eager computation, and so do its
    coefficients' values and gradients; a GELU there is reported as not monitored."""
    from lit_ortho.activations import HermiteActivation

    callbacks = [ActivationVarianceMonitor(every_n_steps=1, image_every_n_steps=0),
                 GradientVarianceMonitor(every_n_steps=1, image_every_n_steps=0),
                 ParameterUpdateMonitor(every_n_steps=1, image_every_n_steps=0)]  # fmt: skip
    model = helpers.TinyNet(act1=HermiteActivation(3), compile_block1=True)
    helpers.trainer(tmp_path / "hermite", callbacks, max_steps=2).fit(model, helpers.loader(helpers.GLOBAL_BATCH))
    reference = helpers.replay(2, model=helpers.TinyNet(act1=HermiteActivation(3)))
    assert_matches_replay(
        helpers.read_scalars(tmp_path / "hermite"),
        [{k: v for k, v in r.items() if not k.startswith("activation_grad")} for r in reference],
        range(2),
    )
    assert model.block1.act.record_statistics is False
    assert not any(v.item() for v in model.block1.act.recorded_statistics().values())  # read by name

    monitor = ActivationVarianceMonitor(every_n_steps=1, image_every_n_steps=0)
    with pytest.warns(UserWarning, match=r"torch.compile'd region.*\['block1.act'\]"):
        helpers.trainer(tmp_path / "gelu", [monitor], max_steps=1).fit(
            helpers.TinyNet(compile_block1=True), helpers.loader(helpers.GLOBAL_BATCH)
        )
    assert {t for t in helpers.read_scalars(tmp_path / "gelu") if t.startswith("activation_variance")} == {
        "activation_variance/block2.act"
    }


def test_activation_shape_monitor_curves_and_gains(tmp_path):
    """Gains logged at step 0 are the paper init's sum_{j<3} 1/j! / e; a picture is logged at the start, every
    2 steps and at the end; a per-channel curve equals each channel evaluated as its own activation."""
    import math

    from lit_ortho.activations import HermiteActivation

    from callbacks.activation_shape import evaluate_curve, full_parameters

    monitor = ActivationShapeMonitor(every_n_steps=2)
    model = helpers.TinyNet(act1=HermiteActivation(3), act2=HermiteActivation(3), lr=1e-3)
    helpers.trainer(tmp_path, [monitor], max_steps=3).fit(model, helpers.loader(helpers.GLOBAL_BATCH))
    scalars = helpers.read_scalars(tmp_path)
    paper_gain = sum(1 / math.factorial(j) for j in range(3)) / math.e
    for tag in ("activation_shape_forward_gain/block1.act", "activation_shape_backward_gain/block2.act"):
        assert_close(scalars[tag][0], paper_gain, 1e-6, tag)
        assert sorted(scalars[tag]) == [0, 2, 3]
    trained = scalars["activation_shape_forward_gain/block1.act"][3]
    assert math.isfinite(trained) and abs(trained - paper_gain) > 1e-6  # the curve learned something
    assert [name for name, _ in monitor._layers] == ["block1.act", "block2.act"]  # forward, not registration, order
    assert [e.step for e in helpers.read_images(tmp_path)["activation_shape/curves"]] == [0, 2, 3]

    per_channel = HermiteActivation(3, per_channel=3)
    with torch.no_grad():
        per_channel.coefficients.copy_(torch.randn(3, 4))
    x = torch.linspace(-2, 2, 9)
    values, slopes = evaluate_curve(per_channel, full_parameters(per_channel), x)
    for c in range(3):
        single = HermiteActivation(3)
        with torch.no_grad():
            single.coefficients.copy_(per_channel.coefficients[c])
        xc = x.clone().requires_grad_(True)
        y = single(xc)
        (dy,) = torch.autograd.grad(y.sum(), xc)
        torch.testing.assert_close(values[c], y.detach().double())
        torch.testing.assert_close(slopes[c], dy.double())


def test_lightning_cli_yaml_builds_the_callbacks(tmp_path):
    """``class_path: callbacks.<Monitor>`` with init_args (globs, type names, bounds) parses in LightningCLI."""
    from lightning.pytorch.cli import LightningCLI

    config = {
        "trainer": {
            "callbacks": [
                {"class_path": "callbacks.ActivationVarianceMonitor",
                 "init_args": {"every_n_steps": 2, "module_types": ["Linear"], "modules": ["head"], "high": 1e4}},
                {"class_path": "callbacks.GradientVarianceMonitor",
                 "init_args": {"parameters": ["block*.weight"], "activation_gradients": True, "stop_on_alert": True}},
                {"class_path": "callbacks.ActivationShapeMonitor", "init_args": {"x_range": [-3, 3]}},
            ]
        }
    }  # fmt: skip
    cli = LightningCLI(helpers.TinyNet, run=False, args=config, trainer_defaults={"logger": False},
                       save_config_kwargs={"overwrite": True})  # fmt: skip
    built = {type(c).__name__: c for c in cli.trainer.callbacks}
    assert built["ActivationVarianceMonitor"].module_types == ["Linear"]
    assert built["ActivationVarianceMonitor"].alert.high == 1e4
    assert built["GradientVarianceMonitor"].parameters == ["block*.weight"]
    assert built["GradientVarianceMonitor"].alert.stop is True
    assert built["ActivationShapeMonitor"].x_range == (-3.0, 3.0)


@pytest.mark.parametrize("where", ["callbacks", "lit_ortho"])
def test_power_sums_are_float64_sums_that_never_overflow(where):
    """The monitors' and lit_ortho's own power sums (two copies: the packages import nothing from each other)
    equal float64 sums of float64 powers, within the float32 rounding of each power (the sum itself is
    accumulated in float64: exact to 1e-12 for p = 1), for sizes around the column block, at 1e20 (x^4 = 1e80 is
    far beyond float32) and at 1e-30, for bf16 input; a non-finite element makes every sum non-finite."""
    if where == "callbacks":
        from callbacks.statistics import power_sums
    else:
        from lit_ortho.activations.elementwise import power_sums
    g = torch.Generator().manual_seed(0)
    for n, scale, dtype in [(1000, 1.0, torch.float32), (4096, 1.0, torch.float32), (3 * 4096 + 17, 1e20, torch.float32),
                            (50_000, 1e-30, torch.float32), (5000, 3.0, torch.bfloat16)]:  # fmt: skip
        x = (torch.randn(n, generator=g) * scale + 0.3 * scale).to(dtype)
        sums, absmax = power_sums(x, 4)
        xd = x.double()
        for p, got in enumerate(sums, start=1):
            want, size = float((xd**p).sum()), float((xd.abs() ** p).sum())
            bound = size * (1e-12 if p == 1 else p * 2.0**-23)  # each power rounded once per multiply, in float32
            assert got.dtype == torch.float64 and abs(float(got) - want) <= bound, (n, scale, p, float(got), want)
        assert float(absmax) == float(xd.abs().max())
    for bad in (float("inf"), float("nan")):
        x = torch.randn(5000, generator=g)
        x[1234] = bad
        sums, absmax = power_sums(x, 4)
        assert not any(torch.isfinite(s) for s in sums) and not torch.isfinite(absmax)


@pytest.mark.parametrize("prefix", ["", "train"])
def test_scalars_in_one_event_read_back_as_log_metrics_writes_them(tmp_path, prefix):
    """The monitors write a logged step's scalars as one TensorBoard event; TensorBoard reads the same tags,
    steps and values as from Lightning's ``log_metrics`` (one event per scalar), with the logger's prefix."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from callbacks import reporting

    metrics = {f"activation_variance/blocks.{i}.act": 1.5 * i + 0.25 for i in range(300)} | {"update_ratio/w": 3e-4}
    ours, lightnings = (TensorBoardLogger(str(tmp_path / name), name="run", prefix=prefix) for name in ("ours", "theirs"))
    for step in (0, 7):
        assert reporting._write_tensorboard_event(ours, metrics, step)
        lightnings.log_metrics(metrics, step=step)
    for logger in (ours, lightnings):
        logger.experiment.flush()
    got, want = helpers.read_scalars(tmp_path / "ours"), helpers.read_scalars(tmp_path / "theirs")
    assert got == want and len(got) == len(metrics) and got[next(iter(got))].keys() == {0, 7}
    assert all(tag.startswith("train-") for tag in got) if prefix else "update_ratio/w" in got
