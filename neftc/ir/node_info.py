"""Typed per-node annotations, stored under the single key ``node.meta["neftc"]``.

Passes read and write them only through the accessors below, so the layout of the annotation is
defined in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch.fx

from neftc.format.encoding import TileSpan

META_KEY = "neftc"

CrossbarOp = Literal["linear", "conv1d", "conv2d"]


@dataclass(frozen=True)
class ConvParams:
    """Geometry of a convolution; the crossbar sees its unrolled (im2col) matrix."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    kernel: tuple[int, ...]


@dataclass(frozen=True)
class QuantInfo:
    """Symmetric weight quantisation of one layer: ``w ~= q * scale`` (per output channel)."""

    bits: int
    qmax: int
    per_channel: bool
    scales: np.ndarray  # float32 [matrix_cols] (one value repeated when per-layer)
    q: np.ndarray  # int32 [matrix_rows, matrix_cols], the unrolled integer weight matrix


@dataclass(frozen=True)
class SliceInfo:
    """Cell levels of one layer: ``levels[p, s, r, c]`` for polarity p, slice s (LSB first)."""

    cell_bits: int
    encoding: Literal["differential", "offset"]
    offset: int  # value added before slicing (offset encoding), else 0
    levels: np.ndarray  # uint8 [polarities, slices, matrix_rows, matrix_cols]


@dataclass(frozen=True)
class Tile(TileSpan):
    """One array's worth of a layer's physical matrix: the block it covers (a
    ``neftc.format.encoding.TileSpan``, which defines the column order and the tiling), its
    index in the layer, and where place put it."""

    index: int
    core: int = -1
    array: int = -1  # index of the array inside its core; -1 until placed
    replicas: tuple[tuple[int, int], ...] = ()  # (core, array) of pipeline copies


@dataclass(frozen=True)
class NodeInfo:
    """What neftc knows about one crossbar-mapped node."""

    layer: str  # the layer's name: its weight's qualified name without '.weight'
    op: CrossbarOp
    weight_shape: tuple[int, ...]
    matrix_rows: int  # wordlines: C_in/groups * prod(kernel) (linear: in_features)
    matrix_cols: int  # bitlines: C_out (linear: out_features)
    conv: ConvParams | None = None
    quant: QuantInfo | None = None
    slices: SliceInfo | None = None
    tiles: tuple[Tile, ...] = field(default=())
    positions: int = 0  # input vectors per sample (output positions of a conv), set by place


def get_info(node: torch.fx.Node) -> NodeInfo | None:
    """The neftc annotation of a node, or None for a digital node."""
    info = node.meta.get(META_KEY)
    if info is not None and not isinstance(info, NodeInfo):
        raise TypeError(f"node {node.name}: meta['{META_KEY}'] holds {type(info).__name__}")
    return info


def set_info(node: torch.fx.Node, info: NodeInfo) -> None:
    node.meta[META_KEY] = info


def update_info(node: torch.fx.Node, **changes: object) -> NodeInfo:
    """Replace fields of a node's annotation; the node must already be annotated."""
    info = get_info(node)
    if info is None:
        raise KeyError(f"node {node.name} has no neftc annotation")
    new = replace(info, **changes)
    set_info(node, new)
    return new


def crossbar_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The annotated (crossbar-mapped) nodes, in graph order."""
    return [n for n in gm.graph.nodes if get_info(n) is not None]
