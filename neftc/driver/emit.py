"""Emit a compiled graph as a layout document and its sidecars (written by
``neftc.format.writer``); the cell encoding comes from ``neftc.format.encoding``."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.fx

from neftc import __version__
from neftc.errors import PassError
from neftc.format import encoding, ops
from neftc.format.graph_codec import UnencodableArgument, encode_arg, target_name
from neftc.format.schema import (
    LAYOUT_FORMAT,
    LAYOUT_VERSION,
    LEVELS_FILE,
    TENSORS_FILE,
    CompileOptions,
    ConvRecord,
    FileRecord,
    GraphNode,
    GraphRecord,
    InputRecord,
    LayerRecord,
    LayoutDoc,
    PeripheryRecord,
    PlacementRecord,
    QuantRecord,
    SlicingRecord,
    SourceRecord,
    SummaryRecord,
    TensorRecord,
    TileRecord,
)
from neftc.format.writer import Sidecar
from neftc.frontend.inputs import token_range
from neftc.ir.node_info import NodeInfo, crossbar_nodes, get_info
from neftc.ir.pass_manager import NodeError
from neftc.targets.spec import TargetSpec


def _layer_record(node: torch.fx.Node, info: NodeInfo, levels_blob: Sidecar,
                  bias: str | None) -> LayerRecord:
    if info.quant is None or info.slices is None or not info.tiles:
        raise NodeError(node, "is not quantised, sliced and tiled; run the full pipeline")
    if any(t.core < 0 for t in info.tiles):
        raise NodeError(node, "has tiles without an array; run place")
    levels = info.slices.levels
    phys = encoding.to_physical(levels)
    tiles = []
    for t in info.tiles:
        block = phys[t.row_start:t.row_start + t.row_count, t.col_start:t.col_start + t.col_count]
        offset = levels_blob.append(block.tobytes())  # tobytes copies in C order
        tiles.append(TileRecord(index=t.index, row_tile=t.row_tile, col_tile=t.col_tile,
                                row_start=t.row_start, row_count=t.row_count,
                                col_start=t.col_start, col_count=t.col_count, core=t.core,
                                array=t.array, levels_offset=offset,
                                replicas=[tuple(r) for r in t.replicas]))
    conv = None
    if info.conv is not None:
        conv = ConvRecord(stride=list(info.conv.stride), padding=list(info.conv.padding),
                          dilation=list(info.conv.dilation), groups=info.conv.groups,
                          kernel=list(info.conv.kernel))
    return LayerRecord(
        name=info.layer, node=node.name, op=info.op, weight_shape=list(info.weight_shape),
        matrix_rows=info.matrix_rows, matrix_cols=info.matrix_cols, conv=conv, bias=bias,
        quant=QuantRecord(bits=info.quant.bits, qmax=info.quant.qmax,
                          per_channel=info.quant.per_channel,
                          scales=[float(s) for s in info.quant.scales]),
        slicing=SlicingRecord(cell_bits=info.slices.cell_bits, slices=int(levels.shape[1]),
                              polarities=int(levels.shape[0]), encoding=info.slices.encoding,
                              offset=info.slices.offset),
        positions=max(info.positions, 1), replication=1 + len(info.tiles[0].replicas),
        tiles=tiles,
    )


def _unsupported(node: torch.fx.Node, target: str, exc: ops.OpError) -> PassError:
    """The compile-time form of a refusal of load_layout's graph checks."""
    if exc.field == "target":
        return PassError(f"node '{node.name}' calls {target}, which is not supported by the "
                         f"layout format: a layout's graph may call only the {len(ops.OPS)} ops "
                         "of docs/layout.md section 7.1.1; express the model with those "
                         "ops")
    return PassError(f"node '{node.name}' ({target}) is not supported by the layout format "
                     f"({exc.field}): {exc.problem}")


def _get_attr(gm: torch.nn.Module, target: str) -> torch.Tensor:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, torch.Tensor):
        raise TypeError(f"attribute {target} is a {type(obj).__name__}, not a tensor")
    return obj


def _tensor_record(gm: torch.fx.GraphModule, node: torch.fx.Node,
                   blob: Sidecar) -> TensorRecord:
    """Store a digital tensor's values (little-endian; bfloat16 as float32) in ``blob``."""
    value = _get_attr(gm, str(node.target)).detach().cpu().contiguous()
    if value.dtype == torch.bfloat16:
        value = value.float()
    array = value.numpy()
    offset = blob.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return TensorRecord(name=str(node.target), dtype=str(array.dtype), shape=list(array.shape),
                        offset=offset, nbytes=array.nbytes)


def _graph_node(node: torch.fx.Node, info: NodeInfo | None) -> GraphNode:
    """A placeholder, call or output node as the layout's graph records it, refused at compile
    time when load_layout would refuse it (docs/layout.md 7.1.1)."""
    if node.op not in ("placeholder", "call_function", "output"):
        raise NodeError(node, f"op kind '{node.op}' cannot be written to a layout; "
                              "run normalize")
    try:
        args = [encode_arg(a) for a in node.args]
        kwargs = {k: encode_arg(v) for k, v in node.kwargs.items()}
    except UnencodableArgument as exc:
        raise NodeError(node, str(exc)) from None
    if node.op == "call_function":
        try:
            ops.check_call(target_name(node), args, kwargs)
        except ops.OpError as exc:
            raise _unsupported(node, target_name(node), exc) from None
    return GraphNode(name=node.name, op=node.op, target=target_name(node), args=args,
                     kwargs=kwargs, layer=info.layer if info is not None else None)


def _emit_graph(gm: torch.fx.GraphModule, levels_blob: Sidecar, tensors_blob: Sidecar,
                ) -> tuple[list[GraphNode], list[TensorRecord], list[LayerRecord]]:
    """The graph's nodes, its digital tensors and its crossbar layers, in graph order."""
    crossbar_weights: dict[str, str] = {}  # get_attr node name -> layer
    for node in crossbar_nodes(gm):
        crossbar_weights[node.args[1].name] = get_info(node).layer  # type: ignore[union-attr]
    tensors: list[TensorRecord] = []
    nodes: list[GraphNode] = []
    layers: list[LayerRecord] = []
    for node in gm.graph.nodes:
        info = get_info(node)
        if node.op == "get_attr":
            layer = crossbar_weights.get(node.name)
            if layer is None:  # a digital tensor: store its values
                tensors.append(_tensor_record(gm, node, tensors_blob))
            nodes.append(GraphNode(name=node.name, op="get_attr", target=str(node.target),
                                   layer=layer))
            continue
        graph_node = _graph_node(node, info)
        if info is not None:
            bias_node = node.args[2]
            bias = str(bias_node.target) if isinstance(bias_node, torch.fx.Node) else None
            layers.append(_layer_record(node, info, levels_blob, bias))
        nodes.append(graph_node)
    return nodes, tensors, layers


def _input_dtype(tensor: torch.Tensor) -> str:
    if tensor.dtype == torch.bool:
        return "bool"
    if tensor.dtype.is_floating_point:
        return "float32"
    return "int32" if tensor.dtype == torch.int32 else "int64"


def input_records(gm: torch.fx.GraphModule, examples: Sequence[torch.Tensor],
                  specs: Sequence[Any] | None = None) -> list[InputRecord]:
    """One record per placeholder of ``gm``, in order: named after the placeholder, with the
    dtype and range of the loaded model's input specs (``neftc.frontend``'s ``InputSpec``:
    ``dtype``, ``low``, ``high``) or, without them, the example tensors' dtype (float ->
    float32; integer -> int64 or int32) and, for an integer input, the frontend's range rule
    (``neftc.frontend.inputs.token_range``: the rows of the embedding it indexes)."""
    placeholders = [node for node in gm.graph.nodes if node.op == "placeholder"]
    if len(placeholders) != len(examples) or (specs is not None
                                              and len(specs) != len(examples)):
        raise PassError(f"the compiled graph takes {len(placeholders)} input(s) but "
                        f"{len(examples)} example input(s) were given; give one example per "
                        "input of the model")
    records = []
    for k, (node, tensor) in enumerate(zip(placeholders, examples)):
        spec = specs[k] if specs is not None else None
        dtype = spec.dtype if spec is not None else _input_dtype(tensor)
        low = high = None
        if dtype in ("int64", "int32"):
            if spec is not None and spec.low is not None and spec.high is not None:
                low, high = int(spec.low), int(spec.high)
            else:  # the frontend's rule, on the compiled graph (a module given in memory)
                low, high = token_range(gm, node)
        records.append(InputRecord.model_validate(
            {"name": node.name, "dtype": dtype, "shape": list(tensor.shape), "low": low,
             "high": high}))
    return records


def _check_bounds(gm: torch.fx.GraphModule, inputs: list[InputRecord], nodes: list[GraphNode],
                  tensors: list[TensorRecord], layers: list[LayerRecord]) -> None:
    """The size bounds load_layout checks: never write a layout it would refuse."""
    graph_nodes = list(gm.graph.nodes)
    try:
        ops.check_values(ops.GraphInput(
            inputs=inputs, nodes=nodes,
            tensors={t.name: (t.shape, t.dtype) for t in tensors},
            weights={layer.name: layer.weight_shape for layer in layers}))
    except ops.OpError as exc:
        node = graph_nodes[exc.node] if exc.node is not None else graph_nodes[0]
        raise _unsupported(node, target_name(node), exc) from None


def _summary(layers: list[LayerRecord], target: TargetSpec) -> SummaryRecord:
    cells = sum(t.row_count * t.col_count * (1 + len(t.replicas))
                for layer in layers for t in layer.tiles)
    replicas = sum(len(t.replicas) for layer in layers for t in layer.tiles)
    arrays = sum(len(layer.tiles) for layer in layers) + replicas
    capacity = arrays * target.array.rows * target.array.cols
    return SummaryRecord(
        layers=len(layers),
        weights=sum(int(np.prod(layer.weight_shape)) for layer in layers),
        arrays_used=arrays, replica_arrays=replicas, arrays_available=target.chip.arrays,
        cells_used=cells, cells_in_used_arrays=capacity,
        utilization=cells / capacity if capacity else 0.0,
    )


def _file_record(path: str, data: bytes) -> FileRecord:
    return FileRecord(path=path, nbytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def build_layout(
    gm: torch.fx.GraphModule,
    target: TargetSpec,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    source: SourceRecord,
    options: CompileOptions,
    inputs: Sequence[Any] | None = None,
) -> tuple[LayoutDoc, bytes, bytes]:
    """The layout document and its two sidecars (levels, tensors) for a placed graph.
    ``example_input`` is the example tensor, or one per input of the model (in placeholder
    order); ``inputs`` the loaded model's input specs (``LoadedModel.inputs``), when known."""
    examples = ((example_input,) if isinstance(example_input, torch.Tensor)
                else tuple(example_input))
    records = input_records(gm, examples, inputs)
    levels_blob, tensors_blob = Sidecar(), Sidecar()
    nodes, tensors, layers = _emit_graph(gm, levels_blob, tensors_blob)
    _check_bounds(gm, records, nodes, tensors, layers)
    placed = gm.meta.get("neftc_placement")
    if placed is None:
        raise NodeError(next(iter(gm.graph.nodes)), "the graph is not placed; run place")
    placement = PlacementRecord(strategy=placed.strategy, core_links=target.chip.core_links,
                                byte_hops=placed.byte_hops,
                                in_order_byte_hops=placed.in_order_byte_hops,
                                bytes_exchanged=placed.bytes_exchanged)
    levels_bytes, tensors_bytes = levels_blob.bytes(), tensors_blob.bytes()
    doc = LayoutDoc(
        format=LAYOUT_FORMAT, version=LAYOUT_VERSION, neftc_version=__version__, source=source,
        target=target, options=options,
        periphery=PeripheryRecord(**target.periphery.model_dump()),
        files={"levels": _file_record(LEVELS_FILE, levels_bytes),
               "tensors": _file_record(TENSORS_FILE, tensors_bytes)},
        tensors=tensors, layers=layers,
        graph=GraphRecord(inputs=records, nodes=nodes),
        placement=placement, summary=_summary(layers, target),
    )
    return doc, levels_bytes, tensors_bytes
