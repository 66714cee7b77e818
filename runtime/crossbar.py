"""One crossbar-mapped layer as the chip computes it.

The layer holds its programmed levels ``[P, S, R, C]`` and, for the current chip instance, the
noisy conductances in level units (``level + (L-1) * e``). Two execution paths:

- ideal periphery: the conductances fold into one effective weight
  ``W = (sum_{p,s} sign_p * L^s * G[p, s] - offset) * scale``; one float conv/linear;
- target periphery: inputs quantised by the DAC, fed ``dac_bits_per_cycle`` bits per cycle (two
  phases for signed inputs), each row tile's bitline sums digitised by the ADC, then shift-and-add
  over cycles and slices, polarity subtraction, row-tile accumulation and dequantisation. All bit
  planes of a layer go through one batched matmul per row tile. When the ADC covers the largest
  column sum at one level unit per code (it cannot clip or round a noise-free sum), the planes,
  slices and polarities fold and one matmul on the DAC-quantised input remains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from neftc.format.schema import LayerRecord


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
        return 2**self.magnitude_bits - 1


@dataclass(frozen=True)
class AdcConfig:
    adc_bits: int
    dac_bits_per_cycle: int
    row_tiles: tuple[tuple[int, int], ...]  # (row_start, row_count) of each row tile

    def full_scale(self, rows: int, n_levels: int) -> float:
        """Largest bitline sum of a tile of ``rows`` rows, in level units."""
        return rows * (2**self.dac_bits_per_cycle - 1) * (n_levels - 1)

    def transparent(self, n_levels: int) -> bool:
        """True when the ADC resolves every noise-free column sum exactly (one code per unit)."""
        return all(self.full_scale(rc, n_levels) <= 2**self.adc_bits - 1
                   for _, rc in self.row_tiles)


class CrossbarLayer(nn.Module):
    def __init__(self, record: LayerRecord, levels: torch.Tensor, bias: torch.Tensor | None,
                 n_levels: int) -> None:
        super().__init__()
        self.record = record
        self.n_levels = n_levels
        self.weight_shape = tuple(record.weight_shape)
        n_pol = record.slicing.polarities
        self.offset = record.slicing.offset
        self.register_buffer("levels", levels.to(torch.float32))  # [P, S, R, C]
        self.register_buffer("scales", torch.tensor(record.quant.scales, dtype=torch.float32))
        self.register_buffer("bias", None if bias is None else bias.to(torch.float32))
        self.register_buffer("slice_weights", torch.tensor(
            [float(n_levels**s) for s in range(record.slicing.slices)]))
        self.register_buffer("signs", torch.tensor([1.0, -1.0][:n_pol]))
        self.register_buffer("ideal_weight", self.to_weight_layout(
            self._integer(self.levels) * self.scales))  # q * scale, the noise-free weight
        self.conductance: torch.Tensor = self.levels  # level units, this chip instance
        self.weight_override: torch.Tensor | None = None  # this chip's weight, given directly
        self.weight: torch.Tensor = self.ideal_weight
        self.input_quant: InputQuant | None = None
        self.adc: AdcConfig | None = None
        self.stacked_weights: torch.Tensor | None = None  # [K, ...]: K chip instances at once

    # ------------------------------------------------------------ programming a chip instance

    def program(self, conductance: torch.Tensor | None,
                weight_override: torch.Tensor | None = None) -> None:
        """Set this chip instance's conductances (None: the ideal levels). ``weight_override``
        gives the chip's effective weight directly (the ideal-periphery fast path, whose
        conductances are drawn only on demand, and the paper's weight-level mode)."""
        self.conductance = self.levels if conductance is None else conductance
        self.weight_override = weight_override
        if weight_override is not None:
            self.weight = weight_override
        elif conductance is None:
            self.weight = self.ideal_weight
        else:
            self.weight = self.to_weight_layout(self._integer(self.conductance) * self.scales)

    @property
    def fold_coefficients(self) -> torch.Tensor:
        """sign_p * L^s, shaped [P, S, 1, 1]."""
        return (self.signs[:, None] * self.slice_weights[None, :])[:, :, None, None]

    def to_weight_layout(self, matrix: torch.Tensor) -> torch.Tensor:
        """A crossbar-shaped [R, C] tensor in the weight's own shape (C_out first)."""
        return matrix.t().reshape(self.weight_shape).contiguous()

    def from_weight_layout(self, weight: torch.Tensor) -> torch.Tensor:
        """The inverse of ``to_weight_layout``: [R, C]."""
        return weight.reshape(self.weight_shape[0], -1).t()

    def _integer(self, conductance: torch.Tensor) -> torch.Tensor:
        q = torch.einsum("psrc,p,s->rc", conductance, self.signs, self.slice_weights)
        return q - self.offset if self.offset else q

    # ------------------------------------------------------------ execution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stacked_weights is not None:
            return self._stacked_op(x, self.stacked_weights)
        if self.input_quant is None:
            return self._float_op(x, self.weight)
        return self._periphery(x)

    def program_stacked(self, weights: torch.Tensor | None) -> None:
        """Several chip instances at once (ideal periphery): ``weights`` [K, *weight_shape];
        the input batch then holds K chip-major copies of the samples. None: back to one chip."""
        self.stacked_weights = weights

    def _stacked_op(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The layer for K chips in one call: a batched matmul (linear) or a grouped conv."""
        rec = self.record
        k = weights.shape[0]
        if rec.op == "linear":
            out = torch.bmm(x.reshape(k, -1, x.shape[-1]), weights.transpose(1, 2))
            if self.bias is not None:
                out = out + self.bias
            return out.reshape(*x.shape[:-1], weights.shape[1])
        conv = rec.conv
        assert conv is not None
        n = x.shape[0] // k
        grouped = x.reshape(k, n, *x.shape[1:]).transpose(0, 1).reshape(n, -1, *x.shape[2:])
        fn = F.conv2d if rec.op == "conv2d" else F.conv1d
        bias = None if self.bias is None else self.bias.repeat(k)
        out = fn(grouped, weights.reshape(-1, *weights.shape[2:]), bias, conv.stride,
                 conv.padding, conv.dilation, conv.groups * k)
        out = out.reshape(n, k, -1, *out.shape[2:]).transpose(0, 1)
        return out.reshape(k * n, *out.shape[2:])

    def _float_op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        rec = self.record
        if rec.op == "linear":
            return F.linear(x, weight, self.bias)
        conv = rec.conv
        assert conv is not None
        fn = F.conv2d if rec.op == "conv2d" else F.conv1d
        return fn(x, weight, self.bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def _unfold(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Rows the crossbar sees: [M, R], and the output shape prefix to restore."""
        rec = self.record
        if rec.op == "linear":
            return x.reshape(-1, x.shape[-1]), tuple(x.shape[:-1])
        conv = rec.conv
        assert conv is not None
        if rec.op == "conv1d":
            x4 = x.unsqueeze(-2)
            kernel, dil, pad, stride = ((1, conv.kernel[0]), (1, conv.dilation[0]),
                                        (0, conv.padding[0]), (1, conv.stride[0]))
        else:
            x4, kernel, dil, pad, stride = x, conv.kernel, conv.dilation, conv.padding, conv.stride
        cols = F.unfold(x4, tuple(kernel), dilation=tuple(dil), padding=tuple(pad),
                        stride=tuple(stride))  # [N, C_in*k, positions]
        n, _, positions = cols.shape
        out_h = (x4.shape[-2] + 2 * pad[0] - dil[0] * (kernel[0] - 1) - 1) // stride[0] + 1
        out_w = positions // out_h
        spatial = (out_w,) if rec.op == "conv1d" else (out_h, out_w)
        return cols.transpose(1, 2).reshape(n * positions, -1), (n, *spatial)

    def _periphery(self, x: torch.Tensor) -> torch.Tensor:
        rec = self.record
        groups = rec.conv.groups if rec.conv is not None else 1
        rows, prefix = self._unfold(x)
        quant = self.input_quant
        assert quant is not None and self.adc is not None
        x_int = torch.clamp(torch.round(rows / quant.scale),
                            -quant.max_int if quant.signed else 0, quant.max_int)
        c_out = rec.matrix_cols
        if groups == 1:
            q_out = self._crossbar_mvm(x_int, self.conductance)
        else:  # column block g reads the input channels of group g
            per_group_in = x_int.shape[1] // groups
            per_group_out = c_out // groups
            q_out = torch.cat([
                self._crossbar_mvm(x_int[:, g * per_group_in:(g + 1) * per_group_in],
                                   self.conductance[..., g * per_group_out:(g + 1) * per_group_out])
                for g in range(groups)], dim=1)
        out = q_out * (quant.scale * self.scales)
        if self.bias is not None:
            out = out + self.bias
        if rec.op == "linear":
            return out.reshape(*prefix, c_out)
        n, *spatial = prefix
        return out.reshape(n, *spatial, c_out).movedim(-1, 1).contiguous()

    def _bit_serial_block(self, x_int: torch.Tensor, physical: torch.Tensor, cycles: int,
                          bits: int, signed: bool, column_block: int, partial: torch.Tensor,
                          total: torch.Tensor, out: torch.Tensor) -> None:
        """Shift-and-added ADC outputs for a block of integer inputs [M, R] into ``out``
        [M, C*P*S] (``physical`` [R, C*P*S]): every phase and cycle's bit plane in one matmul per
        row tile and column block, each tile's bitline sums through the ADC, row tiles
        accumulated. ``partial`` and ``total`` are scratch buffers of at least
        [K*M, column_block] (K = phases x cycles), small enough to stay in cache."""
        adc = self.adc
        assert adc is not None
        shifts = torch.arange(cycles, dtype=torch.int32, device=x_int.device) * bits
        small = torch.uint8 if cycles * bits <= 8 else torch.int32
        mask = 2**bits - 1

        def bit_planes(x_tile: torch.Tensor) -> torch.Tensor:
            """[K * M, rows] float bit planes of a tile's inputs."""
            phases = [x_tile.clamp(min=0), (-x_tile).clamp(min=0)] if signed else [x_tile]
            return torch.cat([
                ((phase.to(small)[None] >> shifts.to(small)[:, None, None]) & mask)
                .reshape(-1, phase.shape[1]) for phase in phases]).to(torch.float32)

        planes = [bit_planes(x_int[:, r0:r0 + rc]) for r0, rc in adc.row_tiles]
        steps = [adc.full_scale(rc, self.n_levels) / (2**adc.adc_bits - 1)
                 for _, rc in adc.row_tiles]
        n_planes = planes[0].shape[0] // x_int.shape[0]
        plane_weights = torch.cat([sign * (2.0 ** shifts.to(torch.float32))
                                   for sign in (1.0, -1.0)[:n_planes // cycles]])
        codes_max = float(2**adc.adc_bits - 1)
        rows = planes[0].shape[0]
        for c0 in range(0, physical.shape[1], column_block):
            cols = min(column_block, physical.shape[1] - c0)
            bitline = partial[:rows * cols].view(rows, cols)
            acc = total[:rows * cols].view(rows, cols)
            for index, ((r0, rc), tile_planes, step) in enumerate(
                    zip(adc.row_tiles, planes, steps)):
                # Bitline sums of one tile (exact integers when noise-free), digitised: the
                # ADC code (rounded, clipped) times its step; row tiles accumulated.
                torch.mm(tile_planes, physical[r0:r0 + rc, c0:c0 + cols], out=bitline)
                bitline.div_(step).round_().clamp_(0.0, codes_max)
                if index == 0:
                    torch.mul(bitline, step, out=acc)
                else:
                    acc.add_(bitline, alpha=step)
            # Shift-and-add over cycles, minus the negative phase.
            out[:, c0:c0 + cols] = (plane_weights @ acc.view(n_planes, -1)).view(-1, cols)

    def _crossbar_mvm(self, x_int: torch.Tensor, conductance: torch.Tensor) -> torch.Tensor:
        """Integer-domain output [M, C] of the crossbar for integer inputs [M, R]."""
        adc = self.adc
        quant = self.input_quant
        assert adc is not None and quant is not None
        n_pol, n_slices, _, n_cols = conductance.shape
        if adc.transparent(self.n_levels):
            q = torch.einsum("psrc,p,s->rc", conductance, self.signs, self.slice_weights)
            if self.offset:
                q = q - self.offset
            return x_int @ q
        bits = adc.dac_bits_per_cycle
        cycles = math.ceil(quant.magnitude_bits / bits)
        n_phases = 2 if quant.signed else 1
        physical = conductance.permute(2, 3, 0, 1).reshape(conductance.shape[2], -1)  # [R, C*P*S]
        planes = n_phases * cycles
        # Blocks of input vectors and columns whose bitline sums (K*M x columns) stay in cache
        # (~2 MB); the scratch buffers are reused by every block and tile.
        column_block = min(physical.shape[1], 512)
        block = max(1, min(x_int.shape[0], (1 << 19) // (planes * column_block)))
        partial = torch.empty(planes * block * column_block, device=x_int.device)
        total = torch.empty_like(partial)
        q_out = torch.empty(x_int.shape[0], physical.shape[1], device=x_int.device)
        for m0 in range(0, x_int.shape[0], block):
            self._bit_serial_block(x_int[m0:m0 + block], physical, cycles, bits, quant.signed,
                                   column_block, partial, total, q_out[m0:m0 + block])
        q_out = torch.einsum("mcps,p,s->mc", q_out.reshape(-1, n_cols, n_pol, n_slices),
                             self.signs, self.slice_weights)
        if self.offset:
            q_out = q_out - self.offset * x_int.sum(dim=1, keepdim=True)
        return q_out
