"""verify reports every chip instance's accuracy, in chip-index order: entry i is chip i of the
seed, the same chip an independent ``Emulator.instance(i)`` evaluation sees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neftc.cli.main import main
from neftc.driver.compiler import compile_module
from neftc.flow.records import VerifyRecord
from neftc.flow.report import VERIFY_JSON
from neftc.runtime.emulator import Emulator
from neftc.runtime.montecarlo import evaluate
from neftc.targets import resolve_target


@pytest.fixture(scope="module")
def layout(tmp_path_factory, trained_lenet) -> Path:
    out = tmp_path_factory.mktemp("per_chip") / "layout"
    compile_module(trained_lenet.model(), trained_lenet.data.test.x[:1],
                   resolve_target("fefet_128x128"), out)
    return out


def run_json(capsys, *argv: str) -> dict:
    assert main(["verify", *argv, "-q", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_per_chip_accuracies_are_the_chips_in_index_order(capsys, layout, trained_lenet) -> None:
    report = run_json(capsys, str(layout), "--mc", "6", "--sigma", "0.2", "--sigma", "0.3",
                      "--seed", "3", "--ideal-periphery")
    test = trained_lenet.data.test
    for row in report["results"]:
        chips = row["chip_accuracies"]
        assert len(chips) == row["mc"]["trials"] == 6
        # An independent evaluation of chip i of seed 3 at this sigma, one chip at a time.
        emulator = Emulator(layout, sigma=row["sigma"], seed=3, ideal_periphery=True)
        expected = [evaluate(emulator, test.x, test.y, 512, emulator.instance(i))
                    for i in range(6)]
        assert chips == expected  # exact: the same chips, the same test set
        assert np.mean(chips) == pytest.approx(row["mc"]["mean"], abs=1e-12)
        assert min(chips) == row["mc"]["min"] and max(chips) == row["mc"]["max"]
    assert len(set(report["results"][1]["chip_accuracies"])) > 1  # the chips really differ


def test_per_chip_accuracies_on_the_target_periphery_and_saved(capsys, layout) -> None:
    report = run_json(capsys, str(layout), "--mc", "3", "--sigma", "0.2")
    row = report["results"][0]
    assert len(row["chip_accuracies"]) == 3
    assert np.mean(row["chip_accuracies"]) == pytest.approx(row["mc"]["mean"], abs=1e-12)
    saved = VerifyRecord.model_validate_json((layout / VERIFY_JSON).read_text())
    assert saved.results[0].chip_accuracies == row["chip_accuracies"]
    # Without --compare / --bn-recalibrate the new blocks are null.
    assert row["compared"] is None and row["paired"] is None and row["recalibrated"] is None
    assert report["compare"] is None and report["bn_recalibration"] is None


def test_chips_per_pass_gives_the_same_chip_accuracies(capsys, layout) -> None:
    args = (str(layout), "--mc", "5", "--sigma", "0.25", "--ideal-periphery")
    one = run_json(capsys, *args)["results"][0]["chip_accuracies"]
    batched = run_json(capsys, *args, "--chips-per-pass", "3")["results"][0]["chip_accuracies"]
    assert one == batched


def test_more_chips_extend_the_same_list(capsys, layout) -> None:
    """Chip i is chip i whatever --mc: a longer run starts with the shorter one's chips."""
    args = (str(layout), "--sigma", "0.3", "--ideal-periphery")
    short = run_json(capsys, *args, "--mc", "3")["results"][0]["chip_accuracies"]
    long = run_json(capsys, *args, "--mc", "5")["results"][0]["chip_accuracies"]
    assert long[:3] == short


def test_a_record_without_per_chip_accuracies_still_parses() -> None:
    """verify.json files written before per-chip accuracies stay readable (empty list)."""
    record = {"format": "neftc-verify", "version": 1, "layout": "x", "target": "t", "data": "d",
              "test_samples": 1, "split": "s", "seed": 0, "noise": "cell", "device": "cpu",
              "chips_per_pass": 1, "state_ratio": 2.0, "periphery": "ideal",
              "quantized_accuracy_ideal_periphery": 0.5, "faults": False,
              "results": [{"sigma": 0.1, "quantized_accuracy": 0.5,
                           "mc": {"trials": 1, "mean": 0.5, "std": 0.0, "ci95": None,
                                  "min": 0.5, "p5": 0.5, "max": 0.5},
                           "uncertainty": {"expected_kl": 0.0, "mean_confidence": 0.5},
                           "seconds": 1.0, "trials_per_second": 1.0}]}
    parsed = VerifyRecord.model_validate(record)
    assert parsed.results[0].chip_accuracies == [] and parsed.compare is None
