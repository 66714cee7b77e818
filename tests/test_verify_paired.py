"""verify --compare: layout B on the same chip instances as A, the paired difference B - A with
its Student-t interval (checked against a hand computation with a printed t table), comparing a
layout with itself gives 0 exactly, pairing narrows the interval, and layouts that cannot be
compared are refused."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from neftc.cli.main import main
from neftc.driver.compiler import CompileSettings, compile_module
from neftc.frontend.zoo import build
from neftc.runtime.montecarlo import paired
from neftc.targets import resolve_target

#: Two-sided 95 % quantiles of Student's t, from a printed table (degrees of freedom -> t).
T_TABLE = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 19: 2.093, 29: 2.045, 30: 2.042,
           40: 2.021, 60: 2.000, 120: 1.980}


def reference(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of b - a and the half-width of its 95 % interval, by hand."""
    d = [y - x for x, y in zip(a, b)]
    return statistics.fmean(d), T_TABLE[len(d) - 1] * statistics.stdev(d) / math.sqrt(len(d))


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_paired_interval_matches_the_hand_computation(df: int) -> None:
    g = torch.Generator().manual_seed(df)
    a = torch.rand(df + 1, generator=g, dtype=torch.float64)
    b = a + 0.02 + 0.05 * torch.randn(df + 1, generator=g, dtype=torch.float64)
    stats = paired(a.numpy(), b.numpy())
    mean, half = reference(a.tolist(), b.tolist())
    assert stats.chips == df + 1
    assert stats.mean_difference == pytest.approx(mean, abs=1e-12)
    # The table has 3 decimals: the code's quantile agrees with it to 3e-4 relative.
    assert stats.ci95 == pytest.approx(half, rel=3e-4)
    assert stats.mean_a == pytest.approx(float(a.mean())) and stats.mean_b == pytest.approx(
        float(b.mean()))
    assert stats.wins + stats.ties + stats.losses == df + 1
    assert stats.wins == int((b > a).sum()) and stats.losses == int((b < a).sum())


def test_paired_counts_ties_and_one_chip() -> None:
    a = np.array([0.5, 0.6, 0.7, 0.8])
    stats = paired(a, np.array([0.5, 0.7, 0.6, 0.8]))
    assert (stats.wins, stats.ties, stats.losses) == (1, 2, 1)
    assert stats.mean_difference == pytest.approx(0.0, abs=1e-15)
    one = paired(np.array([0.5]), np.array([0.75]))
    assert one.mean_difference == 0.25 and math.isnan(one.ci95) and one.std_difference == 0.0


def perturbed(model: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    """The model with each weight moved by ``scale`` of its tensor's std (a tiny change)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * float(p.std()))
    return model


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, trained_lenet) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("paired")
    x = trained_lenet.data.test.x[:1]
    fefet = resolve_target("fefet_128x128")
    out = {name: root / name for name in ("a", "b", "rram", "five", "wide", "single")}
    compile_module(trained_lenet.model(), x, fefet, out["a"])
    compile_module(perturbed(trained_lenet.model(), 0.05, 1), x, fefet, out["b"])
    compile_module(trained_lenet.model(), x, resolve_target("rram1_128x128"), out["rram"])
    torch.manual_seed(0)
    compile_module(build("lenet", (1, 8, 8), 5), x, fefet, out["five"])
    compile_module(build("lenet", (1, 16, 16), 10), torch.zeros(1, 1, 16, 16), fefet,
                   out["wide"])
    compile_module(trained_lenet.model(), x, fefet, out["single"],
                   settings=CompileSettings.with_options(replicate=False))
    return out


def run_json(capsys, *argv: str) -> dict:
    assert main(["verify", *argv, "-q", "--json", "--no-report"]) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_with_itself_is_zero_exactly(capsys, layouts) -> None:
    a = str(layouts["a"])
    report = run_json(capsys, a, "--compare", a, "--mc", "5", "--sigma", "0.2")
    assert report["compare"]["same_draws"] is True
    row = report["results"][0]
    assert row["compared"]["chip_accuracies"] == row["chip_accuracies"]
    p = row["paired"]
    assert p["mean_difference"] == 0.0 and p["std_difference"] == 0.0 and p["ci95"] == 0.0
    assert (p["wins"], p["ties"], p["losses"]) == (0, 5, 0)


def test_compare_pairs_the_same_chips_and_narrows_the_interval(capsys, layouts) -> None:
    a, b = str(layouts["a"]), str(layouts["b"])
    chips = 20
    report = run_json(capsys, a, "--compare", b, "--mc", str(chips), "--sigma", "0.25",
                      "--ideal-periphery")
    assert report["compare"]["layout"] == b and report["compare"]["same_draws"] is True
    row = report["results"][0]
    # B's chips are B's own chips 0..19 of the seed: the same list as verifying B alone.
    alone = run_json(capsys, b, "--mc", str(chips), "--sigma", "0.25", "--ideal-periphery")
    assert row["compared"]["chip_accuracies"] == alone["results"][0]["chip_accuracies"]
    assert row["compared"]["mc"] == alone["results"][0]["mc"]
    acc_a, acc_b = row["chip_accuracies"], row["compared"]["chip_accuracies"]
    mean, half = reference(acc_a, acc_b)
    p = row["paired"]
    assert p["mean_difference"] == pytest.approx(mean, abs=1e-12)
    assert p["ci95"] == pytest.approx(half, rel=1e-3)
    assert p["mean_a"] == row["mc"]["mean"] and p["mean_b"] == row["compared"]["mc"]["mean"]
    # Unpaired (Welch, the same t): the chips' own spread, which pairing cancels. On the same
    # draws the two layouts' accuracies move together: at least halved (measured: 5.4x narrower).
    unpaired = T_TABLE[chips - 1] * math.sqrt(
        (statistics.variance(acc_a) + statistics.variance(acc_b)) / chips)
    assert p["ci95"] < 0.5 * unpaired


def test_compare_in_the_text_report(capsys, layouts) -> None:
    a, b = str(layouts["a"]), str(layouts["b"])
    assert main(["verify", a, "--compare", b, "--mc", "3", "--sigma", "0.2", "-q",
                 "--no-report", "--ideal-periphery"]) == 0
    out = capsys.readouterr().out
    assert "paired comparison" in out and "B wins/ties/loses" in out and "same chips:" in out


def test_compare_with_different_copies_says_so(capsys, layouts) -> None:
    report = run_json(capsys, str(layouts["a"]), "--compare", str(layouts["single"]), "--mc",
                      "2", "--sigma", "0.2", "--ideal-periphery")
    assert report["compare"]["same_draws"] is False
    assert "pipeline copies differ" in report["compare"]["note"]


@pytest.mark.parametrize(("other", "words"), [("rram", "target"), ("five", "classes"),
                                               ("wide", "inputs")])
def test_layouts_that_cannot_be_compared_are_refused(capsys, layouts, other: str,
                                                     words: str) -> None:
    assert main(["verify", str(layouts["a"]), "--compare", str(layouts[other]), "--mc", "2",
                 "-q", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "cannot compare" in err and words in err and "Traceback" not in err
    assert "same target" in err  # the fix


def test_compare_missing_layout_is_refused(capsys, layouts, tmp_path) -> None:
    assert main(["verify", str(layouts["a"]), "--compare", str(tmp_path / "none"), "--mc", "2",
                 "-q", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
