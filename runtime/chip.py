"""A chip instance as a value: what one programmed chip holds, per crossbar layer and pipeline
copy, and the periphery it computes with.

``ChipInstance`` is frozen: its fields cannot be rebound and its layer table is read-only; the
tensors it holds are never written after it is built (every path that derives from them makes
new tensors). It is made by ``ideal_chip`` (every cell exact), ``neftc.runtime.variation.
program_chip`` (one chip instance of a seed, drawn from the device model) or ``stack_chips``
(K chip instances run as one batch), and passed to ``CrossbarLayer.forward(x, chip)`` / the
emulator's graph module ``module(x, chip)``. A chip may also carry its own BatchNorm statistics
(``batch_norm``: set by ``neftc.runtime.recalibration.recalibrate_batch_norm`` after programming;
the digital BatchNorms then use them instead of the layout's running statistics).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch

from neftc.errors import NeftcError
from neftc.runtime.periphery import Periphery
from neftc.runtime.reads import ReadEffects

if TYPE_CHECKING:
    from neftc.runtime.crossbar import CrossbarLayer


@dataclass(frozen=True, eq=False)
class LayerChip:
    """One crossbar layer of a chip instance, one entry per pipeline copy.

    ``weights``: the effective (dequantised) weight of each copy, in the weight's own shape
    (``[K, *shape]`` in a stacked value). ``conductances``: each copy's cells ``[P, S, R, C]``
    in level units; None where they were not drawn (the ideal-periphery path of a noisy chip
    needs only the weights; ``Emulator.cell_conductances`` draws them on demand). ``folded``:
    each copy's standard normals of the folded per-weight noise (CPU, the weight's layout), from
    which the cells are drawn; None for the ideal chip and stacked values.
    """

    weights: tuple[torch.Tensor, ...]
    conductances: tuple[torch.Tensor, ...] | None = None
    folded: tuple[torch.Tensor, ...] | None = None


@dataclass(frozen=True, eq=False)
class BnStats:
    """The statistics one digital BatchNorm of a chip normalises with: per channel ``mean`` and
    ``var`` (shape ``[C]``, on the network's device)."""

    mean: torch.Tensor
    var: torch.Tensor


@dataclass(frozen=True, eq=False)
class ChipInstance:
    """One programmed chip (or, with ``stacked``, K of them run as one batch).

    ``index``: the chip instance of ``seed`` (None: the ideal chip, every cell exact; a chip
    of a noise-free model keeps its index but holds the ideal cells). ``stacked``: the chip
    indices of a stacked value, whose input batch holds K chip-major copies of the samples
    (empty: one chip). ``batch_norm``: per BatchNorm node of the layout graph (by node name),
    the ``BnStats`` this chip's digital BatchNorm uses instead of the layout's running
    statistics (empty: the layout's, as programmed). ``reads``: the read-time effects of a chip
    drawn by ``program_chip`` (read noise, converter errors: ``neftc.runtime.read_effects``; None:
    every read exact). Its read stream is the one piece of a chip that changes: each noisy read
    advances it, and the values derived with ``with_periphery`` / ``with_batch_norm`` share it."""

    index: int | None
    seed: int
    layers: Mapping[str, LayerChip]
    periphery: Periphery
    stacked: tuple[int, ...] = ()
    batch_norm: Mapping[str, BnStats] = field(default_factory=dict)
    reads: ReadEffects | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.layers, MappingProxyType):
            object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))
        if not isinstance(self.batch_norm, MappingProxyType):
            object.__setattr__(self, "batch_norm", MappingProxyType(dict(self.batch_norm)))

    def with_periphery(self, periphery: Periphery) -> ChipInstance:
        """The same cells with another periphery (new DAC ranges)."""
        return replace(self, periphery=periphery)

    def with_batch_norm(self, stats: Mapping[str, BnStats]) -> ChipInstance:
        """The same cells and periphery with its own BatchNorm statistics ``stats``."""
        return replace(self, batch_norm=stats)


def ideal_chip(layers: Mapping[str, CrossbarLayer], periphery: Periphery, seed: int = 0,
               index: int | None = None) -> ChipInstance:
    """Every cell programmed exactly: each copy holds the layout's levels and weights."""
    return ChipInstance(index, seed, {
        name: LayerChip((layer.ideal_weight,) * layer.copies, (layer.levels,) * layer.copies)
        for name, layer in layers.items()}, periphery)


def stack_chips(chips: list[ChipInstance]) -> ChipInstance:
    """K chip instances of the ideal periphery as one value: per layer and copy the K weights
    stacked ``[K, *shape]``; run it on K chip-major copies of the input batch."""
    first = chips[0]
    if not first.periphery.ideal:
        raise ValueError("stacked chip instances need ideal periphery")
    if any(chip.reads is not None and chip.reads.noisy for chip in chips):
        raise NeftcError("read noise is drawn per chip in the order of its own reads, which a "
                         "stacked pass does not keep: run one chip per pass (drop "
                         "--chips-per-pass) or switch it off (--ideal read-noise)")
    layers = {name: LayerChip(tuple(torch.stack([chip.layers[name].weights[copy]
                                                 for chip in chips])
                                    for copy in range(len(state.weights))))
              for name, state in first.layers.items()}
    stacked = tuple(-1 if chip.index is None else chip.index for chip in chips)
    return ChipInstance(None, first.seed, layers, first.periphery, stacked)
