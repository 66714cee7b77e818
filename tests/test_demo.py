"""The README's main job: neftc demo on the built-in digits data."""

from __future__ import annotations

import json

from neftc.cli.main import main
from neftc.datasets.digits import load_digits
from neftc.flow.records import DemoRecord
from neftc.format.reader import load_layout


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
    assert main(["demo", "-q", "-o", str(out), "--epochs", "25", "--neft-epochs", "3", "--mc",
                 "4", "--sigma", "0.1"]) == 0
    printed = capsys.readouterr().out
    for method in ("baseline", "nit", "ovf", "irs"):
        assert method in printed
    text = (out / "demo.json").read_text()
    record = json.loads(text)
    # demo.json is a DemoRecord: it parses with the model and writes back the same data.
    parsed = DemoRecord.model_validate_json(text)
    assert json.loads(parsed.model_dump_json()) == record and list(parsed.methods) == [
        "baseline", "nit", "ovf", "irs"]
    # A LeNet on digits reaches > 90 % in 25 epochs.
    assert record["float_accuracy"] > 0.90
    for method, info in record["methods"].items():
        layout = load_layout(out / f"layout-{method}")
        assert layout.doc.source.path == str(out / "model.pt2")  # no temporary path recorded
        assert (layout.doc.options.neft is None) == (method == "baseline")
        assert info["verify"]["layout"] == info["layout"] == str(out / f"layout-{method}")
        row = info["verify"]["results"][0]
        assert row["sigma"] == 0.1 and row["mc"]["trials"] == 4
        if method == "baseline":  # 8-bit weights and converters cost at most 3 points
            assert record["float_accuracy"] - row["quantized_accuracy"] <= 0.03
        else:  # a few epochs of noisy fine-tuning keep the noise-free model working
            assert row["quantized_accuracy"] > 0.8
    assert "| method |" in (out / "report.md").read_text()
