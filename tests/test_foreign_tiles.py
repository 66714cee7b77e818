"""A layout written by another tool, with other tile shapes, replays correctly: the emulator takes
every row and column range from the layout's tile records (issue 9, item 2). The re-tiler
(``layout_reference.write_retiled``, json, hashlib and numpy only, from docs/layout.md) cuts each
layer's physical matrix into tiles of a different shape (unequal row bands, each band with its
own column cuts), rewrites levels.bin and re-signs the directory."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from layout_reference import write_retiled
from torch import nn

from neftc.driver.compiler import compile_module
from neftc.format.reader import load_layout
from neftc.runtime import Emulator
from neftc.runtime.periphery import InputQuant
from neftc.targets import resolve_target


def _cut(length: int, percents: list[int], limit: int) -> list[int]:
    """Boundaries at ``percents`` of ``length``, then every piece longer than ``limit`` halved."""
    bounds = sorted({0, length, *(max(1, min(length - 1, length * c // 100)) for c in percents)})
    out = [0]
    for start, stop in itertools.pairwise(bounds):
        pieces = -(-(stop - start) // limit)
        out += [start + (stop - start) * (i + 1) // pieces for i in range(pieces)]
    return out


def _retile(src: Path, dst: Path, row_cuts: list[int], col_cuts: list[list[int]]) -> None:
    """Copy layout ``src`` to ``dst`` with every layer cut at fractions of its size: row bands at
    ``row_cuts`` (percent), band ``i`` cut into columns at ``col_cuts[i]`` (percent); pieces larger
    than an array halved."""
    def cuts(_layer: dict, rows: int, cols: int, array: dict) -> list:
        bands = _cut(rows, row_cuts, array["rows"])
        return [(r0, r1, _cut(cols, col_cuts[rt % len(col_cuts)], array["cols"]))
                for rt, (r0, r1) in enumerate(itertools.pairwise(bands))]

    write_retiled(src, dst, cuts)


@pytest.mark.parametrize("encoding", ["differential", "offset"])
def test_other_tile_shapes_replay_the_same_network(tmp_path, encoding) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 5 * 5, 10)).eval()
    # A 16-bit ADC resolves every noise-free tile sum at one level unit per code, so any tiling
    # of the same levels must give the same integers.
    target = resolve_target("fefet_128x128", [f"weight.sign_encoding={encoding}",
                                              "periphery.adc_bits=16"])
    x = torch.randint(-127, 128, (6, 4, 5, 5), generator=torch.Generator().manual_seed(1)) / 64
    compile_module(model, x[:1], target, tmp_path / "neftc")
    _retile(tmp_path / "neftc", tmp_path / "foreign", row_cuts=[30, 55], col_cuts=[[20, 70],
                                                                                   [45], [10, 33]])
    foreign = load_layout(tmp_path / "foreign")
    assert any(len({t.col_start for t in layer.tiles}) > 2 for layer in foreign.doc.layers)
    for name in foreign.layer_names:  # the re-tiler kept every cell
        assert np.array_equal(foreign.integer_weights(name),
                              load_layout(tmp_path / "neftc").integer_weights(name))
    outs = []
    for path in (tmp_path / "neftc", tmp_path / "foreign"):
        emulator = Emulator(path, sigma=0.0, ideal_periphery=False, adc_shortcut=False)
        emulator.set_input_quant({name: InputQuant(1 / 64, True, 8) for name in emulator.layers})
        outs.append(emulator(x))
    # Exact integer sums per tile; only float32 accumulation order differs: 1e-5.
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
