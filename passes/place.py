"""place: assign every tile to a physical array (core, array) of the target chip.

Strategy ``in-order``: tiles take arrays in graph order, filling core 0 first. A model that needs
more arrays than the chip has is refused with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch.fx

from neftc.errors import CapacityError
from neftc.meta import crossbar_nodes, get_info, update_info
from neftc.pass_manager import PassContext, PassResult


@dataclass(frozen=True)
class Place:
    strategy: Literal["in-order"] = "in-order"

    name: ClassVar[str] = "place"
    requires: ClassVar[frozenset[str]] = frozenset({"tiled"})
    provides: ClassVar[frozenset[str]] = frozenset({"placed"})

    def run(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        chip = ctx.target.chip
        nodes = crossbar_nodes(gm)
        needed = sum(len(get_info(n).tiles) for n in nodes)  # type: ignore[union-attr]
        if needed > chip.arrays:
            per_layer = sorted(((len(get_info(n).tiles), get_info(n).layer) for n in nodes),  # type: ignore[union-attr]
                               reverse=True)[:3]
            biggest = ", ".join(f"{name} {count}" for count, name in per_layer)
            raise CapacityError(
                f"the model needs {needed} arrays of {ctx.target.array.rows}x"
                f"{ctx.target.array.cols} but target '{ctx.target.name}' has {chip.arrays} "
                f"({chip.cores} cores x {chip.arrays_per_core} arrays); largest layers: {biggest}. "
                "Use a larger target, raise chip.cores or chip.arrays_per_core with --set, or "
                "store fewer weight bits"
            )
        modified = False
        slot = 0
        for node in nodes:
            info = get_info(node)
            assert info is not None
            placed = []
            for tile in info.tiles:
                placed.append(replace(tile, core=slot // chip.arrays_per_core,
                                      array=slot % chip.arrays_per_core))
                slot += 1
            if tuple(placed) != info.tiles:
                modified = True
                update_info(node, tiles=tuple(placed))
        return PassResult(gm, modified)
