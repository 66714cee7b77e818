"""The read-time state of a chip instance as values: ``ReadEffects`` (its read stream and the
errors of its DACs and ADCs) and the converters' transfer functions. How they are drawn and what
they model: ``neftc.runtime.read_effects``. This module imports nothing of the runtime, so the
crossbar paths can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch


@dataclass(frozen=True, eq=False)
class TileConverters:
    """The converters of one tile of a layer, one row per pipeline copy (its own arrays):
    ``[copies, row_count]`` DAC offsets (steps of the cycle's DAC) and relative gain errors of
    the tile's wordlines, ``[copies, col_count]`` ADC offsets (codes) and gain errors of its
    bitlines (the tile's row and column ``i`` is wordline / bitline ``i`` of its array)."""

    dac_offset: torch.Tensor
    dac_gain: torch.Tensor
    adc_offset: torch.Tensor
    adc_gain: torch.Tensor


@dataclass(frozen=True, eq=False)
class ReadEffects:
    """What a chip instance's reads add to its cells (see the module docstring).

    ``read_std``: read noise std per cell read, level units (0: off). ``generator``: the read
    stream (None when read noise is off). ``weight_var``: per layer, the read-noise variance of
    each effective weight in the weight's own shape (weight units squared; the ideal-periphery
    path). ``converters``: per layer, per tile (``layer.tiles`` order), the tile's converters
    (empty when both converters are ideal). ``dac``/``adc``: whether each converter has errors;
    ``dac_inl``/``adc_inl``: the peak of the non-linearity bow, in steps."""

    read_std: float
    generator: torch.Generator | None
    weight_var: Mapping[str, torch.Tensor]
    converters: Mapping[str, tuple[TileConverters, ...]]
    dac: bool
    adc: bool
    dac_inl: float
    adc_inl: float

    def __post_init__(self) -> None:
        for name in ("weight_var", "converters"):
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, MappingProxyType(dict(value)))

    @property
    def noisy(self) -> bool:
        """True when reads carry noise."""
        return self.read_std > 0

    @property
    def exact_reads(self) -> bool:
        """True when every read on the target periphery is as without these effects (no noise,
        ideal converters): only then may the DAC/ADC path fold its reads into one matmul."""
        return not (self.noisy or self.dac or self.adc)

    def normal(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The next standard normals of the read stream, drawn on the CPU (the same chip on
        every device), on ``device``."""
        assert self.generator is not None, "read noise is off"
        return torch.randn(shape, generator=self.generator).to(device)


def inl_bow(u: torch.Tensor, inl: float) -> torch.Tensor:
    """The integral non-linearity at range position ``u`` (0..1): ``inl * 4 u (1 - u)``."""
    return u * (1 - u) * (4 * inl)


def apply_dac(planes: torch.Tensor, converters: TileConverters, inl: float,
              codes: int) -> torch.Tensor:
    """The levels a tile's DACs apply for cycle codes ``planes`` ``[B, M, rows]`` (0 ..
    ``codes``, ``B`` the pipeline copies): ``v (1 + gain_r) + offset_r + inl_bow(v / codes)``
    for a row with code ``v`` > 0, and 0 for an idle row (a DAC at code 0 drives nothing, so its
    offset applies only to active cycles; the bow is 0 at both ends)."""
    gain = converters.dac_gain[:, None, :]
    offset = converters.dac_offset[:, None, :]
    if codes == 1:  # 1-bit cycles: v is 0 or 1
        return planes * (1 + gain + offset)
    applied = planes * (1 + gain) + planes.sign() * offset
    if inl:
        applied = applied + inl_bow(planes / codes, inl)
    return applied


def adc_codes(value: torch.Tensor, step: float, codes: int, gain: torch.Tensor,
              offset: torch.Tensor, inl: float) -> torch.Tensor:
    """An ADC's codes for bitline values ``value`` (level units; ``gain``/``offset`` broadcast
    over its last axis, the bitlines): ``clamp(round(t + offset + inl_bow(u)), 0, codes)`` with
    ``t = value / step * (1 + gain)`` and ``u = clamp(t / codes, 0, 1)``."""
    t = value / step * (1 + gain)
    out = t + offset
    if inl:
        out = out + inl_bow((t / codes).clamp(0.0, 1.0), inl)
    return out.round_().clamp_(0.0, float(codes))
