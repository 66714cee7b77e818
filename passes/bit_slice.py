"""bit-slice: spread each integer weight over cells by the target's sign encoding and cell bits.

The encoding itself (sign, slice order) is defined once, in ``neftc.format.encoding``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch.fx

from neftc.format import encoding
from neftc.ir.facts import Fact
from neftc.ir.node_info import SliceInfo, crossbar_nodes, get_info, update_info
from neftc.ir.pass_manager import NodeError, PassContext, PassResult


@dataclass(frozen=True)
class BitSlice:
    name: ClassVar[str] = "bit-slice"
    requires: ClassVar[frozenset[Fact]] = frozenset({Fact.QUANTIZED})
    provides: ClassVar[frozenset[Fact]] = frozenset({Fact.SLICED})

    def run(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        target = ctx.target
        modified = False
        for node in crossbar_nodes(gm):
            info = get_info(node)
            assert info is not None
            if info.quant is None:
                raise NodeError(node, "has no quantisation; run quantize first")
            if info.quant.bits != target.weight.bits:
                raise NodeError(node, f"was quantised to {info.quant.bits} bits but the target "
                                      f"stores {target.weight.bits}; re-run quantize")
            levels = encoding.slice_levels(info.quant.q, target.weight.bits, target.cell.bits,
                                           target.weight.sign_encoding)
            offset = encoding.sign_offset(target.weight.bits, target.weight.sign_encoding)
            new = SliceInfo(target.cell.bits, target.weight.sign_encoding, offset, levels)
            old = info.slices
            if old is None or old.offset != offset or not np.array_equal(old.levels, levels):
                modified = True
            update_info(node, slices=new)
        return PassResult(gm, modified)
