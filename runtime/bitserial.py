"""A crossbar layer on the target periphery (DAC/ADC), for one chip instance's cells.

Inputs are quantised by the DAC and fed ``dac_bits_per_cycle`` bits per cycle (two phases for
signed inputs); per tile of the layout, the bitline sums of the tile's rows for its columns are
digitised by the ADC (full scale set by the tile's own row count), then row tiles are
accumulated, and shift-and-add over cycles and slices, polarity subtraction and dequantisation
follow. When every tile's ADC resolves its largest noise-free sum at one level unit per code, the
planes, slices and polarities fold and one matmul on the DAC-quantised input remains
(``Periphery.foldable``; exact without noise on the reads, so not with a chip's read noise or
converter errors, ``neftc.runtime.read_effects``: those run bit-serially, each tile's DACs
driving its wordlines, each bitline read adding its noise before its own ADC).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from neftc.format import encoding
from neftc.runtime.periphery import AdcConfig, InputQuant, Periphery
from neftc.runtime.reads import ReadEffects, adc_codes, apply_dac

if TYPE_CHECKING:
    from neftc.runtime.crossbar import CrossbarLayer


def periphery_forward(layer: CrossbarLayer, x: torch.Tensor, conductances: tuple[torch.Tensor, ...],
                      quant: InputQuant, periphery: Periphery,
                      reads: ReadEffects | None = None) -> torch.Tensor:
    """The layer's outputs for inputs ``x`` on cells ``conductances`` (one ``[P, S, R, C]`` per
    pipeline copy, level units) through the DAC ``quant`` and ``periphery``'s ADC, with the
    chip's read-time effects ``reads`` (None: exact reads)."""
    rows, prefix = layer.unfold(x)
    x_int = quant.quantize(rows)
    positions = layer.record.positions
    # [copies, N, per_copy, G*R]: each copy's output positions (one copy: all of them).
    by_copy = encoding.split_by_copy(x_int.reshape(-1, positions, x_int.shape[-1]),
                                     positions, layer.copies)
    stacked = conductances[0][None] if layer.copies == 1 else torch.stack(conductances)
    q_out = crossbar_mvm(layer, by_copy.reshape(layer.copies, -1, x_int.shape[-1]), stacked,
                         quant, periphery, reads)
    q_out = encoding.merge_copies(q_out.reshape(*by_copy.shape[:3], -1), positions)
    out = q_out.reshape(-1, layer.record.matrix_cols) * (quant.scale * layer.scales)
    if layer.bias is not None:
        out = out + layer.bias
    return layer.restore(out, prefix)


def crossbar_mvm(layer: CrossbarLayer, x_int: torch.Tensor, conductance: torch.Tensor,
                 quant: InputQuant, periphery: Periphery,
                 reads: ReadEffects | None = None) -> torch.Tensor:
    """Integer-domain outputs [B, M, C] of B crossbars (the copies of a layer), integer
    inputs [B, M, G*R] and conductances [B, P, S, R, C]."""
    adc = periphery.adc
    assert adc is not None
    if reads is not None and reads.exact_reads:
        reads = None
    if reads is None and periphery.foldable(layer.tiles, layer.n_levels):
        # x_int @ q, q each copy's folded integer weights [B, R, C]
        q = encoding.fold(conductance.movedim(0, 2), layer.record.slicing.cell_bits,
                          layer.offset)
        return layer.grouped_matmul(x_int, q)
    cycles = math.ceil(quant.magnitude_bits / adc.dac_bits_per_cycle)
    physical = encoding.to_physical(conductance)  # [B, R, C*P*S]
    planes = (2 if quant.signed else 1) * cycles
    widest = max(s.col_count for s in layer.segments)
    copies, count = x_int.shape[0], x_int.shape[1]
    # Blocks of input vectors whose bitline sums (B x planes x M x columns) stay in cache
    # (~2 MB); the scratch buffers are reused by every block and segment.
    block = max(1, min(count, (1 << 19) // (copies * planes * widest)))
    partial = torch.empty(copies * planes * block * widest, device=x_int.device)
    total = torch.empty_like(partial)
    q_phys = torch.empty(copies, count, physical.shape[-1], device=x_int.device)
    for m0 in range(0, count, block):
        _bit_serial_block(layer, adc, x_int[:, m0:m0 + block], physical, cycles, quant.signed,
                          (partial, total), q_phys[:, m0:m0 + block], reads)
    # Shift-and-added bitline values back to (polarity, slice, input, column), folded with
    # the cell encoding's signs and slice weights; the offset applies per input (below).
    slicing = layer.record.slicing
    per_cell = encoding.from_physical(q_phys.reshape(copies * count, -1),
                                      slicing.polarities, slicing.slices)
    q_out = encoding.fold(per_cell, slicing.cell_bits, 0).reshape(copies, count, -1)
    return q_out - layer.offset * _group_sums(layer, x_int) if layer.offset else q_out


def _group_sums(layer: CrossbarLayer, x_int: torch.Tensor) -> torch.Tensor:
    """Per output column, the sum of the inputs its group reads: [..., C] (offset encoding)."""
    r, c = layer.record.matrix_rows, layer.record.matrix_cols // layer.groups
    sums = x_int.reshape(*x_int.shape[:-1], layer.groups, r).sum(dim=-1)  # [..., G]
    return sums.repeat_interleave(c, dim=-1)


def _bit_planes(x_tile: torch.Tensor, shifts: torch.Tensor, small: torch.dtype, mask: int,
                signed: bool) -> torch.Tensor:
    """[B, planes * M, rows] float bit planes of a tile's inputs [B, M, rows]."""
    phases = [x_tile.clamp(min=0), (-x_tile).clamp(min=0)] if signed else [x_tile]
    return torch.cat([
        ((phase.to(small)[:, None] >> shifts.to(small)[None, :, None, None]) & mask)
        .reshape(phase.shape[0], -1, phase.shape[-1]) for phase in phases],
        dim=1).to(torch.float32)


def _bit_serial_block(layer: CrossbarLayer, adc: AdcConfig, x_int: torch.Tensor,
                      physical: torch.Tensor, cycles: int, signed: bool,
                      scratch: tuple[torch.Tensor, torch.Tensor], out: torch.Tensor,
                      reads: ReadEffects | None = None) -> None:
    """Shift-and-added ADC outputs for a block of integer inputs [B, M, G*R] into ``out``
    [B, M, C*P*S]: for each column segment (a group's columns inside the layout's tiles),
    every phase and cycle's bit plane of each covering tile's input rows in one batched
    matmul, each tile's bitline sums through the ADC, row tiles accumulated. ``scratch``:
    two buffers (partial, total) of at least [B, planes * M, widest segment]. ``reads``: the
    chip's read noise and converter errors (None: exact reads), see ``_read``."""
    partial, total = scratch
    bits = adc.dac_bits_per_cycle
    shifts = torch.arange(cycles, dtype=torch.int32, device=x_int.device) * bits
    small = torch.uint8 if cycles * bits <= 8 else torch.int32
    copies = x_int.shape[0]
    n_planes = (2 if signed else 1) * cycles
    plane_weights = torch.cat([sign * (2.0 ** shifts.to(torch.float32))
                               for sign in (1.0, -1.0)[:n_planes // cycles]])
    codes_max = float(adc.codes)
    rows = n_planes * x_int.shape[1]
    planes: dict[tuple[int, int, int, int], torch.Tensor] = {}
    # Exact reads: the widest segments; reads with converter errors or noise: the segments
    # cut at the arrays (each piece read by one array's DACs and ADCs).
    segments = layer.segments if reads is None else layer.array_segments
    tile_of = layer.segment_tiles if reads is not None else [(-1,) * len(s.row_ranges)
                                                             for s in segments]
    for segment, tiles in zip(segments, tile_of):
        c0, cols = segment.col_start, segment.col_count
        bitline = partial[:copies * rows * cols].view(copies, rows, cols)
        acc = total[:copies * rows * cols].view(copies, rows, cols)
        for index, ((r0, rc), tile) in enumerate(zip(segment.row_ranges, tiles)):
            # The applied levels of the tile's wordlines: the same for every tile of these
            # rows unless the tile's own DACs have errors.
            key = (segment.group, r0, rc, tile if reads is not None and reads.dac else -1)
            if key not in planes:
                first = encoding.input_row_start(segment.group, layer.record.matrix_rows, r0)
                planes[key] = _bit_planes(x_int[:, :, first:first + rc], shifts, small,
                                          2**bits - 1, signed)
                if key[3] >= 0:
                    assert reads is not None
                    planes[key] = apply_dac(planes[key], reads.converters[layer.record.name][tile],
                                            reads.dac_inl, 2**bits - 1)
            # Bitline sums of one tile (exact integers when noise-free), digitised: the
            # ADC code (rounded, clipped) times its step; row tiles accumulated.
            torch.bmm(planes[key], physical[:, r0:r0 + rc, c0:c0 + cols], out=bitline)
            step = adc.step(rc, layer.n_levels)
            if reads is None:
                bitline.div_(step).round_().clamp_(0.0, codes_max)
            else:
                _read(layer, reads, planes[key], bitline, tile, c0, step, adc.codes)
            if index == 0:
                torch.mul(bitline, step, out=acc)
            else:
                acc.add_(bitline, alpha=step)
        # Shift-and-add over cycles, minus the negative phase.
        out[:, :, c0:c0 + cols] = torch.matmul(
            plane_weights, acc.view(copies, n_planes, -1)).view(copies, -1, cols)


def _read(layer: CrossbarLayer, reads: ReadEffects, applied: torch.Tensor, bitline: torch.Tensor,
          tile: int, c0: int, step: float, codes: int) -> None:
    """One read of tile ``tile``'s bitlines ``bitline`` [B, planes * M, cols] (physical
    columns from ``c0``) for its applied wordline levels ``applied`` [B, planes * M, rows], in
    place: the read noise of its cells added to each sum (variance ``sum_r applied_r^2`` times
    the read variance of one cell: the count of active rows for 1-bit cycles), then the
    bitline's own ADC (``adc_codes``, or the ideal round and clamp)."""
    if reads.noisy:
        std = applied.square().sum(dim=-1, keepdim=True).sqrt_().mul_(reads.read_std)
        bitline.addcmul_(reads.normal(tuple(bitline.shape), bitline.device), std)
    if not reads.adc:
        bitline.div_(step).round_().clamp_(0.0, float(codes))
        return
    converters = reads.converters[layer.record.name][tile]
    first = c0 - layer.tiles[tile].col_start
    lines = slice(first, first + bitline.shape[-1])
    bitline.copy_(adc_codes(bitline, step, codes, converters.adc_gain[:, None, lines],
                            converters.adc_offset[:, None, lines], reads.adc_inl))
