"""normalize: lower the graph to canonical ATen ops and annotate the crossbar-mappable ones.

After this pass the graph holds only placeholders, ``get_attr`` parameters, ATen ops (plus
``operator.getitem``) and the output. Crossbar-mappable ops (a static weight) are canonical
``aten.linear`` / ``aten.conv1d`` / ``aten.conv2d`` calls with every argument explicit and carry a
``NodeInfo`` annotation; everything else runs in the digital periphery. BatchNorm stays a digital
op unless ``fold_bn`` is set, which folds an inference BN into the conv or linear before it.

Static-weight matmuls are crossbar layers: ``mm``/``bmm``/``addmm``/``baddbmm``/``matmul`` with
exactly one operand a parameter (seen through transposes, views and broadcasts) become linears
(``passes/crossbar_weights.py``); a matmul of two activations (attention scores, attention x
values) stays a digital ``aten.matmul``. Scaled-dot-product attention is decomposed into those
two matmuls and a softmax, in-place ops become functional, casts become ``_to_copy``
(``passes/lowering.py``). An op whose input holds integers (token ids, masks) is never a
crossbar layer. A weight read by several crossbar layers is programmed once per layer (layers
``name``, ``name#2``, ...); one a digital op reads too (tied input/output embeddings) gets a
crossbar copy named ``<tensor>_crossbar``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx
from torch.fx.operator_schemas import normalize_function

from neftc.ir.facts import Fact
from neftc.ir.node_info import ConvParams, NodeInfo, get_info, set_info
from neftc.ir.pass_manager import NodeError, PassContext, PassResult
from neftc.passes.crossbar_weights import (
    addmm_as_linear,
    crossbar_copy,
    layer_name,
    new_param,
    read_digitally,
    static_matmul,
)
from neftc.passes.lowering import (
    NEW_FACTORIES,
    RESHAPES,
    canonical_cast,
    decompose_attention,
    functional_inplace,
    inferred_size,
    matmul_form,
    plain_factory,
    split_as_slices,
)
from neftc.passes.lowering import param as _param

aten = torch.ops.aten

_LINEAR = aten.linear.default
_CONVS = {aten.conv1d.default: "conv1d", aten.conv2d.default: "conv2d"}
_CONV_DIMS = {3: aten.conv1d.default, 4: aten.conv2d.default}
_IDENTITY_OPS = {aten.dropout.default, aten.alias.default, aten.detach.default,
                 aten.clone.default, aten.contiguous.default, aten.lift_fresh_copy.default}
_CASTS = {aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten.type_as.default}
_DROPPED = {aten._assert_tensor_metadata.default, aten._assert_scalar.default}  # checks only
_RENAMED = {aten.__and__.Tensor: aten.bitwise_and.Tensor,  # the layout refuses dunder names
            aten.__or__.Tensor: aten.bitwise_or.Tensor}
_MATMULS = {aten.mm.default, aten.bmm.default, aten.addmm.default, aten.baddbmm.default}


@dataclass(frozen=True)
class Normalize:
    fold_bn: bool = False

    name: ClassVar[str] = "normalize"
    requires: ClassVar[frozenset[Fact]] = frozenset({Fact.TRACED})
    provides: ClassVar[frozenset[Fact]] = frozenset({Fact.NORMALIZED})

    def run(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        before = _signature(gm)
        gm = _lower_to_aten(gm, ctx.example_inputs)
        functional_inplace(gm)
        for node in list(gm.graph.nodes):
            if node.op != "call_function":
                continue
            if node.target in _IDENTITY_OPS:
                for user in node.users:  # a view of a dropped copy may be of a strided tensor
                    if user.target is aten.view.default:
                        user.target = aten.reshape.default
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
            elif node.target in _DROPPED and not node.users:
                gm.graph.erase_node(node)
            elif node.target in _RENAMED:
                node.target = _RENAMED[node.target]
            elif node.target in _CASTS:
                canonical_cast(gm, node)
            elif node.target in NEW_FACTORIES:
                plain_factory(gm, node)
            elif node.target is aten.split.Tensor:
                split_as_slices(gm, node)
            elif node.target in RESHAPES:
                inferred_size(node)
            elif node.target is aten._native_batch_norm_legit_no_training.default:
                _canonical_batch_norm(gm, node)
            elif node.target is aten.convolution.default:
                _canonical_convolution(gm, node)
            elif node.target is aten.scaled_dot_product_attention.default:
                why = decompose_attention(gm, node)
                if why is not None:
                    raise NodeError(node, why)
            elif node.target in _MATMULS and not addmm_as_linear(gm, node):
                matmul_form(gm, node)
        for node in list(gm.graph.nodes):
            if node.target is aten.matmul.default:
                static_matmul(gm, node)
        gm.graph.eliminate_dead_code()
        if self.fold_bn:
            _fold_batch_norms(gm)
        _annotate(gm)
        _check_ops(gm)
        gm.recompile()
        return PassResult(gm, _signature(gm) != before)


def _signature(gm: torch.fx.GraphModule) -> str:
    return str(gm.graph) + repr([(n.name, get_info(n) is not None) for n in gm.graph.nodes])


def _is_aten_level(gm: torch.fx.GraphModule) -> bool:
    for node in gm.graph.nodes:
        if node.op in ("call_module", "call_method"):
            return False
        if node.op == "call_function" and not (
            isinstance(node.target, torch._ops.OpOverload) or node.target is operator.getitem
        ):
            return False
    return True


def _lower_to_aten(gm: torch.fx.GraphModule,
                   example: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """Lower a torch-level fx graph to ATen with torch.export, keeping the batch size dynamic."""
    from neftc.frontend.trace import export_dynamic_batch, unexported

    if _is_aten_level(gm):
        return gm
    gm.eval()
    return unexported(export_dynamic_batch(gm, example).module())


def _canonical_batch_norm(gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    x, weight, bias, mean, var, momentum, eps = node.args
    users = list(node.users)
    if not all(u.target is operator.getitem and u.args[1] == 0 for u in users):
        return
    with gm.graph.inserting_before(node):
        bn = gm.graph.call_function(
            aten.batch_norm.default, (x, weight, bias, mean, var, False, momentum, eps, False)
        )
    bn.meta.update(node.meta)
    for user in users:
        user.replace_all_uses_with(bn)
        gm.graph.erase_node(user)
    gm.graph.erase_node(node)


def _canonical_convolution(gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    x, weight, bias, stride, padding, dilation, transposed, _output_padding, groups = node.args
    w = _param(gm, weight)
    if transposed or w is None or w.dim() not in _CONV_DIMS:
        return  # transposed or dynamic-weight convs run digitally
    with gm.graph.inserting_before(node):
        conv = gm.graph.call_function(
            _CONV_DIMS[w.dim()], (x, weight, bias, stride, padding, dilation, groups)
        )
    conv.meta.update(node.meta)
    node.replace_all_uses_with(conv)
    gm.graph.erase_node(node)


def _fold_batch_norms(gm: torch.fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.target is not aten.batch_norm.default:
            continue
        producer = node.args[0]
        if not (isinstance(producer, torch.fx.Node)
                and (producer.target in _CONVS or producer.target is _LINEAR)
                and len(producer.users) == 1):
            continue
        weight = _param(gm, producer.args[1])
        stats = [_param(gm, a) for a in node.args[1:5]]
        if weight is None or stats[2] is None or stats[3] is None:
            continue
        mean, var = stats[2], stats[3]
        gamma = stats[0] if stats[0] is not None else torch.ones_like(mean)
        beta = stats[1] if stats[1] is not None else torch.zeros_like(mean)
        eps = float(node.args[7])
        factor = gamma / torch.sqrt(var + eps)
        old_bias = _param(gm, producer.args[2]) if len(producer.args) > 2 else None
        bias = torch.zeros_like(mean) if old_bias is None else old_bias
        shape = (-1,) + (1,) * (weight.dim() - 1)
        layer = layer_name(producer.args[1], str(producer.args[1].target))
        new_w = new_param(gm, producer, str(producer.args[1].target) + ".bnfold",
                           weight * factor.reshape(shape), layer)
        new_b = new_param(gm, producer, str(producer.args[1].target) + ".bnfold_bias",
                           (bias - mean) * factor + beta, layer + ".bias")
        args = list(producer.args)
        args[1], args[2] = new_w, new_b
        producer.args = tuple(args)
        node.replace_all_uses_with(producer)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()


def _canonical_args(node: torch.fx.Node) -> tuple[Any, ...]:
    normalized = normalize_function(node.target, node.args, node.kwargs,
                                    normalize_to_only_use_kwargs=True)
    if normalized is None:
        raise NodeError(node, "cannot normalise the arguments of this op")
    kw = normalized.kwargs
    if node.target is _LINEAR:
        return (kw["input"], kw["weight"], kw.get("bias"))
    rank = 1 if node.target is aten.conv1d.default else 2
    padding = kw.get("padding", 0)
    if isinstance(padding, str):
        raise NodeError(node, f"string padding '{padding}' is not supported; use explicit padding")
    return (kw["input"], kw["weight"], kw.get("bias"), _tuple(kw.get("stride", 1), rank),
            _tuple(padding, rank), _tuple(kw.get("dilation", 1), rank), int(kw.get("groups", 1)))


def _split_computed_bias(gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    """A bias computed at run time (not a parameter) becomes a digital add after the op."""
    bias = node.args[2]
    if bias is None or (isinstance(bias, torch.fx.Node) and bias.op == "get_attr"):
        return
    args = list(node.args)
    args[2] = None
    node.args = tuple(args)
    users = list(node.users)
    with gm.graph.inserting_after(node):
        shaped = bias
        if node.target is not _LINEAR:
            rank = 1 if node.target is aten.conv1d.default else 2
            shaped = gm.graph.call_function(aten.view.default, (bias, [-1] + [1] * rank))
        with gm.graph.inserting_after(shaped if shaped is not bias else node):
            add = gm.graph.call_function(aten.add.Tensor, (node, shaped))
    for user in users:
        user.replace_input_with(node, add)


def _tuple(value: Any, rank: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * rank
    values = tuple(int(v) for v in value)
    return values * rank if len(values) == 1 else values


def _annotate(gm: torch.fx.GraphModule) -> None:
    seen: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or not (node.target is _LINEAR or node.target in _CONVS):
            continue
        weight_node = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        weight = _param(gm, weight_node)
        if weight is None or not _float_input(node):
            continue  # a dynamic weight or an integer input: digital
        node.args = _canonical_args(node)
        node.kwargs = {}
        _split_computed_bias(gm, node)
        base = layer_name(weight_node, str(weight_node.target))
        if read_digitally(weight_node):
            weight_node = crossbar_copy(gm, node, weight_node, base)
            node.args = (node.args[0], weight_node, *node.args[2:])
        seen[base] = seen.get(base, 0) + 1
        layer = base if seen[base] == 1 else f"{base}#{seen[base]}"
        c_out = int(weight.shape[0])
        rows = int(weight[0].numel())
        if node.target is _LINEAR:
            set_info(node, NodeInfo(layer, "linear", tuple(weight.shape), rows, c_out))
        else:
            _, _, _, stride, padding, dilation, groups = node.args
            conv = ConvParams(stride, padding, dilation, groups, tuple(weight.shape[2:]))
            set_info(node, NodeInfo(layer, _CONVS[node.target], tuple(weight.shape), rows, c_out,
                                    conv=conv))


def _float_input(node: torch.fx.Node) -> bool:
    """False where the op's input is known to hold integers or booleans (token ids, masks):
    those never reach a crossbar's DACs."""
    val = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
    return not isinstance(val, torch.Tensor) or val.is_floating_point()


def _size_arithmetic(node: torch.fx.Node) -> bool:
    """A product of sizes (ints and symbolic sizes, e.g. a dynamic batch times 16): the
    layout's ``sym_mul``."""
    if node.target is not operator.mul or node.kwargs:
        return False
    values = [a.meta.get("val") if isinstance(a, torch.fx.Node) else a for a in node.args]
    return all(isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool) for v in values)


def _check_ops(gm: torch.fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        if node.op in ("call_module", "call_method"):
            raise NodeError(node, "left over after lowering to ATen; export the model with "
                                  "torch.export and compile the .pt2")
        if node.op == "call_function" and not (
            node.target is operator.getitem
            or _size_arithmetic(node)
            or (isinstance(node.target, torch._ops.OpOverload)
                and node.target.namespace in ("aten", "prims"))
        ):
            raise NodeError(node, f"op {node.target} is neither an ATen op nor getitem, so the "
                                  "layout cannot describe it; express it with standard torch ops")
