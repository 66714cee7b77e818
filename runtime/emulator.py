"""The emulator: execute a layout on simulated chip instances.

    emu = Emulator("out/", sigma=0.1, seed=0)
    emu.program_chip(3)              # chip instance 3: every cell programmed once (device model)
    logits = emu.forward(x)
    emu.effective_weights()          # noisy dequantised weights of every layer, this chip
    emu.cell_conductances()          # its cells, level units

Chip instance ``i`` of seed ``k`` is always the same chip: its noise comes from CPU
``torch.Generator``s seeded with a hash of ``(k, i, stream)`` (and the pipeline copy, for copies
after the first). See ``program_chip`` for how the cells are drawn (the folded noise of each
weight first, then the cells given it). Every pipeline copy of a layer (``TileRecord.replicas``)
is programmed with its own cells.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from neftc.devices import resolve_device
from neftc.errors import DataError, NeftcError
from neftc.format import encoding
from neftc.format.reader import Layout, load_layout
from neftc.runtime.crossbar import AdcConfig, CrossbarLayer, InputQuant
from neftc.runtime.graph import build_module
from neftc.runtime.noise import NoiseMode, NoiseModel
from neftc.targets.device_model import cell_std_levels, folded_std, paper_weight_std

# The independent random streams of one chip instance.
AGGREGATE_STREAM = 0  # per weight: the folded noise of its cells (and paper mode's draws)
CELL_STREAM = 1  # per cell: how that folded noise splits over the weight's cells
FAULT_STREAM = 2  # per cell: stuck-at faults


def chip_generator(seed: int, chip: int, stream: int, copy: int = 0) -> torch.Generator:
    """The generator of one random stream of chip instance ``chip`` under ``seed``, for the
    layers' first copy (``copy`` 0) or their ``copy``-th pipeline copy."""
    entropy = [seed, chip, stream] if copy == 0 else [seed, chip, stream, copy]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class Emulator:
    def __init__(self, layout: Layout | str | Path, *, sigma: float | None = None, seed: int = 0,
                 noise: NoiseMode = "cell", ideal_periphery: bool = True,
                 faults: bool = True, device: str | torch.device = "cpu",
                 adc_shortcut: bool = True) -> None:
        if noise == "paper" and not ideal_periphery:
            raise NeftcError("the paper's noise model is weight-level and has no per-cell form "
                             "for the DAC/ADC path; use it with ideal periphery "
                             "(neftc verify --noise paper --ideal-periphery)")
        self.layout = layout if isinstance(layout, Layout) else load_layout(layout)
        target = self.layout.doc.target
        self.seed = seed
        self.noise = NoiseModel(
            sigma=target.noise.sigma_rel if sigma is None else float(sigma),
            state_ratio=target.noise.state_ratio, mode=noise,
            stuck_at_min_rate=target.faults.stuck_at_min_rate if faults else 0.0,
            stuck_at_max_rate=target.faults.stuck_at_max_rate if faults else 0.0)
        self.ideal_periphery = ideal_periphery
        # The network runs on ``device``; every random draw is made on the CPU from the chip's
        # generators and moved there, so a chip instance is the same chip on any device.
        self.device = resolve_device(device)
        self.module, self.layers = build_module(self.layout, self.device)
        self.module.eval()
        self.n_levels = 2**target.cell.bits
        self.copies = max((layer.copies for layer in self.layers.values()), default=1)
        # Per layer and copy: the standard normals of the current chip's folded noise, one per
        # weight in the weight's own layout (kept so that the cells can be drawn on demand).
        self._aggregate_z = {name: [torch.empty(layer.weight_shape) for _ in range(layer.copies)]
                             for name, layer in self.layers.items()}
        self.set_sigma(self.noise.sigma)
        self.calibrated = False
        self.adc_shortcut = adc_shortcut
        stored = {layer.name: layer.dac for layer in self.layout.doc.layers}
        if all(dac is not None for dac in stored.values()):
            # The DAC ranges sign-off uses are part of the layout (neftc calibrate).
            self.set_input_quant({name: InputQuant(dac.scale, dac.signed, dac.bits)
                                  for name, dac in stored.items() if dac is not None})

    def set_sigma(self, sigma: float) -> None:
        """Use device variation ``sigma`` from the next chip instance on (the network, its
        calibration and its periphery stay); the chip is reset to the ideal levels."""
        self.noise = replace(self.noise, sigma=float(sigma))
        self._cell_std: dict[str, torch.Tensor] = {}  # [P, S, R, C], level units
        self._weight_std: dict[str, torch.Tensor] = {}  # [R, C], integer-weight units
        self._weight_std_w: dict[str, torch.Tensor] = {}  # per-weight std the folded draw uses
        self._cell_gain: dict[str, torch.Tensor] = {}  # filled when the cells are first drawn
        for name, layer in self.layers.items():
            cell_std = cell_std_levels(layer.levels, self.n_levels, self.noise.sigma,
                                       self.noise.state_ratio)
            # sum_{p,s} sign_p L^s e[p,s] has variance sum_{p,s} (L^s std[p,s])^2.
            weight_std = folded_std(cell_std, layer.coefficients)
            self._cell_std[name] = cell_std
            self._weight_std[name] = weight_std
            if self.noise.mode == "paper":  # the reference code's weight-level formula
                rec = layer.record
                self._weight_std_w[name] = paper_weight_std(
                    layer.ideal_weight, rec.quant.qmax, self.n_levels, rec.slicing.slices,
                    self.noise.sigma, self.noise.state_ratio)
            else:  # weight units, the weight's own layout
                self._weight_std_w[name] = layer.to_weight_layout(weight_std * layer.scales)
        self.program_ideal()

    # ------------------------------------------------------------------ chip instances

    def program_ideal(self) -> None:
        """Program every cell exactly (no variation)."""
        for layer in self.layers.values():
            layer.program(None)
        self.chip: int | None = None

    def program_chip(self, chip: int) -> None:
        """Program chip instance ``chip``: each cell drawn once from the device model.

        The draw is made in two exact steps (docs/emulator.md, "How a chip is drawn"): first the
        folded noise of every weight, ``sum_{p,s} sign_p L^s e[p,s]``, one Gaussian per weight
        with the summed variance of its cells; then, when the cells themselves are needed (the
        DAC/ADC path, stuck-at faults, ``cell_conductances``), each cell's noise given that sum.
        Together they are distributed exactly as independent per-cell draws, and both periphery
        paths see the same chip. The ideal-periphery path needs only the first step.
        """
        if not self.noise.active:
            self.program_ideal()
            self.chip = chip
            return
        self.chip = chip
        needs_cells = self.noise.mode != "paper" and (not self.ideal_periphery
                                                      or self.noise.has_faults)
        for copy in range(self.copies):
            aggregate = chip_generator(self.seed, chip, AGGREGATE_STREAM, copy)
            for name, layer in self.layers.items():
                if copy < layer.copies:
                    self._aggregate_z[name][copy].normal_(generator=aggregate)
        if needs_cells:
            drawn = [self._draw_cells(copy) for copy in range(self.copies)]
            for name, layer in self.layers.items():
                layer.program([drawn[copy][name] for copy in range(layer.copies)])
            return
        for name, layer in self.layers.items():
            layer.program(None, weights=[
                torch.addcmul(layer.ideal_weight, self._weight_std_w[name], z.to(self.device))
                for z in self._aggregate_z[name]])

    def cell_conductances(self, copy: int = 0) -> dict[str, torch.Tensor]:
        """Every cell of pipeline copy ``copy`` (0: the tiles themselves) of the current chip
        instance, ``[P, S, R, C]`` in level units (``level + (L-1) e``, stuck-at faults applied),
        for the layers that have that copy: the same cells on either periphery path. Drawn given
        the chip's folded per-weight noise, so that they fold back to it."""
        if self.chip is None or not self.noise.active:
            return {name: layer.levels.clone() for name, layer in self.layers.items()
                    if copy < layer.copies}
        if self.noise.mode == "paper":
            raise NeftcError("the paper's noise model is weight-level: it has no cells")
        return self._draw_cells(copy)

    def _draw_cells(self, copy: int) -> dict[str, torch.Tensor]:
        assert self.chip is not None
        cells = chip_generator(self.seed, self.chip, CELL_STREAM, copy)
        faults = chip_generator(self.seed, self.chip, FAULT_STREAM, copy)
        out = {}
        for name, layer in self.layers.items():
            if copy >= layer.copies:
                continue
            coefficients = layer.coefficients[:, :, None, None]
            cell_std = self._cell_std[name]
            z = self._aggregate_z[name][copy].to(self.device)
            folded = layer.from_weight_layout(z) * self._weight_std[name]
            e = torch.randn(layer.levels.shape, generator=cells).to(self.device).mul_(cell_std)
            # Independent cells conditioned on their weighted sum being the folded draw A:
            # e += std^2 a (A - a.e) / var(A), a = sign_p L^s (each cell's share of A).
            if name not in self._cell_gain:
                weight_var = self._weight_std[name] ** 2
                self._cell_gain[name] = (cell_std * cell_std * coefficients
                                         / weight_var.clamp(min=1e-30))
            residual = folded - (e * coefficients).sum(dim=(0, 1))
            conductance = e.addcmul_(self._cell_gain[name], residual).add_(layer.levels)
            if self.noise.has_faults:
                u = torch.rand(layer.levels.shape, generator=faults).to(self.device)
                low = self.noise.stuck_at_min_rate
                conductance = torch.where(u < low, 0.0, conductance)
                stuck_high = (u >= low) & (u < low + self.noise.stuck_at_max_rate)
                conductance = torch.where(stuck_high, float(self.n_levels - 1), conductance)
            out[name] = conductance
        return out

    def chips(self, count: int, start: int = 0) -> Iterator[int]:
        """Program chip instances ``start .. start+count-1`` in turn, yielding each index."""
        for chip in range(start, start + count):
            self.program_chip(chip)
            yield chip

    @torch.no_grad()
    def forward_chips(self, chips: list[int], x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of several chip instances in one pass (ideal periphery): each layer runs the
        K chips' weights as one batched matmul or grouped conv on K chip-major copies of ``x``.
        The same outputs as programming and running each chip in turn, in one pass (on an
        accelerator, small models would otherwise leave it idle)."""
        if not self.ideal_periphery:
            raise ValueError("forward_chips needs ideal periphery")
        stacks: dict[str, list[list[torch.Tensor]]] = {
            name: [[] for _ in range(layer.copies)] for name, layer in self.layers.items()}
        for chip in chips:
            self.program_chip(chip)
            for name, layer in self.layers.items():
                for copy, weight in enumerate(layer.weights):
                    stacks[name][copy].append(weight)
        try:
            for name, layer in self.layers.items():
                layer.program_stacked([torch.stack(stack) for stack in stacks[name]])
            out = self._run(x.to(self.device, torch.float32)
                            .repeat(len(chips), *[1] * (x.dim() - 1)))
        finally:
            for layer in self.layers.values():
                layer.program_stacked(None)
        return list(out.reshape(len(chips), x.shape[0], *out.shape[1:]))

    def effective_weights(self, copy: int = 0) -> dict[str, torch.Tensor]:
        """Dequantised weights of pipeline copy ``copy`` (0: the tiles themselves) of every layer
        that has it, as programmed on the current chip instance."""
        return {name: layer.weights[copy].detach().clone()
                for name, layer in self.layers.items() if copy < layer.copies}

    # ------------------------------------------------------------------ periphery

    def calibrate(self, x: torch.Tensor) -> dict[str, InputQuant]:
        """Set every layer's DAC range from the noise-free activations of ``x`` (max-abs)."""
        periphery = self.layout.doc.periphery
        ranges: dict[str, tuple[float, float]] = {}
        hooks = []
        for name, layer in self.layers.items():
            def record(_module, inputs, _output, name=name):
                value = inputs[0].detach()
                low, high = ranges.get(name, (0.0, 0.0))
                ranges[name] = (min(low, float(value.min())), max(high, float(value.max())))
            hooks.append(layer.register_forward_hook(record))
        chip = self.chip
        saved = {name: (layer.conductances, layer.weights, layer.input_quant)
                 for name, layer in self.layers.items()}
        try:
            for layer in self.layers.values():
                layer.program(None)
                layer.input_quant = None
            self._run(x.to(self.device, torch.float32))
        finally:
            for hook in hooks:
                hook.remove()
            for name, layer in self.layers.items():
                conductances, weights, quant = saved[name]
                layer.conductances, layer.weights, layer.input_quant = conductances, weights, quant
            self.chip = chip
        settings = {}
        for name, (low, high) in ranges.items():
            signed = low < 0
            bits = periphery.input_bits
            bound = max(abs(low), abs(high)) or 1.0
            settings[name] = InputQuant(scale=bound / encoding.dac_max_int(bits, signed),
                                        signed=signed, bits=bits)
        self.set_input_quant(settings)
        return settings

    def set_input_quant(self, settings: dict[str, InputQuant]) -> None:
        """Set every layer's DAC; the ADC is the layout's periphery, applied per tile of the
        layout (each tile's full scale from its own row count)."""
        periphery = self.layout.doc.periphery
        for name, layer in self.layers.items():
            layer.adc_shortcut = self.adc_shortcut
            if self.ideal_periphery:
                layer.input_quant, layer.adc = None, None
                continue
            layer.input_quant = settings[name]
            layer.adc = AdcConfig(periphery.adc_bits, periphery.dac_bits_per_cycle)
        self.calibrated = True

    # ------------------------------------------------------------------ execution

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        while isinstance(out, (list, tuple)) and len(out) == 1:
            out = out[0]
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs of the current chip instance, on the emulator's device (call ``calibrate``
        first for the DAC/ADC path)."""
        if not self.ideal_periphery and not self.calibrated:
            raise DataError("the emulator's DAC ranges are not set; call calibrate(x) with "
                            "representative inputs first (neftc verify does this)")
        expected = tuple(self.layout.doc.graph.input_shape[1:])
        if tuple(x.shape[1:]) != expected:
            raise DataError(f"input samples have shape {tuple(x.shape[1:])} but the layout was "
                            f"compiled for {expected}")
        return self._run(x.to(self.device, torch.float32))

    __call__ = forward

    def partial_mvms_per_weight(self) -> dict[str, int]:
        """How many crossbar partial MVMs each weight needs on the target's periphery
        (input cycles x phases x slices x polarities; 1 where the ADC lets them fold)."""
        counts = {}
        for name, layer in self.layers.items():
            if self.ideal_periphery or layer.input_quant is None or layer.adc is None:
                counts[name] = 1
                continue
            if layer._foldable():
                counts[name] = 1
                continue
            quant = layer.input_quant
            cycles = -(-quant.magnitude_bits // layer.adc.dac_bits_per_cycle)
            rec = layer.record
            counts[name] = (cycles * (2 if quant.signed else 1) * rec.slicing.slices
                            * rec.slicing.polarities)
        return counts


__all__ = ["CrossbarLayer", "Emulator", "chip_generator"]
