"""lit-ortho coord-check: the CSV holds every layer, step, width and activation; its numbers are what an
independent calculation gives; the pictures and TensorBoard events are written."""

from __future__ import annotations

import csv
import math

import pytest

from lit_ortho.cli import main
from lit_ortho.coord_check import COLUMNS


@pytest.mark.slow
def test_coord_check_writes_csv_pictures_and_events(tmp_path, cache):
    from launch import REPO

    out = tmp_path / "coord"
    main(["coord-check", "--config", str(REPO / "cli_configs" / "gpt2_cpu.yaml"), "--widths", "32,64", "--depths", "1,2",
          "--steps", "2", "--activation", "gelu", "--activation", "hermite:3", "--output", str(out)])
    with open(out / "coord_check.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    keys = {(r["activation"], r["width"], r["depth"], r["step"]) for r in rows}
    assert keys == {(a, w, d, s) for a in ("gelu", "hermite:3") for w in ("32", "64") for d in ("1", "2") for s in ("0", "1")}
    one = [r for r in rows if r["activation"] == "hermite:3" and r["width"] == "64" and r["depth"] == "2" and r["step"] == "0"]
    assert {r["kind"] for r in one} >= {"wte", "attn.c_attn", "mlp.c_fc", "mlp.act", "mlp.c_proj", "lm_head"}
    assert len([r for r in one if r["kind"] == "mlp.act"]) == 2  # one per block
    assert all(math.isfinite(float(r["activation_rms"])) and float(r["grad_rms"]) > 0 for r in one)
    # AdamW's first step moves every weight with a nonzero gradient by lr (m / sqrt(v) = sign(g)): the update
    # ratio of a fully used Linear is lr * sqrt(numel) / ||W||, W being N(0, 0.02) at init
    c_fc = next(r for r in one if r["layer"] == "transformer.h.0.mlp.c_fc")
    lr, numel = 3.0e-3, 64 * 256 + 256
    expected = lr * math.sqrt(numel) / (0.02 * math.sqrt(64 * 256))
    assert float(c_fc["update_ratio"]) == pytest.approx(expected, rel=0.02)
    assert (out / "coord_check_gelu.png").stat().st_size > 10_000 and (out / "coord_check_hermite_3.png").is_file()
    assert list((out / "tb").glob("events.out.tfevents.*"))


def test_coord_check_refuses_bad_input(tmp_path, capsys):
    from launch import REPO

    for config, width, message in [("gpt2_cpu.yaml", "48", "not a multiple of the config's head size 32"),
                                   ("convnext_cpu.yaml", "32", "is not a GPT2Module")]:
        with pytest.raises(SystemExit) as exit_:
            main(["coord-check", "--config", str(REPO / "cli_configs" / config), "--widths", width,
                  "--steps", "1", "--activation", "gelu", "--output", str(tmp_path)])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_deep_mlp_coord_check_numbers_are_the_networks(tmp_path, capsys):
    """--config deep-mlp: every layer of the unnormalised network at every width/depth/step; the step-0 RMS of each
    activation output equals a direct forward pass of the same network on the same batch; a bad spec exits 2."""
    import torch

    from lit_ortho.coord_check import DeepMLP, _deep_mlp_batches

    out = tmp_path / "mlp"
    main(["coord-check", "--config", "deep-mlp", "--widths", "16,32", "--depths", "3", "--steps", "2",
          "--activation", "relu", "--activation", "tropical(degree=3, init=unit)", "--output", str(out)])
    with open(out / "coord_check.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["activation"], r["width"], r["depth"], r["step"]) for r in rows} == {
        (a, w, "3", s) for a in ("relu", "tropical(degree=3, init=unit)") for w in ("16", "32") for s in ("0", "1")}
    assert {r["kind"] for r in rows} == {"layers.fc", "layers.act", "head"}
    torch.manual_seed(0)
    net = DeepMLP(32, 3, "relu")
    x, _ = _deep_mlp_batches(32, 1)[0]
    for i, block in enumerate(net.layers):
        x = block.act(block.fc(x))
        row = next(r for r in rows if r["activation"] == "relu" and r["width"] == "32" and r["step"] == "0"
                   and r["layer"] == f"layers.{i}.act")
        assert float(row["activation_rms"]) == pytest.approx(x.pow(2).mean().sqrt().item(), rel=1e-6)
    assert (out / "coord_check_relu.png").stat().st_size > 10_000
    with pytest.raises(SystemExit) as exit_:
        main(["coord-check", "--config", "deep-mlp", "--widths", "16", "--activation", "hermit", "--output", str(out)])
    assert exit_.value.code == 2 and "hermit" in capsys.readouterr().err
