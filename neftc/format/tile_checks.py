"""The semantic checks of a layer's tiles (docs/layout.md section 10): where each tile lies in
the layer's physical matrix and on the chip, the levels it holds, and that the tiles form a grid
listed in index order."""

from __future__ import annotations

import bisect
import heapq

import numpy as np

from neftc.format import encoding
from neftc.format.consistency import Consistency
from neftc.format.schema import LayerRecord, TileRecord


def check_tiles(ctx: Consistency, i: int, layer: LayerRecord, all_levels: np.ndarray) -> None:
    """The tiles of ``layers[i]``: each fits an array and the layer's physical matrix, sits on
    arrays of the chip used by no other tile, has every replica and levels below the top level;
    together they cover the matrix once as a grid, listed in row-major index order."""
    field = f"layers[{i}]"
    n_cols = layer.matrix_cols * layer.slicing.polarities * layer.slicing.slices
    for j, tile in enumerate(layer.tiles):
        tfield = f"{field}.tiles[{j}]"
        _check_tile_span(ctx, tfield, layer, tile, n_cols)
        _claim_arrays(ctx, tfield, tile)
        if layer.replication != 1 + len(tile.replicas):
            raise ctx.fail(f"{field}.replication", f"{layer.replication} copies, but "
                           f"{tfield} has {len(tile.replicas)} replica(s) "
                           f"(replication must be 1 + len(replicas) for every tile)")
        _check_tile_levels(ctx, tfield, layer, tile, all_levels)
    _check_no_overlap(ctx, field, layer)
    _check_grid(ctx, field, layer, n_cols)
    _check_tile_order(ctx, field, layer)


def _check_tile_span(ctx: Consistency, tfield: str, layer: LayerRecord, tile: TileRecord,
                     n_cols: int) -> None:
    """The tile fits one array, the layer's physical matrix and levels.bin."""
    target = ctx.doc.target
    if tile.row_count > target.array.rows:
        raise ctx.fail(f"{tfield}.row_count", f"{tile.row_count} rows do not fit the "
                       f"{target.array.rows} rows of an array")
    if tile.col_count > target.array.cols:
        raise ctx.fail(f"{tfield}.col_count", f"{tile.col_count} columns do not fit the "
                       f"{target.array.cols} columns of an array")
    if tile.row_start + tile.row_count > layer.matrix_rows:
        raise ctx.fail(f"{tfield}.row_start", f"rows {tile.row_start}.."
                       f"{tile.row_start + tile.row_count - 1} lie outside the layer's "
                       f"matrix rows 0..{layer.matrix_rows - 1}")
    if tile.col_start + tile.col_count > n_cols:
        raise ctx.fail(f"{tfield}.col_start", f"physical columns {tile.col_start}.."
                       f"{tile.col_start + tile.col_count - 1} lie outside the layer's "
                       f"physical columns 0..{n_cols - 1}")
    cells = tile.row_count * tile.col_count
    if tile.levels_offset + cells > len(ctx.levels):
        raise ctx.fail(f"{tfield}.levels_offset", f"the tile's {cells} levels at byte "
                       f"{tile.levels_offset} lie past the end of levels.bin "
                       f"({len(ctx.levels)} bytes)")


def _claim_arrays(ctx: Consistency, tfield: str, tile: TileRecord) -> None:
    """The tile's array and its replicas' are on the chip and held by no other tile."""
    chip = ctx.doc.target.chip
    places = [(tile.core, tile.array, f"{tfield}.core", f"{tfield}.array", tfield)] + [
        (int(c), int(a), f"{tfield}.replicas[{k}]", f"{tfield}.replicas[{k}]",
         f"{tfield}.replicas[{k}]") for k, (c, a) in enumerate(tile.replicas)]
    for core, array, core_field, array_field, holder in places:
        if not (0 <= core < chip.cores):
            raise ctx.fail(core_field, f"core {core} is not on the target chip (cores "
                           f"0..{chip.cores - 1})")
        if not (0 <= array < chip.arrays_per_core):
            raise ctx.fail(array_field, f"array {array} is not on the target chip "
                           f"(arrays 0..{chip.arrays_per_core - 1} per core)")
        if (core, array) in ctx.arrays:
            raise ctx.fail(array_field, f"array ({core}, {array}) is used twice: "
                           f"{ctx.arrays[(core, array)]} already holds it; no array "
                           "holds two tiles (tiles and replicas together)")
        ctx.arrays[(core, array)] = holder


def _check_tile_levels(ctx: Consistency, tfield: str, layer: LayerRecord, tile: TileRecord,
                       all_levels: np.ndarray) -> None:
    """No cell of the tile holds a level above the top level of the layer's cells."""
    top = encoding.n_levels(layer.slicing.cell_bits) - 1
    cells = tile.row_count * tile.col_count
    block = all_levels[tile.levels_offset:tile.levels_offset + cells]
    if int(block.max()) > top:
        at = int(np.argmax(block > top))
        raise ctx.fail(tfield, f"levels.bin byte {tile.levels_offset + at} (row "
                       f"{at // tile.col_count}, column {at % tile.col_count} of the "
                       f"tile) holds level {int(block[at])}, above the top level {top} "
                       f"of {layer.slicing.cell_bits}-bit cells")


def _check_no_overlap(ctx: Consistency, field: str, layer: LayerRecord) -> None:
    """No two tiles of the layer share a cell."""
    overlap = find_overlap(layer.tiles)
    if overlap is not None:
        a, b = (layer.tiles[j] for j in overlap)
        rows = (max(a.row_start, b.row_start),
                min(a.row_start + a.row_count, b.row_start + b.row_count) - 1)
        cols = (max(a.col_start, b.col_start),
                min(a.col_start + a.col_count, b.col_start + b.col_count) - 1)
        raise ctx.fail(f"{field}.tiles[{overlap[1]}]", f"the tile overlaps "
                       f"{field}.tiles[{overlap[0]}] (both hold rows {rows[0]}..{rows[1]}, "
                       f"physical columns {cols[0]}..{cols[1]}); every cell of the physical "
                       "matrix lies in exactly one tile")


def _check_grid(ctx: Consistency, field: str, layer: LayerRecord, n_cols: int) -> None:
    """The tiles cover the physical matrix exactly once, as a grid of row bands."""
    covered = sum(t.row_count * t.col_count for t in layer.tiles)
    if covered != layer.matrix_rows * n_cols or not _is_grid(layer.tiles, layer.matrix_rows,
                                                             n_cols):
        how = (f"cover {covered} of its {layer.matrix_rows * n_cols} cells"
               if covered != layer.matrix_rows * n_cols else "are not a grid of row bands")
        raise ctx.fail(f"{field}.tiles", f"the tiles do not cover the layer's "
                       f"{layer.matrix_rows}x{n_cols} physical matrix exactly once as a grid "
                       f"(they {how})")


def _check_tile_order(ctx: Consistency, field: str, layer: LayerRecord) -> None:
    """Each tile's row_tile, col_tile and index follow from where it starts, and the tiles are
    listed in index order."""
    band_cols: dict[int, list[int]] = {}  # row start of a row band -> its column starts
    for tile in layer.tiles:
        band_cols.setdefault(tile.row_start, []).append(tile.col_start)
    row_rank = {start: rank for rank, start in enumerate(sorted(band_cols))}
    col_rank: dict[tuple[int, int], int] = {}
    first_index: dict[int, int] = {}  # row start -> index of the band's first tile
    before = 0
    for start in sorted(band_cols):
        first_index[start] = before
        before += len(band_cols[start])
        for rank, col_start in enumerate(sorted(band_cols[start])):
            col_rank[(start, col_start)] = rank
    for j, tile in enumerate(layer.tiles):
        tfield = f"{field}.tiles[{j}]"
        row_tile = row_rank[tile.row_start]
        col_tile = col_rank[(tile.row_start, tile.col_start)]
        index = first_index[tile.row_start] + col_tile
        if tile.row_tile != row_tile:
            raise ctx.fail(f"{tfield}.row_tile", f"{tile.row_tile}, but the tile starts at "
                           f"row {tile.row_start}, in row tile {row_tile}")
        if tile.col_tile != col_tile:
            raise ctx.fail(f"{tfield}.col_tile", f"{tile.col_tile}, but the tile starts at "
                           f"physical column {tile.col_start}, column tile {col_tile} of "
                           "its row band")
        if tile.index != index or index != j:
            raise ctx.fail(f"{tfield}.index", f"{tile.index}, but the tile (row tile "
                           f"{row_tile}, column tile {col_tile}) has row-major index {index}"
                           f"{'' if index == j else f' and is listed at position {j}'}; "
                           "tiles are listed in index order")


def _is_grid(tiles: list[TileRecord], rows: int, cols: int) -> bool:
    """True when the tiles partition a rows x cols matrix into a grid (rows, then columns)."""
    by_rows: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for tile in tiles:
        by_rows.setdefault((tile.row_start, tile.row_count), []).append(
            (tile.col_start, tile.col_count))

    def partitions(intervals: list[tuple[int, int]], length: int) -> bool:
        position = 0
        for start, count in sorted(intervals):
            if start != position:
                return False
            position += count
        return position == length

    return partitions(list(by_rows), rows) and all(
        partitions(spans, cols) for spans in by_rows.values())


def find_overlap(tiles: list[TileRecord]) -> tuple[int, int] | None:
    """Positions ``(a, b)``, ``a < b``, of two tiles that share a cell, or None.

    A sweep over the rows: the tiles that span the current row have pairwise disjoint column
    ranges (any overlap among them was reported when the later one arrived), so a new tile can
    only overlap its neighbours in column order. O(n log n) for a grid."""
    order = sorted(range(len(tiles)), key=lambda j: (tiles[j].row_start, tiles[j].col_start))
    starts: list[int] = []  # column starts of the active tiles, sorted (unique: disjoint ranges)
    active: list[int] = []  # tile positions, parallel to ``starts``
    ends: list[tuple[int, int, int]] = []  # heap of (row end, column start, position)
    for j in order:
        tile = tiles[j]
        while ends and ends[0][0] <= tile.row_start:
            _, col_start, _ = heapq.heappop(ends)
            where = bisect.bisect_left(starts, col_start)
            del starts[where], active[where]
        where = bisect.bisect_left(starts, tile.col_start)
        for k in (where - 1, where):
            if 0 <= k < len(active):
                other = tiles[active[k]]
                if other.col_start < tile.col_start + tile.col_count and \
                        tile.col_start < other.col_start + other.col_count:
                    return min(j, active[k]), max(j, active[k])
        starts.insert(where, tile.col_start)
        active.insert(where, j)
        heapq.heappush(ends, (tile.row_start + tile.row_count, tile.col_start, j))
    return None
