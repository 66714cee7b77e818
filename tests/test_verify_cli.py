"""neftc verify end to end: JSON report, sweeps, repeatability and bad data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neftc.cli.main import main
from neftc.datasets.digits import load_digits
from neftc.driver.compiler import compile_module
from neftc.neft.train import accuracy
from neftc.targets import resolve_target


@pytest.fixture(scope="module")
def digits_layout(tmp_path_factory, trained_lenet) -> tuple[Path, float, torch.nn.Module]:
    data, model = trained_lenet.data, trained_lenet.model()
    out = tmp_path_factory.mktemp("verify") / "layout"
    result = compile_module(model, data.test.x[:1], resolve_target("fefet_128x128"), out)
    return out, accuracy(result.gm, data.test), model


def run_json(capsys, *argv: str) -> dict:
    assert main(["verify", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_verify_json_report(capsys, digits_layout) -> None:
    layout, fake_quant_acc, _ = digits_layout
    report = run_json(capsys, str(layout), "--mc", "20", "--sigma", "0.05", "--sigma", "0.2",
                      "--ideal-periphery")
    assert report["target"] == "fefet_128x128" and report["seed"] == 0
    assert [r["sigma"] for r in report["results"]] == [0.05, 0.2]
    for row in report["results"]:
        # Noise off with ideal periphery equals the fake-quantised model exactly.
        assert row["quantized_accuracy"] == fake_quant_acc
        mc = row["mc"]
        assert set(mc) == {"trials", "mean", "std", "ci95", "min", "p5", "max"}
        uncertainty = row["uncertainty"]
        assert uncertainty["expected_kl"] > 0 and 0 < uncertainty["mean_confidence"] <= 1
        assert mc["trials"] == 20 and mc["min"] <= mc["p5"] <= mc["mean"] <= mc["max"]
        assert row["trials_per_second"] > 0 and row["seconds"] > 0
    low, high = report["results"]
    assert high["mc"]["mean"] < low["mc"]["mean"]  # more variation, lower accuracy


def test_verify_is_repeatable_and_seeded(capsys, digits_layout) -> None:
    layout = str(digits_layout[0])
    args = (layout, "--mc", "8", "--sigma", "0.15", "--ideal-periphery")
    a = run_json(capsys, *args)["results"][0]["mc"]
    b = run_json(capsys, *args)["results"][0]["mc"]
    c = run_json(capsys, *args, "--seed", "1")["results"][0]["mc"]
    assert a == b and a != c


def test_verify_with_target_periphery(capsys, digits_layout) -> None:
    report = run_json(capsys, str(digits_layout[0]), "--mc", "3", "--sigma", "0.0")
    periphery = report["periphery"]
    assert periphery["adc_bits"] == 8 and periphery["calibration_samples"] == 512
    assert max(periphery["partial_mvms_per_weight"].values()) == 64
    # The ADC costs at most a few points on this model (see docs/emulator.md).
    row = report["results"][0]
    assert report["quantized_accuracy_ideal_periphery"] - row["quantized_accuracy"] < 0.03


def test_verify_human_table(capsys, digits_layout) -> None:
    assert main(["verify", str(digits_layout[0]), "--mc", "4", "--sigma", "0.1", "-q",
                 "--ideal-periphery"]) == 0
    out = capsys.readouterr().out
    assert "MC mean" in out and "0.100" in out


def test_verify_npz_data(capsys, tmp_path, digits_layout) -> None:
    data = load_digits()
    path = tmp_path / "d.npz"
    np.savez(path, x_test=data.test.x.numpy(), y_test=data.test.y.numpy())
    report = run_json(capsys, str(digits_layout[0]), "--data", str(path), "--mc", "2",
                      "--ideal-periphery")
    assert report["test_samples"] == len(data.test)


def test_verify_bad_data(capsys, tmp_path, digits_layout) -> None:
    layout = str(digits_layout[0])
    wrong_shape = tmp_path / "shape.npz"
    np.savez(wrong_shape, x=np.zeros((10, 64), np.float32), y=np.zeros(10, np.int64))
    assert main(["verify", layout, "--data", str(wrong_shape), "--mc", "2"]) == 2
    err = capsys.readouterr().err
    assert "shape" in err and "Traceback" not in err
    many_classes = tmp_path / "classes.npz"
    np.savez(many_classes, x=np.zeros((10, 1, 8, 8), np.float32), y=np.arange(10) * 3)
    assert main(["verify", layout, "--data", str(many_classes), "--mc", "2"]) == 2
    assert "classes" in capsys.readouterr().err
    assert main(["verify", layout, "--data", str(tmp_path / "none.npz"), "--mc", "2"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["verify", layout, "--mc", "0"]) == 2
    assert "--mc" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nolayout"), "--mc", "2"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_chips_per_pass_gives_the_same_report(capsys, digits_layout) -> None:
    args = (str(digits_layout[0]), "--mc", "6", "--sigma", "0.15", "--ideal-periphery")
    one = run_json(capsys, *args)["results"][0]
    batched = run_json(capsys, *args, "--chips-per-pass", "4")["results"][0]
    assert one["mc"] == batched["mc"]
    assert one["uncertainty"]["expected_kl"] == pytest.approx(
        batched["uncertainty"]["expected_kl"], rel=1e-5)


def test_verify_device_errors(capsys, digits_layout) -> None:
    layout = str(digits_layout[0])
    assert main(["verify", layout, "--mc", "2", "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "cpu or cuda" in err and "Traceback" not in err
    if not torch.cuda.is_available():
        assert main(["verify", layout, "--mc", "2", "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_runs_the_same_chips_as_the_cpu(capsys, digits_layout) -> None:
    """The noise is drawn on the CPU, so a seed is the same chips on the GPU; only float
    rounding of the kernels differs (a few samples may flip near a decision boundary)."""
    args = (str(digits_layout[0]), "--mc", "6", "--sigma", "0.15", "--ideal-periphery")
    cpu = run_json(capsys, *args)["results"][0]["mc"]
    gpu = run_json(capsys, *args, "--device", "cuda", "--chips-per-pass", "3")["results"][0]
    assert gpu["mc"]["mean"] == pytest.approx(cpu["mean"], abs=0.005)
    adc_cpu = run_json(capsys, *args[:-1])["results"][0]["mc"]
    adc_gpu = run_json(capsys, *args[:-1], "--device", "cuda")["results"][0]["mc"]
    assert adc_gpu["mean"] == pytest.approx(adc_cpu["mean"], abs=0.005)


def test_paper_noise_needs_ideal_periphery(capsys, digits_layout) -> None:
    layout = str(digits_layout[0])
    assert main(["verify", layout, "--mc", "2", "--noise", "paper"]) == 2
    err = capsys.readouterr().err
    assert "--ideal-periphery" in err and "Traceback" not in err
    report = run_json(capsys, layout, "--mc", "2", "--noise", "paper", "--ideal-periphery")
    assert report["noise"] == "paper" and report["device"] == "cpu"


def test_noise_off_is_within_one_point_of_the_float_model(capsys, digits_layout) -> None:
    """8-bit weights on a small CNN: the quantised chip (noise off, ideal periphery) loses at
    most one point of test accuracy against the float model (449 samples: 1 point = 4.5 images)."""
    layout, fake_quant_acc, model = digits_layout
    float_acc = accuracy(model.eval(), load_digits().test)
    report = run_json(capsys, str(layout), "--mc", "1", "--noise", "off", "--ideal-periphery")
    quantized = report["results"][0]["quantized_accuracy"]
    assert quantized == fake_quant_acc
    assert abs(float_acc - quantized) <= 0.01
