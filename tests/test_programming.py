"""Programming files and neftc diff."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neftc.cli.main import main
from neftc.driver.compiler import compile_module
from neftc.format.reader import load_layout


def _compile(model, example, target, path):
    compile_module(model, example, target, path)
    return load_layout(path)


def test_programming_files_hold_every_cell(tmp_path, residual_cnn, cnn_input, fefet, capsys):
    layout = _compile(residual_cnn, cnn_input[:1], fefet, tmp_path / "out")
    assert main(["program", str(tmp_path / "out"), "-o", str(tmp_path / "prog")]) == 0
    # No DAC calibration stored: the summary says so and how to add it; no DAC file is written.
    printed = capsys.readouterr().out
    assert "has no DAC calibration" in printed
    assert f"neftc calibrate {tmp_path / 'out'} --data DATA" in printed
    assert not (tmp_path / "prog" / "dac.csv").exists()
    manifest = json.loads((tmp_path / "prog" / "manifest.json").read_text())
    assert manifest["dac_calibration"] is None and manifest["dac"] == []
    data = np.load(tmp_path / "prog" / "arrays.npz")
    assert not any(key.startswith("dac_") for key in data.files)
    cell = fefet.cell  # docs/programming.md: the band is _rel of the cell's full range
    assert manifest["write_verify_tolerance_us"] == pytest.approx(
        cell.write_verify_tolerance_rel * (cell.g_max_us - cell.g_min_us), rel=1e-12)
    assert data["levels"].shape[1:] == (128, 128)
    for layer in layout.doc.layers:
        for tile in layer.tiles:
            index = np.nonzero((data["core"] == tile.core) & (data["array"] == tile.array))[0][0]
            block = data["levels"][index, :tile.row_count, :tile.col_count]
            assert np.array_equal(block, layout.tile_levels(layer, tile))
            assert data["programmed"][index].sum() == tile.row_count * tile.col_count
            csv = np.loadtxt(tmp_path / "prog" / "csv" /
                             f"core{tile.core:04d}_array{tile.array:04d}.csv", delimiter=",")
            assert np.array_equal(csv[:tile.row_count, :tile.col_count], block)
            assert (csv[tile.row_count:] == -1).all()  # unprogrammed cells are marked -1


def test_diff_against_itself_is_empty_and_counts_exactly(tmp_path, fefet, capsys) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.ReLU(),
                                torch.nn.Linear(30, 10)).eval()
    old = _compile(model, torch.randn(1, 40), fefet, tmp_path / "old")
    with torch.no_grad():  # a "re-fine-tune": a few weights move
        model[0].weight[:3] += 0.05
        model[2].weight[0, 0] += 0.2
    new = _compile(model, torch.randn(1, 40), fefet, tmp_path / "new")
    assert main(["diff", str(tmp_path / "old"), str(tmp_path / "old"), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["changed_cells"] == 0 and same["per_array"] == []
    assert main(["diff", str(tmp_path / "old"), str(tmp_path / "new"), "--json", "--cells"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = sum(int((old.levels(n) != new.levels(n)).sum()) for n in old.layer_names)
    assert expected > 0 and result["changed_cells"] == expected == len(result["cells"])
    assert result["cells_listed"] == expected and result["cells_truncated"] is False
    assert "cells_note" not in result
    assert result["reprogramming_energy_pj"] == expected * fefet.cost.cell_write_energy_pj
    cell = result["cells"][0]
    origin = new.cell_origin(cell["core"], cell["array"], cell["row"], cell["col"])
    levels_old = old.levels(origin.layer)[origin.polarity, origin.slice, origin.matrix_row,
                                          origin.weight_col]
    assert levels_old == cell["old"]


def test_diff_refuses_different_models(tmp_path, fefet, capsys) -> None:
    a = torch.nn.Linear(8, 4).eval()
    b = torch.nn.Linear(8, 5).eval()
    _compile(a, torch.randn(1, 8), fefet, tmp_path / "a")
    _compile(b, torch.randn(1, 8), fefet, tmp_path / "b")
    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "same layers" in capsys.readouterr().err


def test_diff_says_when_the_cell_list_is_truncated(tmp_path, fefet, capsys) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(40, 30).eval()
    old = _compile(model, torch.randn(1, 40), fefet, tmp_path / "old")
    with torch.no_grad():
        model.weight.mul_(-1)
    new = _compile(model, torch.randn(1, 40), fefet, tmp_path / "new")
    changed = sum(int((old.levels(n) != new.levels(n)).sum()) for n in old.layer_names)
    assert changed > 5
    args = ["diff", str(tmp_path / "old"), str(tmp_path / "new"), "--cells"]
    assert main([*args, "--cells-limit", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    note = f"showing 5 of {changed:,} changed cells (--cells-limit 5); raise --cells-limit to " \
           "see more"
    assert note in lines
    header = lines.index("core,array,row,col,old,new")
    assert lines.index(note) == header - 1 and len(lines) == header + 1 + 5
    assert main([*args, "--cells-limit", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["cells"]) == result["cells_listed"] == 5
    assert result["cells_truncated"] is True and result["cells_note"] == note
    assert result["changed_cells"] == changed
    assert main(args) == 0  # the default limit lists them all, and says nothing
    out = capsys.readouterr().out
    assert "showing" not in out and len(out.splitlines()) > changed
    assert main([*args, "--cells-limit", "-1"]) == 2
    assert "--cells-limit must be >= 0" in capsys.readouterr().err
