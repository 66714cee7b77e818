"""The chip's core topology: which cores are linked (``chip.core_links``), as a networkx graph.

One definition, read by placement (``passes.place``) and by the cost model (``flow.cost``)."""

from __future__ import annotations

import math

import networkx as nx

from neftc.targets.spec import ChipSpec


def mesh_shape(cores: int) -> tuple[int, int]:
    """The most square rows x cols factorisation of the core count."""
    rows = int(math.sqrt(cores))
    while cores % rows:
        rows -= 1
    return rows, cores // rows


def core_graph(chip: ChipSpec) -> nx.Graph:
    """The cores and their links; node ids are core indices."""
    n = chip.cores
    if chip.core_links == "all_to_all":
        return nx.complete_graph(n)
    if chip.core_links == "ring" or n < 4:
        return nx.cycle_graph(n) if n > 2 else nx.path_graph(n)
    rows, cols = mesh_shape(n)
    grid = nx.grid_2d_graph(rows, cols)
    return nx.relabel_nodes(grid, {(r, c): r * cols + c for r, c in grid.nodes})


def locality_order(chip: ChipSpec) -> list[int]:
    """Cores ordered so that consecutive cores are adjacent where the topology allows it."""
    if chip.core_links == "mesh" and chip.cores >= 4:
        rows, cols = mesh_shape(chip.cores)
        return [r * cols + (c if r % 2 == 0 else cols - 1 - c)
                for r in range(rows) for c in range(cols)]
    return list(range(chip.cores))
