"""The README's main job: neftc demo on the built-in digits data."""

from __future__ import annotations

import json

from neftc.cli import main
from neftc.datasets import load_digits
from neftc.layout import load_layout


def test_digits_ship_with_the_package() -> None:
    data = load_digits()
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert len(data.train) + len(data.test) == 1797
    assert float(data.train.x.max()) == 1.0 and float(data.train.x.min()) == 0.0
    # The split is fixed by the seed: same seed, same split.
    again = load_digits()
    assert bool((again.test.y == data.test.y).all())


def test_demo_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "-q", "-o", str(out), "--epochs", "30", "--mc", "5"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy, float model" in printed
    record = json.loads((out / "demo.json").read_text())
    # A LeNet on digits reaches > 90 % in 30 epochs; 8-bit weights cost at most 2 points.
    assert record["float_accuracy"] > 0.90
    assert abs(record["layout_accuracy"] - record["float_accuracy"]) <= 0.02
    verify = record["verify"]
    assert [row["sigma"] for row in verify["results"]] == [0.05, 0.1]
    assert all(row["mc"]["trials"] == 5 for row in verify["results"])
    assert "MC mean" in printed
    layout = load_layout(out / "layout")
    assert layout.doc.source.path == str(out / "model.pt2")  # no temporary path recorded
    assert layout.doc.target.name == "fefet_128x128"
