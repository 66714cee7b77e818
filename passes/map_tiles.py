"""map-tiles: partition each layer's physical matrix into tiles of the target's array size.

A layer's physical matrix (``neftc.format.encoding``: ``matrix_rows`` wordlines, ``matrix_cols *
P * S`` bitlines) is cut by ``encoding.grid_tiles`` into ``ceil(rows / array.rows) x
ceil(cols / array.cols)`` tiles, row tile major; each tile becomes one array.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch.fx

from neftc.format import encoding
from neftc.ir.facts import Fact
from neftc.ir.node_info import Tile, crossbar_nodes, get_info, update_info
from neftc.ir.pass_manager import NodeError, PassContext, PassResult


def make_tiles(rows: int, physical_cols: int, array_rows: int, array_cols: int) -> tuple[Tile, ...]:
    spans = encoding.grid_tiles(rows, physical_cols, array_rows, array_cols)
    return tuple(Tile(**dataclasses.asdict(span), index=index) for index, span in enumerate(spans))


@dataclass(frozen=True)
class MapTiles:
    name: ClassVar[str] = "map-tiles"
    requires: ClassVar[frozenset[Fact]] = frozenset({Fact.SLICED})
    provides: ClassVar[frozenset[Fact]] = frozenset({Fact.TILED})

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
