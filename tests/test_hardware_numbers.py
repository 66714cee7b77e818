"""The numbers the hardware flow reads: stored DAC calibration, --set overrides, the cost of
pipeline copies (issue 9, item 7). ``neftc diff``'s truncation note is in test_programming.py."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from neftc.cli.main import main
from neftc.datasets.digits import load_digits
from neftc.driver.compiler import CompileSettings, compile_module
from neftc.flow.cost import estimate_cost, positions_per_copy
from neftc.format.reader import load_layout
from neftc.frontend.zoo import build
from neftc.runtime.emulator import Emulator

SAMPLES = 64  # calibration samples: enough for a range, and fast


@pytest.fixture(scope="module")
def lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build("lenet", (1, 8, 8), 10).eval()


@pytest.fixture
def layout_dir(tmp_path, lenet, fefet) -> Path:
    compile_module(lenet, torch.zeros(1, 1, 8, 8), fefet, tmp_path / "out")
    return tmp_path / "out"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- DAC calibration


def test_calibrate_then_program_shows_the_emulators_scales(layout_dir, tmp_path, capsys) -> None:
    x = load_digits().train.x[:SAMPLES]
    expected = Emulator(load_layout(layout_dir), ideal_periphery=False, noise="off").calibrate(x)
    code, out, _ = cli(capsys, "calibrate", str(layout_dir), "--data", "digits", "--samples",
                       str(SAMPLES))
    assert code == 0 and f"first {SAMPLES} train samples" in out
    layout = load_layout(layout_dir)  # re-signed: it loads (schema, checksums, consistency)
    calibration = layout.doc.dac_calibration
    assert calibration is not None
    assert (calibration.method, calibration.data, calibration.samples) == \
        ("max-abs", "digits", SAMPLES)
    for name in layout.layer_names:  # exactly the emulator's numbers (JSON keeps doubles)
        dac = layout.dac(name)
        assert dac is not None
        assert (dac.scale, dac.signed, dac.bits) == \
            (expected[name].scale, expected[name].signed, expected[name].bits)

    code, out, _ = cli(capsys, "program", str(layout_dir), "-o", str(tmp_path / "prog"))
    assert code == 0 and f"ranges from digits ({SAMPLES} samples" in out
    assert "no DAC calibration" not in out
    with open(tmp_path / "prog" / "dac.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["layer"] for r in rows] == layout.layer_names
    for row in rows:
        quant = expected[row["layer"]]
        assert float(row["scale"]) == quant.scale  # written with repr: exact
        assert (bool(int(row["signed"])), int(row["bits"])) == (quant.signed, quant.bits)
        assert (row["method"], row["data"], int(row["samples"])) == ("max-abs", "digits", SAMPLES)
    with np.load(tmp_path / "prog" / "arrays.npz") as data:  # no pickles needed
        assert list(data["dac_layer"]) == layout.layer_names
        assert list(data["dac_scale"]) == [expected[n].scale for n in layout.layer_names]
        assert list(data["dac_signed"]) == [expected[n].signed for n in layout.layer_names]
        assert str(data["dac_data"]) == "digits" and int(data["dac_samples"]) == SAMPLES
    manifest = json.loads((tmp_path / "prog" / "manifest.json").read_text())
    assert manifest["dac_calibration"] == {"method": "max-abs", "data": "digits",
                                           "samples": SAMPLES}
    assert [d["scale"] for d in manifest["dac"]] == [expected[n].scale for n in layout.layer_names]
    assert "dac.csv" in manifest["files"]
    code, out, _ = cli(capsys, "inspect", str(layout_dir), "--json")
    summary = json.loads(out)
    assert summary["dac_calibration"]["samples"] == SAMPLES
    assert [r["dac"]["scale"] for r in summary["layers"]] == \
        [expected[n].scale for n in layout.layer_names]
    code, out, _ = cli(capsys, "inspect", str(layout_dir))
    assert f"input DAC ranges: max-abs over {SAMPLES} samples of digits" in out
    assert "DAC scale" in out and f"{expected['features.0'].scale:.4g} u8" in out


def test_calibrated_layout_verifies_with_its_stored_ranges(layout_dir, tmp_path,
                                                           capsys) -> None:
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(layout_dir, plain)
    args = ("--mc", "1", "--sigma", "0.05", "--calib-samples", str(SAMPLES), "-q",
            "--no-report")
    code, out, _ = cli(capsys, "verify", str(plain), *args)
    assert code == 0 and f"calibrated from digits, {SAMPLES} samples" in out
    assert f"neftc calibrate {plain} --data DATA" in out  # the hint to store them
    code, out, _ = cli(capsys, "verify", str(plain), *args, "--json")
    own = json.loads(out)
    assert own["periphery"]["dac"] == f"calibrated from digits, {SAMPLES} samples"

    assert main(["calibrate", str(layout_dir), "--data", "digits", "--samples", str(SAMPLES)]) == 0
    capsys.readouterr()
    code, out, _ = cli(capsys, "verify", str(layout_dir), *args[:-2], "--json", "-q",
                       "--calib-samples", "7")  # ignored: the layout's ranges are used
    stored = json.loads(out)
    assert stored["periphery"]["dac"] == "layout"
    assert stored["periphery"]["calibration_samples"] == SAMPLES
    assert stored["periphery"]["dac_calibration"]["data"] == "digits"
    # Same ranges as verify's own calibration on the same samples: same sign-off, exactly.
    assert stored["periphery"]["dac_layers"] == own["periphery"]["dac_layers"]
    assert stored["results"][0]["quantized_accuracy"] == own["results"][0]["quantized_accuracy"]
    assert stored["results"][0]["mc"] == own["results"][0]["mc"]
    # verify kept verify.json; the report says which ranges the sign-off used.
    assert "input DAC ranges of this sign-off: layout" in (layout_dir / "report.html").read_text()
    code, out, _ = cli(capsys, "verify", str(layout_dir), *args)
    assert "input DAC ranges: stored in the layout" in out and "neftc calibrate" not in out


def test_calibrate_is_idempotent_and_writes_elsewhere_with_o(layout_dir, tmp_path,
                                                             capsys) -> None:
    before = (layout_dir / "layout.json").read_bytes()
    assert main(["calibrate", str(layout_dir), "--data", "digits", "--samples", str(SAMPLES),
                 "-o", str(tmp_path / "cal")]) == 0
    assert (layout_dir / "layout.json").read_bytes() == before  # -o leaves the source alone
    first = (tmp_path / "cal" / "layout.json").read_bytes()
    assert main(["calibrate", str(tmp_path / "cal"), "--data", "digits", "--samples",
                 str(SAMPLES)]) == 0
    assert (tmp_path / "cal" / "layout.json").read_bytes() == first
    assert (tmp_path / "cal" / "report.txt").is_file() and (tmp_path / "cal" / "report.html")
    # Only the DAC fields differ from the uncalibrated document.
    old, new = json.loads(before), json.loads(first)
    assert old["dac_calibration"] is None and new["dac_calibration"]["samples"] == SAMPLES
    for a, b in zip(old["layers"], new["layers"]):
        assert a.pop("dac") is None and b.pop("dac")["bits"] == 8 and a == b
    for key in old:
        if key not in ("layers", "dac_calibration"):
            assert old[key] == new[key], key


def test_compile_dac_data_equals_compile_then_calibrate(tmp_path, lenet, capsys) -> None:
    model = tmp_path / "lenet.pt2"
    torch.export.save(torch.export.export(lenet, (torch.zeros(1, 1, 8, 8),)), model)
    assert main(["compile", str(model), "-o", str(tmp_path / "a"), "-q", "--dac-data", "digits",
                 "--dac-samples", str(SAMPLES)]) == 0
    assert main(["compile", str(model), "-o", str(tmp_path / "b"), "-q"]) == 0
    assert load_layout(tmp_path / "b").doc.dac_calibration is None  # nothing by default
    assert main(["calibrate", str(tmp_path / "b"), "--data", "digits", "--samples",
                 str(SAMPLES)]) == 0
    assert (tmp_path / "a" / "layout.json").read_bytes() == \
        (tmp_path / "b" / "layout.json").read_bytes()
    # compile --neft calibrates on its fine-tuning --data by default.
    assert main(["compile", str(model), "-o", str(tmp_path / "c"), "-q", "--neft", "none",
                 "--epochs", "1", "--dac-samples", str(SAMPLES)]) == 0
    calibration = load_layout(tmp_path / "c").doc.dac_calibration
    assert calibration is not None and (calibration.data, calibration.samples) == \
        ("digits", SAMPLES)
    capsys.readouterr()


def test_calibrate_refuses_bad_input_and_leaves_the_layout(layout_dir, tmp_path,
                                                          capsys) -> None:
    before = {p.name: p.read_bytes() for p in layout_dir.iterdir()}
    np.savez(tmp_path / "flat.npz", x=np.zeros((20, 64), np.float32), y=np.zeros(20, np.int64))
    cases = [(["--data", str(tmp_path / "flat.npz")], "shape"),
             (["--data", str(tmp_path / "missing.npz")], "does not exist"),
             (["--data", "digits", "--samples", "0"], "--samples"),
             (["--data", "digits", "-o", str(tmp_path)], "not a neftc output")]
    for extra, needle in cases:
        code, out, err = cli(capsys, "calibrate", str(layout_dir), *extra)
        assert code == 2 and "Traceback" not in err and err.count("error:") == 1, err
        assert needle in err and out == ""
    assert {p.name: p.read_bytes() for p in layout_dir.iterdir()} == before
    code, _, err = cli(capsys, "calibrate", str(tmp_path / "nothing"), "--data", "digits")
    assert code == 2 and "does not exist" in err
    code, _, err = cli(capsys, "compile", "whatever.pt2", "--dac-data", "digits",
                       "--dac-samples", "0")
    assert code == 2 and "--dac-samples" in err


def test_calibrate_keeps_verify_json_only_when_it_still_holds(layout_dir, capsys) -> None:
    assert main(["verify", str(layout_dir), "--mc", "1", "--sigma", "0.05", "-q",
                 "--calib-samples", str(SAMPLES)]) == 0
    code, out, _ = cli(capsys, "calibrate", str(layout_dir), "--data", "digits", "--samples",
                       str(SAMPLES))  # the same ranges verify used: its results still hold
    assert code == 0 and "verify.json kept" in out and (layout_dir / "verify.json").is_file()
    code, out, _ = cli(capsys, "calibrate", str(layout_dir), "--data", "digits", "--samples",
                       "5")  # other ranges: the old sign-off no longer describes the layout
    assert code == 0 and "verify.json left out" in out
    assert not (layout_dir / "verify.json").exists()
    assert "Run <code>neftc verify" in (layout_dir / "report.html").read_text()


# ---------------------------------------------------------------- --set overrides


def test_set_overrides_show_in_inspect_summary_and_reports(tmp_path, lenet, capsys) -> None:
    model = tmp_path / "lenet.pt2"
    torch.export.save(torch.export.export(lenet, (torch.zeros(1, 1, 8, 8),)), model)
    out = tmp_path / "out"
    code, stdout, _ = cli(capsys, "compile", str(model), "-o", str(out), "-q",
                          "--set", "noise.sigma_rel=0.2")
    assert code == 0 and "target overrides: --set noise.sigma_rel=0.2" in stdout
    layout = load_layout(out)
    assert layout.doc.options.target_overrides == ["noise.sigma_rel=0.2"]
    assert layout.doc.target.noise.sigma_rel == 0.2
    code, text, _ = cli(capsys, "inspect", str(out))
    assert "target overrides: --set noise.sigma_rel=0.2" in text
    code, text, _ = cli(capsys, "inspect", str(out), "--json")
    assert json.loads(text)["target_overrides"] == ["noise.sigma_rel=0.2"]
    assert "target overrides: --set noise.sigma_rel=0.2" in (out / "report.txt").read_text()
    page = (out / "report.html").read_text()
    assert "<td>target overrides</td><td>--set noise.sigma_rel=0.2</td>" in page
    code, _, _ = cli(capsys, "compile", str(model), "-o", str(tmp_path / "plain"), "-q")
    assert "target overrides: none" in (tmp_path / "plain" / "report.txt").read_text()
    assert load_layout(tmp_path / "plain").doc.options.target_overrides == []


# ---------------------------------------------------------------- pipeline copies


def test_copies_keep_array_reads_and_add_the_bytes_they_move(tmp_path, lenet, fefet) -> None:
    example = torch.zeros(1, 1, 8, 8)
    with_copies = compile_module(lenet, example, fefet, tmp_path / "rep").doc
    without = compile_module(lenet, example, fefet, tmp_path / "norep",
                             settings=CompileSettings.with_options(replicate=False)).doc
    assert with_copies.summary.replica_arrays > 0 and without.summary.replica_arrays == 0
    a, b = estimate_cost(with_copies), estimate_cost(without)
    pa, pb = a["per_inference"], b["per_inference"]
    # Each output position is computed once, on one copy: the same reads and conversions.
    for key in ("array_reads", "cell_reads", "dac_conversions", "adc_conversions",
                "digital_adds"):
        assert pa[key] == pb[key], key
    for layer in a["layers"]:
        assert sum(layer["reads_per_copy"]) == layer["array_reads"]
        assert len(layer["reads_per_copy"]) == layer["replication"]
    # ... but every copy is fed and read out: more bytes moved, counted exactly.
    assert pb["replica_bytes"] == 0 and pb["bytes_moved"] == pb["bytes_exchanged"]
    assert pa["bytes_exchanged"] == pb["bytes_exchanged"]  # the placement's own traffic
    expected = 0.0
    for layer in with_copies.layers:
        counts = positions_per_copy(layer.positions, layer.replication)
        for tile in layer.tiles:
            for copy in range(1, layer.replication):  # 8-bit inputs and ADC: one byte each
                expected += counts[copy] * (tile.row_count + tile.col_count)
    assert expected > 0 and pa["replica_bytes"] == expected
    assert pa["bytes_moved"] == pa["bytes_exchanged"] + expected > pb["bytes_moved"]
    assert pa["byte_hops"] == pa["placement_byte_hops"] + pa["replica_byte_hops"]
    # Each copy is programmed: the one-time cost counts its cells.
    assert a["programming"]["cells"] == with_copies.summary.cells_used
    assert a["programming"]["replica_cells"] == sum(
        t.row_count * t.col_count * len(t.replicas)
        for layer in with_copies.layers for t in layer.tiles)
    assert b["programming"]["replica_cells"] == 0
    # Latency: a layer takes as long as its busiest copy.
    first = with_copies.layers[0]
    assert a["layers"][0]["time_ns"] == math.ceil(first.positions / first.replication) * \
        math.ceil(8 / with_copies.periphery.dac_bits_per_cycle) * \
        with_copies.target.cost.array_read_latency_ns
    text = (tmp_path / "rep" / "report.txt").read_text()
    assert f"bytes moved per inference: {pa['bytes_moved']:,.0f}" in text
    assert f"{pa['replica_bytes']:,.0f} to and from pipeline copies" in text
    assert "replica bytes" in (tmp_path / "rep" / "report.html").read_text()


def test_positions_per_copy_follows_the_encoding() -> None:
    from neftc.format.encoding import copy_of_position

    for positions, replication in [(1, 1), (64, 64), (36, 5), (7, 3), (2, 4)]:
        owners = [copy_of_position(m, replication) for m in range(positions)]
        assert positions_per_copy(positions, replication) == \
            [owners.count(k) for k in range(replication)]
        assert sum(positions_per_copy(positions, replication)) == positions
