"""Per-inference cost estimate of a layout, from the target's per-operation constants.

Counts per inference (one input sample):

- array reads: every output position of a layer is computed once, on one copy of the layer
  (position ``m`` on copy ``m % replication``, ``encoding.copy_of_position``), so each tile is read
  once per input vector (``positions``) and input cycle (``ceil(input_bits / dac_bits_per_cycle)``;
  inputs assumed unsigned, one phase) whatever the number of copies; the reads are split over the
  copies (``reads_per_copy``);
- DAC conversions: one per used wordline per read; ADC conversions: one per used bitline per read;
- digital adds: shift-and-add of every ADC output, plus the accumulation of row tiles;
- cell reads: used cells x reads;
- bytes moved between tiles: the placement's traffic (``layout.placement``: partial sums to the
  accumulating row tile, activations to the consumer layers' tiles, counted for the original tiles
  only) plus the traffic of the pipeline copies. A copy is fed by the original tile it copies: for
  each of its output positions the tile forwards the input vector (``row_count`` wordline inputs,
  ``input_bits / 8`` bytes each) to the copy's array and gets the copy's bitline results back
  (``col_count`` ADC outputs, ``ceil(adc_bits / 8)`` bytes each), so the accumulation and the
  traffic to the next layer stay those of the placement. Byte-hops multiply each transfer by the
  core-to-core hops between the original's core and the copy's (0 on the same core);
- programming (once, not per inference): every programmed cell, copies included, written with
  write-verify.

Energy uses ``cost.*_pj`` (interconnect: byte-hops x ``link_energy_pj_per_byte``); latency uses
``cost.array_read_latency_ns`` per read cycle: without pipelining the layers run one after the
other, each taking as long as its busiest copy (``ceil(positions / replication)`` input vectors);
pipelined, one inference per bottleneck-layer time. Area: used arrays x ``cost.array_area_um2``.
"""

from __future__ import annotations

import math
from typing import Any

from neftc.format import encoding
from neftc.format.schema import LayoutDoc


def positions_per_copy(positions: int, replication: int) -> list[int]:
    """Output positions of one sample computed on each copy (``encoding.copy_of_position``)."""
    counts = [0] * replication
    for position in range(positions):
        counts[encoding.copy_of_position(position, replication)] += 1
    return counts


def _hops(doc: LayoutDoc) -> Any:
    """Core-to-core hop counts of the target chip (the placement's core graph)."""
    import networkx as nx

    from neftc.passes.place import core_graph

    return dict(nx.all_pairs_shortest_path_length(core_graph(doc.target.chip)))


def replica_traffic(doc: LayoutDoc) -> dict[str, dict[str, float]]:
    """Per layer with copies: bytes moved to and from its copies per inference, and byte-hops."""
    input_bytes = doc.periphery.input_bits / 8
    output_bytes = math.ceil(doc.periphery.adc_bits / 8)
    hops = None
    traffic = {}
    for layer in doc.layers:
        if layer.replication < 2:
            continue
        if hops is None:
            hops = _hops(doc)
        counts = positions_per_copy(layer.positions, layer.replication)
        moved = byte_hops = 0.0
        for tile in layer.tiles:
            for copy, (core, _array) in enumerate(tile.replicas, start=1):
                tile_bytes = counts[copy] * (tile.row_count * input_bytes + tile.col_count * output_bytes)
                moved += tile_bytes
                byte_hops += tile_bytes * hops[tile.core][core]
        traffic[layer.name] = {"bytes": moved, "byte_hops": byte_hops}
    return traffic


def estimate_cost(doc: LayoutDoc) -> dict[str, Any]:
    target = doc.target
    cost = target.cost
    cycles = math.ceil(doc.periphery.input_bits / doc.periphery.dac_bits_per_cycle)
    copies_traffic = replica_traffic(doc)
    layers = []
    totals = {"array_reads": 0, "cell_reads": 0, "dac_conversions": 0, "adc_conversions": 0,
              "digital_adds": 0}
    layer_times = []
    for layer in doc.layers:
        reads_per_tile = layer.positions * cycles
        tiles = layer.tiles
        row_tiles = len({t.row_tile for t in tiles})
        counts = {
            "array_reads": reads_per_tile * len(tiles),
            "cell_reads": reads_per_tile * sum(t.row_count * t.col_count for t in tiles),
            "dac_conversions": reads_per_tile * sum(t.row_count for t in tiles),
            "adc_conversions": reads_per_tile * sum(t.col_count for t in tiles),
            "digital_adds": reads_per_tile * sum(t.col_count for t in tiles)
            + layer.positions * layer.matrix_cols * (row_tiles - 1),
        }
        for key, value in counts.items():
            totals[key] += value
        per_copy = positions_per_copy(layer.positions, layer.replication)
        time_ns = max(per_copy) * cycles * cost.array_read_latency_ns
        layer_times.append(time_ns)
        traffic = copies_traffic.get(layer.name, {"bytes": 0.0, "byte_hops": 0.0})
        layers.append({"name": layer.name, **counts, "replication": layer.replication,
                       "reads_per_copy": [n * cycles * len(tiles) for n in per_copy],
                       "replica_bytes": traffic["bytes"], "replica_byte_hops": traffic["byte_hops"],
                       "time_ns": time_ns})
    replica_bytes = sum(t["bytes"] for t in copies_traffic.values())
    replica_hops = sum(t["byte_hops"] for t in copies_traffic.values())
    byte_hops = doc.placement.byte_hops + replica_hops
    energy = {
        "arrays_pj": totals["array_reads"] * cost.array_read_energy_pj,
        "dac_pj": totals["dac_conversions"] * cost.dac_energy_pj,
        "adc_pj": totals["adc_conversions"] * cost.adc_energy_pj,
        "digital_pj": totals["digital_adds"] * cost.digital_add_energy_pj,
        "interconnect_pj": byte_hops * cost.link_energy_pj_per_byte,
    }
    cells = doc.summary.cells_used
    original_cells = sum(t.row_count * t.col_count for layer in doc.layers for t in layer.tiles)
    return {
        "per_inference": {
            **totals,
            "bytes_moved": doc.placement.bytes_exchanged + replica_bytes,
            "bytes_exchanged": doc.placement.bytes_exchanged,
            "replica_bytes": replica_bytes,
            "byte_hops": byte_hops,
            "placement_byte_hops": doc.placement.byte_hops,
            "replica_byte_hops": replica_hops,
        },
        "energy_pj": {**energy, "total_pj": sum(energy.values())},
        "latency_ns": {"sequential": sum(layer_times),
                       "pipelined_interval": max(layer_times, default=0.0)},
        "area_um2": {"used_arrays": doc.summary.arrays_used * cost.array_area_um2,
                     "chip": target.chip.arrays * cost.array_area_um2},
        "programming": {"cells": cells, "replica_cells": cells - original_cells,
                        "energy_pj": cells * cost.cell_write_energy_pj},
        "layers": layers,
        "assumptions": "inputs unsigned (one phase per cycle); each output position computed "
                       "once, on one copy; each tile read once per input vector and cycle; "
                       "digital adds = shift-and-add + row-tile accumulation; a copy's inputs "
                       "are forwarded by the tile it copies and its bitline results sent back",
    }
