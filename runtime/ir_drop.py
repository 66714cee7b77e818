"""Wire resistance (IR drop): a first-order model of each array's parasitic wordline and bitline
resistance, as effective cell conductances (docs/emulator.md, "Device effects", "ir-drop").

Each tile of a layer is one array: ``R`` wordlines (the tile's rows) driven at their left end,
``C`` bitlines (the tile's physical columns, in the format's physical column order) summed into
a sense amplifier at 0 V at their bottom end; one segment of resistance ``r`` between adjacent
cells, from the driver to the first cell and from the last cell to the sense amplifier. The
sense amplifier sits right after the tile's last row or, given ``array_rows``, after the
array's last row: the bitlines run on through the rows the tile leaves unused (their cells
taken as non-conducting, their wordlines at 0 V). The array's unused columns are taken as
absent. The circuit is linear, so its bitline currents are ``I = V @ G_eff`` for one
input-independent matrix ``G_eff``, as long as an idle wordline is driven at 0 V (an input bit
0 is 0 V, not floating). To first order in ``r G``, ``G_eff = G (1 - d)`` with

    d[i, j] = r (sum_j' G[i, j'] (min(j, j') + 1) + sum_i' G[i', j] (N - max(i, i')))

(``N`` the rows the bitlines run through: ``R``, or ``array_rows``) from the ideal-wire
currents: the first sum is the wordline's drop at cell ``(i, j)`` over the drive ``V[i]`` (its
own row's current), the second the bitline's rise at cell ``(i, j)`` over ``V[i]`` when every
row is driven. Because that sum is symmetric in ``i, i'`` it is also, for any input, the
first-order current row ``i`` loses on bitline ``j`` (idle rows' reverse currents included),
so no input activity is assumed. The model uses the form ``G / (1 + d)``, equal to first order
(a cell in series with its wires' resistance): never negative, and about ten times closer to
the nodal solve than ``G (1 - d)`` (benchmarks/ir_drop_accuracy.py, docs/benchmarks.md).
"""

from __future__ import annotations

import math

import torch

from neftc.errors import NeftcError
from neftc.format import encoding
from neftc.runtime.crossbar import CrossbarLayer
from neftc.targets.device_model import conductance_us, level_of
from neftc.targets.physics import WIRE_OHM_MAX
from neftc.targets.spec import CellSpec

#: Siemens per microsiemens.
_SIEMENS_PER_US = 1e-6


def relative_drop(g: torch.Tensor, r_segment_ohm: float,
                  bitline_rows: int | None = None) -> torch.Tensor:
    """``d`` [..., R, C] (module docstring) of arrays of conductances ``g`` [..., R, C]
    (siemens), ``r_segment_ohm`` ohms per wire segment: each cell's wordline drop plus bitline
    rise, to first order, relative to its drive voltage. ``bitline_rows`` >= R (default R): the
    rows the bitlines run through to the sense amplifier, the cells in rows R and below idle
    (their wordlines at 0 V); ``R - max(i, i')`` becomes ``bitline_rows - max(i, i')``."""
    rows, cols = g.shape[-2:]
    length = rows if bitline_rows is None else bitline_rows
    j = torch.arange(cols, dtype=g.dtype, device=g.device)
    i = torch.arange(rows, dtype=g.dtype, device=g.device)
    # Wordline: the driver segment and segments 1..j lie between the driver and cell j; the one
    # before column k carries the currents of columns j' >= k: min(j, j') + 1 of them carry j'.
    wordline = g @ (torch.minimum(j[:, None], j[None, :]) + 1)
    # Bitline: segments i..length-1 (the last into the sense amplifier) lie below cell i; the one
    # below row k carries the currents of rows i' <= k: length - max(i, i') of them carry i'.
    bitline = (length - torch.maximum(i[:, None], i[None, :])) @ g
    return (wordline + bitline) * r_segment_ohm


def effective_conductance(g: torch.Tensor, r_segment_ohm: float,
                          bitline_rows: int | None = None) -> torch.Tensor:
    """The first-order effective conductances ``G / (1 + d)`` of arrays ``g`` [..., R, C]
    (siemens); ``bitline_rows`` as in ``relative_drop``."""
    return g / (1.0 + relative_drop(g, r_segment_ohm, bitline_rows))


def ir_drop_cells(cells: torch.Tensor, layer: CrossbarLayer, cell: CellSpec,
                  r_segment_ohm: float, *, array_rows: int | None = None) -> torch.Tensor:
    """The effective cells of one pipeline copy of ``layer`` with wire resistance
    ``r_segment_ohm`` (ohms per segment): ``cells`` [P, S, R, C] in level units (level ``l`` is
    the conductance ``device_model.conductance_us``) in, the same shape and units out.
    Each tile of the layer is one array (``effective_conductance``); ``r_segment_ohm`` 0 returns
    ``cells`` unchanged. ``array_rows`` (the target's ``array.rows``; default: each tile's own
    rows): a tile of fewer rows sits in rows 0.. of its array, and its bitlines run on through
    the idle rows below it to the sense amplifier."""
    if not (math.isfinite(r_segment_ohm) and 0 <= r_segment_ohm <= WIRE_OHM_MAX):
        raise NeftcError(f"effects.wire.r_segment_ohm must be a finite number >= 0 and <= "
                         f"{WIRE_OHM_MAX:g} ohms, got {r_segment_ohm!r}")
    slicing = layer.record.slicing
    if tuple(cells.shape) != tuple(layer.levels.shape):
        raise NeftcError(f"ir_drop_cells: cells of layer {layer.record.name!r} must have its "
                         f"levels' shape [P, S, R, C] {list(layer.levels.shape)}, got "
                         f"{list(cells.shape)}; pass one pipeline copy's cells")
    if cell.levels != layer.n_levels:
        raise NeftcError(f"ir_drop_cells: the cell spec has {cell.levels} levels but layer "
                         f"{layer.record.name!r} was compiled for {layer.n_levels}; pass the "
                         "layout's own target.cell")
    tallest = max(tile.row_count for tile in layer.tiles)
    if array_rows is not None and not (isinstance(array_rows, int) and array_rows >= tallest):
        raise NeftcError(f"ir_drop_cells: array_rows must be an integer >= the tallest tile of "
                         f"layer {layer.record.name!r} ({tallest} rows), got {array_rows!r}; "
                         "pass the layout's target.array.rows")
    if r_segment_ohm == 0:
        return cells
    span = (cell.g_min_us, cell.g_max_us, layer.n_levels)
    physical = encoding.to_physical(cells.to(torch.float64))  # [R, C*P*S]
    out = physical.clone()
    for tile in layer.tiles:
        rows = slice(tile.row_start, tile.row_start + tile.row_count)
        cols = slice(tile.col_start, tile.col_start + tile.col_count)
        g = conductance_us(physical[rows, cols], *span) * _SIEMENS_PER_US
        g_eff = effective_conductance(g, r_segment_ohm, array_rows)
        out[rows, cols] = level_of(g_eff / _SIEMENS_PER_US, *span)
    levels = encoding.from_physical(out, slicing.polarities, slicing.slices)
    return levels.to(cells.dtype).contiguous()
