"""Per-chip BatchNorm re-calibration (``neftc.runtime.recalibration``, ``verify
--bn-recalibrate``): noise off it finds the statistics the model was given on the same data; it
is what a forward with batch statistics computes on the chip's effective weights (checked by
hand in torch); at a large sigma it recovers accuracy on the same chips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neftc.cli.main import main
from neftc.datasets.base import Dataset
from neftc.datasets.digits import load_digits
from neftc.driver.compiler import CompileSettings, compile_module
from neftc.flow.verify import VerifySettings, verify_layout
from neftc.neft.train import train_classifier
from neftc.runtime.emulator import Emulator
from neftc.runtime.recalibration import batch_norms, recalibrate_batch_norm
from neftc.targets import resolve_target


class ConvBnNet(nn.Module):
    """Three conv + BN + ReLU blocks and a BN'd hidden linear layer, for 1x8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(128, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.fixture(scope="module")
def bn_model() -> tuple[nn.Module, Dataset]:
    """ConvBnNet trained 8 epochs on the digits; then its BatchNorm statistics estimated on the
    whole training split with the final weights (one batch: the mean, the unbiased variance),
    and compiled for fefet_128x128 (BatchNorm kept digital, the default)."""
    data = load_digits()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ConvBnNet().train()
    model = train_classifier(model, data.train, epochs=8, lr=3e-3, seed=0, progress=False)
    for bn in bn_modules(model):
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: one batch gives that batch's statistics
    model.train()
    with torch.no_grad():
        model(data.train.x)
    return model.eval(), data


@pytest.fixture(scope="module")
def bn_layout(tmp_path_factory, bn_model) -> Path:
    model, data = bn_model
    out = tmp_path_factory.mktemp("bn") / "layout"
    compile_module(model, data.test.x[:1], resolve_target("fefet_128x128"), out)
    return out


@pytest.mark.parametrize(("samples", "mean_tol", "var_tol"), [(1348, 0.03, 0.02),
                                                          (512, 0.1, 0.15)])
def test_noise_off_recalibration_finds_the_stored_statistics(bn_model, bn_layout, samples: int,
                                                             mean_tol: float,
                                                             var_tol: float) -> None:
    """Sigma 0, ideal periphery: training inputs through the (quantised) chip give each
    BatchNorm's statistics close to those the model holds (estimated on the whole training
    split with the float weights). On that whole split the only difference is the 8-bit weights:
    every channel's mean within 0.03 of its std, its variance within 2 % (measured: 0.013,
    0.5 %); on the first 512 samples, the estimate's own spread adds to it (the 64-channel
    linear BatchNorm sees 512 values per channel): 0.1 and 15 % (measured: 0.058, 10 %)."""
    model, data = bn_model
    emulator = Emulator(bn_layout, sigma=0.0, ideal_periphery=True)
    chip = emulator.instance(0)
    recalibrated = recalibrate_batch_norm(emulator, chip, data.train.x[:samples])
    names = [bn.node_name for bn in batch_norms(emulator)]
    assert len(names) == 4 and list(recalibrated.batch_norm) == names
    for name, bn in zip(names, bn_modules(model)):
        stats = recalibrated.batch_norm[name]
        std = bn.running_var.sqrt()
        assert ((stats.mean - bn.running_mean).abs() <= mean_tol * std).all(), name
        ratio = stats.var / bn.running_var
        assert ((ratio - 1).abs() <= var_tol).all(), (name, ratio)
    assert not chip.batch_norm  # the chip value is unchanged


class TwoBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def test_recalibration_is_a_forward_with_batch_statistics(tmp_path) -> None:
    """Independent reference: torch's own training-mode batch_norm over the calibration inputs,
    run by hand on chip 3's effective weights (``Emulator.effective_weights``); BN 2 sees BN 1
    already re-calibrated. Outputs within 1e-4 (float32), on the calibration inputs and on other
    inputs normalised with the calibration statistics."""
    torch.manual_seed(0)
    model = TwoBlock()
    g = torch.Generator().manual_seed(1)
    for bn in (model.bn1, model.bn2):  # stored statistics far from the chip's
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 3 + 0.1)
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.bias.data.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
    model.eval()
    # One copy per layer: every output position is computed with effective_weights(copy=0).
    compile_module(model, torch.zeros(1, 1, 8, 8), resolve_target("fefet_128x128"),
                   tmp_path / "out", settings=CompileSettings.with_options(replicate=False))
    calib = torch.randn(300, 1, 8, 8, generator=g)
    other = torch.randn(50, 1, 8, 8, generator=g)
    emulator = Emulator(tmp_path / "out", sigma=0.2, seed=4, ideal_periphery=True)
    chip = recalibrate_batch_norm(emulator, emulator.instance(3), calib)
    emulator.program_chip(3)
    weights = emulator.effective_weights()
    w1, w2, w3 = (next(w for w in weights.values() if w.shape == shape)
                  for shape in (model.conv1.weight.shape, model.conv2.weight.shape,
                                model.fc.weight.shape))
    assert not torch.equal(w1, model.conv1.weight)  # a noisy chip

    def reference(x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        stats = []
        h = x
        for w, bn in ((w1, model.bn1), (w2, model.bn2)):
            h = F.conv2d(h, w, None, padding=1)
            stats.append((h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False), h))
            h = F.relu(F.batch_norm(h, None, None, bn.weight, bn.bias, training=True,
                                    eps=bn.eps))
        return F.linear(torch.flatten(h, 1), w3, model.fc.bias), stats

    with torch.no_grad():
        expected, stats = reference(calib)
        assert torch.allclose(emulator.forward(calib, chip), expected, atol=1e-4)
        for (mean, var, _), recal in zip(stats, chip.batch_norm.values()):
            assert torch.allclose(recal.mean, mean, atol=1e-5)
            assert torch.allclose(recal.var, var, rtol=1e-4)
        # Other inputs: every BN normalises with the calibration batch's statistics.
        h = other
        for w, bn, (mean, var, _) in zip((w1, w2), (model.bn1, model.bn2), stats):
            h = F.relu(F.batch_norm(F.conv2d(h, w, None, padding=1), mean, var, bn.weight,
                                    bn.bias, training=False, eps=bn.eps))
        expected_other = F.linear(torch.flatten(h, 1), w3, model.fc.bias)
        assert torch.allclose(emulator.forward(other, chip), expected_other, atol=1e-4)
        # The chip as programmed uses the layout's running statistics: a different output.
        plain = emulator.forward(other, emulator.instance(3))
        assert (plain - expected_other).abs().max() > 0.1


def test_recalibration_recovers_accuracy_at_a_large_sigma(bn_layout) -> None:
    """The behaviour claim, on the same 20 chips at sigma 0.3 (ideal periphery, 256 training
    inputs per chip): the mean accuracy rises by at least 5 points with the paired interval
    above 0, and most chips gain (measured: 32.3 % -> 57.8 %, +25.4 +- 4.4 points, 20 of 20
    chips)."""
    record = verify_layout(bn_layout, "digits", VerifySettings(
        sigmas=(0.3,), trials=20, ideal_periphery=True, bn_recalibrate=256))
    row = record.results[0]
    assert row.recalibrated is not None
    p = row.recalibrated.paired
    assert p.mean_a == row.mc.mean and p.mean_b == row.recalibrated.mc.mean
    assert p.mean_difference >= 0.05 and p.ci95 is not None and p.mean_difference - p.ci95 > 0
    assert p.wins >= 15
    assert record.bn_recalibration is not None and len(record.bn_recalibration.batch_norms) == 4


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["verify", *argv, "-q", "--no-report"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plain_results_do_not_change_and_the_target_periphery_works(capsys, bn_layout) -> None:
    args = (str(bn_layout), "--mc", "2", "--sigma", "0.3", "--json")
    code, out, _ = run(capsys, *args)
    plain = json.loads(out)["results"][0]
    code, out, _ = run(capsys, *args, "--bn-recalibrate", "128")
    assert code == 0
    report = json.loads(out)
    row = report["results"][0]
    assert row["chip_accuracies"] == plain["chip_accuracies"] and row["mc"] == plain["mc"]
    recal = row["recalibrated"]
    assert len(recal["chip_accuracies"]) == 2
    assert recal["paired"]["mean_difference"] == pytest.approx(
        np.mean(recal["chip_accuracies"]) - np.mean(row["chip_accuracies"]), abs=1e-12)
    assert report["bn_recalibration"]["samples"] == 128


def test_a_layout_without_batch_norm_is_a_reported_no_op(capsys, lenet_layout) -> None:
    code, out, _ = run(capsys, str(lenet_layout), "--mc", "3", "--sigma", "0.2",
                       "--ideal-periphery", "--bn-recalibrate", "64", "--json")
    assert code == 0
    report = json.loads(out)
    row = report["results"][0]
    assert report["bn_recalibration"] == {"samples": 64, "batch_norms": []}
    assert row["recalibrated"]["chip_accuracies"] == row["chip_accuracies"]
    assert row["recalibrated"]["paired"]["ties"] == 3
    code, out, _ = run(capsys, str(lenet_layout), "--mc", "2", "--ideal-periphery",
                       "--bn-recalibrate", "64")
    assert code == 0 and "no BatchNorm" in out


def test_refusals(capsys, lenet_layout, tmp_path) -> None:
    layout = str(lenet_layout)
    data = load_digits()
    test_only = tmp_path / "test_only.npz"
    np.savez(test_only, x_test=data.test.x.numpy(), y_test=data.test.y.numpy())
    cases = [
        (("--data", str(test_only), "--bn-recalibrate", "16"), "training split"),
        (("--bn-recalibrate", "5000"), "at most 1348"),
        (("--bn-recalibrate", "0"), "--bn-recalibrate"),
        (("--bn-recalibrate", "16", "--ideal-periphery", "--chips-per-pass", "4"),
         "--chips-per-pass"),
        (("--bn-recalibrate", "16", "--compare", layout), "--compare"),
    ]
    for extra, words in cases:
        code, _, err = run(capsys, layout, "--mc", "2", *extra)
        assert code == 2 and words in err and "Traceback" not in err, (extra, err)
