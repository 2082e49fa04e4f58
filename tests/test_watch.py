"""callbacks.watch.StepStatistics: the monitors' statistics in plain PyTorch and Fabric loops, equal to the
direct computation (tests/_callback_helpers.replay) and, on 2 processes, to 1 process."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import _callback_helpers as helpers
from callbacks.watch import StepStatistics
from launch import free_port, run, script

WATCH_PREFIXES = ("activation_variance", "activation_mean", "activation_gain", "activation_kurtosis",
                  "activation_absmax", "gradient_variance", "update_ratio", "parameter_drift", "coefficient")  # fmt: skip


def expected(reference: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k.startswith(WATCH_PREFIXES)} for r in reference]


def assert_equal_to(results: list[dict], reference: list[dict], rel: float = 1e-6) -> None:
    for step, (got, want) in enumerate(zip(results, expected(reference))):
        assert set(got) == set(want), f"step {step}: {sorted(set(got) ^ set(want))}"
        for tag, value in want.items():
            assert got[tag] == pytest.approx(value, rel=rel, abs=1e-12), f"{tag} at step {step}"


def plain_loop(model, optimizer, stats, steps: int, backward=None) -> list[dict]:
    x_all, y_all = helpers.make_data()
    results = []
    for step in range(steps):
        x, y = x_all[step * helpers.GLOBAL_BATCH : (step + 1) * helpers.GLOBAL_BATCH], y_all[step * helpers.GLOBAL_BATCH : (step + 1) * helpers.GLOBAL_BATCH]
        with stats.record(optimizer) as result:
            loss = F.mse_loss(model(x), y)
            (backward or torch.Tensor.backward)(loss)
            optimizer.step()
            optimizer.zero_grad()
        results.append(result.flat())
    return results


@pytest.mark.parametrize("checkpointing", ["none", "function"])
def test_plain_pytorch_loop_equals_direct_computation(checkpointing):
    """A plain loop with SGD (a Hermite activation in block 2, so coefficients are reported): every statistic
    of every step equals the direct computation; checkpointed blocks re-run forward during backward, unseen."""
    from lit_ortho.activations import HermiteActivation

    model = helpers.TinyNet(checkpointing=checkpointing, act2=HermiteActivation(3))
    optimizer = model.configure_optimizers()
    stats = StepStatistics(model)
    results = plain_loop(model, optimizer, stats, steps=3)
    assert_equal_to(results, helpers.replay(3, model=helpers.TinyNet(act2=HermiteActivation(3))))
    assert "coefficient/block2.act.coefficients/0" in results[0] and "activation_kurtosis/block1.act" in results[0]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # nothing left behind


def test_disabled_steps_cost_nothing_and_report_nothing():
    model = helpers.TinyNet()
    stats = StepStatistics(model)
    with stats.record(enabled=False) as result:
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
        model(helpers.make_data()[0][:8]).sum().backward()
    assert result == {}


def test_fabric_loop_equals_direct_computation():
    """Fabric wraps the model and the optimizer; fabric.backward and the wrapped optimizer's step are seen."""
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1)
    model = helpers.TinyNet()
    optimizer = model.configure_optimizers()
    model, optimizer = fabric.setup(model, optimizer)
    stats = StepStatistics(model)
    results = plain_loop(model, optimizer, stats, steps=2, backward=fabric.backward)
    assert_equal_to(results, helpers.replay(2))


def test_state_dict_restores_the_drift_origin():
    model = helpers.TinyNet()
    optimizer = model.configure_optimizers()
    stats = StepStatistics(model)
    first = plain_loop(model, optimizer, stats, steps=2)
    again = StepStatistics(model)  # W0 would be the trained weights...
    again.load_state_dict(stats.state_dict())  # ...but is the saved one
    with again.record(optimizer) as result:
        x, y = helpers.make_data()
        F.mse_loss(model(x[16:24]), y[16:24]).backward()
        optimizer.step()
    reference = helpers.replay(3)
    assert first[1]["parameter_drift/head.weight"] == pytest.approx(reference[1]["parameter_drift/head.weight"], rel=1e-6)
    assert result.flat()["parameter_drift/head.weight"] == pytest.approx(reference[2]["parameter_drift/head.weight"], rel=1e-6)


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", ["fsdp2"])
def test_two_processes_equal_one(tmp_path, mode):
    """torch.distributed without Lightning, 2 CPU processes with half of each global batch: FSDP2 shards (one
    collective per recorded step) give the 1-process statistics (tests/scripts/watch_ranks.py also runs DDP)."""
    result = run(script("watch_ranks.py", mode, tmp_path), tmp_path, timeout=600, tag=mode,
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))  # fmt: skip
    assert result.ok, result.describe()
    results = json.loads((tmp_path / "results.json").read_text())
    from lit_ortho.activations import HermiteActivation

    assert_equal_to(results, helpers.replay(3, model=helpers.TinyNet(act2=HermiteActivation(3))), rel=1e-5)
