"""Read-time device effects of one chip instance: read noise on every MVM and the static errors
of its DACs and ADCs (docs/emulator.md, "Device effects": read-noise, dac, adc).

``ReadEffects`` is part of a chip instance (``ChipInstance.reads``), attached to a chip drawn by
``program_chip`` with ``with_read_effects`` (the ideal chip, ``index`` None, has none):

- read noise (``effects.read_noise.std_rel`` = r): every read of a cell adds fresh
  ``N(0, (r (L-1))^2)`` in level units. The draws come from one generator per chip
  (``READ_STREAM``), advanced by every noisy read in the order the reads happen: the noise a
  sample sees depends on the order and size of the batches that ran on the chip before and with
  it (the chip is the same chip; its reads are not a function of the sample alone).
- converter errors (``effects.dac`` / ``effects.adc``): one DAC per wordline and one ADC per
  bitline of each physical array (a tile of the layout, or one of its pipeline copies), each
  with an offset (in its steps) and a relative gain error drawn once per chip from
  ``CONVERTER_STREAM`` (one generator per pipeline copy; layers in graph order, tiles in the
  layout's order, four standard normals per tile: DAC offsets, DAC gains, ADC offsets, ADC gains),
  and an integral non-linearity ``inl * 4 u (1 - u)`` common to all (``u`` the code's position
  in the range). They act on the target periphery only; ``--ideal-periphery`` has no converters.

The values (``ReadEffects``, the transfer functions): ``neftc.runtime.reads``. A chip holds one
piece of state: the read stream's generator; every other field is fixed when it is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from neftc.errors import NeftcError
from neftc.runtime.effects import Effects
from neftc.runtime.reads import ReadEffects, TileConverters
from neftc.runtime.variation import CONVERTER_STREAM, READ_STREAM, chip_generator
from neftc.targets.device_model import folded_std

if TYPE_CHECKING:
    from neftc.runtime.chip import ChipInstance
    from neftc.runtime.crossbar import CrossbarLayer


def read_effects_active(effects: Effects, ideal_periphery: bool) -> tuple[str, ...]:
    """The names of the effects that change what a sign-off's chips compute: ``effects.active``
    less the converters on the ideal periphery (it has none)."""
    return tuple(name for name in effects.active
                 if not (ideal_periphery and name in ("dac", "adc")))


def with_read_effects(chip: ChipInstance, layers: Mapping[str, CrossbarLayer], effects: Effects,
                      n_levels: int) -> ChipInstance:
    """Chip instance ``chip`` (drawn by ``program_chip``) with its read-time effects: a fresh read
    stream and its converters, drawn from ``(chip.seed, chip.index)``. The ideal chip
    (``index`` None), and a chip when the effects are all off, are returned as they are."""
    # The ideal periphery has no converters (none are drawn; a chip's converters are the same
    # whenever they are, from their own stream); its reads need each weight's read variance.
    ideal = chip.periphery.ideal
    dac, adc = (False, False) if ideal else (effects.dac, effects.adc)
    if chip.index is None or not (effects.read_noise or dac or adc):
        return chip
    if chip.stacked:
        raise NeftcError("read-time effects attach to one chip instance, not a stacked value")
    read_std = effects.spec.read_noise.std_rel * (n_levels - 1)
    weight_var: dict[str, torch.Tensor] = {}
    generator = None
    if effects.read_noise:
        generator = chip_generator(chip.seed, chip.index, READ_STREAM)
        for name, layer in layers.items() if ideal else ():
            # sum_{p,s} (L^s * r (L-1))^2 per weight, the fold of the programming noise (the
            # same for every weight of a column: one std per cell, whatever its level)
            std = folded_std(torch.full_like(layer.coefficients, read_std), layer.coefficients)
            per_column = (std * layer.scales) ** 2  # [C]
            weight_var[name] = layer.to_weight_layout(
                per_column.expand(layer.record.matrix_rows, -1))
    drawn = _draw_converters(chip, layers, effects) if dac or adc else {}
    reads = ReadEffects(read_std, generator, weight_var, drawn, dac, adc,
                        effects.spec.dac.inl_lsb, effects.spec.adc.inl_lsb)
    return replace(chip, reads=reads)


def _draw_converters(chip: ChipInstance, layers: Mapping[str, CrossbarLayer], effects: Effects
                     ) -> dict[str, tuple[TileConverters, ...]]:
    """Every tile's converters, per pipeline copy from its own ``CONVERTER_STREAM`` generator.
    All four vectors are drawn whichever converter is on (the std scales them), so switching one
    off leaves the other's draws as they were."""
    assert chip.index is not None
    dac, adc = effects.spec.dac, effects.spec.adc
    copies = max((layer.copies for layer in layers.values()), default=1)
    drawn: dict[tuple[str, int], list[tuple[torch.Tensor, ...]]] = {}
    for copy in range(copies):
        generator = chip_generator(chip.seed, chip.index, CONVERTER_STREAM, copy)
        for name, layer in layers.items():
            if copy >= layer.copies:
                continue
            for index, tile in enumerate(layer.tiles):
                rows = torch.randn(2, tile.row_count, generator=generator)
                cols = torch.randn(2, tile.col_count, generator=generator)
                drawn.setdefault((name, index), []).append(
                    (rows[0] * dac.offset_lsb_std, rows[1] * dac.gain_rel_std,
                     cols[0] * adc.offset_lsb_std, cols[1] * adc.gain_rel_std))
    out = {}
    for name, layer in layers.items():
        device = layer.levels.device
        tiles = []
        for index in range(len(layer.tiles)):
            per_copy = drawn[(name, index)]
            tiles.append(TileConverters(*(torch.stack([c[k] for c in per_copy]).to(device)
                                          for k in range(4))))
        out[name] = tuple(tiles)
    return out
