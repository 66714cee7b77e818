"""map-tiles: partition each layer's physical matrix into tiles of the target's array size.

A layer's physical matrix has ``matrix_rows`` rows (wordlines) and ``matrix_cols * P * S`` columns
(bitlines): every weight column is stored as P polarities of S slices, slice fastest (see
``neftc.meta.Tile``). It is cut into ``ceil(rows / array.rows) x ceil(cols / array.cols)`` tiles,
row tile major; each tile becomes one array. Every cell of the matrix lies in exactly one tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.fx

from neftc.meta import Tile, crossbar_nodes, get_info, update_info
from neftc.pass_manager import NodeError, PassContext, PassResult


def make_tiles(rows: int, physical_cols: int, array_rows: int, array_cols: int) -> tuple[Tile, ...]:
    tiles: list[Tile] = []
    for rt, r0 in enumerate(range(0, rows, array_rows)):
        for ct, c0 in enumerate(range(0, physical_cols, array_cols)):
            tiles.append(Tile(len(tiles), rt, ct, r0, min(array_rows, rows - r0),
                              c0, min(array_cols, physical_cols - c0)))
    return tuple(tiles)


@dataclass(frozen=True)
class MapTiles:
    name: ClassVar[str] = "map-tiles"
    requires: ClassVar[frozenset[str]] = frozenset({"sliced"})
    provides: ClassVar[frozenset[str]] = frozenset({"tiled"})

    def run(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        array = ctx.target.array
        modified = False
        for node in crossbar_nodes(gm):
            info = get_info(node)
            assert info is not None
            if info.slices is None:
                raise NodeError(node, "has no bit slices; run bit-slice first")
            n_pol, n_slices = info.slices.levels.shape[:2]
            tiles = make_tiles(info.matrix_rows, info.matrix_cols * n_pol * n_slices,
                               array.rows, array.cols)
            old = tuple(_unplaced(t) for t in info.tiles)
            if old != tiles:
                modified = True
                update_info(node, tiles=tiles)
        return PassResult(gm, modified)


def _unplaced(tile: Tile) -> Tile:
    from dataclasses import replace

    return replace(tile, core=-1, array=-1, replicas=())
