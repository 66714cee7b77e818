"""The emulator: execute a layout on simulated chip instances.

    emu = Emulator("out/", sigma=0.1, seed=0)  # the target's DAC/ADC, as neftc verify
    emu.calibrate(x_calib)           # DAC ranges (unless stored in the layout: neftc calibrate)
    emu.program_chip(3)              # chip instance 3: every cell programmed once (device model)
    logits = emu.forward(x)
    emu.effective_weights()          # noisy dequantised weights of every layer, this chip
    emu.cell_conductances()          # its cells, level units

    chip = emu.instance(5)           # chip instance 5 as a value; the emulator's chip is unchanged
    logits = emu.forward(x, chip)
    logits = emu((input_ids, attention_mask))  # several inputs: a tuple, in the layout's order

The periphery is the target's DAC and ADC by default (``ideal_periphery=False``), the same
default as ``neftc verify``; ``ideal_periphery=True`` runs the crossbars without DAC/ADC
quantisation (``neftc verify --ideal-periphery``). The target's device effects besides
programming variation (``target.effects``: read noise, drift, wire resistance, converter errors,
write-verify, clipping) are on as the target states them, like ``neftc verify``;
``ideal_effects=("read-noise", ...)`` or ``("all",)`` switches them off (``--ideal``) and
``t_inference_s`` is the time after programming the chip is read at (``--t-inference``).

The emulator is a thin holder: the network (``module``, stateless), the noise model's spreads
(``variation``), the periphery (``periphery``: ideal, or the DAC ranges and the ADC) and the
current chip instance ``chip`` (a frozen ``ChipInstance``, replaced, never mutated, by
``program_chip`` / ``program_ideal`` / ``set_input_quant``). How a chip is drawn:
``neftc.runtime.variation``. What the network takes (one tensor, or a tuple of tensors for a
layout of several inputs): ``neftc.runtime.inputs``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import torch

from neftc.devices import resolve_device
from neftc.errors import DataError, NeftcError
from neftc.format import encoding
from neftc.format.reader import Layout, load_layout
from neftc.runtime.chip import ChipInstance, ideal_chip, stack_chips
from neftc.runtime.effects import effects_for
from neftc.runtime.graph import build_module
from neftc.runtime.inputs import Inputs, as_tuple, prepare, repeat
from neftc.runtime.noise import NoiseMode, NoiseModel
from neftc.runtime.periphery import AdcConfig, InputQuant, Periphery
from neftc.runtime.read_effects import read_effects_active, with_read_effects
from neftc.runtime.variation import chip_generator, draw_cells, program_chip, variation


class Emulator:
    def __init__(self, layout: Layout | str | Path, *, sigma: float | None = None, seed: int = 0,
                 noise: NoiseMode = "cell", ideal_periphery: bool = False,
                 faults: bool = True, device: str | torch.device = "cpu",
                 adc_shortcut: bool = True, ideal_effects: Collection[str] = (),
                 t_inference_s: float | None = None) -> None:
        if noise == "paper" and not ideal_periphery:
            raise NeftcError("the paper's noise model is weight-level and has no per-cell form "
                             "for the DAC/ADC path (the default periphery); use it with ideal "
                             "periphery: Emulator(..., noise='paper', ideal_periphery=True), "
                             "neftc verify --noise paper --ideal-periphery")
        self.layout = layout if isinstance(layout, Layout) else load_layout(layout)
        target = self.layout.doc.target
        self.seed = seed
        self.noise = NoiseModel(
            sigma=target.noise.sigma_rel if sigma is None else float(sigma),
            state_ratio=target.noise.state_ratio, mode=noise,
            stuck_at_min_rate=target.faults.stuck_at_min_rate if faults else 0.0,
            stuck_at_max_rate=target.faults.stuck_at_max_rate if faults else 0.0,
            effects=effects_for(target.effects, ideal=ideal_effects, t_inference_s=t_inference_s))
        self.ideal_periphery = ideal_periphery
        self.adc_shortcut = adc_shortcut
        # The network runs on ``device``; every random draw is made on the CPU from the chip's
        # generators and moved there, so a chip instance is the same chip on any device.
        self.device = resolve_device(device)
        self.module, self.layers = build_module(self.layout, self.device)
        self.module.eval()
        self.n_levels = 2**target.cell.bits
        self.copies = max((layer.copies for layer in self.layers.values()), default=1)
        periphery = self.layout.doc.periphery
        self.periphery = Periphery(
            ideal=ideal_periphery, shortcut=adc_shortcut,
            adc=AdcConfig(periphery.adc_bits, periphery.dac_bits_per_cycle))
        self.set_sigma(self.noise.sigma)
        stored = {layer.name: layer.dac for layer in self.layout.doc.layers}
        if all(dac is not None for dac in stored.values()):
            # The DAC ranges sign-off uses are part of the layout (neftc calibrate).
            self.set_input_quant({name: InputQuant(dac.scale, dac.signed, dac.bits)
                                  for name, dac in stored.items() if dac is not None})

    @property
    def calibrated(self) -> bool:
        """True once the DAC ranges are set (``calibrate``, ``set_input_quant`` or the layout)."""
        return self.periphery.dac is not None

    def set_sigma(self, sigma: float) -> None:
        """Use device variation ``sigma`` from the next chip instance on (the network, its
        calibration and its periphery stay); the chip is reset to the ideal levels."""
        self.noise = replace(self.noise, sigma=float(sigma))
        target = self.layout.doc.target
        self.variation = variation(self.layers, self.noise, self.n_levels, target.cell,
                                   target.array.rows)
        self.program_ideal()

    # ------------------------------------------------------------------ chip instances

    def ideal(self) -> ChipInstance:
        """The ideal chip (every cell exact) with the emulator's periphery, as a value."""
        return ideal_chip(self.layers, self.periphery, self.seed)

    def instance(self, chip: int) -> ChipInstance:
        """Chip instance ``chip`` of the emulator's seed, noise and periphery, as a value (the
        emulator's current chip is unchanged)."""
        programmed = program_chip(self.layers, self.variation, self.seed, chip, self.periphery)
        return with_read_effects(programmed, self.layers, self.noise.effects, self.n_levels)

    @property
    def active_effects(self) -> tuple[str, ...]:
        """The device effects besides programming variation that change what this emulator's
        chips compute (the converters' errors count on the target periphery only)."""
        return read_effects_active(self.noise.effects, self.ideal_periphery)

    def program_ideal(self) -> None:
        """Program every cell exactly (no variation)."""
        self.chip = self.ideal()

    def program_chip(self, chip: int) -> None:
        """Make chip instance ``chip`` the current chip: each cell drawn once from the device
        model (``neftc.runtime.variation``)."""
        self.chip = self.instance(chip)

    def chips(self, count: int, start: int = 0) -> Iterator[int]:
        """Program chip instances ``start .. start+count-1`` in turn, yielding each index."""
        for chip in range(start, start + count):
            self.program_chip(chip)
            yield chip

    def cell_conductances(self, copy: int = 0) -> dict[str, torch.Tensor]:
        """Every cell of pipeline copy ``copy`` (0: the tiles themselves) of the current chip
        instance, ``[P, S, R, C]`` in level units (``level + (L-1) e``, stuck-at faults applied),
        for the layers that have that copy: the same cells on either periphery path. Drawn given
        the chip's folded per-weight noise, so that they fold back to it."""
        chip = self.chip
        if chip.index is None or not self.noise.active:
            return {name: layer.levels.clone() for name, layer in self.layers.items()
                    if copy < layer.copies}
        if self.noise.mode == "paper":
            raise NeftcError("the paper's noise model is weight-level: it has no cells")
        folded = {name: state.folded for name, state in chip.layers.items()
                  if state.folded is not None}
        return draw_cells(self.layers, self.variation, chip.seed, chip.index, folded, copy)

    def effective_weights(self, copy: int = 0) -> dict[str, torch.Tensor]:
        """Dequantised weights of pipeline copy ``copy`` (0: the tiles themselves) of every layer
        that has it, as programmed on the current chip instance."""
        return {name: self.chip.layers[name].weights[copy].detach().clone()
                for name, layer in self.layers.items() if copy < layer.copies}

    @torch.no_grad()
    def forward_chips(self, chips: list[int], x: Inputs) -> list[torch.Tensor]:
        """Outputs of several chip instances in one pass (ideal periphery): each layer runs the
        K chips' weights as one batched matmul or grouped conv on K chip-major copies of ``x``.
        The same outputs as programming and running each chip in turn, in one pass (on an
        accelerator, small models would otherwise leave it idle). The emulator's current chip
        is unchanged."""
        if not self.ideal_periphery:
            raise ValueError("forward_chips needs ideal periphery")
        stacked = stack_chips([self.instance(chip) for chip in chips])
        inputs = self._inputs(x)
        out = self._run(repeat(inputs, len(chips)), stacked)
        return list(out.reshape(len(chips), inputs[0].shape[0], *out.shape[1:]))

    # ------------------------------------------------------------------ periphery

    def calibrate(self, x: Inputs) -> dict[str, InputQuant]:
        """Set every layer's DAC range from the noise-free activations of ``x`` (max-abs): the
        ideal chip on the ideal periphery runs ``x`` (a value made for this and dropped); the
        current chip keeps its cells and gets the new ranges. The DACs convert what reaches a
        crossbar: integer inputs (token ids) have no DAC range of their own."""
        ranges: dict[str, tuple[float, float]] = {}
        hooks = []
        for name, layer in self.layers.items():
            def record(_module: object, inputs: tuple[torch.Tensor, ...], _output: object,
                       name: str = name) -> None:
                value = inputs[0].detach()
                low, high = ranges.get(name, (0.0, 0.0))
                ranges[name] = (min(low, float(value.min())), max(high, float(value.max())))
            hooks.append(layer.register_forward_hook(record))
        try:
            self._run(self._inputs(x), ideal_chip(self.layers, Periphery()))
        finally:
            for hook in hooks:
                hook.remove()
        bits = self.layout.doc.periphery.input_bits
        settings = {}
        for name, (low, high) in ranges.items():
            signed = low < 0
            bound = max(abs(low), abs(high)) or 1.0
            settings[name] = InputQuant(scale=bound / encoding.dac_max_int(bits, signed),
                                        signed=signed, bits=bits)
        self.set_input_quant(settings)
        return settings

    def set_input_quant(self, settings: Mapping[str, InputQuant]) -> None:
        """Set every layer's DAC; the ADC is the layout's periphery, applied per tile of the
        layout (each tile's full scale from its own row count). On the ideal periphery the
        ranges are kept but not used."""
        self.periphery = self.periphery.with_dac({name: settings[name] for name in self.layers})
        self.chip = self.chip.with_periphery(self.periphery)

    # ------------------------------------------------------------------ execution

    def _inputs(self, x: Inputs) -> tuple[torch.Tensor, ...]:
        """``x`` checked against the layout's inputs, in their dtypes, on the device."""
        return prepare(self.layout.doc.graph.inputs, x, self.device)

    def _run(self, x: Inputs, chip: ChipInstance | None = None) -> torch.Tensor:
        """The network on prepared inputs (``_inputs``), without checks."""
        out = self.module(*as_tuple(x), self.chip if chip is None else chip)
        while isinstance(out, (list, tuple)) and len(out) == 1:
            out = out[0]
        return out

    @torch.no_grad()
    def forward(self, x: Inputs, chip: ChipInstance | None = None) -> torch.Tensor:
        """Outputs of chip instance ``chip`` (default: the current one), on the emulator's
        device (call ``calibrate`` first for the DAC/ADC path). ``x``: a tensor for a one-input
        layout, else a tuple of tensors in the layout's input order (``graph.inputs``)."""
        chip = self.chip if chip is None else chip
        if not chip.periphery.ready:
            raise DataError("the emulator's DAC ranges are not set; call calibrate(x) with "
                            "representative inputs first (neftc verify does this)")
        return self._run(self._inputs(x), chip)

    __call__ = forward

    def partial_mvms_per_weight(self) -> dict[str, int]:
        """How many crossbar partial MVMs each weight needs on the target's periphery
        (input cycles x phases x slices x polarities; 1 where the ADC lets them fold)."""
        # reads are exact unless read noise or converter errors act (as ReadEffects.exact_reads)
        exact = not {"read-noise", "dac", "adc"} & set(self.active_effects)
        return {name: self.periphery.partial_mvms(name, layer.tiles, self.n_levels,
                                                  layer.record.slicing.slices,
                                                  layer.record.slicing.polarities,
                                                  exact_reads=exact)
                for name, layer in self.layers.items()}


__all__ = ["Emulator", "chip_generator"]
