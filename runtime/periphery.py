"""The chip's periphery as values: the input DAC of each layer and the bitline ADC.

``Periphery`` is part of a chip instance (``neftc.runtime.chip.ChipInstance``): ideal (one float
matmul per layer, no conversion) or the layout's target periphery, whose DAC ranges are set per
layer (``Emulator.calibrate`` / ``set_input_quant``, or stored in the layout by ``neftc
calibrate``) and whose ADC is the layout's ``periphery`` record, applied per tile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from neftc.format import encoding
from neftc.format.schema import TileRecord


@dataclass(frozen=True)
class InputQuant:
    """DAC setting of one layer: ``x_int = clamp(round(x / scale))``, signed or unsigned."""

    scale: float
    signed: bool
    bits: int

    @property
    def magnitude_bits(self) -> int:
        return self.bits - 1 if self.signed else self.bits

    @property
    def max_int(self) -> int:
        return encoding.dac_max_int(self.bits, self.signed)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The DAC's integers for inputs ``x`` (float tensor of integer values)."""
        return torch.clamp(torch.round(x / self.scale),
                           -self.max_int if self.signed else 0, self.max_int)


@dataclass(frozen=True)
class AdcConfig:
    adc_bits: int
    dac_bits_per_cycle: int

    @property
    def codes(self) -> int:
        return 2**self.adc_bits - 1

    def full_scale(self, rows: int, n_levels: int) -> float:
        """Largest noise-free bitline sum of a tile of ``rows`` rows, in level units."""
        return rows * (2**self.dac_bits_per_cycle - 1) * (n_levels - 1)

    def step(self, rows: int, n_levels: int) -> float:
        """Level units per ADC code for a tile of ``rows`` rows: the full scale over the codes,
        never finer than one level unit (an ADC with codes to spare resolves every noise-free
        sum exactly)."""
        return max(1.0, self.full_scale(rows, n_levels) / self.codes)

    def exact(self, rows: int, n_levels: int) -> bool:
        """True when the ADC resolves every noise-free sum of such a tile (one code per unit)."""
        return self.full_scale(rows, n_levels) <= self.codes

    def cycles(self, quant: InputQuant) -> int:
        """Input cycles of ``dac_bits_per_cycle`` bits for the magnitude of ``quant``'s ints."""
        return -(-quant.magnitude_bits // self.dac_bits_per_cycle)


@dataclass(frozen=True)
class Periphery:
    """The periphery a chip instance computes with.

    ``ideal``: float MVMs, no DAC or ADC. Otherwise the target periphery: ``adc`` for every
    tile, and per layer its DAC setting in ``dac`` (None until the ranges are set: such a chip
    can be programmed, not run). ``shortcut``: fold the bit planes, slices and polarities into
    one matmul where every tile's ADC is exact (``foldable``); False forces the bit-serial path.
    """

    ideal: bool = True
    adc: AdcConfig | None = None
    dac: Mapping[str, InputQuant] | None = None
    shortcut: bool = True

    def __post_init__(self) -> None:
        if self.dac is not None and not isinstance(self.dac, MappingProxyType):
            object.__setattr__(self, "dac", MappingProxyType(dict(self.dac)))

    @property
    def ready(self) -> bool:
        """True when a chip with this periphery can run (ideal, or every DAC range set)."""
        return self.ideal or self.dac is not None

    def with_dac(self, settings: Mapping[str, InputQuant]) -> Periphery:
        """The same periphery with the DAC ranges ``settings``."""
        return Periphery(self.ideal, self.adc, settings, self.shortcut)

    def quant(self, layer: str) -> InputQuant | None:
        """The DAC of ``layer`` on the target periphery; None on the ideal path."""
        if self.ideal or self.dac is None:
            return None
        return self.dac[layer]

    def foldable(self, tiles: tuple[TileRecord, ...], n_levels: int) -> bool:
        """True when a layer of these tiles computes as one matmul on the DAC's integers."""
        adc = self.adc
        assert adc is not None
        return self.shortcut and all(adc.exact(t.row_count, n_levels) for t in tiles)

    def partial_mvms(self, layer: str, tiles: tuple[TileRecord, ...], n_levels: int,
                     slices: int, polarities: int, exact_reads: bool = True) -> int:
        """Crossbar partial MVMs per weight of ``layer``: input cycles x phases x slices x
        polarities; 1 on the ideal path or where the ADC lets them fold (never when the chip's
        reads are not exact, ``exact_reads`` False: read noise or converter errors,
        ``neftc.runtime.reads.ReadEffects.exact_reads``)."""
        quant = self.quant(layer)
        if quant is None or self.adc is None or (exact_reads and self.foldable(tiles, n_levels)):
            return 1
        return self.adc.cycles(quant) * (2 if quant.signed else 1) * slices * polarities
