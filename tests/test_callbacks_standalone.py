"""The monitors stand alone: ``callbacks`` imports nothing of lit_ortho, recognises learnable activations of any
library through its protocol (lit_ortho's among them), declares its options once, and all monitors follow one
step convention."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from callbacks import ActivationShapeMonitor, ActivationVarianceMonitor, GradientVarianceMonitor
from callbacks.protocol import (
    HIGHER_STATISTICS_KEYS,
    STATISTICS_KEYS,
    SelfRecordingActivation,
    is_self_recording_activation,
    read_statistics,
)
from launch import run, script

REPO = Path(__file__).resolve().parents[1]

if "_callback_helpers" in sys.modules:
    helpers = sys.modules["_callback_helpers"]
else:
    _spec = importlib.util.spec_from_file_location("_callback_helpers", Path(__file__).with_name("_callback_helpers.py"))
    helpers = importlib.util.module_from_spec(_spec)
    sys.modules["_callback_helpers"] = helpers
    _spec.loader.exec_module(helpers)


# ---- standing alone ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_import_callbacks_loads_no_lit_ortho_and_registers_no_op(tmp_path):
    """In a fresh interpreter ``import callbacks`` (and building every monitor) leaves no lit_ortho module in
    sys.modules and no operator in the ``lit_ortho::`` namespace; the operator check itself sees an operator
    defined afterwards (so it is not vacuous). The script: tests/scripts/import_callbacks.py."""
    result = run(script("import_callbacks.py", tmp_path / "found.json"), tmp_path, timeout=300, tag="import_callbacks")
    assert result.ok, result.describe()
    found = json.loads((tmp_path / "found.json").read_text())
    assert found["modules"] == [], found
    assert found["ops"] == [], found
    assert found["control"] == ["callbacks_selftest::probe"], found


def test_no_source_file_of_callbacks_imports_lit_ortho():
    """Not even inside a function: every import statement of the package, at any depth."""
    offenders = []
    for path in sorted((REPO / "callbacks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__"
            ) and node.args and isinstance(node.args[0], ast.Constant):  # fmt: skip
                names = [str(node.args[0].value)]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] == "lit_ortho"]
    assert offenders == []


# ---- the protocol: lit_ortho's activations and any other library's --------------------------------------------
def _families():
    import lit_ortho

    return [lit_ortho.HermiteActivation, lit_ortho.FourierActivation, lit_ortho.TropicalActivation,
            lit_ortho.TropicalRationalActivation]  # fmt: skip


def test_lit_ortho_activations_implement_the_protocol_and_are_watched():
    """lit_ortho's activations satisfy SelfRecordingActivation structurally (it does not import callbacks),
    are selected by default with their class name as kind, and their sums are read by name."""
    from callbacks.selection import select_modules

    for family in _families():
        module = family(3)
        assert isinstance(module, SelfRecordingActivation) and is_self_recording_activation(module), family
    assert not is_self_recording_activation(nn.GELU()) and not isinstance(nn.GELU(), SelfRecordingActivation)

    hermite = _families()[0]
    model = helpers.TinyNet(act1=hermite(3))
    assert [(layer.name, layer.kind) for layer in select_modules(model)] == [
        ("block2.act", "Tanh"), ("block1.act", "HermiteActivation")
    ]  # fmt: skip
    act = model.block1.act
    x = torch.randn(4, 12, dtype=torch.float64)
    act.reset_statistics()
    act.record_statistics = True
    y = act(x)
    act.record_statistics = False
    stats = read_statistics(act)
    assert set(stats) == set(STATISTICS_KEYS) | set(HIGHER_STATISTICS_KEYS)  # lit_ortho keeps the optional ones
    assert stats["count"].item() == x.numel()
    assert stats["input_sum_of_squares"].item() == pytest.approx((x * x).sum().item())
    yd = y.detach().double()
    assert stats["output_sum"].item() == pytest.approx(yd.sum().item())
    assert stats["output_sum_of_cubes"].item() == pytest.approx((yd**3).sum().item())
    assert stats["output_sum_of_fourth_powers"].item() == pytest.approx((yd**4).sum().item())
    assert stats["output_absmax"].item() == yd.abs().max().item()
    assert stats["output_nonfinite"].item() == 0


class ScaledTanh(nn.Module):
    """Another library's learnable activation: implements the protocol and nothing else of callbacks."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.3))
        self.record_statistics = False
        self.register_buffer("sums", torch.zeros(6, dtype=torch.float64), persistent=False)

    def forward(self, x):
        y = self.scale * torch.tanh(x)
        if self.record_statistics:
            xd, yd = x.detach().double(), y.detach().double()
            finite = torch.isfinite(yd)
            yd = torch.where(finite, yd, torch.zeros_like(yd))
            count = torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)
            self.sums += torch.stack([count, xd.sum(), (xd * xd).sum(), yd.sum(), (yd * yd).sum(),
                                      (~finite).sum().double()])  # fmt: skip
        return y

    def reset_statistics(self) -> None:
        self.sums.zero_()

    def recorded_statistics(self):
        # Another order than lit_ortho's buffer: the monitors must read by name.
        keys = ("output_nonfinite", "count", "output_sum_of_squares", "input_sum", "output_sum", "input_sum_of_squares")
        order = [STATISTICS_KEYS.index(k) for k in keys]
        return {k: self.sums[i] for k, i in zip(keys, order)}


def test_other_library_activation_recorded_inside_compiled_block(tmp_path):
    """An activation implementing the protocol (not lit_ortho's) in a torch.compile'd block is watched there
    through its own sums, read by name, and the logged statistics equal the eager computation (the kurtosis and
    absmax it keeps no sums for are not logged); the shape monitor draws it and logs its gains."""
    callbacks_ = [ActivationVarianceMonitor(every_n_steps=1, image_every_n_steps=0),
                  ActivationShapeMonitor(every_n_steps=1)]  # fmt: skip
    model = helpers.TinyNet(act1=ScaledTanh(), compile_block1=True)
    helpers.trainer(tmp_path, callbacks_, max_steps=2).fit(model, helpers.loader(helpers.GLOBAL_BATCH))
    reference = helpers.replay(2, model=helpers.TinyNet(act1=ScaledTanh()))
    scalars = helpers.read_scalars(tmp_path)
    for step in range(2):
        for tag, want in reference[step].items():
            if tag.startswith(("activation_variance/", "activation_mean/", "activation_gain/")):
                assert scalars[tag][step] == pytest.approx(want, rel=1e-5, abs=1e-12), (tag, step)
    assert model.block1.act.record_statistics is False and not model.block1.act.sums.any()
    # It keeps none of the optional higher sums: no kurtosis or absmax for it (not zeros), the eager layer has them.
    assert "activation_kurtosis/block1.act" not in scalars and "activation_absmax/block1.act" not in scalars
    assert scalars["activation_absmax/block2.act"][1] == pytest.approx(reference[1]["activation_absmax/block2.act"], rel=1e-6)
    # E[(1.3 tanh x)^2] at the start: the shape monitor's quadrature on the module as it is.
    x = torch.linspace(-12, 12, 240_001, dtype=torch.float64)
    density = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    want = torch.trapezoid((1.3 * torch.tanh(x)) ** 2 * density, x).item()
    assert scalars["activation_shape_forward_gain/block1.act"][0] == pytest.approx(want, rel=1e-6)


def test_missing_statistic_is_named():
    class Broken(ScaledTanh):
        def recorded_statistics(self):
            return {"count": torch.zeros((), dtype=torch.float64)}

    with pytest.raises(KeyError, match=r"Broken.recorded_statistics\(\) lacks \['input_sum'"):
        read_statistics(Broken())


def test_shape_monitor_gains_equal_lit_ortho_gaussian_gains():
    """The callbacks' own quadrature (the module evaluated as it is) gives lit_ortho.gaussian_gains' values,
    for every family, at init and with perturbed coefficients."""
    import lit_ortho

    from callbacks.activation_shape import full_parameters, gaussian_gains

    torch.manual_seed(0)
    for family in _families():
        for perturb in (False, True):
            module = family(3)
            if perturb:
                with torch.no_grad():
                    for p in module.parameters():
                        p.add_(0.1 * torch.randn_like(p))
            ours = gaussian_gains(module, full_parameters(module))
            theirs = lit_ortho.gaussian_gains(module)
            for key in ("mean", "forward_gain", "backward_gain"):
                assert ours[key].shape == (1,)
                assert ours[key].item() == pytest.approx(theirs[key], rel=1e-6, abs=1e-6), (family, perturb, key)


# ---- options declared once ---------------------------------------------------------------------------------------
def test_yaml_init_args_parse_with_the_options_of_the_base_class():
    """LightningCLI's parser (jsonargparse) sees the base-class options through ``**kwargs``: a YAML with
    ``init_args: {every_n_steps: 50, high: 1.0e+4}`` builds the monitor; a misspelt option is refused."""
    import yaml
    from jsonargparse import ArgumentParser

    from lightning.pytorch import Callback

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--callbacks", type=list[Callback])
    config = parser.parse_object(yaml.safe_load(textwrap.dedent("""
        callbacks:
          - class_path: callbacks.ActivationVarianceMonitor
            init_args: {every_n_steps: 50, high: 1.0e+4}
          - class_path: callbacks.GradientVarianceMonitor
            init_args: {every_n_steps: 5, stop_on_alert: true, parameters: ["block*.weight"]}
    """)))  # fmt: skip
    shown = config.callbacks[0].init_args
    assert shown.every_n_steps == 50 and shown.high == 1e4 and shown.history_size == 256  # visible, with defaults
    built = parser.instantiate(config).callbacks
    assert type(built[0]) is ActivationVarianceMonitor and built[0].every_n_steps == 50
    assert built[0].alert.high == 1e4
    assert type(built[1]) is GradientVarianceMonitor and built[1].every_n_steps == 5 and built[1].alert.stop is True
    assert built[1].parameters == ["block*.weight"]
    with pytest.raises(Exception, match="hihg"):
        parser.parse_object({"callbacks": [{"class_path": "callbacks.ActivationVarianceMonitor",
                                            "init_args": {"hihg": 1.0}}]})  # fmt: skip


def test_options_are_keyword_arguments():
    monitor = GradientVarianceMonitor(every_n_steps=3, image_every_n_steps=6, history_size=4, low=0.5, high=2.0,
                                      check_finite=False, stop_on_alert=True)  # fmt: skip
    assert (monitor.every_n_steps, monitor.image_every_n_steps, monitor.history_size) == (3, 6, 4)
    alert = monitor.alert
    assert (alert.low, alert.high, alert.check_finite, alert.stop) == (0.5, 2.0, False, True)
    with pytest.raises(TypeError):
        ActivationVarianceMonitor(50)  # by keyword only: nothing can land in the wrong slot
    with pytest.raises(TypeError):
        ActivationVarianceMonitor(hihg=1.0)


# ---- one step convention -----------------------------------------------------------------------------------------
class TwoOptimizerNet(helpers.TinyNet):
    """Manual optimization with two optimizers: ``trainer.global_step`` counts both ``step`` calls (2 per batch);
    Lightning's logging step counts batches."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        body, head = self.optimizers()
        body.zero_grad()
        head.zero_grad()
        self.manual_backward(F.mse_loss(self(x), y))
        body.step()
        head.step()

    def configure_optimizers(self):
        body = [p for name, p in self.named_parameters() if not name.startswith("head.")]
        return torch.optim.SGD(body, lr=self.lr), torch.optim.SGD(self.head.parameters(), lr=self.lr)


@pytest.mark.parametrize("setup", ["two-optimizers", "grad-accumulation"])
def test_all_monitors_use_lightnings_logging_step(tmp_path, setup):
    """every_n_steps=2 everywhere: the variance monitors log the values of optimizer steps 1 and 3 (Lightning's
    numbering) and the shape monitor draws after those same steps, at 2 and 4 steps taken. With two optimizers,
    counting ``global_step`` (2 per batch) drew after every batch, at 2, 4, 6, 8."""
    from lit_ortho import HermiteActivation

    every = 2
    monitors = [
        ActivationVarianceMonitor(every_n_steps=every, image_every_n_steps=0),
        GradientVarianceMonitor(every_n_steps=every, image_every_n_steps=0),
        ActivationShapeMonitor(every_n_steps=every, log_at_start=False),
    ]
    kwargs = dict(act1=HermiteActivation(3), lr=1e-3)
    if setup == "two-optimizers":
        model, extra = TwoOptimizerNet(**kwargs), dict(max_steps=8)  # 8 optimizer.step calls: 4 batches
        batch = helpers.GLOBAL_BATCH
    else:
        model, extra = helpers.TinyNet(**kwargs), dict(max_steps=4, accumulate_grad_batches=2)
        batch = helpers.GLOBAL_BATCH // 2
    trainer = helpers.trainer(tmp_path, monitors, log_every_n_steps=1, **extra)
    trainer.fit(model, helpers.loader(batch))
    assert trainer.fit_loop.epoch_loop._batches_that_stepped == 4
    scalars = helpers.read_scalars(tmp_path)
    assert sorted(scalars["activation_variance/block1.act"]) == [1, 3]
    assert sorted(scalars["gradient_variance/head.weight"]) == [1, 3]
    assert sorted(scalars["activation_shape_forward_gain/block1.act"]) == [2, 4]
    assert [e.step for e in helpers.read_images(tmp_path)["activation_shape/curves"]] == [2, 4]


def test_every_monitor_decides_with_the_one_helper():
    """The three monitors take their logging decision from callbacks.steps.is_logging_step."""
    import callbacks.activation_shape
    import callbacks.monitor
    import callbacks.steps

    assert callbacks.activation_shape.is_logging_step is callbacks.steps.is_logging_step
    assert callbacks.monitor.is_logging_step is callbacks.steps.is_logging_step
    assert issubclass(ActivationVarianceMonitor, callbacks.monitor.VarianceMonitor)
    assert issubclass(GradientVarianceMonitor, callbacks.monitor.VarianceMonitor)
    assert callbacks.SelfRecordingActivation is SelfRecordingActivation
