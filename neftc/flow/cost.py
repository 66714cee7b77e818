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
  write-verify: ``cells x pulses_per_cell x cost.cell_write_energy_pj``, the pulses the
  analytic expectation of the target's write-verify model (1 when it is off).

Energy uses ``cost.*_pj`` (interconnect: byte-hops x ``link_energy_pj_per_byte``); latency uses
``cost.array_read_latency_ns`` per read cycle: without pipelining the layers run one after the
other, each taking as long as its busiest copy (``ceil(positions / replication)`` input vectors);
pipelined, one inference per bottleneck-layer time. Area: used arrays x ``cost.array_area_um2``.
"""

from __future__ import annotations

import math
from typing import Any

from neftc.flow.records import (
    AreaRecord,
    CostEstimate,
    EnergyRecord,
    LatencyRecord,
    LayerCost,
    PerInference,
    ProgrammingCost,
)
from neftc.format import encoding
from neftc.format.schema import LayerRecord, LayoutDoc
from neftc.targets.cell_model import pulses_per_cell
from neftc.targets.spec import TargetSpec


def positions_per_copy(positions: int, replication: int) -> list[int]:
    """Output positions of one sample computed on each copy (``encoding.copy_of_position``)."""
    counts = [0] * replication
    for position in range(positions):
        counts[encoding.copy_of_position(position, replication)] += 1
    return counts


def _hops(doc: LayoutDoc) -> Any:
    """Core-to-core hop counts of the target chip (the placement's core graph)."""
    import networkx as nx

    from neftc.targets.topology import core_graph

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
                tile_bytes = counts[copy] * (tile.row_count * input_bytes
                                             + tile.col_count * output_bytes)
                moved += tile_bytes
                byte_hops += tile_bytes * hops[tile.core][core]
        traffic[layer.name] = {"bytes": moved, "byte_hops": byte_hops}
    return traffic


ASSUMPTIONS = ("inputs unsigned (one phase per cycle); each output position computed once, on "
               "one copy; each tile read once per input vector and cycle; digital adds = "
               "shift-and-add + row-tile accumulation; a copy's inputs are forwarded by the tile "
               "it copies and its bitline results sent back")


def input_cycles(doc: LayoutDoc) -> int:
    """DAC cycles per input vector: ``ceil(input_bits / dac_bits_per_cycle)``."""
    return math.ceil(doc.periphery.input_bits / doc.periphery.dac_bits_per_cycle)


def layer_cost(doc: LayoutDoc, layer: LayerRecord, traffic: dict[str, float]) -> LayerCost:
    """One layer's counts per inference, its copies' traffic and its time."""
    cycles = input_cycles(doc)
    reads_per_tile = layer.positions * cycles
    tiles = layer.tiles
    row_tiles = len({t.row_tile for t in tiles})
    per_copy = positions_per_copy(layer.positions, layer.replication)
    return LayerCost(
        name=layer.name,
        array_reads=reads_per_tile * len(tiles),
        cell_reads=reads_per_tile * sum(t.row_count * t.col_count for t in tiles),
        dac_conversions=reads_per_tile * sum(t.row_count for t in tiles),
        adc_conversions=reads_per_tile * sum(t.col_count for t in tiles),
        digital_adds=reads_per_tile * sum(t.col_count for t in tiles)
        + layer.positions * layer.matrix_cols * (row_tiles - 1),
        replication=layer.replication,
        reads_per_copy=[n * cycles * len(tiles) for n in per_copy],
        replica_bytes=traffic["bytes"], replica_byte_hops=traffic["byte_hops"],
        time_ns=max(per_copy) * cycles * doc.target.cost.array_read_latency_ns)


def _per_inference(doc: LayoutDoc, layers: list[LayerCost],
                   traffic: dict[str, dict[str, float]]) -> PerInference:
    replica_bytes = sum(t["bytes"] for t in traffic.values())
    replica_hops = sum(t["byte_hops"] for t in traffic.values())
    return PerInference(
        array_reads=sum(c.array_reads for c in layers),
        cell_reads=sum(c.cell_reads for c in layers),
        dac_conversions=sum(c.dac_conversions for c in layers),
        adc_conversions=sum(c.adc_conversions for c in layers),
        digital_adds=sum(c.digital_adds for c in layers),
        bytes_moved=doc.placement.bytes_exchanged + replica_bytes,
        bytes_exchanged=doc.placement.bytes_exchanged,
        replica_bytes=replica_bytes,
        byte_hops=doc.placement.byte_hops + replica_hops,
        placement_byte_hops=doc.placement.byte_hops,
        replica_byte_hops=replica_hops)


def _energy(doc: LayoutDoc, counts: PerInference) -> EnergyRecord:
    cost = doc.target.cost
    parts = {"arrays_pj": counts.array_reads * cost.array_read_energy_pj,
             "dac_pj": counts.dac_conversions * cost.dac_energy_pj,
             "adc_pj": counts.adc_conversions * cost.adc_energy_pj,
             "digital_pj": counts.digital_adds * cost.digital_add_energy_pj,
             "interconnect_pj": counts.byte_hops * cost.link_energy_pj_per_byte}
    return EnergyRecord(**parts, total_pj=sum(parts.values()))


def target_pulses_per_cell(target: TargetSpec) -> float:
    """The expected write-verify pulses per programmed cell of ``target``
    (``neftc.targets.cell_model.pulses_per_cell``, at the target's sigma and tolerance; 1
    without write-verify)."""
    return pulses_per_cell(target.cell.levels, target.noise.sigma_rel,
                           target.noise.state_ratio, target.cell.write_verify_tolerance_rel,
                           target.effects.write_verify.max_pulses)


def programming_cost(doc: LayoutDoc, cells: int, original_cells: int) -> ProgrammingCost:
    """Programming every cell once: ``cells`` x the expected pulses per cell
    (``target_pulses_per_cell``) x ``cost.cell_write_energy_pj`` (energy) and x
    ``cost.cell_write_latency_ns`` (time, one cell at a time)."""
    target = doc.target
    pulses = target_pulses_per_cell(target)
    return ProgrammingCost(cells=cells, replica_cells=cells - original_cells,
                           pulses_per_cell=pulses,
                           energy_pj=cells * pulses * target.cost.cell_write_energy_pj,
                           serial_time_s=cells * pulses * target.cost.cell_write_latency_ns
                           * 1e-9)


def cost_estimate(doc: LayoutDoc) -> CostEstimate:
    """The layout's cost per inference, and of programming it once."""
    cost = doc.target.cost
    traffic = replica_traffic(doc)
    none = {"bytes": 0.0, "byte_hops": 0.0}
    layers = [layer_cost(doc, layer, traffic.get(layer.name, none)) for layer in doc.layers]
    counts = _per_inference(doc, layers, traffic)
    times = [layer.time_ns for layer in layers]
    cells = doc.summary.cells_used
    original_cells = sum(t.row_count * t.col_count for layer in doc.layers for t in layer.tiles)
    return CostEstimate(
        per_inference=counts,
        energy_pj=_energy(doc, counts),
        latency_ns=LatencyRecord(sequential=sum(times), pipelined_interval=max(times, default=0.0)),
        area_um2=AreaRecord(used_arrays=doc.summary.arrays_used * cost.array_area_um2,
                            chip=doc.target.chip.arrays * cost.array_area_um2),
        programming=programming_cost(doc, cells, original_cells),
        layers=layers,
        assumptions=ASSUMPTIONS)


def estimate_cost(doc: LayoutDoc) -> dict[str, Any]:
    """``cost_estimate`` as JSON data (what ``docs/cost.schema.json`` describes)."""
    return cost_estimate(doc).model_dump(mode="json")
