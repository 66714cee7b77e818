"""One crossbar-mapped layer as the chip computes it, read from its layout record.

The layer holds what the layout fixes: its programmed levels ``[P, S, R, C]``, scales, bias and
the tiles of the layout (every row and column range comes from the layout's tile records, never
recomputed). What one chip instance adds (the noisy conductances or effective weights of each
pipeline copy, the DAC and ADC) is a value, ``neftc.runtime.chip.ChipInstance``, passed to
``forward(x, chip)``: the layer keeps no per-chip state. How levels fold into weights, the
physical column order, the inputs of a grouped convolution's columns and which copy computes
which output position are read from ``neftc.format.encoding``. Three execution paths:

- ideal periphery: each copy's effective weight ``W = (sum_{p,s} sign_p * L^s * G[p, s] -
  offset) * scale``; one float conv/linear (a matmul per copy on its output positions when the
  layer has pipeline copies); with read noise, one more on the squared inputs and the weights'
  read variances, and one standard normal per output (``read_noise``);
- K stacked chip instances (ideal periphery): one batched matmul or grouped conv;
- target periphery: the DAC/ADC path of ``neftc.runtime.bitserial`` on the chip's cells.
"""

from __future__ import annotations

import itertools
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from neftc.format import encoding
from neftc.format.schema import LayerRecord, TileRecord
from neftc.runtime.bitserial import periphery_forward
from neftc.runtime.chip import ChipInstance
from neftc.runtime.reads import ReadEffects
from neftc.runtime.segments import Segment, column_segments


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
        self.segments = column_segments(record)
        # Which copy computes each output position of a sample (the format's assignment).
        self.position_copy: torch.Tensor
        self.register_buffer("position_copy", torch.tensor(
            [encoding.copy_of_position(m, self.copies) for m in range(record.positions)]))
        self.levels: torch.Tensor
        self.register_buffer("levels", levels.to(torch.float32))  # [P, S, R, C]
        self.scales: torch.Tensor
        self.register_buffer("scales", torch.tensor(record.quant.scales, dtype=torch.float32))
        self.bias: torch.Tensor | None
        self.register_buffer("bias", None if bias is None else bias.to(torch.float32))
        self.coefficients: torch.Tensor
        self.register_buffer("coefficients", encoding.fold_coefficients(
            record.slicing.polarities, record.slicing.slices, record.slicing.cell_bits))
        self.ideal_weight: torch.Tensor  # q * scale, the noise-free weight
        self.register_buffer("ideal_weight", self.weight_of(self.levels))

    @cached_property
    def array_segments(self) -> tuple[Segment, ...]:
        """The segments cut at every tile's columns: each piece inside one array per row range
        (the path whose reads have per-array converters or noise; built on first use)."""
        return tuple(_cut_at_tiles(self.segments, self.tiles))

    @cached_property
    def segment_tiles(self) -> tuple[tuple[int, ...], ...]:
        """Per ``array_segments`` piece, the index of the tile that holds each of its row
        ranges (from the layout's tile records)."""
        return tuple(
            tuple(next(i for i, t in enumerate(self.tiles) if t.row_start == r0
                       and t.col_start <= segment.col_start < t.col_start + t.col_count)
                  for r0, _ in segment.row_ranges)
            for segment in self.array_segments)

    # ------------------------------------------------------------ weights of cells

    def weight_of(self, conductance: torch.Tensor) -> torch.Tensor:
        """The effective (dequantised) weight of cells ``[P, S, R, C]``, in the weight's shape."""
        integer = encoding.fold(conductance, self.record.slicing.cell_bits, self.offset)
        return self.to_weight_layout(integer * self.scales)

    def to_weight_layout(self, matrix: torch.Tensor) -> torch.Tensor:
        """A crossbar-shaped [R, C] tensor in the weight's own shape (C_out first)."""
        return matrix.t().reshape(self.weight_shape).contiguous()

    def from_weight_layout(self, weight: torch.Tensor) -> torch.Tensor:
        """The inverse of ``to_weight_layout``: [R, C]."""
        return weight.reshape(self.weight_shape[0], -1).t()

    # ------------------------------------------------------------ execution

    def forward(self, x: torch.Tensor, chip: ChipInstance) -> torch.Tensor:
        """The layer's outputs on chip instance ``chip`` (its cells, weights and periphery)."""
        state = chip.layers[self.record.name]
        if chip.stacked:
            return self._stacked_op(x, list(state.weights))
        quant = chip.periphery.quant(self.record.name)
        reads = chip.reads
        if quant is None:
            if self.copies == 1:
                out = self._float_op(x, state.weights[0])
            else:
                out = self._copies_op(x, [w[None] for w in state.weights])
            if reads is not None and reads.noisy:
                out = out + self.read_noise(x, reads)
            return out
        assert state.conductances is not None, "a chip on the target periphery has its cells"
        return periphery_forward(self, x, state.conductances, quant, chip.periphery, reads)

    def read_noise(self, x: torch.Tensor, reads: ReadEffects) -> torch.Tensor:
        """The read noise of one pass on the ideal periphery: every output is one read of its
        weights' cells, so its noise is exactly Gaussian with variance ``sum_i x_i^2 S2_i``
        (``S2`` each weight's read variance, ``reads.weight_var``; every copy's cells alike):
        the layer's op on ``x^2`` with ``S2`` as weights, times one standard normal per
        output from the chip's read stream."""
        var = reads.weight_var[self.record.name]
        squared = x * x
        if self.copies == 1:
            variance = self._float_op(squared, var, bias=False)
        else:
            variance = self._copies_op(squared, [var[None]] * self.copies, bias=False)
        noise = reads.normal(tuple(variance.shape), variance.device)
        return noise.mul_(variance.clamp_(min=0.0).sqrt_())

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

    def _float_op(self, x: torch.Tensor, weight: torch.Tensor, bias: bool = True
                  ) -> torch.Tensor:
        rec = self.record
        b = self.bias if bias else None
        if rec.op == "linear":
            return F.linear(x, weight, b)
        conv = rec.conv
        assert conv is not None
        fn = F.conv2d if rec.op == "conv2d" else F.conv1d
        return fn(x, weight, b, conv.stride, conv.padding, conv.dilation, conv.groups)

    def _copies_op(self, x: torch.Tensor, weights: list[torch.Tensor], bias: bool = True
                   ) -> torch.Tensor:
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
        out = self.grouped_matmul(rows, per_position)  # [positions, K, N, C]
        if bias and self.bias is not None:
            out = out + self.bias
        if rec.op == "linear":
            return out.permute(1, 2, 0, 3).reshape(*x.shape[:-1], rec.matrix_cols)
        out = out.permute(1, 2, 3, 0).reshape(x.shape[0], rec.matrix_cols, *spatial)
        return out.contiguous()

    def grouped_matmul(self, rows: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
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
        kernel: list[int] | tuple[int, ...]
        dil: list[int] | tuple[int, ...]
        pad: list[int] | tuple[int, ...]
        stride: list[int] | tuple[int, ...]
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

    def unfold(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
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

    def restore(self, out: torch.Tensor, prefix: tuple[int, ...]) -> torch.Tensor:
        """[N * positions, C] back to the op's output shape."""
        c_out = self.record.matrix_cols
        if self.record.op == "linear":
            return out.reshape(*prefix, c_out)
        n, *spatial = prefix
        return out.reshape(n, *spatial, c_out).movedim(-1, 1).contiguous()


def _cut_at_tiles(segments: list[Segment], tiles: tuple[TileRecord, ...]) -> list[Segment]:
    """``segments`` cut at every tile's first and last column: each piece lies inside one tile
    per row range (``column_segments`` joins neighbouring tiles' columns)."""
    bounds = sorted({t.col_start for t in tiles} | {t.col_start + t.col_count for t in tiles})
    pieces: list[Segment] = []
    for segment in segments:
        stop = segment.col_start + segment.col_count
        cuts = [segment.col_start, *(b for b in bounds if segment.col_start < b < stop), stop]
        pieces.extend(Segment(segment.group, a, b - a, segment.row_ranges)
                      for a, b in itertools.pairwise(cuts))
    return pieces
