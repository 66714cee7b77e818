"""place: assign every tile to a physical array (core, array) of the target chip, using networkx.

The chip is a graph of cores (``chip.core_links``: a 2-D mesh, a ring or all-to-all). The tiles
form a dataflow graph weighted by the bytes they exchange per inference: partial sums from each
row tile to the accumulating row tile of its column, and each layer's outputs to the tiles of the
crossbar layers that consume them. Strategies:

- ``in-order``: tiles in graph order fill the cores in index order (the naive baseline);
- ``dataflow`` (default): the same tile order along a path through the core graph that keeps
  consecutive cores adjacent (a snake through a mesh), then pairwise swaps between cores that
  lower the byte-hops of the dataflow graph (deterministic, bounded).

With ``replicate`` (default), arrays left free hold copies of the bottleneck layers' tiles
(the layer with the most input vectors per inference per copy), greedily, to balance the
pipeline; copies go into free arrays only, nearest to the original's core.

A model needing more arrays than the chip has is refused with both numbers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import networkx as nx
import numpy as np
import torch
import torch.fx
from torch.fx.passes.shape_prop import ShapeProp

from neftc.errors import CapacityError
from neftc.ir.facts import Fact
from neftc.ir.node_info import NodeInfo, crossbar_nodes, get_info, update_info
from neftc.ir.pass_manager import PassContext, PassResult, evaluating
from neftc.targets.spec import ChipSpec
from neftc.targets.topology import core_graph, locality_order

TileKey = tuple[int, int]  # (layer index, tile index)


@dataclass(frozen=True)
class TrafficEdge:
    src: TileKey
    dst: TileKey
    bytes: float


def crossbar_producers(gm: torch.fx.GraphModule) -> dict[torch.fx.Node, list[torch.fx.Node]]:
    """For each crossbar node, the crossbar nodes whose outputs reach its input through digital
    ops only."""
    result = {}
    for node in crossbar_nodes(gm):
        found, stack, seen = [], [node.args[0]], set()
        while stack:
            current = stack.pop()
            if not isinstance(current, torch.fx.Node) or current in seen:
                continue
            seen.add(current)
            if get_info(current) is not None:
                found.append(current)
                continue
            stack.extend(a for a in current.all_input_nodes)
        result[node] = found
    return result


def traffic_edges(nodes: list[torch.fx.Node], producers: dict, positions: dict[str, int],
                  act_bytes: float, psum_bytes: float) -> list[TrafficEdge]:
    index = {n: i for i, n in enumerate(nodes)}
    edges = []
    for i, node in enumerate(nodes):
        info = get_info(node)
        assert info is not None
        accumulator = {t.col_tile: t for t in info.tiles if t.row_tile == 0}
        for tile in info.tiles:  # partial sums to the accumulating row tile of the column
            if tile.row_tile > 0:
                head = accumulator[tile.col_tile]
                edges.append(TrafficEdge((i, tile.index), (i, head.index),
                                         positions[info.layer] * tile.col_count * psum_bytes))
        for producer in producers[node]:
            p = index[producer]
            p_info = get_info(producer)
            assert p_info is not None
            p_per_col = p_info.slices.levels.shape[0] * p_info.slices.levels.shape[1]  # type: ignore
            for head in (t for t in p_info.tiles if t.row_tile == 0):
                share = head.col_count / p_per_col * positions[p_info.layer] * act_bytes
                for tile in info.tiles:
                    edges.append(TrafficEdge((p, head.index), (i, tile.index),
                                             share * tile.row_count / info.matrix_rows))
    return edges


def traffic_cost(edges: list[TrafficEdge], where: dict[TileKey, int],
                 hops: np.ndarray) -> float:
    """Byte-hops per inference of a placement (core of every tile)."""
    return float(sum(e.bytes * hops[where[e.src], where[e.dst]] for e in edges))


@dataclass(frozen=True)
class Place:
    strategy: Literal["dataflow", "in-order"] = "dataflow"
    replicate: bool = True
    max_swap_rounds: int = 4

    name: ClassVar[str] = "place"
    requires: ClassVar[frozenset[Fact]] = frozenset({Fact.TILED})
    provides: ClassVar[frozenset[Fact]] = frozenset({Fact.PLACED})

    def run(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        chip = ctx.target.chip
        nodes = crossbar_nodes(gm)
        infos = [get_info(n) for n in nodes]
        needed = sum(len(i.tiles) for i in infos)  # type: ignore[union-attr]
        if needed > chip.arrays:
            biggest = ", ".join(f"{name} {count}" for count, name in sorted(
                ((len(i.tiles), i.layer) for i in infos), reverse=True)[:3])  # type: ignore
            raise CapacityError(
                f"the model needs {needed} arrays of {ctx.target.array.rows}x"
                f"{ctx.target.array.cols} but target '{ctx.target.name}' has {chip.arrays} "
                f"({chip.cores} cores x {chip.arrays_per_core} arrays); largest layers: "
                f"{biggest}. Use a larger target, raise chip.cores or chip.arrays_per_core with "
                "--set, or store fewer weight bits")
        positions = _positions(gm, ctx.example_inputs, nodes)
        graph = core_graph(chip)
        hops = _hop_matrix(graph, chip.cores)
        periphery = ctx.target.periphery
        edges = traffic_edges(nodes, crossbar_producers(gm), positions,
                              act_bytes=periphery.input_bits / 8,
                              psum_bytes=math.ceil(periphery.adc_bits / 8))
        keys = [(i, t.index) for i, info in enumerate(infos) for t in info.tiles]  # type: ignore
        in_order = {key: slot // chip.arrays_per_core for slot, key in enumerate(keys)}
        baseline = traffic_cost(edges, in_order, hops)
        if self.strategy == "in-order":
            where = in_order
        else:
            order = locality_order(chip)
            where = {key: order[slot // chip.arrays_per_core] for slot, key in enumerate(keys)}
            where = _refine(where, edges, hops, chip.arrays_per_core, self.max_swap_rounds)
        cost = traffic_cost(edges, where, hops)
        slots = _assign_arrays(where, chip.arrays_per_core)
        replication = _replication(infos, positions, chip.arrays - needed) if self.replicate \
            else {i.layer: 1 for i in infos}  # type: ignore[union-attr]
        free = _free_arrays(slots, chip)
        nearest: dict[int, list[int]] = {}  # core -> all cores by hop distance (BFS), cached
        modified = False
        for i, (node, info) in enumerate(zip(nodes, infos)):
            assert info is not None
            tiles = []
            for tile in info.tiles:
                core, array = slots[(i, tile.index)]
                if replication[info.layer] > 1 and core not in nearest:
                    nearest[core] = list(nx.bfs_tree(graph, core))
                copies = tuple(_take_nearest(free, nearest[core])
                               for _ in range(replication[info.layer] - 1))
                tiles.append(replace(tile, core=core, array=array, replicas=copies))
            new = update_info(node, tiles=tuple(tiles), positions=positions[info.layer])
            modified |= new.tiles != info.tiles
        gm.meta["neftc_placement"] = PlacementSummary(self.strategy, cost, baseline,
                                                      int(sum(e.bytes for e in edges)))
        return PassResult(gm, modified)


@dataclass(frozen=True)
class PlacementSummary:
    strategy: str
    byte_hops: float  # per inference, this placement
    in_order_byte_hops: float  # per inference, the naive in-order placement
    bytes_exchanged: int  # per inference, between tiles (whatever their cores)


def _positions(gm: torch.fx.GraphModule, examples: tuple[torch.Tensor, ...],
               nodes: list[torch.fx.Node]) -> dict[str, int]:
    """Input vectors per sample that each crossbar layer processes (1 for a plain linear)."""
    with evaluating(gm):
        ShapeProp(gm).propagate(*(example[:1] for example in examples))
    positions = {}
    for node in nodes:
        info = get_info(node)
        assert info is not None
        shape = node.meta["tensor_meta"].shape
        positions[info.layer] = max(1, int(np.prod(shape)) // info.matrix_cols)
    return positions


def _hop_matrix(graph: nx.Graph, cores: int) -> np.ndarray:
    hops = np.zeros((cores, cores), dtype=np.float64)
    for src, lengths in nx.all_pairs_shortest_path_length(graph):
        for dst, length in lengths.items():
            hops[src, dst] = length
    return hops


def _refine(where: dict[TileKey, int], edges: list[TrafficEdge], hops: np.ndarray,
            capacity: int, rounds: int) -> dict[TileKey, int]:
    """Move single tiles to the core that lowers their byte-hops the most, where that core has a
    free array (or by swapping with a tile there), for a few deterministic rounds."""
    if len(where) > 3000:  # big models: the locality order alone (the search would be slow)
        return where
    neighbours: dict[TileKey, list[tuple[TileKey, float]]] = defaultdict(list)
    for e in edges:
        neighbours[e.src].append((e.dst, e.bytes))
        neighbours[e.dst].append((e.src, e.bytes))
    where = dict(where)
    load: dict[int, int] = defaultdict(int)
    for core in where.values():
        load[core] += 1

    def tile_cost(key: TileKey, core: int) -> float:
        return sum(b * hops[core, where[other]] for other, b in neighbours[key] if other != key)

    for _ in range(rounds):
        improved = False
        for key in sorted(where):
            current = where[key]
            if not neighbours[key]:
                continue
            candidates = {where[other] for other, _ in neighbours[key]} - {current}
            best, best_gain = None, 1e-9
            for core in sorted(candidates):
                if load[core] < capacity:
                    gain = tile_cost(key, current) - tile_cost(key, core)
                    if gain > best_gain:
                        best, best_gain = core, gain
            if best is not None:
                load[current] -= 1
                load[best] += 1
                where[key] = best
                improved = True
        if not improved:
            break
    return where


def _assign_arrays(where: dict[TileKey, int], per_core: int) -> dict[TileKey, tuple[int, int]]:
    used: dict[int, int] = defaultdict(int)
    slots = {}
    for key in sorted(where):
        core = where[key]
        slots[key] = (core, used[core])
        used[core] += 1
    return slots


def _free_arrays(slots: dict[TileKey, tuple[int, int]], chip: ChipSpec) -> dict[int, list[int]]:
    taken: dict[int, set[int]] = defaultdict(set)
    for core, array in slots.values():
        taken[core].add(array)
    return {core: [a for a in range(chip.arrays_per_core) if a not in taken[core]][::-1]
            for core in range(chip.cores)}


def _take_nearest(free: dict[int, list[int]], cores_by_distance: list[int]) -> tuple[int, int]:
    for candidate in cores_by_distance:
        if free[candidate]:
            return candidate, free[candidate].pop()
    raise RuntimeError("no free array left for a replica")  # _replication never asks for more


def _replication(infos: list[NodeInfo | None], positions: dict[str, int],
                 free: int) -> dict[str, int]:
    """Copies per layer: repeatedly replicate the layer with the most input vectors per copy
    (the pipeline's bottleneck) while its tiles fit in the free arrays."""
    copies = {i.layer: 1 for i in infos if i is not None}
    tiles = {i.layer: len(i.tiles) for i in infos if i is not None}
    while copies:  # a graph without crossbar layers has nothing to replicate
        bottleneck = max(copies, key=lambda name: (positions[name] / copies[name], name))
        if positions[bottleneck] / copies[bottleneck] <= 1 or tiles[bottleneck] > free:
            return copies
        copies[bottleneck] += 1
        free -= tiles[bottleneck]
    return copies
