"""End to end: neftc compile / inspect / targets on real files, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from neftc.cli.main import main
from neftc.format.reader import load_layout
from neftc.frontend.zoo import build


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    assert err.count("error:") == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def no_leftovers(directory: Path) -> bool:
    return not any(p.name.startswith(".") and ".tmp-" in p.name for p in directory.iterdir())


# ---------------------------------------------------------------- the acceptance check


def test_compile_exported_residual_cnn(capsys, tmp_path, exported_cnn, residual_cnn) -> None:
    out = tmp_path / "out"
    code, stdout, _ = cli(capsys, "compile", str(exported_cnn), "--target", "fefet_128x128",
                          "-o", str(out))
    assert code == 0 and f"wrote {out}" in stdout
    layout = load_layout(out)
    state = residual_cnn.state_dict()
    assert layout.layer_names == ["stem.0", "block.0", "block.3", "head_w"]
    for name in layout.layer_names:
        original = state[name + ".weight" if name != "head_w" else name].numpy()
        scales = layout.scales(name)
        shape = (-1,) + (1,) * (original.ndim - 1)
        # Dequantised weights are within half a quantisation step (float32 slack 1e-6 rel).
        error = np.abs(layout.weights(name) - original)
        assert np.all(error <= scales.reshape(shape) / 2 * (1 + 1e-5)), name
        for tile in layout.layer(name).tiles:
            assert tile.row_count <= 128 and tile.col_count <= 128
    code, stdout, _ = cli(capsys, "inspect", str(out), "--json")
    summary = json.loads(stdout)
    matrices = {row["name"]: row["matrix"] for row in summary["layers"]}
    # C_in * kh * kw x C_out for convs, in x out for the linear head.
    assert matrices == {"stem.0": [27, 16], "block.0": [144, 16], "block.3": [144, 16],
                        "head_w": [256, 10]}
    totals = summary["totals"]
    assert totals["arrays_used"] == sum(r["arrays"] for r in summary["layers"])
    assert totals["cells_used"] == sum(r["cells"] for r in summary["layers"])
    assert 0 < totals["utilization"] <= 1


def test_round_trip_integer_weights_exact(tmp_path, residual_cnn, cnn_input, fefet) -> None:
    from neftc.driver.compiler import compile_module
    from neftc.ir.node_info import crossbar_nodes, get_info

    result = compile_module(residual_cnn, cnn_input, fefet, tmp_path / "out")
    layout = load_layout(tmp_path / "out")
    for node in crossbar_nodes(result.gm):
        info = get_info(node)
        assert np.array_equal(layout.integer_matrix(info.layer), info.quant.q)
        assert np.array_equal(layout.levels(info.layer), info.slices.levels)


def test_compile_is_deterministic(capsys, tmp_path, exported_cnn) -> None:
    for name in ("a", "b"):
        assert cli(capsys, "compile", str(exported_cnn), "-o", str(tmp_path / name), "-q")[0] == 0
    for file in ("layout.json", "levels.bin", "tensors.bin", "SHA256SUMS"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_compile_state_dict_with_zoo_arch(capsys, tmp_path) -> None:
    torch.manual_seed(0)
    model = build("lenet", (1, 12, 12), 7)
    path = tmp_path / "lenet.pt"
    torch.save(model.state_dict(), path)
    code, _, _ = cli(capsys, "compile", str(path), "--arch", "lenet", "--input-shape", "1,12,12",
                     "--target", "rram4_256x256", "--per-channel", "-o", str(tmp_path / "out"))
    assert code == 0
    layout = load_layout(tmp_path / "out")
    assert layout.doc.source.kind == "state-dict" and layout.doc.source.arch == "lenet"
    assert layout.layer("classifier.5").weight_shape == [7, 84]  # class count from the weights
    assert layout.layer("features.0").quant.per_channel


def test_compile_state_dict_with_import_path(capsys, tmp_path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))  # what tests.models:Tiny builds
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    module_file = tmp_path / "tinymodels.py"
    module_file.write_text("import torch.nn as nn\n\nclass Tiny(nn.Sequential):\n"
                           "    def __init__(self):\n        super().__init__(nn.Flatten(), "
                           "nn.Linear(4, 3))\n")
    sys.path.insert(0, str(tmp_path))
    try:
        code, _, _ = cli(capsys, "compile", str(path), "--arch", "tinymodels:Tiny",
                         "--input-shape", "4", "-o", str(tmp_path / "out"))
    finally:
        sys.path.remove(str(tmp_path))
    assert code == 0 and load_layout(tmp_path / "out").layer_names == ["1"]


def test_pickled_module_refused_then_trusted(capsys, tmp_path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), path)
    out = tmp_path / "out"
    code, _, err = cli(capsys, "compile", str(path), "--input-shape", "4", "-o", str(out))
    assert_clean_error(code, err, "runs code from the file", "--trust-model")
    assert not out.exists()
    code, _, _ = cli(capsys, "compile", str(path), "--input-shape", "4", "--trust-model",
                     "-o", str(out))
    assert code == 0 and load_layout(out).doc.source.kind == "pickled-module"


def test_dump_after_each_from_cli(capsys, tmp_path, exported_cnn) -> None:
    dump = tmp_path / "dump"
    assert cli(capsys, "compile", str(exported_cnn), "-o", str(tmp_path / "out"), "-q",
               "--dump-after-each", str(dump))[0] == 0
    assert len(list(dump.iterdir())) == 6


def test_fold_bn_option(capsys, tmp_path, exported_cnn) -> None:
    assert cli(capsys, "compile", str(exported_cnn), "--fold-bn", "-q", "-o",
               str(tmp_path / "out"))[0] == 0
    layout = load_layout(tmp_path / "out")
    ops = [n.target for n in layout.doc.graph.nodes]
    assert "aten.batch_norm.default" not in ops
    assert layout.layer("block.0").bias is not None  # the folded BN became the conv's bias


def test_targets_command(capsys) -> None:
    code, out, _ = cli(capsys, "targets")
    assert code == 0 and "fefet_128x128" in out and "rram4_256x256" in out
    code, out, _ = cli(capsys, "targets", "--json")
    data = json.loads(out)
    assert data["fefet6_128x128"]["noise"]["state_ratio"] == 6.0
    code, out, _ = cli(capsys, "targets", "rram1_128x128", "--set", "noise.sigma_rel=0.3")
    assert code == 0 and "0.3" in out and "Qin et al." in out


# ---------------------------------------------------------------- bad inputs


@pytest.fixture
def garbage(tmp_path) -> Path:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x13\x37 definitely not a model" * 10)
    return path


def test_missing_file(capsys, tmp_path) -> None:
    code, _, err = cli(capsys, "compile", str(tmp_path / "nope.pt2"), "-o", str(tmp_path / "o"))
    assert_clean_error(code, err, "does not exist")


def test_garbage_bytes(capsys, tmp_path, garbage) -> None:
    code, _, err = cli(capsys, "compile", str(garbage), "-o", str(tmp_path / "o"))
    assert_clean_error(code, err, "not a PyTorch model file", "torch.export.save")
    assert not (tmp_path / "o").exists()


def test_truncated_pt2(capsys, tmp_path, exported_cnn) -> None:
    data = exported_cnn.read_bytes()
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(data[: len(data) // 2])
    code, _, err = cli(capsys, "compile", str(broken), "-o", str(tmp_path / "o"))
    assert_clean_error(code, err, "broken.pt2")
    assert not (tmp_path / "o").exists()


def test_wrong_file_kinds(capsys, tmp_path, exported_cnn) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"\x08\x07\x12\x07pytorch")
    code, _, err = cli(capsys, "compile", str(onnx_file), "-o", str(tmp_path / "o"))
    assert_clean_error(code, err, "ONNX")
    code, _, err = cli(capsys, "compile", str(exported_cnn), "--arch", "lenet",
                       "-o", str(tmp_path / "o"))
    assert_clean_error(code, err, "drop --arch")
    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_file)
    code, _, err = cli(capsys, "compile", str(tensor_file), "--arch", "mlp",
                       "--input-shape", "3", "-o", str(tmp_path / "o"))
    assert_clean_error(code, err, "not a state_dict")
    code, _, err = cli(capsys, "compile", str(tmp_path), "-o", str(tmp_path / "o"))
    assert_clean_error(code, err, "is a directory")


def test_state_dict_problems(capsys, tmp_path) -> None:
    path = tmp_path / "mlp.pt"
    torch.save(build("mlp", (1, 8, 8), 10).state_dict(), path)
    code, _, err = cli(capsys, "compile", str(path), "-o", str(tmp_path / "o"))
    assert_clean_error(code, err, "--arch")
    code, _, err = cli(capsys, "compile", str(path), "--arch", "mlp", "-o", str(tmp_path / "o"))
    assert_clean_error(code, err, "--input-shape")
    code, _, err = cli(capsys, "compile", str(path), "--arch", "lenet", "--input-shape", "1,8,8",
                       "-o", str(tmp_path / "o"))
    assert_clean_error(code, err, "does not match architecture 'lenet'")
    code, _, err = cli(capsys, "compile", str(path), "--arch", "mlpp", "--input-shape", "1,8,8",
                       "-o", str(tmp_path / "o"))
    assert_clean_error(code, err, "Did you mean 'mlp'")
    code, _, err = cli(capsys, "compile", str(path), "--arch", "mlp", "--input-shape", "1,x,8",
                       "-o", str(tmp_path / "o"))
    assert_clean_error(code, err, "bad input shape")
    code, _, err = cli(capsys, "compile", str(path), "--arch", "mlp", "--input-shape", "1,9,9",
                       "-o", str(tmp_path / "o"))
    assert_clean_error(code, err, "does not match")
    code, _, err = cli(capsys, "compile", str(path), "--arch", "nosuchpkg.mod:Net",
                       "--input-shape", "1,8,8", "-o", str(tmp_path / "o"))
    assert_clean_error(code, err, "cannot import architecture")


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # Python control flow on a tensor value
            return self.fc(x)
        return -self.fc(x)


def test_untraceable_model_names_the_problem(capsys, tmp_path) -> None:
    path = tmp_path / "dd.pt"
    torch.save(DataDependent().state_dict(), path)
    sys.modules.setdefault("tests_dd_models", sys.modules[__name__])
    code, _, err = cli(capsys, "compile", str(path), "--arch", f"{__name__}:DataDependent",
                       "--input-shape", "4", "-o", str(tmp_path / "o"))
    assert_clean_error(code, err, "cannot be traced by torch.fx", "torch.export")
    assert not (tmp_path / "o").exists()


def test_bad_target_and_override(capsys, tmp_path, exported_cnn) -> None:
    out = tmp_path / "o"
    code, _, err = cli(capsys, "compile", str(exported_cnn), "--target", "fefet128", "-o", str(out))
    assert_clean_error(code, err, "unknown target 'fefet128'", "Did you mean")
    code, _, err = cli(capsys, "compile", str(exported_cnn), "--set", "array.row=64",
                       "-o", str(out))
    assert_clean_error(code, err, "Did you mean 'array.rows'")
    code, _, err = cli(capsys, "compile", str(exported_cnn), "--set", "cell.bits=0",
                       "-o", str(out))
    assert_clean_error(code, err, "cell.bits")
    assert not out.exists()


def test_model_too_large_for_chip(capsys, tmp_path, exported_cnn) -> None:
    out = tmp_path / "o"
    code, _, err = cli(capsys, "compile", str(exported_cnn), "--set", "chip.cores=1",
                       "--set", "chip.arrays_per_core=2", "-o", str(out))
    assert_clean_error(code, err, "needs", "arrays", "has 2")
    assert not out.exists() and no_leftovers(tmp_path)


def test_output_directory_safety(capsys, tmp_path, exported_cnn) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    code, _, err = cli(capsys, "compile", str(exported_cnn), "-o", str(precious))
    assert_clean_error(code, err, "not a neftc output")
    assert (precious / "thesis.tex").read_text() == "do not delete"
    # An earlier layout is replaced as a whole.
    out = tmp_path / "out"
    assert cli(capsys, "compile", str(exported_cnn), "-q", "-o", str(out))[0] == 0
    assert cli(capsys, "compile", str(exported_cnn), "-q", "--per-channel", "-o", str(out))[0] == 0
    assert load_layout(out).doc.options.per_channel
    assert no_leftovers(tmp_path)


def test_edited_or_truncated_layout(capsys, tmp_path, exported_cnn) -> None:
    out = tmp_path / "out"
    assert cli(capsys, "compile", str(exported_cnn), "-q", "-o", str(out))[0] == 0
    levels = out / "levels.bin"
    original = levels.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 3] ^= 0x01
    levels.write_bytes(bytes(flipped))
    code, _, err = cli(capsys, "inspect", str(out))
    assert_clean_error(code, err, "levels.bin", "modified or truncated")
    levels.write_bytes(original[:-10])
    assert_clean_error(*cli(capsys, "inspect", str(out))[::2], "levels.bin")
    levels.write_bytes(original)
    doc = out / "layout.json"
    text = doc.read_text()
    doc.write_text(text[: len(text) // 2])
    assert_clean_error(*cli(capsys, "inspect", str(out))[::2], "not valid JSON")
    doc.write_text(text.replace('"per_channel": false', '"per_channel": true', 1))
    assert_clean_error(*cli(capsys, "inspect", str(out))[::2], "layout.json", "modified")
    doc.write_text(text)
    assert cli(capsys, "inspect", str(out))[0] == 0
    (out / "SHA256SUMS").unlink()
    assert_clean_error(*cli(capsys, "inspect", str(out))[::2], "missing SHA256SUMS")
    assert_clean_error(*cli(capsys, "inspect", str(tmp_path / "none"))[::2], "does not exist")


def test_process_level_exit_code_and_no_traceback(tmp_path, garbage) -> None:
    """The real console script: non-zero exit status, one line on stderr, no traceback."""
    result = subprocess.run([sys.executable, "-m", "neftc", "compile", str(garbage), "-o",
                             str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()
