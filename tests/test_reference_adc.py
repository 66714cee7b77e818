"""The emulator's real ADC against the reference of docs/layout.md 4.5, tile by tile.

``LayoutReference.crossbar_adc_output`` (tests/layout_reference.py, json and numpy only) replays a
crossbar layer's DAC/ADC path from the layout alone: bit-serial inputs, every tile's bitline sums
rounded half to even by an ADC whose full scale is ``row_count * (2**dac - 1) * (L - 1)`` of THAT
tile, accumulation of the tiles of a column range, shift-and-add, polarity and offset. Here the
emulator (``adc_shortcut=False``, noise off) must give exactly that output, on the layouts neftc
writes and on re-tiled copies of them (other row bands, odd column cuts), and a reference with the
full scale taken from the wrong rows must disagree with it.

Exactness by construction (so that no float rounding can split an ADC tie):

- 2-bit cells (``L = 4``), ``dac_bits_per_cycle = 1``, ``array.rows = 42``, ``adc_bits = 6``: a
  42-row tile has ``FS = 42 * 1 * 3 = 126 = 2 * 63``, a step of exactly 2 level units; a tile of
  ``r <= 21`` rows has ``FS = 3 r <= 63``, a step of exactly 1. Every layer has
  ``matrix_rows`` a multiple of 42, or ``84 + 21`` (``Linear(105, 12)``: a 21-row last tile),
  and the re-tiled bands have 42 rows or at most 21 (checked: every tile's step is 1 or 2).
- Inputs ``x = k * 2**-4`` (max-abs calibration finds the DAC scale ``2**-4`` exactly, checked,
  and the DAC integers are ``k``); weights ``q * 2**-8`` with integers ``|q| <= qmax`` and one
  ``|q| = qmax``, so the weight scale is ``2**-8`` exactly and the compiled levels are ``q``;
  biases ``b * 2**-12`` with integers ``b``.
- The emulator's bitline sums are integers below 2**24 (at most 42 * 3), divided by a power of two
  and rounded: exact in float32, ties included; the accumulated, shifted and slice-weighted sums
  stay integers whose absolute partial sums are below 2**24 (the ADC values of one column's
  tiles add up to at most 3 * 126 = 378, so at most 378 x 255 x 85 x 2 polarities = 16.4e6 <
  16.8e6, plus the offset term 128 x 126 x 255; the tested values are far smaller), and the output
  ``acc * 2**-4 * 2**-8 + b * 2**-12 = (acc + b) * 2**-12`` is a float32 integer times a power of
  two. The reference computes in float64, exactly. So the tolerance is ZERO: the emulator's
  float32 output must equal the reference's bit for bit. (Had the scales not been powers of two,
  the dequantisation and bias addition would round once each: a relative 2**-23.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import layout_reference
import numpy as np
import pytest
import torch
from layout_reference import LayoutReference, to_torch_layout
from torch import nn

from neftc.driver.compiler import compile_module
from neftc.runtime import Emulator
from neftc.targets import resolve_target

TAGS = ("fefet_128x128", "rram4_128x128")
ENCODINGS = ("differential", "offset")
ROWS = 42
OVERRIDES = (f"array.rows={ROWS}", "periphery.adc_bits=6", "periphery.dac_bits_per_cycle=1")
INPUT_STEP = 2.0**-4  # the DAC scale
WEIGHT_STEP = 2.0**-8  # the weight scale
OUTPUT_STEP = INPUT_STEP * WEIGHT_STEP  # one integer unit of the output; biases are multiples


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    row_bounds: tuple[int, ...]  # the re-tiled row bands: 42 rows, or at most 21 (step 2 or 1)
    col_cuts: tuple[tuple[int, ...], ...]  # odd column cuts, one set per band (cycled)


COL_CUTS = ((17, 40, 63), (29, 100), (5, 64, 131))
CASES = {
    "linear_126": Case(lambda: nn.Linear(126, 20), (3, 126), (0, 10, 52, 73, 115, 126),
                       COL_CUTS),
    "conv2d_126": Case(lambda: nn.Conv2d(14, 8, 3, padding=1), (2, 14, 5, 5),
                       (0, 10, 52, 73, 115, 126), COL_CUTS),
    "conv2d_groups2_126": Case(lambda: nn.Conv2d(28, 16, 3, padding=1, groups=2),
                               (2, 28, 4, 4), (0, 21, 63, 84, 126), COL_CUTS),
    "conv1d_stride_dilation_42": Case(
        lambda: nn.Conv1d(14, 6, 3, stride=2, padding=2, dilation=2), (2, 14, 11), (0, 42),
        ((3, 11, 19),)),
    "conv2d_depthwise_42": Case(
        lambda: nn.Conv2d(4, 4, (6, 7), padding=(2, 3), groups=4), (2, 4, 5, 6), (0, 42),
        ((3, 11, 19),)),
    # 84 + 21 rows: the last tile has 21 rows (FS 63, step 1), the others 42 (step 2).
    "linear_105": Case(lambda: nn.Linear(105, 12), (3, 105), (0, 21, 63, 105), COL_CUTS),
}


# ------------------------------------------------------------------------------------ helpers

def _dyadic(module: nn.Module, qmax: int, seed: int) -> nn.Module:
    """Weights ``q * 2**-8`` (integers ``|q| <= qmax``, one of them ``qmax``) and biases
    ``b * 2**-12``: the compiled scale is ``2**-8`` and the integer weights are ``q``."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-qmax, qmax + 1, size=tuple(module.weight.shape))
    q.flat[0] = qmax
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(q * WEIGHT_STEP))
        module.bias.copy_(torch.from_numpy(
            rng.integers(-3000, 3001, size=tuple(module.bias.shape)) * OUTPUT_STEP))
    return module.eval()


def _dac_integers(rng: np.random.Generator, shape: tuple[int, ...], input_bits: int,
                  signed: bool) -> np.ndarray:
    """DAC integers whose largest magnitude is the DAC's max_int (max-abs calibration then finds
    the scale INPUT_STEP exactly), with a negative one when signed."""
    max_int = 2 ** (input_bits - 1) - 1 if signed else 2**input_bits - 1
    k = rng.integers(-max_int if signed else 0, max_int + 1, size=shape, dtype=np.int64)
    k.flat[0] = -max_int if signed else max_int
    return k


def _pieces(bounds: list[int], limit: int) -> list[int]:
    """``bounds`` with every piece longer than ``limit`` cut in equal parts."""
    out = [bounds[0]]
    for start, stop in pairwise(bounds):
        n = -(-(stop - start) // limit)
        out += [start + (stop - start) * (i + 1) // n for i in range(n)]
    return out


def _retile(src: Path, dst: Path, row_bounds: tuple[int, ...],
            col_cuts: tuple[tuple[int, ...], ...]) -> None:
    """Copy the one-layer layout ``src`` to ``dst`` with its physical matrix cut into row bands at
    ``row_bounds`` and band ``i`` cut into columns at ``col_cuts[i % len(col_cuts)]`` (absolute
    physical columns; pieces wider than the array cut in equal parts), through
    ``layout_reference.write_retiled`` (json + numpy + hashlib, from docs/layout.md)."""
    def cuts(layer: dict, rows: int, cols: int, array: dict) -> list:
        assert row_bounds[0] == 0 and row_bounds[-1] == rows, (row_bounds, rows)
        bands = []
        for rt, (r0, r1) in enumerate(pairwise(row_bounds)):
            assert r1 - r0 <= array["rows"]
            inner = [c for c in col_cuts[rt % len(col_cuts)] if 0 < c < cols]
            bands.append((r0, r1, _pieces([0, *inner, cols], array["cols"])))
        return bands

    layout_reference.write_retiled(src, dst, cuts)


def _steps(ref: LayoutReference, layer: dict) -> list[float]:
    periphery = ref.doc["periphery"]
    n_levels = 2 ** layer["slicing"]["cell_bits"]
    return [layout_reference.adc_step(t["row_count"], periphery["dac_bits_per_cycle"],
                                      periphery["adc_bits"], n_levels) for t in layer["tiles"]]


def _to_output(ref: LayoutReference, layer: dict, acc: np.ndarray) -> np.ndarray:
    """``acc * dac.scale * scale + bias`` (docs/layout.md 4.5) in PyTorch layout, float64."""
    scales = np.asarray(layer["quant"]["scales"], dtype=np.float64)
    out = to_torch_layout(layer, acc * INPUT_STEP * scales)
    bias = ref.bias(layer).astype(np.float64)
    return out + (bias if layer["op"] == "linear" else bias.reshape(-1, *[1] * (out.ndim - 2)))


def _wrong_rows(rows_of: Callable[[int], int]):
    """A deliberately wrong ``adc_step``: full scale from ``rows_of(tile rows)`` rows."""
    right = layout_reference.adc_step

    def wrong(row_count: int, dac: int, adc_bits: int, n_levels: int) -> float:
        return right(rows_of(row_count), dac, adc_bits, n_levels)
    return wrong


def _check_layout(layout: Path, shape: tuple[int, ...], seed: int, report: dict) -> dict:
    """Emulator vs reference on one layout, signed and unsigned inputs. Returns the reference's
    ADC outputs (per signedness) for comparisons between layouts."""
    ref = LayoutReference(layout)
    layer = ref.layer()
    steps = _steps(ref, layer)
    assert set(steps) <= {1.0, 2.0}, steps  # exact ADC steps (module docstring)
    row_counts = {t["row_count"] for t in layer["tiles"]}
    input_bits = ref.doc["periphery"]["input_bits"]
    emulator = Emulator(layout, sigma=0.0, noise="off", ideal_periphery=False,
                        adc_shortcut=False)
    rng = np.random.default_rng(seed)
    results = {}
    for signed in (True, False):
        k = _dac_integers(rng, shape, input_bits, signed)
        x_t = torch.from_numpy(k * INPUT_STEP).float()
        (setting,) = emulator.calibrate(x_t).values()
        assert setting.scale == INPUT_STEP and setting.signed == signed, setting
        got = emulator(x_t).numpy().astype(np.float64)

        ideal = ref.crossbar_integer_output(layer, k)
        # The reference itself: an ADC with codes to spare reproduces the integer output.
        np.testing.assert_array_equal(ref.crossbar_adc_output(layer, k, adc_bits=16), ideal)
        acc = ref.crossbar_adc_output(layer, k)
        assert np.array_equal(acc, np.rint(acc))
        expected = _to_output(ref, layer, acc)
        deviation = float(np.abs(got - expected).max())
        rounded = int((acc != ideal).sum())
        report[(str(layout.name), signed)] = (deviation, rounded, acc.size)
        # Tolerance zero (module docstring): every value is exact in float32.
        assert deviation == 0.0, (f"{layout}, signed={signed}: emulator off the ADC reference "
                                  f"by {deviation} ({deviation / OUTPUT_STEP} output units)")
        if max(steps) > 1:  # the ADC really rounds: the output is not the integer output
            assert rounded > 0, "the ADC rounded nothing"
            assert float(np.abs(got - _to_output(ref, layer, ideal)).max()) > 0

        # Controls: a full scale from the array's rows, or from the whole column, is wrong.
        for label, rows_of in (("array rows", lambda r: ROWS),
                               ("whole column", lambda r: layer["matrix_rows"])):
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(layout_reference, "adc_step", _wrong_rows(rows_of))
                wrong = _to_output(ref, layer, ref.crossbar_adc_output(layer, k))
            differs = int((wrong != got).sum())
            report[(str(layout.name), signed, label)] = differs
            # A variant differs from the right one exactly where some tile's row count differs
            # from the rows it uses; there it must disagree with the emulator.
            if any(rows_of(r) != r for r in row_counts):
                assert differs > 0, f"the wrong '{label}' reference agrees with the emulator"
            else:
                assert differs == 0
        results[signed] = acc
    return results


# ------------------------------------------------------------------------------------ the tests

@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("tag", TAGS)
def test_emulator_adc_equals_the_per_tile_reference(tmp_path: Path, tag: str, encoding: str,
                                                     case_name: str) -> None:
    case = CASES[case_name]
    seed = list(CASES).index(case_name)
    target = resolve_target(tag, [*OVERRIDES, f"weight.sign_encoding={encoding}"])
    assert target.cell.bits == 2 and target.periphery.input_bits == 8
    rng = np.random.default_rng(100 + seed)
    example = _dac_integers(rng, case.input_shape, target.periphery.input_bits, True)
    neftc_dir, foreign_dir = tmp_path / "neftc", tmp_path / "foreign"
    compile_module(_dyadic(case.build(), target.qmax, seed),
                   torch.from_numpy(example * INPUT_STEP).float(), target, neftc_dir)
    layer = LayoutReference(neftc_dir).layer()
    assert layer["matrix_rows"] % ROWS in (0, 21), layer["matrix_rows"]
    assert set(layer["quant"]["scales"]) == {WEIGHT_STEP}  # dyadic weights: exact scale
    _retile(neftc_dir, foreign_dir, case.row_bounds, case.col_cuts)
    foreign = LayoutReference(foreign_dir).layer()
    assert len({t["col_start"] for t in foreign["tiles"]}) > 2
    report: dict = {}
    own = _check_layout(neftc_dir, case.input_shape, seed, report)
    other = _check_layout(foreign_dir, case.input_shape, seed, report)
    # The re-tiled layout holds the same weights but other row bands: where its bands differ
    # from 42 rows, other ADC steps, so another ADC output (the same inputs on both).
    if tuple(sorted({t["row_count"] for t in foreign["tiles"]})) != (ROWS,):
        assert any(not np.array_equal(own[s], other[s]) for s in (True, False))
    print(case_name, tag, encoding, report)


def test_control_wrong_full_scale_on_a_short_last_tile(tmp_path: Path) -> None:
    """Linear(105, 12) on 42-row arrays: tiles of 42, 42 and 21 rows. The reference with the
    full scale of a whole array (42 rows) for the 21-row tile disagrees with the emulator, the
    right one does not: the comparison above can fail."""
    target = resolve_target(TAGS[0], list(OVERRIDES))
    rng = np.random.default_rng(7)
    k = _dac_integers(rng, (16, 105), target.periphery.input_bits, True)
    layout = tmp_path / "layout"
    compile_module(_dyadic(nn.Linear(105, 12), target.qmax, 7),
                   torch.from_numpy(k * INPUT_STEP).float(), target, layout)
    ref = LayoutReference(layout)
    layer = ref.layer()
    assert sorted({t["row_count"] for t in layer["tiles"]}) == [21, 42]
    emulator = Emulator(layout, sigma=0.0, noise="off", ideal_periphery=False,
                        adc_shortcut=False)
    x_t = torch.from_numpy(k * INPUT_STEP).float()
    emulator.calibrate(x_t)
    got = emulator(x_t).numpy().astype(np.float64)
    right = _to_output(ref, layer, ref.crossbar_adc_output(layer, k))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layout_reference, "adc_step", _wrong_rows(lambda r: ROWS))
        wrong = _to_output(ref, layer, ref.crossbar_adc_output(layer, k))
    assert np.array_equal(got, right)
    differs = int((wrong != got).sum())
    assert differs > 0.25 * got.size, f"only {differs} of {got.size} outputs differ"
