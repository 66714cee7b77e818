"""Graph rewrites of the normalize pass (a helper module, not a pass): in-place ops made
functional, matmul-like ops reduced to ``aten.matmul`` (plus an add), scaled-dot-product
attention decomposed into its two activation x activation matmuls and a softmax, and the static
matrix behind a matmul operand (a parameter, possibly transposed, viewed or broadcast), which is
what makes such a matmul a crossbar layer.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx

aten = torch.ops.aten

# pure view or shape ops through which a parameter stays a static matrix
_VIEW_OPS = {aten.t.default, aten.transpose.int, aten.permute.default, aten.view.default,
             aten.reshape.default, aten._unsafe_view.default, aten.expand.default,
             aten.unsqueeze.default, aten.squeeze.dim, aten.clone.default,
             aten.contiguous.default, aten.alias.default, aten.detach.default}
_MASKED = torch.finfo(torch.float32).min  # a masked attention score (finite, as layouts need)


def get_attr_value(gm: torch.nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def param(gm: torch.fx.GraphModule, node: Any) -> torch.Tensor | None:
    """The tensor behind a get_attr node, else None."""
    if isinstance(node, torch.fx.Node) and node.op == "get_attr":
        value = get_attr_value(gm, str(node.target))
        return value if isinstance(value, torch.Tensor) else None
    return None


def static_value(gm: torch.fx.GraphModule, node: Any) -> tuple[torch.fx.Node, torch.Tensor] | None:
    """``(root get_attr node, value)`` if ``node`` is a parameter seen through view and shape
    ops only (t, transpose, view, expand, ...), computed from the parameter; else None."""
    if not isinstance(node, torch.fx.Node):
        return None
    if node.op == "get_attr":
        value = param(gm, node)
        return None if value is None else (node, value.detach())
    if node.op != "call_function" or node.target not in _VIEW_OPS:
        return None
    found = static_value(gm, node.args[0])
    if found is None:
        return None
    root, value = found
    args = list(node.args[1:])
    if node.target is aten.expand.default:  # a run-time size (the batch) broadcasts: keep 1
        args[0] = [-1 if isinstance(v, torch.fx.Node) else v for v in args[0]]
    if _has_node(args) or _has_node(node.kwargs):
        return None  # e.g. a view to the run-time batch size
    with torch.no_grad():
        return root, node.target(value, *args, **node.kwargs)


def _has_node(value: Any) -> bool:
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg(value, found.append)
    return bool(found)


def static_matrix(gm: torch.fx.GraphModule, node: Any) -> tuple[torch.fx.Node, torch.Tensor] | None:
    """``(root, M)`` if ``node``'s value is one 2-D matrix ``M`` (possibly broadcast along
    leading dimensions) derived from a parameter; else None (a dynamic operand)."""
    found = static_value(gm, node)
    if found is None or found[1].dim() < 2 or not found[1].is_floating_point():
        return None
    root, value = found
    matrix = value.reshape(-1, *value.shape[-2:])[0]
    if not torch.equal(value, matrix.expand_as(value)):
        return None  # a different matrix per batch entry: not one crossbar layer
    return root, matrix


def functional_inplace(gm: torch.fx.GraphModule) -> None:
    """``aten.add_`` and other in-place ops become their functional form; later readers of the
    mutated tensor read the new value."""
    order = {node: k for k, node in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        name = target._schema.name.split("::")[1]
        if not name.endswith("_") or name.startswith("_"):
            continue
        packet = getattr(aten, name[:-1], None)
        functional = getattr(packet, target._overloadname, None) if packet else None
        if functional is None:
            continue
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(functional, node.args, node.kwargs)
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        mutated = node.args[0]
        if isinstance(mutated, torch.fx.Node):
            for user in list(mutated.users):
                if user is not new and order.get(user, -1) > order[node]:
                    user.replace_input_with(mutated, new)
        gm.graph.erase_node(node)


def matmul_form(gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    """``mm``/``bmm`` become ``matmul``; ``addmm``/``baddbmm`` become ``matmul`` plus an add
    (scaled by beta and alpha where they are not 1)."""
    graph = gm.graph
    with graph.inserting_before(node):
        if node.target in (aten.mm.default, aten.bmm.default):
            new = graph.call_function(aten.matmul.default, tuple(node.args[:2]))
        else:
            acc, lhs, rhs = node.args[:3]
            beta, alpha = node.kwargs.get("beta", 1), node.kwargs.get("alpha", 1)
            product = graph.call_function(aten.matmul.default, (lhs, rhs))
            if alpha != 1:
                product = graph.call_function(aten.mul.Tensor, (product, alpha))
            if beta != 1:
                acc = graph.call_function(aten.mul.Tensor, (acc, beta))
            new = graph.call_function(aten.add.Tensor, (product, acc))
    new.meta.update(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def _shape(node: Any) -> tuple[Any, ...] | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _dtype(node: Any) -> torch.dtype | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val.dtype if isinstance(val, torch.Tensor) else None


def decompose_attention(gm: torch.fx.GraphModule, node: torch.fx.Node) -> str | None:
    """``scaled_dot_product_attention`` as ``softmax(q @ k^T * scale + mask) @ v`` (the two
    matmuls stay digital: both operands are activations); None when done, else why not."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
    bound = dict(zip(names, node.args)) | dict(node.kwargs)
    q, k, v = bound["query"], bound["key"], bound["value"]
    mask, scale = bound.get("attn_mask"), bound.get("scale")
    if bound.get("dropout_p", 0.0) != 0.0 or bound.get("enable_gqa", False):
        return "attention with dropout or grouped-query heads (enable_gqa) is not supported"
    q_shape, k_shape = _shape(q), _shape(k)
    if q_shape is None or k_shape is None:
        return "the shapes of the query and key are unknown"
    causal = bool(bound.get("is_causal", False))
    if causal and not (isinstance(q_shape[-2], int) and isinstance(k_shape[-2], int)):
        return "causal attention over a sequence of dynamic length is not supported"
    if scale is None:
        scale = 1.0 / math.sqrt(int(q_shape[-1]))
    graph = gm.graph
    with graph.inserting_before(node):
        keys = graph.call_function(aten.transpose.int, (k, -2, -1))
        scores = graph.call_function(aten.matmul.default, (q, keys))
        scores = graph.call_function(aten.mul.Tensor, (scores, float(scale)))
        if causal:
            rows = graph.call_function(aten.arange.default, (q_shape[-2],))
            cols = graph.call_function(aten.arange.default, (k_shape[-2],))
            causal = graph.call_function(aten.ge.Tensor, (
                graph.call_function(aten.unsqueeze.default, (rows, 1)),
                graph.call_function(aten.unsqueeze.default, (cols, 0))))
            scores = graph.call_function(aten.where.ScalarOther, (causal, scores, _MASKED))
        if mask is not None and _dtype(mask) is torch.bool:
            scores = graph.call_function(aten.where.ScalarOther, (mask, scores, _MASKED))
        elif mask is not None:
            scores = graph.call_function(aten.add.Tensor, (scores, mask))
        weights = graph.call_function(aten.softmax.int, (scores, -1))
        out = graph.call_function(aten.matmul.default, (weights, v))
    out.meta.update(node.meta)
    node.replace_all_uses_with(out)
    graph.erase_node(node)
    return None


# new_ones(x, size) is ones(size) with x's dtype: the layout knows the plain factories.
NEW_FACTORIES = {aten.new_ones.default: aten.ones.default,
                  aten.new_zeros.default: aten.zeros.default,
                  aten.new_full.default: aten.full.default,
                  aten.new_empty.default: aten.zeros.default}


def canonical_cast(gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    """``to(dtype)``, ``to(device, dtype)`` and ``type_as`` become the one cast the layout knows,
    ``_to_copy`` (a layout runs on one device: the device argument is dropped)."""
    if node.target is aten.type_as.default:
        other = node.args[1].meta.get("val") if isinstance(node.args[1], torch.fx.Node) else None
        dtype = other.dtype if isinstance(other, torch.Tensor) else None
    elif node.target is aten.to.device:
        dtype = node.kwargs.get("dtype", node.args[2] if len(node.args) > 2 else None)
    else:
        dtype = node.kwargs.get("dtype", node.args[1] if len(node.args) > 1 else None)
    if not isinstance(dtype, torch.dtype):
        return
    with gm.graph.inserting_before(node):
        cast = gm.graph.call_function(aten._to_copy.default, (node.args[0],), {"dtype": dtype})
    cast.meta.update(node.meta)
    node.replace_all_uses_with(cast)
    gm.graph.erase_node(node)


def plain_factory(gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    """``x.new_ones(size)`` (and new_zeros, new_full, new_empty as zeros) becomes ``ones(size)``
    with the dtype given or ``x``'s; the device and layout arguments are dropped."""
    source = node.args[0]
    value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
    dtype = node.kwargs.get("dtype") or (value.dtype if isinstance(value, torch.Tensor) else None)
    args = tuple(node.args[1:])
    with gm.graph.inserting_before(node):
        made = gm.graph.call_function(NEW_FACTORIES[node.target], args,
                                      {"dtype": dtype} if dtype is not None else {})
    made.meta.update(node.meta)
    node.replace_all_uses_with(made)
    gm.graph.erase_node(node)


def split_as_slices(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """``split(x, size, dim)`` becomes one ``slice`` per part its ``getitem`` users read (the
    layout has no split); False (left as is) when the split dimension's size is not static."""
    source, size = node.args[0], node.args[1]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    shape = _shape(source)
    if shape is None or not isinstance(size, int) or not isinstance(shape[dim], int):
        return False
    for user in list(node.users):
        if user.target is not operator.getitem:
            return False
    for user in list(node.users):
        start = user.args[1] * size
        with gm.graph.inserting_before(user):
            part = gm.graph.call_function(aten.slice.Tensor,
                                          (source, dim, start, min(start + size, shape[dim])))
        part.meta.update(user.meta)
        user.replace_all_uses_with(part)
        gm.graph.erase_node(user)
    gm.graph.erase_node(node)
    return True


RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}


def inferred_size(node: torch.fx.Node) -> None:
    """A reshape whose target shape holds one size computed from symbolic sizes (``batch * 16``
    in a dynamic-batch export: Python arithmetic the layout cannot describe) gets -1 there, which
    the reshape infers to the same value; the arithmetic then has no user and is dropped."""
    shape = node.args[1] if len(node.args) > 1 else None
    if not isinstance(shape, (list, tuple)) or -1 in shape:
        return
    computed = [k for k, entry in enumerate(shape) if isinstance(entry, torch.fx.Node)
                and entry.target is not aten.sym_size.int]
    if len(computed) == 1:
        new_shape = list(shape)
        new_shape[computed[0]] = -1
        node.args = (node.args[0], new_shape, *node.args[2:])
