"""The column segments of a crossbar layer: its physical columns cut at every tile and
convolution-group boundary, each with the row ranges of the layout tiles that hold it (the units
the bit-serial DAC/ADC path digitises, ``neftc.runtime.bitserial``)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from neftc.format import encoding
from neftc.format.schema import LayerRecord


@dataclass(frozen=True)
class Segment:
    """Physical columns ``[col_start, col_start + col_count)`` of one convolution group, and the
    tiles (row ranges) that hold them."""

    group: int
    col_start: int
    col_count: int
    row_ranges: tuple[tuple[int, int], ...]  # (row_start, row_count) of each covering tile


def column_segments(record: LayerRecord) -> list[Segment]:
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
    for start, stop in itertools.pairwise(bounds):
        covering = tuple(sorted((t.row_start, t.row_count) for t in record.tiles
                                if t.col_start <= start and stop <= t.col_start + t.col_count))
        group = encoding.group_segments(start, stop - start, n_pol, n_slices, record.matrix_cols,
                                        groups)[0].group
        segments.append(Segment(group, start, stop - start, covering))
    return merge(segments)


def merge(segments: list[Segment], widest: int = 512) -> list[Segment]:
    """Neighbouring segments of the same group held by tiles of the same row ranges joined (every
    bitline is digitised on its own, so this changes nothing but the matmul sizes), then cut into
    pieces of at most ``widest`` columns (cache-sized bitline sums)."""
    joined: list[Segment] = []
    for segment in segments:
        last = joined[-1] if joined else None
        if (last is not None and last.group == segment.group
                and last.row_ranges == segment.row_ranges
                and last.col_start + last.col_count == segment.col_start):
            joined[-1] = Segment(last.group, last.col_start,
                                  last.col_count + segment.col_count, last.row_ranges)
        else:
            joined.append(segment)
    return [Segment(s.group, start, min(widest, s.col_start + s.col_count - start), s.row_ranges)
            for s in joined for start in range(s.col_start, s.col_start + s.col_count, widest)]
