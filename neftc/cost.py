"""Per-inference cost estimate of a layout, from the target's per-operation constants.

Counts per inference (one input sample):

- array reads: every tile is read once per input vector (``positions``) and input cycle
  (``ceil(input_bits / dac_bits_per_cycle)``; inputs assumed unsigned, one phase);
- DAC conversions: one per used wordline per read; ADC conversions: one per used bitline per read;
- digital adds: shift-and-add of every ADC output, plus the accumulation of row tiles;
- cell reads: used cells x reads;
- data moved between cores: the placement's byte-hops (``layout.placement``).

Energy uses ``cost.*_pj``; latency uses ``cost.array_read_latency_ns`` per read cycle: without
pipelining the layers run one after the other (a layer's reads spread over its copies); pipelined,
one inference per bottleneck-layer time. Area: used arrays x ``cost.array_area_um2``.
"""

from __future__ import annotations

import math
from typing import Any

from neftc.format.schema import LayoutDoc


def estimate_cost(doc: LayoutDoc) -> dict[str, Any]:
    target = doc.target
    cost = target.cost
    cycles = math.ceil(doc.periphery.input_bits / doc.periphery.dac_bits_per_cycle)
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
        time_ns = layer.positions / layer.replication * cycles * cost.array_read_latency_ns
        layer_times.append(time_ns)
        layers.append({"name": layer.name, **counts, "replication": layer.replication,
                       "time_ns": time_ns})
    moved = doc.placement.byte_hops
    energy = {
        "arrays_pj": totals["array_reads"] * cost.array_read_energy_pj,
        "dac_pj": totals["dac_conversions"] * cost.dac_energy_pj,
        "adc_pj": totals["adc_conversions"] * cost.adc_energy_pj,
        "digital_pj": totals["digital_adds"] * cost.digital_add_energy_pj,
        "interconnect_pj": moved * cost.link_energy_pj_per_byte,
    }
    return {
        "per_inference": {**totals, "byte_hops": moved,
                          "bytes_exchanged": doc.placement.bytes_exchanged},
        "energy_pj": {**energy, "total_pj": sum(energy.values())},
        "latency_ns": {"sequential": sum(layer_times),
                       "pipelined_interval": max(layer_times, default=0.0)},
        "area_um2": {"used_arrays": doc.summary.arrays_used * cost.array_area_um2,
                     "chip": target.chip.arrays * cost.array_area_um2},
        "layers": layers,
        "assumptions": "inputs unsigned (one phase per cycle); each tile read once per input "
                       "vector and cycle; digital adds = shift-and-add + row-tile accumulation",
    }
