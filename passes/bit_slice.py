"""bit-slice: spread each integer weight over ``cell_bits`` cells, sign by the target's encoding.

- differential: polarity 0 holds ``max(q, 0)``, polarity 1 holds ``max(-q, 0)``;
- offset: one polarity holding ``q + 2**(bits-1)`` (the offset is removed digitally).

Each magnitude ``m`` is cut into ``S = ceil(bits / cell_bits)`` slices, least significant first:
``level_s = (m >> (s * cell_bits)) & (2**cell_bits - 1)``, so ``m = sum_s level_s * L**s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch.fx

from neftc.meta import SliceInfo, crossbar_nodes, get_info, update_info
from neftc.pass_manager import NodeError, PassContext, PassResult


def slice_levels(q: np.ndarray, bits: int, cell_bits: int, encoding: str) -> tuple[np.ndarray, int]:
    """``levels[p, s, ...]`` for integer weights ``q``, and the offset that was added."""
    wide = np.int32 if bits < 31 else np.int64
    small = np.uint16 if bits <= 16 else wide  # magnitudes < 2**bits
    q = q.astype(wide)
    if encoding == "differential":
        magnitudes, offset = np.stack([np.maximum(q, 0), np.maximum(-q, 0)]).astype(small), 0
    else:
        offset = 2 ** (bits - 1)
        magnitudes = (q + offset).astype(small)[None]
    n_slices = -(-bits // cell_bits)
    mask = (1 << cell_bits) - 1
    levels = np.empty((magnitudes.shape[0], n_slices, *q.shape), dtype=np.uint8)
    for s in range(n_slices):
        levels[:, s] = (magnitudes >> (s * cell_bits)) & mask
    return levels, offset


def unslice_levels(levels: np.ndarray, cell_bits: int, offset: int) -> np.ndarray:
    """Integer weights back from ``levels[p, s, ...]`` (inverse of ``slice_levels``)."""
    weights = 1 << (cell_bits * np.arange(levels.shape[1], dtype=np.int64))
    magnitudes = np.tensordot(weights, levels.astype(np.int64), axes=([0], [1]))
    if levels.shape[0] == 2:
        return magnitudes[0] - magnitudes[1]
    return magnitudes[0] - offset


@dataclass(frozen=True)
class BitSlice:
    name: ClassVar[str] = "bit-slice"
    requires: ClassVar[frozenset[str]] = frozenset({"quantized"})
    provides: ClassVar[frozenset[str]] = frozenset({"sliced"})

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
            levels, offset = slice_levels(info.quant.q, target.weight.bits, target.cell.bits,
                                          target.weight.sign_encoding)
            new = SliceInfo(target.cell.bits, target.weight.sign_encoding, offset, levels)
            old = info.slices
            if old is None or old.offset != offset or not np.array_equal(old.levels, levels):
                modified = True
            update_info(node, slices=new)
        return PassResult(gm, modified)
