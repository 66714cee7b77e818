"""The cell encoding: the one definition of how an integer weight becomes cells and where each
cell of a layer sits. The compiler writes through it, the reader, the emulator, NeFT training and
every hardware-flow output read through it (docs/layout.md, section 4, is the prose form).

- **Sign encoding.** ``differential``: two polarities, polarity 0 holds ``max(q, 0)`` and polarity
  1 holds ``max(-q, 0)``. ``offset``: one polarity holding ``q + 2**(bits-1)``; the offset is
  removed digitally.
- **Slicing.** Each magnitude ``m`` is cut into ``S = ceil(bits / cell_bits)`` cells, least
  significant first: ``level_s = (m >> (s * cell_bits)) & (L - 1)``, ``L = 2**cell_bits``, so
  ``m = sum_s L**s level_s`` and ``q = sum_{p,s} sign_p L**s level[p, s] - offset``.
- **Physical column order.** A layer's physical matrix has ``matrix_rows`` rows (wordlines) and
  ``matrix_cols * P * S`` columns (bitlines), ordered (weight column, polarity, slice), slice
  fastest: physical column ``pc = (c * P + p) * S + s``.
- **Tiles.** A tile covers matrix rows ``[row_start, row_start + row_count)`` and physical columns
  ``[col_start, col_start + col_count)`` of its layer; readers take these ranges from the layout.
  ``grid_tiles`` is how neftc's compiler cuts a layer; any partition is valid.
- **Grouped convolutions.** Matrix row ``r`` of weight column ``c`` reads unrolled input row
  ``g * matrix_rows + r`` with ``g = c // (matrix_cols / groups)``, the column's group.
- **Pipeline copies.** A layer with ``replication`` copies computes output position ``m`` of each
  sample (raster order) on copy ``m % replication`` (copy 0 is the tile, copy ``k`` its
  ``replicas[k-1]``).

The functions take and return torch tensors; ``slice_levels``, ``fold``, ``to_physical`` and
``from_physical`` also take numpy arrays and then return numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np

if TYPE_CHECKING:  # torch is imported where a function needs it: `neftc targets` starts fast
    import torch

SignEncoding = Literal["differential", "offset"]
ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")


def n_levels(cell_bits: int) -> int:
    """``L``: the levels of one cell."""
    return 2**cell_bits


def n_slices(bits: int, cell_bits: int) -> int:
    """``S``: cells per weight and polarity."""
    return -(-bits // cell_bits)


def n_polarities(encoding: SignEncoding) -> int:
    """``P``: 2 for differential pairs, 1 for an offset column."""
    return 2 if encoding == "differential" else 1


def sign_offset(bits: int, encoding: SignEncoding) -> int:
    """The value added to ``q`` before slicing: ``2**(bits-1)`` (offset encoding), else 0."""
    return 2 ** (bits - 1) if encoding == "offset" else 0


def _torch(x: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, bool]:
    import torch

    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)), True
    return x, False


def slice_levels(q: ArrayT, bits: int, cell_bits: int, encoding: SignEncoding) -> ArrayT:
    """Cell levels ``uint8 [P, S, *q.shape]`` of integer weights ``q`` (|q| <= qmax)."""
    import torch

    values, was_numpy = _torch(q)
    values = values.to(torch.int64)
    offset = sign_offset(bits, encoding)
    if encoding == "differential":
        magnitudes = torch.stack([values.clamp(min=0), (-values).clamp(min=0)])
    else:
        magnitudes = (values + offset)[None]
    mask = n_levels(cell_bits) - 1
    levels = torch.stack([(magnitudes >> (s * cell_bits)) & mask
                          for s in range(n_slices(bits, cell_bits))], dim=1).to(torch.uint8)
    return levels.numpy() if was_numpy else levels  # type: ignore[return-value]


def fold_coefficients(polarities: int, slices: int, cell_bits: int,
                      dtype: torch.dtype | None = None) -> torch.Tensor:
    """``sign_p * L**s`` as ``[P, S]``: each cell's weight in its integer weight (``dtype``
    default float32)."""
    import torch

    signs = torch.tensor([1.0, -1.0][:polarities], dtype=torch.float64)
    powers = torch.tensor([float(n_levels(cell_bits) ** s) for s in range(slices)],
                          dtype=torch.float64)
    return (signs[:, None] * powers[None, :]).to(torch.float32 if dtype is None else dtype)


def fold(cells: ArrayT, cell_bits: int, offset: int) -> ArrayT:
    """``sum_{p,s} sign_p L**s cells[p, s] - offset`` over the two leading axes of ``cells``:
    integer weights from levels (int64 out for integer input), or a chip's effective integer
    weights from noisy conductances in level units (float)."""
    import torch

    values, was_numpy = _torch(cells)
    floating = values.is_floating_point()
    dtype = values.dtype if floating else torch.int64
    coefficients = fold_coefficients(values.shape[0], values.shape[1], cell_bits,
                                     torch.float64 if not floating else dtype)
    coefficients = coefficients.to(values.device, dtype if floating else torch.int64)
    out = torch.tensordot(coefficients, values.to(dtype), dims=([0, 1], [0, 1]))
    if offset:
        out = out - offset
    return out.numpy() if was_numpy else out


def physical_column(col: int, polarity: int, slice_: int, polarities: int, slices: int) -> int:
    """The physical column of weight column ``col``, polarity ``polarity``, slice ``slice_``."""
    return (col * polarities + polarity) * slices + slice_


def column_origin(physical: int, polarities: int, slices: int) -> tuple[int, int, int]:
    """``(weight column, polarity, slice)`` of a physical column."""
    return physical // (polarities * slices), (physical // slices) % polarities, physical % slices


def to_physical(levels: ArrayT) -> ArrayT:
    """A layer's physical matrix ``[R, C * P * S]`` from ``levels[p, s, r, c]`` (leading batch
    dimensions, e.g. pipeline copies, are kept)."""
    values, was_numpy = _torch(levels)
    *batch, n_pol, slices, rows, cols = values.shape
    lead = len(batch)
    phys = values.permute(*range(lead), lead + 2, lead + 3, lead, lead + 1).reshape(
        *batch, rows, cols * n_pol * slices)
    if was_numpy:
        return np.ascontiguousarray(phys.numpy())  # type: ignore[return-value]
    return phys  # type: ignore[return-value]


def from_physical(physical: ArrayT, polarities: int, slices: int) -> ArrayT:
    """``levels[p, s, r, c]`` from a physical matrix ``[R, C * P * S]`` (inverse of
    ``to_physical``)."""
    values, was_numpy = _torch(physical)
    rows = values.shape[0]
    levels = values.reshape(rows, -1, polarities, slices).permute(2, 3, 0, 1)
    return levels.numpy() if was_numpy else levels  # type: ignore[return-value]


@dataclass(frozen=True)
class TileSpan:
    """The block of a layer's physical matrix that one array holds."""

    row_tile: int
    col_tile: int
    row_start: int
    row_count: int
    col_start: int
    col_count: int


def grid_tiles(rows: int, physical_cols: int, array_rows: int,
               array_cols: int) -> list[TileSpan]:
    """neftc's tiling: ``ceil(rows / array_rows) x ceil(cols / array_cols)`` tiles, row tile
    major; every cell of the physical matrix lies in exactly one tile."""
    spans = []
    for rt, r0 in enumerate(range(0, rows, array_rows)):
        for ct, c0 in enumerate(range(0, physical_cols, array_cols)):
            spans.append(TileSpan(rt, ct, r0, min(array_rows, rows - r0), c0,
                                  min(array_cols, physical_cols - c0)))
    return spans


@dataclass(frozen=True)
class GroupSegment:
    """Physical columns ``[col_start, col_start + col_count)`` whose weight columns all belong to
    convolution group ``group``: their wordlines read unrolled input rows
    ``group * matrix_rows + r``."""

    group: int
    col_start: int
    col_count: int


def group_segments(col_start: int, col_count: int, polarities: int, slices: int,
                   matrix_cols: int, groups: int) -> list[GroupSegment]:
    """A tile's physical columns split by the convolution group of their weight columns."""
    per_group = (matrix_cols // groups) * polarities * slices  # physical columns per group
    segments = []
    position, end = col_start, col_start + col_count
    while position < end:
        group = position // per_group
        stop = min(end, (group + 1) * per_group)
        segments.append(GroupSegment(group, position, stop - position))
        position = stop
    return segments


def input_row_start(group: int, matrix_rows: int, row_start: int) -> int:
    """The first unrolled input row a tile's wordlines read for convolution group ``group``."""
    return group * matrix_rows + row_start


def dac_max_int(bits: int, signed: bool) -> int:
    """The largest integer a ``bits``-bit input DAC produces: ``2**(bits-1) - 1`` when signed
    (the range is symmetric, ``[-max_int, max_int]``), else ``2**bits - 1`` (``[0, max_int]``)."""
    return 2 ** (bits - 1 if signed else bits) - 1


def copy_of_position(position: int, replication: int) -> int:
    """Which pipeline copy computes output position ``position`` of a sample."""
    return position % replication


def split_by_copy(rows: torch.Tensor, positions: int, replication: int) -> torch.Tensor:
    """Per-position rows ``[B, positions, D]`` regrouped by the copy that computes them:
    ``[replication, B, ceil(positions / replication), D]``, position ``m`` at
    ``[m % replication, :, m // replication]`` (``copy_of_position``); missing positions of the
    last round are zero."""
    import torch

    per_copy = -(-positions // replication)
    padded = torch.nn.functional.pad(rows, (0, 0, 0, per_copy * replication - positions))
    return padded.reshape(rows.shape[0], per_copy, replication, rows.shape[-1]).permute(2, 0, 1, 3)


def merge_copies(out: torch.Tensor, positions: int) -> torch.Tensor:
    """The inverse of ``split_by_copy``: ``[replication, B, per_copy, D]`` -> ``[B, positions,
    D]``."""
    replication, batch, per_copy, width = out.shape
    return out.permute(1, 2, 0, 3).reshape(batch, per_copy * replication, width)[:, :positions]
