"""The semantic checks of a layout's digital graph (docs/layout.md sections 7 and 10): node names,
the JSON forms of arguments, references, the op allow-list and argument schemas
(``neftc.format.ops``), crossbar nodes against their layer records, and the size bounds of every
value."""

from __future__ import annotations

import math
from typing import Any

from neftc.format import ops
from neftc.format.arg_kinds import DTYPE_NAMES
from neftc.format.consistency import Consistency
from neftc.format.graph_codec import MEMORY_FORMAT_NAMES, node_refs
from neftc.format.schema import GraphNode

_ARG_TAGS = {
    "node": None,  # any node name; checked against the graph separately
    "dtype": set(DTYPE_NAMES),
    "device": {"cpu"},
    "float": {"inf", "-inf", "nan"},
    "memory_format": set(MEMORY_FORMAT_NAMES),
    "layout": {"strided"},
}


_MAX_ARG_DEPTH = 32  # list nesting of one argument; ATen arguments nest two or three deep


def _bad_argument(value: Any, path: str, depth: int = 0) -> tuple[str, str] | None:
    """``(field, problem)`` for the first argument value that is none of the forms of
    docs/layout.md section 7.2 (or nests deeper than ``_MAX_ARG_DEPTH``), or None."""
    if isinstance(value, list):
        if depth > _MAX_ARG_DEPTH:
            return path, f"nests lists more than {_MAX_ARG_DEPTH} deep"
        for k, item in enumerate(value):
            bad = _bad_argument(item, f"{path}[{k}]", depth + 1)
            if bad is not None:
                return bad
        return None
    if isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in _ARG_TAGS:
            return path, (f"is an object with the keys {sorted(value)}; an object argument has "
                          f"exactly one of the tags {', '.join(_ARG_TAGS)} (docs/layout.md "
                          "section 7.2)")
        tag, tagged = next(iter(value.items()))
        allowed = _ARG_TAGS[tag]
        if not isinstance(tagged, str) or (allowed is not None and tagged not in allowed):
            choices = ("a node name (a string)" if allowed is None else
                       f"one of: {', '.join(sorted(allowed))}")
            return path, f"is {{{tag!r}: {tagged!r}}}; the {tag} must be {choices}"
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, float) and not math.isfinite(value):
            return path, (f"is the bare number {value}; write a non-finite float as "
                          f"{{\"float\": \"{'nan' if math.isnan(value) else repr(value)}\"}}")
        return None
    return path, f"has the unexpected type {type(value).__name__}"


_CONV_ARGS = ("stride", "padding", "dilation", "groups")


def check_graph(ctx: Consistency, *, value_bounds: bool = True) -> None:
    """The digital graph: unique node names, argument forms, references to earlier nodes only,
    get_attr and call nodes, one output node last; then (with ``value_bounds``) the bounds of
    its values."""
    nodes = ctx.doc.graph.nodes
    seen: set[str] = set()
    for k, node in enumerate(nodes):
        field = f"graph.nodes[{k}]"
        if node.name in seen:
            raise ctx.fail(f"{field}.name", f"node name '{node.name}' is also the name of "
                           f"graph.nodes[{ctx.node_index[node.name]}]; names must be unique")
        bad = _bad_argument(node.args, f"{field}.args") or next(
            (b for name, v in node.kwargs.items()
             if (b := _bad_argument(v, f"{field}.kwargs.{name}")) is not None), None)
        if bad is not None:
            raise ctx.fail(*bad)
        for key, values in (("args", node.args), ("kwargs", list(node.kwargs.values()))):
            for ref in node_refs(values):
                if ref not in ctx.node_index:
                    raise ctx.fail(f"{field}.{key}", f"refers to the node '{ref}', which "
                                   "no node of the graph has")
                if ref not in seen:
                    raise ctx.fail(f"{field}.{key}", f"refers to the node '{ref}' "
                                   f"(graph.nodes[{ctx.node_index[ref]}]), which comes "
                                   "later; a node may only use nodes listed before it")
        if node.op == "get_attr":
            _check_get_attr(ctx, field, node)
        elif node.op == "call_function":
            _check_call(ctx, field, node)
        elif node.op == "output":
            if k != len(nodes) - 1:
                raise ctx.fail(f"{field}.op", "an output node must be the last node of the "
                               "graph (and there is exactly one)")
            if len(node.args) != 1:
                raise ctx.fail(f"{field}.args", f"the output node has {len(node.args)} "
                               "arguments; it must have exactly one (the returned value)")
        seen.add(node.name)
    if not nodes or nodes[-1].op != "output":
        raise ctx.fail("graph.nodes", "the graph has no output node; its last node must "
                       "be the output node")
    _check_inputs(ctx)
    if value_bounds:
        _check_values(ctx)


def _check_inputs(ctx: Consistency) -> None:
    """``graph.inputs`` names the graph's placeholders, one each, in their order (dtypes,
    shapes and ranges are bounded with the values, ``ops.check_values``)."""
    placeholders = [node.name for node in ctx.doc.graph.nodes if node.op == "placeholder"]
    names = [record.name for record in ctx.doc.graph.inputs]
    if len(names) != len(placeholders):
        raise ctx.fail("graph.inputs", f"{len(names)} input(s) for {len(placeholders)} "
                       "placeholder node(s); the layout records one input per placeholder")
    for k, (name, placeholder) in enumerate(zip(names, placeholders)):
        if name != placeholder:
            raise ctx.fail(f"graph.inputs[{k}].name", f"'{name}', but placeholder {k} of the "
                           f"graph is '{placeholder}'; the inputs are listed in placeholder "
                           "order, by the placeholder's name")


def _check_values(ctx: Consistency) -> None:
    """Shape propagation (sizes only) through the checked graph: every value and the work
    of a forward pass are bounded, at the layout's batch and per sample (docs/layout.md
    section 7.1.1)."""
    graph = ops.GraphInput(
        inputs=ctx.doc.graph.inputs, nodes=ctx.doc.graph.nodes,
        tensors={name: (r.shape, r.dtype) for name, r in ctx.tensor_records.items()},
        weights={layer.name: layer.weight_shape for layer in ctx.doc.layers})
    try:
        ops.check_values(graph)
    except ops.OpError as exc:
        where = "graph" if exc.node is None else f"graph.nodes[{exc.node}]"
        raise ctx.fail(f"{where}.{exc.field}", exc.problem) from None


def _check_get_attr(ctx: Consistency, field: str, node: GraphNode) -> None:
    if node.layer is None:
        if node.target not in ctx.tensor_records:
            raise ctx.fail(f"{field}.target", f"the get_attr node '{node.name}' reads the "
                           f"tensor '{node.target}', which is not in tensors")
    elif node.layer not in ctx.layer_index:
        raise ctx.fail(f"{field}.layer", f"the get_attr node '{node.name}' is the weight of "
                       f"layer '{node.layer}', which is not in layers")


def _check_call(ctx: Consistency, field: str, node: GraphNode) -> None:
    try:  # the allow-list and each op's argument schema (docs/layout.md section 7.1.1)
        ops.check_call(node.target, node.args, node.kwargs)
    except ops.OpError as exc:
        raise ctx.fail(f"{field}.{exc.field}", exc.problem) from None
    if node.layer is None:
        return
    i = ctx.layer_index.get(node.layer)
    if i is None or ctx.doc.layers[i].node != node.name:
        what = ("no layer has that name" if i is None else
                f"layers[{i}].node is '{ctx.doc.layers[i].node}'")
        raise ctx.fail(f"{field}.layer", f"the crossbar node '{node.name}' names layer "
                       f"'{node.layer}', but {what}")
    layer = ctx.doc.layers[i]
    if node.target != f"aten.{layer.op}.default":
        raise ctx.fail(f"{field}.target", f"'{node.target}', but layers[{i}] is a "
                       f"{layer.op}: its node calls aten.{layer.op}.default")
    n_args = 3 if layer.conv is None else 3 + len(_CONV_ARGS)
    if len(node.args) != n_args or node.kwargs:
        raise ctx.fail(f"{field}.args", f"a crossbar {layer.op} node has exactly {n_args} "
                       "positional arguments and no kwargs (canonical form, "
                       "docs/layout.md section 7.1)")
    if not (isinstance(node.args[0], dict) and "node" in node.args[0]):
        raise ctx.fail(f"{field}.args[0]", "the input of a crossbar node must be a node "
                       "reference")
    weight = _referenced(ctx, node.args[1])
    if weight is None or weight.op != "get_attr" or weight.layer is None:
        raise ctx.fail(f"{field}.args[1]", "the weight of a crossbar node must refer to a "
                       "get_attr node of a crossbar weight (one whose layer is set)")
    bias = node.args[2]
    bias_node = _referenced(ctx, bias)
    if layer.bias is None:
        if bias is not None:
            raise ctx.fail(f"{field}.args[2]", f"layers[{i}].bias is null, so the bias "
                           "argument must be null")
    elif bias_node is None or bias_node.op != "get_attr" or bias_node.target != layer.bias:
        raise ctx.fail(f"{field}.args[2]", f"layers[{i}].bias is '{layer.bias}', so the "
                       f"bias argument must refer to the get_attr node of '{layer.bias}'")
    if layer.conv is not None:
        for k, name in enumerate(_CONV_ARGS):
            if node.args[3 + k] != getattr(layer.conv, name):
                raise ctx.fail(f"{field}.args[{3 + k}]", f"{node.args[3 + k]!r}, but "
                               f"layers[{i}].conv.{name} is {getattr(layer.conv, name)!r}")


def _referenced(ctx: Consistency, value: Any) -> GraphNode | None:
    """The node a ``{"node": NAME}`` argument refers to, else None."""
    if isinstance(value, dict) and isinstance(value.get("node"), str) and \
            value["node"] in ctx.node_index:
        return ctx.doc.graph.nodes[ctx.node_index[value["node"]]]
    return None
