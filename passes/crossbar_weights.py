"""The crossbar weights of the normalize pass (a helper module, not a pass): matmuls with one
static operand and addmm made crossbar linears, the weight each reads (the parameter itself, or
one canonical copy per distinct derived matrix, so a parameter used twice the same way stays
one tied weight), a crossbar copy of a weight a digital op reads too, and layer names.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

from neftc.format.schema import CROSSBAR_COPY_SUFFIX
from neftc.passes.lowering import param as _param
from neftc.passes.lowering import static_matrix

aten = torch.ops.aten
_LINEAR = aten.linear.default
_CONVS = {aten.conv1d.default: "conv1d", aten.conv2d.default: "conv2d"}

LAYER_KEY = "neftc_layer"  # get_attr meta: the layer name of a weight made by canonicalisation
COPY_KEY = "neftc_copy_of"  # get_attr meta: the digital tensor a crossbar copy was made from
ROOT_KEY = "neftc_root"  # get_attr meta: the parameter a canonical weight was derived from


def new_param(gm: torch.fx.GraphModule, anchor: torch.fx.Node, base: str,
               value: torch.Tensor, layer: str) -> torch.fx.Node:
    """Register ``value`` as a new parameter named after ``base`` and return its get_attr node,
    tagged with the name of the layer it belongs to."""
    name = base.replace(".", "_")
    candidate, k = name, 1
    while hasattr(gm, candidate):
        k += 1
        candidate = f"{name}_{k}"
    gm.register_parameter(candidate, torch.nn.Parameter(value.detach().clone().contiguous()))
    with gm.graph.inserting_before(anchor):
        node = gm.graph.get_attr(candidate)
    node.meta[LAYER_KEY] = layer
    return node


def crossbar_weight(gm: torch.fx.GraphModule, anchor: torch.fx.Node, root: torch.fx.Node,
                     weight: torch.Tensor) -> torch.fx.Node:
    """The get_attr node of a crossbar weight ``[out, in]`` derived from parameter ``root``:
    ``root`` itself when it holds exactly that, else one new parameter per distinct weight (so a
    parameter used twice the same way stays one tied weight)."""
    value = _param(gm, root)
    if value is not None and value.shape == weight.shape and torch.equal(value, weight):
        return root
    for node in gm.graph.nodes:
        if node is anchor:
            break
        made = _param(gm, node) if node.meta.get(ROOT_KEY) == root.target else None
        if made is not None and made.shape == weight.shape and torch.equal(made, weight):
            return node
    layer = layer_name(root, str(root.target))
    node = new_param(gm, anchor, str(root.target) + ".T", weight, layer)
    node.meta[ROOT_KEY] = root.target
    return node


def addmm_as_linear(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """``addmm(bias, x, W^T)`` with a static ``W`` and a parameter bias becomes one linear."""
    if node.target is not aten.addmm.default or node.kwargs.get("beta", 1) != 1 \
            or node.kwargs.get("alpha", 1) != 1:
        return False
    bias, x, rhs = node.args[:3]
    found = static_matrix(gm, rhs)
    bias_value = _param(gm, bias)
    if found is None or bias_value is None or bias_value.dim() != 1 \
            or static_matrix(gm, x) is not None:
        return False
    weight = crossbar_weight(gm, node, found[0], found[1].t())
    with gm.graph.inserting_before(node):
        linear = gm.graph.call_function(_LINEAR, (x, weight, bias))
    linear.meta.update(node.meta)
    node.replace_all_uses_with(linear)
    gm.graph.erase_node(node)
    return True


def static_matmul(gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    """A matmul with exactly one static operand becomes a linear (a crossbar layer):
    ``x @ M`` -> ``linear(x, M^T)``; ``M @ x`` -> ``linear(x^T, M)^T``. A matmul of two
    activations (attention scores, attention x values) stays digital."""
    lhs, rhs = node.args[:2]
    left, right = static_matrix(gm, lhs), static_matrix(gm, rhs)
    if (left is None) == (right is None):
        return  # two activations (digital) or two constants (folded by nobody: digital)
    graph = gm.graph
    if right is not None:
        weight = crossbar_weight(gm, node, right[0], right[1].t())
        with graph.inserting_before(node):
            out = graph.call_function(_LINEAR, (lhs, weight, None))
    else:
        assert left is not None
        shape = rhs.meta.get("val").shape if isinstance(rhs, torch.fx.Node) \
            and isinstance(rhs.meta.get("val"), torch.Tensor) else None
        if shape is None or len(shape) < 2:
            return  # M @ vector: digital
        weight = crossbar_weight(gm, node, left[0], left[1])
        with graph.inserting_before(node):
            turned = graph.call_function(aten.transpose.int, (rhs, -2, -1))
            linear = graph.call_function(_LINEAR, (turned, weight, None))
            out = graph.call_function(aten.transpose.int, (linear, -2, -1))
    out.meta.update(node.meta)
    node.replace_all_uses_with(out)
    graph.erase_node(node)


def layer_name(weight_node: Any, target: str) -> str:
    """A layer's name: the weight's qualified name without '.weight', or the original layer's
    name when canonicalisation made a new weight (transposed matmul, folded BN)."""
    if isinstance(weight_node, torch.fx.Node) and LAYER_KEY in weight_node.meta:
        return str(weight_node.meta[LAYER_KEY])
    if isinstance(weight_node, torch.fx.Node) and weight_node.op == "call_function":
        return layer_name(weight_node.args[0], str(getattr(weight_node.args[0], "target", target)))
    return target[: -len(".weight")] if target.endswith(".weight") else target


def read_digitally(weight_node: torch.fx.Node) -> bool:
    """Whether a digital op (e.g. the input embedding of tied embeddings) reads this weight."""
    return any(not ((u.target is _LINEAR or u.target in _CONVS) and len(u.args) > 1
                    and u.args[1] is weight_node and u.args[0] is not weight_node)
               for u in weight_node.users)


def crossbar_copy(gm: torch.fx.GraphModule, node: torch.fx.Node, weight_node: torch.fx.Node,
                   layer: str) -> torch.fx.Node:
    """The crossbar's own copy of a weight a digital op reads too (the layout stores a digital
    tensor and programs a crossbar weight; ``<tensor>_crossbar`` names the copy, so the layout
    summary can report the tie), one per weight."""
    for other in gm.graph.nodes:
        if other is node:
            break
        if other.op == "get_attr" and other.meta.get(COPY_KEY) == weight_node.target:
            return other
    copy = new_param(gm, node, str(weight_node.target) + CROSSBAR_COPY_SUFFIX,
                      _param(gm, weight_node), layer)  # type: ignore[arg-type]
    copy.meta[COPY_KEY] = weight_node.target
    return copy
