"""Issue 16, wire resistance (IR drop): the first-order model of ``neftc.runtime.ir_drop``
against the exact nodal solve of the crossbar (``tests/ir_nodal_reference.py``, numpy, written
from Kirchhoff's laws), on single arrays and on a tiled layer, and its monotone effect on a
layer's outputs. The accuracy table over sizes and resistances: benchmarks/ir_drop_accuracy.py
(docs/benchmarks.md)."""

from __future__ import annotations

import itertools
from pathlib import Path

import ir_nodal_reference as nodal
import numpy as np
import pytest
import torch
from torch import nn

from neftc.driver.compiler import compile_module
from neftc.errors import NeftcError
from neftc.format import encoding
from neftc.runtime.emulator import Emulator
from neftc.runtime.ir_drop import effective_conductance, ir_drop_cells, relative_drop
from neftc.targets import resolve_target

G_MAX = 1e-5  # siemens
G_MIN = 1e-6


def random_array(rng: np.random.Generator, rows: int, cols: int, levels: int = 16) -> np.ndarray:
    """Conductances (siemens) of an array programmed at random levels."""
    return G_MIN + (G_MAX - G_MIN) * rng.integers(0, levels, (rows, cols)) / (levels - 1)


def model_currents(g: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    g_eff = effective_conductance(torch.from_numpy(g), r).numpy()
    return v @ g_eff


def relative_error(currents: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Per input vector: ||I - I_nodal|| / ||I_nodal|| over the bitlines."""
    return np.linalg.norm(currents - exact, axis=-1) / np.linalg.norm(exact, axis=-1)


def test_relative_drop_is_the_stated_sums() -> None:
    """d[i, j] = r (sum_j' G[i, j'] (min(j, j') + 1) + sum_i' G[i', j] (R - max(i, i'))),
    written out cell by cell."""
    rng = np.random.default_rng(1)
    g = random_array(rng, 5, 7)
    r = 3.0
    rows, cols = g.shape
    expected = np.zeros_like(g)
    for i in range(rows):
        for j in range(cols):
            wordline = sum(g[i, k] * (min(j, k) + 1) for k in range(cols))
            bitline = sum(g[k, j] * (rows - max(i, k)) for k in range(rows))
            expected[i, j] = r * (wordline + bitline)
    np.testing.assert_allclose(relative_drop(torch.from_numpy(g), r).numpy(), expected,
                               rtol=1e-12)


def test_the_model_is_exact_to_first_order_in_r() -> None:
    """At r G_max = 1e-6 the wires change the currents by ~1e-4 (relative); the model's error is
    second order, under 1 % of that change, for any input (binary, idle rows at 0 V, and
    analogue voltages)."""
    rng = np.random.default_rng(2)
    g = random_array(rng, 12, 10)
    r = 1e-6 / G_MAX
    v = np.concatenate([rng.integers(0, 2, (16, 12)).astype(float), rng.uniform(0, 1, (4, 12))])
    exact = nodal.bitline_currents(g, v, r)
    wire_effect = np.abs(nodal.ideal_currents(g, v) - exact).max()
    assert wire_effect > 1e-5 * np.abs(exact).max()
    assert np.abs(model_currents(g, v, r) - exact).max() < 1e-2 * wire_effect


@pytest.mark.parametrize(("size", "r_gmax", "bound"), [(16, 1e-3, 2.5e-3), (32, 1e-4, 3e-4)])
def test_accuracy_against_the_nodal_solve(size, r_gmax, bound) -> None:
    """The measured bound (docs/benchmarks.md, "IR drop"): the largest relative error of the
    bitline currents over random arrays and binary inputs stays under ``bound`` (measured
    1.7e-3 at 16x16, r G_max 1e-3; 1.6e-4 at 32x32, r G_max 1e-4), and the model is at least
    ten times closer to the nodal solve than ideal wires."""
    rng = np.random.default_rng(3)
    r = r_gmax / G_MAX
    model_err, ideal_err = [], []
    for _ in range(2):
        g = random_array(rng, size, size)
        v = rng.integers(0, 2, (24, size)).astype(float)
        v = v[v.sum(axis=1) > 0]
        exact = nodal.bitline_currents(g, v, r)
        model_err.append(relative_error(model_currents(g, v, r), exact))
        ideal_err.append(relative_error(nodal.ideal_currents(g, v), exact))
    worst, worst_ideal = np.concatenate(model_err).max(), np.concatenate(ideal_err).min()
    assert worst < bound
    assert worst < worst_ideal / 10


def test_idle_rows_below_a_short_tile_lengthen_its_bitlines() -> None:
    """An 8-row tile at the top of a 32-row array: with ``bitline_rows`` 32 the model follows
    the nodal solve of the whole array (idle rows non-conducting, at 0 V) within 5e-3 at
    r G_max 1e-3, at least ten times closer than the model of the tile alone."""
    rng = np.random.default_rng(7)
    g = random_array(rng, 8, 12)
    r = 1e-3 / G_MAX
    v = rng.integers(0, 2, (24, 8)).astype(float)
    v = v[v.sum(axis=1) > 0]
    exact = nodal.bitline_currents(np.concatenate([g, np.zeros((24, 12))]),
                                   np.pad(v, ((0, 0), (0, 24))), r)
    tall = effective_conductance(torch.from_numpy(g), r, bitline_rows=32).numpy()
    short = effective_conductance(torch.from_numpy(g), r).numpy()
    assert relative_error(v @ tall, exact).max() < 5e-3
    assert relative_error(v @ tall, exact).max() < relative_error(v @ short, exact).min() / 10


@pytest.fixture(scope="module")
def tiled_layer(tmp_path_factory) -> tuple[object, object]:
    """A linear layer 40 -> 6 on 16 x 24 arrays: differential, four 2-bit slices (48 physical
    columns), six tiles, the last row tile 8 rows high."""
    target = resolve_target("fefet_128x128", ["array.rows=16", "array.cols=24"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(40, 6)).eval()
    out: Path = tmp_path_factory.mktemp("ir") / "layout"
    compile_module(model, torch.zeros(1, 40), target, out)
    emulator = Emulator(out)
    (layer,) = emulator.layers.values()
    assert len(layer.tiles) == 6
    return layer, emulator.layout.doc.target.cell


def tile_conductances(cells: torch.Tensor, tile, slicing, cell) -> np.ndarray:
    """The siemens of one tile's array, cell by cell from the format's column mapping."""
    top = 2**slicing.cell_bits - 1
    g = np.zeros((tile.row_count, tile.col_count))
    for jj in range(tile.col_count):
        col, pol, sl = encoding.column_origin(tile.col_start + jj, slicing.polarities,
                                              slicing.slices)
        for ii in range(tile.row_count):
            level = float(cells[pol, sl, tile.row_start + ii, col])
            g[ii, jj] = (cell.g_min_us + (cell.g_max_us - cell.g_min_us) * level / top) * 1e-6
    return g


@pytest.mark.parametrize("array_rows", [None, 16, 20])
def test_each_tile_of_a_layer_matches_its_nodal_solve(tiled_layer, array_rows) -> None:
    """The layer's effective cells, tile by tile, give the bitline currents of that tile's
    nodal solve (its own rows and physical columns, g_min included; with ``array_rows``, the
    array's idle rows below the tile as non-conducting cells at 0 V) within the 16 x 24 bound,
    for programmed cells with noise (level units, some below 0)."""
    layer, cell = tiled_layer
    slicing = layer.record.slicing
    noise = torch.randn(layer.levels.shape, generator=torch.Generator().manual_seed(4)) * 0.1
    cells = layer.levels + noise
    r = 1e-3 / (cell.g_max_us * 1e-6)
    effective = ir_drop_cells(cells, layer, cell, r, array_rows=array_rows)
    assert effective.shape == cells.shape and effective.dtype == cells.dtype
    rng = np.random.default_rng(5)
    for tile in layer.tiles:
        g = tile_conductances(cells, tile, slicing, cell)
        g_eff = tile_conductances(effective, tile, slicing, cell)
        v = rng.integers(0, 2, (16, tile.row_count)).astype(float)
        v = v[v.sum(axis=1) > 0]
        idle = (array_rows or tile.row_count) - tile.row_count
        array = np.concatenate([g, np.zeros((idle, g.shape[1]))])
        exact = nodal.bitline_currents(array, np.pad(v, ((0, 0), (0, idle))), r)
        assert relative_error(v @ g_eff, exact).max() < 3e-3
        assert relative_error(v @ g_eff, exact).max() < relative_error(v @ g, exact).min() / 10


def test_no_wire_resistance_leaves_the_cells_and_bad_input_is_refused(tiled_layer) -> None:
    layer, cell = tiled_layer
    assert ir_drop_cells(layer.levels, layer, cell, 0.0) is layer.levels
    with pytest.raises(NeftcError, match="r_segment_ohm"):
        ir_drop_cells(layer.levels, layer, cell, -1.0)
    with pytest.raises(NeftcError, match="r_segment_ohm"):
        ir_drop_cells(layer.levels, layer, cell, float("nan"))
    with pytest.raises(NeftcError, match="one pipeline copy"):
        ir_drop_cells(layer.levels[None], layer, cell, 1.0)
    with pytest.raises(NeftcError, match="levels"):
        ir_drop_cells(layer.levels, layer, cell.model_copy(update={"bits": 3}), 1.0)
    with pytest.raises(NeftcError, match="array_rows"):
        ir_drop_cells(layer.levels, layer, cell, 1.0, array_rows=8)


def test_the_output_error_grows_with_the_wire_resistance(tiled_layer) -> None:
    """Mean |output - ideal output| of the layer on random inputs, strictly increasing with r
    (r G_max from 1e-5 to 1e-1)."""
    layer, cell = tiled_layer
    x = torch.rand(64, 40, generator=torch.Generator().manual_seed(6))
    ideal = x @ layer.weight_of(layer.levels).t()
    errors = []
    for r_gmax in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1):
        r = r_gmax / (cell.g_max_us * 1e-6)
        out = x @ layer.weight_of(ir_drop_cells(layer.levels, layer, cell, r)).t()
        errors.append(float((out - ideal).abs().mean()))
    assert all(a < b for a, b in itertools.pairwise(errors)), errors
    assert errors[0] > 0


def test_a_chip_with_wire_resistance_has_the_models_weights(tmp_path) -> None:
    """Through the emulator (programming, noise off): chip 0's effective weights are its levels
    through ``ir_drop_cells`` with the layout's own cell spec, resistance and array rows (the
    8-row last row tile's bitlines run on through the array's idle rows), on the tiled layer;
    the ideal chip (no effects) keeps the programmed weights."""
    target = resolve_target("fefet_128x128", ["array.rows=16", "array.cols=24",
                                              "effects.wire.r_segment_ohm=300"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(40, 6)).eval()
    compile_module(model, torch.zeros(1, 40), target, tmp_path / "layout")
    emulator = Emulator(tmp_path / "layout", noise="off", ideal_periphery=True)
    (layer,) = emulator.layers.values()
    emulator.program_chip(0)
    expected = layer.weight_of(ir_drop_cells(layer.levels, layer, target.cell, 300.0,
                                             array_rows=16))
    torch.testing.assert_close(emulator.effective_weights()["0"], expected)
    assert not torch.allclose(expected, layer.ideal_weight, rtol=1e-3, atol=0)
    emulator.program_ideal()
    assert torch.equal(emulator.effective_weights()["0"], layer.ideal_weight)


def test_lenet_accuracy_falls_with_the_wire_resistance(trained_lenet, tmp_path) -> None:
    """The trained LeNet on fefet_128x128 (ideal periphery, no programming variation: the chip
    is its levels plus the IR drop, deterministic) with segments of 0, 20, 50 and 100 ohms
    (r g_max 0 .. 1e-3; measured 95.5, 92.4, 78.8, 34.5 %): the accuracy falls at each step by
    more than 1 point."""
    data, model = trained_lenet.data, trained_lenet.model()
    x, y = data.test.x, data.test.y
    accuracies = []
    for r in (0.0, 20.0, 50.0, 100.0):
        target = resolve_target("fefet_128x128", [f"effects.wire.r_segment_ohm={r}"])
        compile_module(model, x[:1], target, tmp_path / f"r{r:g}")
        emulator = Emulator(tmp_path / f"r{r:g}", noise="off", seed=0, ideal_periphery=True)
        emulator.program_chip(0)
        accuracies.append(float((emulator(x).argmax(-1) == y).float().mean()))
    assert all(a > b + 0.01 for a, b in itertools.pairwise(accuracies)), accuracies
