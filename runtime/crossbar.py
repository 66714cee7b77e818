"""One crossbar-mapped layer as the chip computes it, read from its layout record.

The layer holds its programmed levels ``[P, S, R, C]``, the tiles of the layout (every row and
column range comes from the layout's tile records, never recomputed) and, for the current chip
instance, the noisy conductances of each pipeline copy in level units (``level + (L-1) * e``).
How levels fold into weights, the physical column order, the inputs of a grouped convolution's
columns and which copy computes which output position are read from ``neftc.format.encoding``.
Two execution paths:

- ideal periphery: each copy's conductances fold into one effective weight
  ``W = (sum_{p,s} sign_p * L^s * G[p, s] - offset) * scale``; one float conv/linear (a matmul
  per copy on its output positions when the layer has pipeline copies);
- target periphery: inputs quantised by the DAC, fed ``dac_bits_per_cycle`` bits per cycle (two
  phases for signed inputs); per tile of the layout, the bitline sums of the tile's rows for its
  columns are digitised by the ADC (full scale set by the tile's own row count), then row tiles
  are accumulated, and shift-and-add over cycles and slices, polarity subtraction and
  dequantisation follow. When every tile's ADC resolves its largest noise-free sum at one level
  unit per code, the planes, slices and polarities fold and one matmul on the DAC-quantised input
  remains (``adc_shortcut``; exact without noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from neftc.format import encoding
from neftc.format.schema import LayerRecord, TileRecord


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


@dataclass(frozen=True)
class _Segment:
    """Physical columns ``[col_start, col_start + col_count)`` of one convolution group, and the
    tiles (row ranges) that hold them."""

    group: int
    col_start: int
    col_count: int
    row_ranges: tuple[tuple[int, int], ...]  # (row_start, row_count) of each covering tile


def _column_segments(record: LayerRecord) -> list[_Segment]:
    """The layer's physical columns cut at every tile and group boundary, each with the row
    ranges of the tiles covering it (the ADC digitises every bitline on its own, so cutting a
    tile's columns changes nothing)."""
    n_pol, n_slices = record.slicing.polarities, record.slicing.slices
    groups = record.conv.groups if record.conv is not None else 1
    cuts: set[int] = set()
    for tile in record.tiles:
        for segment in encoding.group_segments(tile.col_start, tile.col_count, n_pol, n_slices,
                                               record.matrix_cols, groups):
            cuts.update((segment.col_start, segment.col_start + segment.col_count))
    bounds = sorted(cuts)
    segments = []
    for start, stop in zip(bounds, bounds[1:]):
        covering = tuple(sorted((t.row_start, t.row_count) for t in record.tiles
                                if t.col_start <= start and stop <= t.col_start + t.col_count))
        group = encoding.group_segments(start, stop - start, n_pol, n_slices, record.matrix_cols,
                                        groups)[0].group
        segments.append(_Segment(group, start, stop - start, covering))
    return _merge(segments)


def _merge(segments: list[_Segment], widest: int = 512) -> list[_Segment]:
    """Neighbouring segments of the same group held by tiles of the same row ranges joined (every
    bitline is digitised on its own, so this changes nothing but the matmul sizes), then cut into
    pieces of at most ``widest`` columns (cache-sized bitline sums)."""
    joined: list[_Segment] = []
    for segment in segments:
        last = joined[-1] if joined else None
        if (last is not None and last.group == segment.group
                and last.row_ranges == segment.row_ranges
                and last.col_start + last.col_count == segment.col_start):
            joined[-1] = _Segment(last.group, last.col_start,
                                  last.col_count + segment.col_count, last.row_ranges)
        else:
            joined.append(segment)
    return [_Segment(s.group, start, min(widest, s.col_start + s.col_count - start), s.row_ranges)
            for s in joined for start in range(s.col_start, s.col_start + s.col_count, widest)]


class CrossbarLayer(nn.Module):
    def __init__(self, record: LayerRecord, levels: torch.Tensor, bias: torch.Tensor | None,
                 n_levels: int) -> None:
        super().__init__()
        self.record = record
        self.n_levels = n_levels
        self.weight_shape = tuple(record.weight_shape)
        self.copies = record.replication
        self.groups = record.conv.groups if record.conv is not None else 1
        self.offset = record.slicing.offset
        self.tiles: tuple[TileRecord, ...] = tuple(record.tiles)
        self.segments = _column_segments(record)
        # Which copy computes each output position of a sample (the format's assignment).
        self.register_buffer("position_copy", torch.tensor(
            [encoding.copy_of_position(m, self.copies) for m in range(record.positions)]))
        self.register_buffer("levels", levels.to(torch.float32))  # [P, S, R, C]
        self.register_buffer("scales", torch.tensor(record.quant.scales, dtype=torch.float32))
        self.register_buffer("bias", None if bias is None else bias.to(torch.float32))
        self.register_buffer("coefficients", encoding.fold_coefficients(
            record.slicing.polarities, record.slicing.slices, record.slicing.cell_bits))
        self.register_buffer("ideal_weight", self.to_weight_layout(
            self._integer(self.levels) * self.scales))  # q * scale, the noise-free weight
        # This chip instance, per pipeline copy: conductances in level units, and the effective
        # weight (given directly on the ideal path, whose cells are drawn only on demand).
        self.conductances: list[torch.Tensor] = [self.levels] * self.copies
        self.weights: list[torch.Tensor] = [self.ideal_weight] * self.copies
        self.input_quant: InputQuant | None = None
        self.adc: AdcConfig | None = None
        self.adc_shortcut = True
        self.stacked_weights: list[torch.Tensor] | None = None  # per copy [K, ...]: K chips

    # ------------------------------------------------------------ programming a chip instance

    @property
    def conductance(self) -> torch.Tensor:
        """Copy 0's conductances, ``[P, S, R, C]``."""
        return self.conductances[0]

    @property
    def weight(self) -> torch.Tensor:
        """Copy 0's effective weight."""
        return self.weights[0]

    def program(self, conductances: list[torch.Tensor] | None,
                weights: list[torch.Tensor] | None = None) -> None:
        """Set this chip instance's conductances, one per copy (None: the ideal levels).
        ``weights`` gives each copy's effective weight directly (the ideal-periphery fast path,
        whose conductances are drawn only on demand, and the paper's weight-level mode)."""
        self.conductances = [self.levels] * self.copies if conductances is None else conductances
        if weights is not None:
            self.weights = weights
        elif conductances is None:
            self.weights = [self.ideal_weight] * self.copies
        else:
            self.weights = [self.to_weight_layout(self._integer(c) * self.scales)
                            for c in conductances]

    def to_weight_layout(self, matrix: torch.Tensor) -> torch.Tensor:
        """A crossbar-shaped [R, C] tensor in the weight's own shape (C_out first)."""
        return matrix.t().reshape(self.weight_shape).contiguous()

    def from_weight_layout(self, weight: torch.Tensor) -> torch.Tensor:
        """The inverse of ``to_weight_layout``: [R, C]."""
        return weight.reshape(self.weight_shape[0], -1).t()

    def _integer(self, conductance: torch.Tensor) -> torch.Tensor:
        return encoding.fold(conductance, self.record.slicing.cell_bits, self.offset)

    # ------------------------------------------------------------ execution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stacked_weights is not None:
            return self._stacked_op(x, self.stacked_weights)
        if self.input_quant is None:
            if self.copies == 1:
                return self._float_op(x, self.weights[0])
            return self._copies_op(x, [w[None] for w in self.weights])
        return self._periphery(x)

    def program_stacked(self, weights: list[torch.Tensor] | None) -> None:
        """Several chip instances at once (ideal periphery): ``weights[copy]`` [K, *weight_shape];
        the input batch then holds K chip-major copies of the samples. None: back to one chip."""
        self.stacked_weights = weights

    def _stacked_op(self, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """The layer for K chips in one call: a batched matmul (linear) or a grouped conv."""
        if self.copies > 1:
            return self._copies_op(x, weights)
        rec = self.record
        stacked = weights[0]
        k = stacked.shape[0]
        if rec.op == "linear":
            out = torch.bmm(x.reshape(k, -1, x.shape[-1]), stacked.transpose(1, 2))
            if self.bias is not None:
                out = out + self.bias
            return out.reshape(*x.shape[:-1], stacked.shape[1])
        conv = rec.conv
        assert conv is not None
        n = x.shape[0] // k
        grouped = x.reshape(k, n, *x.shape[1:]).transpose(0, 1).reshape(n, -1, *x.shape[2:])
        fn = F.conv2d if rec.op == "conv2d" else F.conv1d
        bias = None if self.bias is None else self.bias.repeat(k)
        out = fn(grouped, stacked.reshape(-1, *stacked.shape[2:]), bias, conv.stride,
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

    def _copies_op(self, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """A layer with pipeline copies, for K chips (``weights[copy]`` [K, *weight_shape], the
        batch K chip-major copies of the samples): output position ``m`` of each sample is
        computed with copy ``encoding.copy_of_position(m)``'s weights, one matmul per position,
        batched over positions and chips."""
        k = weights[0].shape[0]
        rec = self.record
        positions = rec.positions
        matrices = torch.stack(weights).reshape(self.copies, k, rec.matrix_cols, -1)
        per_position = matrices.transpose(2, 3)[self.position_copy]  # [positions, K, R, C]
        if rec.op == "linear":  # x [K*N, ..., F]: positions are the middle dimensions
            rows = x.reshape(k, -1, positions, x.shape[-1]).permute(2, 0, 1, 3)
        else:  # position-major rows straight from the patches: [positions, K, N, G*R]
            patches = self._patches(x)  # [K*N, C, oh, ow, kh, kw]
            spatial = patches.shape[3:4] if rec.op == "conv1d" else patches.shape[2:4]
            rows = patches.permute(2, 3, 0, 1, 4, 5).reshape(positions, k, -1,
                                                               rec.matrix_rows * self.groups)
        out = self._grouped_matmul(rows, per_position)  # [positions, K, N, C]
        if self.bias is not None:
            out = out + self.bias
        if rec.op == "linear":
            return out.permute(1, 2, 0, 3).reshape(*x.shape[:-1], rec.matrix_cols)
        out = out.permute(1, 2, 3, 0).reshape(x.shape[0], rec.matrix_cols, *spatial)
        return out.contiguous()

    def _grouped_matmul(self, rows: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
        """``rows`` [..., G*R] times a grouped [.., R, C] matrix: weight column c of group g
        reads input rows ``g*R .. g*R+R-1`` (``neftc.format.encoding``)."""
        if self.groups == 1:
            return rows @ matrices
        r, c = self.record.matrix_rows, self.record.matrix_cols // self.groups
        return torch.cat([rows[..., g * r:(g + 1) * r] @ matrices[..., g * c:(g + 1) * c]
                          for g in range(self.groups)], dim=-1)

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """Every output position's input patch of a conv, as a view:
        [N, C_in, out_h, out_w, kh, kw] (conv1d: out_h = kh = 1)."""
        conv = self.record.conv
        assert conv is not None
        if self.record.op == "conv1d":
            x4 = x.unsqueeze(-2)
            kernel, dil, pad, stride = ((1, conv.kernel[0]), (1, conv.dilation[0]),
                                        (0, conv.padding[0]), (1, conv.stride[0]))
        else:
            x4, kernel, dil, pad, stride = x, conv.kernel, conv.dilation, conv.padding, conv.stride
        padded = F.pad(x4, (pad[1], pad[1], pad[0], pad[0]))
        span_h, span_w = (kernel[0] - 1) * dil[0] + 1, (kernel[1] - 1) * dil[1] + 1
        windows = padded.unfold(2, span_h, stride[0]).unfold(3, span_w, stride[1])
        return windows[..., ::dil[0], ::dil[1]]

    def _unfold(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Rows the crossbar sees: [N * positions, G * R] (group-major, C-order im2col), and the
        output shape prefix to restore."""
        rec = self.record
        if rec.op == "linear":
            return x.reshape(-1, x.shape[-1]), tuple(x.shape[:-1])
        patches = self._patches(x)  # [N, C, oh, ow, kh, kw]
        n, _, out_h, out_w = patches.shape[:4]
        rows = patches.permute(0, 2, 3, 1, 4, 5).reshape(n * out_h * out_w, -1)
        spatial = (out_w,) if rec.op == "conv1d" else (out_h, out_w)
        return rows, (n, *spatial)

    def _restore(self, out: torch.Tensor, prefix: tuple[int, ...]) -> torch.Tensor:
        """[N * positions, C] back to the op's output shape."""
        c_out = self.record.matrix_cols
        if self.record.op == "linear":
            return out.reshape(*prefix, c_out)
        n, *spatial = prefix
        return out.reshape(n, *spatial, c_out).movedim(-1, 1).contiguous()

    def _periphery(self, x: torch.Tensor) -> torch.Tensor:
        rows, prefix = self._unfold(x)
        quant = self.input_quant
        assert quant is not None and self.adc is not None
        x_int = torch.clamp(torch.round(rows / quant.scale),
                            -quant.max_int if quant.signed else 0, quant.max_int)
        positions = self.record.positions
        # [copies, N, per_copy, G*R]: each copy's output positions (one copy: all of them).
        by_copy = encoding.split_by_copy(x_int.reshape(-1, positions, x_int.shape[-1]),
                                         positions, self.copies)
        conductances = (self.conductances[0][None] if self.copies == 1
                        else torch.stack(self.conductances))
        q_out = self._crossbar_mvm(by_copy.reshape(self.copies, -1, x_int.shape[-1]),
                                   conductances)
        q_out = encoding.merge_copies(q_out.reshape(*by_copy.shape[:3], -1), positions)
        out = q_out.reshape(-1, self.record.matrix_cols) * (quant.scale * self.scales)
        if self.bias is not None:
            out = out + self.bias
        return self._restore(out, prefix)

    def _foldable(self) -> bool:
        adc = self.adc
        assert adc is not None
        return self.adc_shortcut and all(adc.exact(t.row_count, self.n_levels)
                                         for t in self.tiles)

    def _crossbar_mvm(self, x_int: torch.Tensor, conductance: torch.Tensor) -> torch.Tensor:
        """Integer-domain outputs [B, M, C] of B crossbars (the copies of a layer), integer
        inputs [B, M, G*R] and conductances [B, P, S, R, C]."""
        adc = self.adc
        quant = self.input_quant
        assert adc is not None and quant is not None
        if self._foldable():  # x_int @ q, q each copy's folded integer weights [B, R, C]
            q = encoding.fold(conductance.movedim(0, 2), self.record.slicing.cell_bits,
                              self.offset)
            return self._grouped_matmul(x_int, q)
        bits = adc.dac_bits_per_cycle
        cycles = math.ceil(quant.magnitude_bits / bits)
        physical = encoding.to_physical(conductance)  # [B, R, C*P*S]
        planes = (2 if quant.signed else 1) * cycles
        widest = max(s.col_count for s in self.segments)
        copies, count = x_int.shape[0], x_int.shape[1]
        # Blocks of input vectors whose bitline sums (B x planes x M x columns) stay in cache
        # (~2 MB); the scratch buffers are reused by every block and segment.
        block = max(1, min(count, (1 << 19) // (copies * planes * widest)))
        partial = torch.empty(copies * planes * block * widest, device=x_int.device)
        total = torch.empty_like(partial)
        q_phys = torch.empty(copies, count, physical.shape[-1], device=x_int.device)
        for m0 in range(0, count, block):
            self._bit_serial_block(x_int[:, m0:m0 + block], physical, cycles, bits,
                                   quant.signed, partial, total, q_phys[:, m0:m0 + block])
        # Shift-and-added bitline values back to (polarity, slice, input, column), folded with
        # the cell encoding's signs and slice weights; the offset applies per input (below).
        slicing = self.record.slicing
        per_cell = encoding.from_physical(q_phys.reshape(copies * count, -1),
                                          slicing.polarities, slicing.slices)
        q_out = encoding.fold(per_cell, slicing.cell_bits, 0).reshape(copies, count, -1)
        return q_out - self.offset * self._group_sums(x_int) if self.offset else q_out

    def _group_sums(self, x_int: torch.Tensor) -> torch.Tensor:
        """Per output column, the sum of the inputs its group reads: [..., C] (offset
        encoding)."""
        r, c = self.record.matrix_rows, self.record.matrix_cols // self.groups
        sums = x_int.reshape(*x_int.shape[:-1], self.groups, r).sum(dim=-1)  # [..., G]
        return sums.repeat_interleave(c, dim=-1)

    def _bit_serial_block(self, x_int: torch.Tensor, physical: torch.Tensor, cycles: int,
                          bits: int, signed: bool, partial: torch.Tensor, total: torch.Tensor,
                          out: torch.Tensor) -> None:
        """Shift-and-added ADC outputs for a block of integer inputs [B, M, G*R] into ``out``
        [B, M, C*P*S]: for each column segment (a group's columns inside the layout's tiles),
        every phase and cycle's bit plane of each covering tile's input rows in one batched
        matmul, each tile's bitline sums through the ADC, row tiles accumulated. ``partial`` and
        ``total`` are scratch buffers of at least [B, planes * M, widest segment]."""
        adc = self.adc
        assert adc is not None
        shifts = torch.arange(cycles, dtype=torch.int32, device=x_int.device) * bits
        small = torch.uint8 if cycles * bits <= 8 else torch.int32
        mask = 2**bits - 1

        def bit_planes(x_tile: torch.Tensor) -> torch.Tensor:
            """[B, planes * M, rows] float bit planes of a tile's inputs [B, M, rows]."""
            phases = [x_tile.clamp(min=0), (-x_tile).clamp(min=0)] if signed else [x_tile]
            return torch.cat([
                ((phase.to(small)[:, None] >> shifts.to(small)[None, :, None, None]) & mask)
                .reshape(phase.shape[0], -1, phase.shape[-1]) for phase in phases],
                dim=1).to(torch.float32)

        copies = x_int.shape[0]
        n_planes = (2 if signed else 1) * cycles
        plane_weights = torch.cat([sign * (2.0 ** shifts.to(torch.float32))
                                   for sign in (1.0, -1.0)[:n_planes // cycles]])
        codes_max = float(adc.codes)
        rows = n_planes * x_int.shape[1]
        planes: dict[tuple[int, int, int], torch.Tensor] = {}
        for segment in self.segments:
            c0, cols = segment.col_start, segment.col_count
            bitline = partial[:copies * rows * cols].view(copies, rows, cols)
            acc = total[:copies * rows * cols].view(copies, rows, cols)
            for index, (r0, rc) in enumerate(segment.row_ranges):
                key = (segment.group, r0, rc)
                if key not in planes:
                    first = encoding.input_row_start(segment.group, self.record.matrix_rows, r0)
                    planes[key] = bit_planes(x_int[:, :, first:first + rc])
                # Bitline sums of one tile (exact integers when noise-free), digitised: the
                # ADC code (rounded, clipped) times its step; row tiles accumulated.
                torch.bmm(planes[key], physical[:, r0:r0 + rc, c0:c0 + cols], out=bitline)
                step = adc.step(rc, self.n_levels)
                bitline.div_(step).round_().clamp_(0.0, codes_max)
                if index == 0:
                    torch.mul(bitline, step, out=acc)
                else:
                    acc.add_(bitline, alpha=step)
            # Shift-and-add over cycles, minus the negative phase.
            out[:, :, c0:c0 + cols] = torch.matmul(
                plane_weights, acc.view(copies, n_planes, -1)).view(copies, -1, cols)
