"""Programming a chip instance: a pure function from (layout, noise model, seed, chip index,
periphery) to a ``ChipInstance`` value.

Chip instance ``i`` of seed ``k`` is always the same chip: its noise comes from CPU
``torch.Generator``s seeded with a hash of ``(k, i, stream)`` (and the pipeline copy, for copies
after the first). The cells are drawn in two exact steps (docs/emulator.md, "How a chip is
drawn"): first the folded noise of every weight, ``sum_{p,s} sign_p L^s e[p,s]``, one Gaussian
per weight with the summed variance of its cells; then, when the cells themselves are needed
(the DAC/ADC path, stuck-at faults, ``Emulator.cell_conductances``), each cell's noise given that
sum. Together they are distributed exactly as independent per-cell draws, and both periphery
paths see the same chip. The ideal-periphery path needs only the first step. Every pipeline copy
of a layer (``TileRecord.replicas``) is programmed with its own cells.

When a programming-time cell effect is on (``Effects.cell_level``: write-verify, clip, drift, IR
drop) the cells are always drawn, and then, in this order, verified and re-programmed
(``WRITE_STREAM``), clipped to the conductance window, drifted to the inference time with the
drift compensation (``DRIFT_STREAM``) and seen through the wires' resistance
(``neftc.runtime.cell_effects``, ``neftc.runtime.ir_drop``); both periphery paths use these cells
(the ideal path their folded weights). With ``--noise off`` the programming variation is zero and
the cells are the exact levels plus the effects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from neftc.errors import NeftcError
from neftc.runtime import cell_effects
from neftc.runtime.chip import ChipInstance, LayerChip, ideal_chip
from neftc.runtime.crossbar import CrossbarLayer
from neftc.runtime.ir_drop import ir_drop_cells
from neftc.runtime.noise import NoiseModel
from neftc.runtime.periphery import Periphery
from neftc.targets.device_model import cell_std_levels, folded_std, paper_weight_std
from neftc.targets.spec import CellSpec

# The independent random streams of one chip instance.
AGGREGATE_STREAM = 0  # per weight: the folded noise of its cells (and paper mode's draws)
CELL_STREAM = 1  # per cell: how that folded noise splits over the weight's cells
FAULT_STREAM = 2  # per cell: stuck-at faults
WRITE_STREAM = 3  # per cell: the pulses of write-verify programming
DRIFT_STREAM = 4  # per cell: its drift exponent
READ_STREAM = 5  # per read: read noise (advanced by every MVM, in the order the reads happen)
CONVERTER_STREAM = 6  # per DAC and ADC: offset and gain errors


def chip_generator(seed: int, chip: int, stream: int, copy: int = 0) -> torch.Generator:
    """The generator of one random stream of chip instance ``chip`` under ``seed``, for the
    layers' first copy (``copy`` 0) or their ``copy``-th pipeline copy."""
    entropy = [seed, chip, stream] if copy == 0 else [seed, chip, stream, copy]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass(frozen=True, eq=False)
class LayerVariation:
    """The device model's spread for one layer's cells and weights (fixed by the layout and the
    noise model)."""

    cell_std: torch.Tensor  # [P, S, R, C], level units
    weight_std: torch.Tensor  # [R, C], integer-weight units
    draw_std: torch.Tensor  # per-weight std of the folded draw, weight units, weight's layout
    coefficients: torch.Tensor  # [P, S, 1, 1]: each cell's share of its weight (sign_p L^s)

    @cached_property
    def cell_gain(self) -> torch.Tensor:
        """``std^2 a / var(A)`` per cell: how a weight's folded draw splits over its cells."""
        weight_var = self.weight_std ** 2
        return self.cell_std * self.cell_std * self.coefficients / weight_var.clamp(min=1e-30)


@dataclass(frozen=True, eq=False)
class Variation:
    """The noise model applied to a layout's layers: what programming a chip needs."""

    noise: NoiseModel
    n_levels: int
    layers: Mapping[str, LayerVariation]
    cell: CellSpec | None = None  # the layout's target.cell (the cell effects need it)
    array_rows: int | None = None  # the target's wordlines per array (IR drop: idle rows)


def variation(layers: Mapping[str, CrossbarLayer], noise: NoiseModel, n_levels: int,
              cell: CellSpec | None = None, array_rows: int | None = None) -> Variation:
    """The per-layer spreads of ``noise`` on ``layers`` (cell levels, weights, scales).
    ``cell``: the layout's ``target.cell``, needed when a cell-level effect is on (write-verify's
    tolerance, the conductance range); ``array_rows``: the target's ``array.rows`` (IR drop: a
    tile shorter than its array has its bitlines run on through the idle rows). Paper mode with
    a cell-level effect is refused."""
    effects = noise.effects
    if effects.cell_level:
        cell_effects_on = [name for name in effects.active
                           if name in ("write-verify", "clip", "drift", "ir-drop")]
        if noise.mode == "paper":
            raise NeftcError(
                "the paper's noise model is weight-level: it has no cells for the target's "
                f"cell effects ({', '.join(cell_effects_on)}); switch them off with --ideal "
                f"{','.join(cell_effects_on)} (Emulator(ideal_effects=...)), or use --noise cell")
        if cell is None:
            raise ValueError("variation: the cell effects need the layout's target.cell")
    # --noise off with cell effects on: the cells are the exact levels plus the effects.
    sigma = 0.0 if noise.mode == "off" else noise.sigma
    tables = {}
    for name, layer in layers.items():
        cell_std = cell_std_levels(layer.levels, n_levels, sigma, noise.state_ratio)
        # sum_{p,s} sign_p L^s e[p,s] has variance sum_{p,s} (L^s std[p,s])^2.
        weight_std = folded_std(cell_std, layer.coefficients)
        if noise.mode == "paper":  # the reference code's weight-level formula
            rec = layer.record
            draw_std = paper_weight_std(layer.ideal_weight, rec.quant.qmax, n_levels,
                                        rec.slicing.slices, noise.sigma, noise.state_ratio)
        else:  # weight units, the weight's own layout
            draw_std = layer.to_weight_layout(weight_std * layer.scales)
        tables[name] = LayerVariation(cell_std, weight_std, draw_std,
                                      layer.coefficients[:, :, None, None])
    return Variation(noise, n_levels, tables, cell, array_rows)


def program_chip(layers: Mapping[str, CrossbarLayer], model: Variation, seed: int, index: int,
                 periphery: Periphery) -> ChipInstance:
    """Chip instance ``index`` of ``seed``: each cell drawn once from the device model (the
    module docstring says how). Runs on the layers' device; the draws are made on the CPU."""
    noise = model.noise
    if not noise.active:
        return ideal_chip(layers, periphery, seed, index)
    copies = max((layer.copies for layer in layers.values()), default=1)
    folded: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for copy in range(copies):
        aggregate = chip_generator(seed, index, AGGREGATE_STREAM, copy)
        for name, layer in layers.items():
            if copy < layer.copies:
                folded[name].append(torch.empty(layer.weight_shape).normal_(generator=aggregate))
    z = {name: tuple(draws) for name, draws in folded.items()}
    if noise.mode != "paper" and (not periphery.ideal or noise.has_faults
                                  or noise.effects.cell_level):
        drawn = [draw_cells(layers, model, seed, index, z, copy) for copy in range(copies)]
        states = {}
        for name, layer in layers.items():
            cells = tuple(drawn[copy][name] for copy in range(layer.copies))
            states[name] = LayerChip(tuple(layer.weight_of(c) for c in cells), cells, z[name])
        return ChipInstance(index, seed, states, periphery)
    return ChipInstance(index, seed, {
        name: LayerChip(tuple(torch.addcmul(layer.ideal_weight, model.layers[name].draw_std,
                                            draw.to(layer.levels.device)) for draw in z[name]),
                        None, z[name])
        for name, layer in layers.items()}, periphery)


def draw_cells(layers: Mapping[str, CrossbarLayer], model: Variation, seed: int, index: int,
               folded: Mapping[str, tuple[torch.Tensor, ...]], copy: int
               ) -> dict[str, torch.Tensor]:
    """The cells ``[P, S, R, C]`` (level units, faults and the cell effects applied) of pipeline
    copy ``copy`` of chip ``index`` for the layers that have it, given each weight's folded draw
    ``folded``."""
    return program_cells(layers, model, seed, index, folded, copy)[0]


def program_cells(layers: Mapping[str, CrossbarLayer], model: Variation, seed: int, index: int,
                  folded: Mapping[str, tuple[torch.Tensor, ...]], copy: int
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``draw_cells``, and the pulses each cell took to program (int32, ``[P, S, R, C]``), for
    the layers with write-verify (empty without it: one pulse per cell)."""
    cells = chip_generator(seed, index, CELL_STREAM, copy)
    faults = chip_generator(seed, index, FAULT_STREAM, copy)
    noise = model.noise
    effects = noise.effects
    has_faults = noise.has_faults and noise.mode != "off"
    if effects.cell_level:
        assert model.cell is not None, "variation() checked it"
        window = cell_effects.CellWindow.of(model.cell)
        write = chip_generator(seed, index, WRITE_STREAM, copy)
        drifts = chip_generator(seed, index, DRIFT_STREAM, copy)
    out: dict[str, torch.Tensor] = {}
    pulses: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        if copy >= layer.copies:
            continue
        spread = model.layers[name]
        device = layer.levels.device
        z = folded[name][copy].to(device)
        target = layer.from_weight_layout(z) * spread.weight_std
        e = torch.randn(layer.levels.shape, generator=cells).to(device).mul_(spread.cell_std)
        # Independent cells conditioned on their weighted sum being the folded draw A:
        # e += std^2 a (A - a.e) / var(A), a = sign_p L^s (each cell's share of A).
        residual = target - (e * spread.coefficients).sum(dim=(0, 1))
        e = e.addcmul_(spread.cell_gain, residual)
        if effects.write_verify:
            e, pulses[name] = cell_effects.write_verify(
                e, spread.cell_std, window.tolerance, effects.spec.write_verify.max_pulses,
                write)
        conductance = e.add_(layer.levels)
        if has_faults:
            u = torch.rand(layer.levels.shape, generator=faults).to(device)
            low = noise.stuck_at_min_rate
            conductance = torch.where(u < low, 0.0, conductance)
            stuck_high = (u >= low) & (u < low + noise.stuck_at_max_rate)
            conductance = torch.where(stuck_high, float(model.n_levels - 1), conductance)
        if effects.clip:
            conductance = cell_effects.clip(conductance, model.n_levels)
        if effects.drift:
            conductance = cell_effects.drift(conductance, effects.spec.drift, effects.time_s,
                                             window.g_min, drifts)
        if effects.ir_drop:
            assert model.cell is not None
            conductance = ir_drop_cells(conductance, layer, model.cell,
                                        effects.spec.wire.r_segment_ohm,
                                        array_rows=model.array_rows)
        out[name] = conductance
    return out, pulses
