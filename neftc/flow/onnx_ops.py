"""The ONNX form of each ATen op a layout's digital graph may call (the handlers of
:mod:`neftc.flow.onnx_export`): one function per op family, each adding nodes through the
exporter's builder and returning the output value's name."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from neftc.errors import LayoutError
from neftc.flow.onnx_math_ops import MATH_HANDLERS
from neftc.flow.onnx_tensor_ops import TENSOR_HANDLERS
from neftc.format.schema import GraphNode

if TYPE_CHECKING:
    from neftc.flow.onnx_export import OnnxExporter


def _ints(value: Any, rank: int) -> list[int]:
    if isinstance(value, int):
        return [value] * rank
    values = [int(v) for v in value]
    return values * rank if len(values) == 1 else values


def _unary(op_type: str) -> Callable[[OnnxExporter, GraphNode], str]:
    return lambda e, n: e.b.op(op_type, [e.value(n.args[0])], op_type.lower())


def _binary(op_type: str) -> Callable[[OnnxExporter, GraphNode], str]:
    def handler(e: OnnxExporter, n: GraphNode) -> str:
        lhs, other = e.value(n.args[0]), n.args[1]
        # an integer scalar takes the tensor's type (arange + 0 stays int64); a float one is float
        int_scalar = isinstance(other, int) and not isinstance(other, bool)
        rhs = e.b.op("CastLike", [e.b.const(other), lhs], "like") if int_scalar else \
            e.value(other)
        alpha = n.kwargs.get("alpha", n.args[2] if len(n.args) > 2 else 1)
        if alpha != 1:
            rhs = e.b.op("Mul", [rhs, e.b.const(alpha)], "alpha")
        return e.b.op(op_type, [lhs, rhs], op_type.lower())
    return handler


def _identity(e: OnnxExporter, n: GraphNode) -> str:
    return e.value(n.args[0])


def _batch_norm(e: OnnxExporter, n: GraphNode) -> str:
    x, weight, bias, mean, var = n.args[:5]
    eps = float(n.args[7])
    channels = e.shapes[x["node"]][1]
    w = e.value(weight) if weight is not None else e.b.const(np.ones(channels))
    b = e.value(bias) if bias is not None else e.b.const(np.zeros(channels))
    return e.b.op("BatchNormalization", [e.value(x), w, b, e.value(mean), e.value(var)], "bn",
                  epsilon=eps)


def _layer_norm(e: OnnxExporter, n: GraphNode) -> str:
    x, shape, weight, bias = n.args[:4]
    eps = float(n.args[4]) if len(n.args) > 4 else 1e-5
    inputs = [e.value(x), e.value(weight) if weight is not None else
              e.b.const(np.ones(shape))]
    if bias is not None:
        inputs.append(e.value(bias))
    return e.b.op("LayerNormalization", inputs, "ln", axis=-len(shape), epsilon=eps)


def _pool(op_type: str) -> Callable[[OnnxExporter, GraphNode], str]:
    def handler(e: OnnxExporter, n: GraphNode) -> str:
        args = list(n.args) + [None] * 6
        kernel = _ints(args[1], 2)
        stride = _ints(args[2], 2) if args[2] not in (None, []) else kernel
        padding = _ints(args[3] if args[3] is not None else 0, 2)
        attrs: dict[str, Any] = {"kernel_shape": kernel, "strides": stride,
                                 "pads": padding * 2}
        if op_type == "MaxPool":
            attrs["dilations"] = _ints(args[4] if args[4] is not None else 1, 2)
            attrs["ceil_mode"] = int(bool(args[5]))
        else:
            attrs["ceil_mode"] = int(bool(args[4]))
            attrs["count_include_pad"] = int(args[5] if args[5] is not None else True)
        return e.b.op(op_type, [e.value(n.args[0])], op_type.lower(), **attrs)
    return handler


def _adaptive_avg_pool2d(e: OnnxExporter, n: GraphNode) -> str:
    x = n.args[0]
    out = _ints(n.args[1], 2)
    _, _, h, w = e.shapes[x["node"]]
    if out == [1, 1]:
        return e.b.op("GlobalAveragePool", [e.value(x)], "gap")
    if h % out[0] or w % out[1]:
        raise LayoutError(f"ONNX export: adaptive_avg_pool2d from {h}x{w} to {out} is not a "
                          "fixed pooling (sizes not divisible)")
    kernel = [h // out[0], w // out[1]]
    return e.b.op("AveragePool", [e.value(x)], "apool", kernel_shape=kernel, strides=kernel)


def _flatten(e: OnnxExporter, n: GraphNode) -> str:
    rank = e.rank(n)
    start = n.args[1] % rank if len(n.args) > 1 else 0
    end = n.args[2] % rank if len(n.args) > 2 else rank - 1
    if end == rank - 1:
        if start == 0:
            return e.b.op("Reshape", [e.value(n.args[0]), e.b.const([-1], np.int64)], "flat")
        head = e.b.op("Shape", [e.value(n.args[0])], "shape", start=0, end=start)
        shape = e.b.op("Concat", [head, e.b.const([-1], np.int64)], "shape", axis=0)
        return e.b.op("Reshape", [e.value(n.args[0]), shape], "flatten")
    raise LayoutError("ONNX export: flatten of inner dimensions only is not supported")


def _reshape(e: OnnxExporter, n: GraphNode) -> str:
    return e.b.op("Reshape", [e.value(n.args[0]), e.shape_tensor(n.args[1])], "reshape")


def _sym_size(e: OnnxExporter, n: GraphNode) -> str:
    dim = n.args[1] % e.rank(n)
    return e.b.op("Shape", [e.value(n.args[0])], "size", start=dim, end=dim + 1)


def _size_op(op_type: str) -> Callable[[OnnxExporter, GraphNode], str]:
    """An op on sizes (sym_mul): each size a 1-element int64 tensor, as sym_size makes them."""
    def handler(e: OnnxExporter, n: GraphNode) -> str:
        sizes = [e.value(a) if isinstance(a, dict) else e.b.const([int(a)], np.int64, "size")
                 for a in n.args]
        return e.b.op(op_type, sizes, "size")
    return handler


def _transpose(e: OnnxExporter, n: GraphNode) -> str:
    rank = e.rank(n)
    perm = list(range(rank))
    a, b = n.args[1] % rank, n.args[2] % rank
    perm[a], perm[b] = perm[b], perm[a]
    return e.b.op("Transpose", [e.value(n.args[0])], "transpose", perm=perm)


def _permute(e: OnnxExporter, n: GraphNode) -> str:
    rank = e.rank(n)
    return e.b.op("Transpose", [e.value(n.args[0])], "permute",
                  perm=[d % rank for d in n.args[1]])


def _softmax(e: OnnxExporter, n: GraphNode) -> str:
    return e.b.op("Softmax", [e.value(n.args[0])], "softmax", axis=int(n.args[1]))


def _mean(e: OnnxExporter, n: GraphNode) -> str:
    keep = bool(n.args[2]) if len(n.args) > 2 else bool(n.kwargs.get("keepdim", False))
    return e.b.op("ReduceMean", [e.value(n.args[0])], "mean", axes=list(n.args[1]),
                  keepdims=int(keep))


def _gelu(e: OnnxExporter, n: GraphNode) -> str:
    x = e.value(n.args[0])
    if n.kwargs.get("approximate", "none") == "tanh":
        return _gelu_tanh(e, x)
    erf = e.b.op("Erf", [e.b.op("Mul", [x, e.b.const(1 / math.sqrt(2))], "g")], "erf")
    half = e.b.op("Mul", [x, e.b.const(0.5)], "g")
    return e.b.op("Mul", [half, e.b.op("Add", [erf, e.b.const(1.0)], "g")], "gelu")


def _chunk(e: OnnxExporter, n: GraphNode) -> list[str]:
    x = n.args[0]
    chunks, dim = int(n.args[1]), int(n.args[2]) if len(n.args) > 2 else 0
    size = e.shapes[x["node"]][dim]
    each = -(-size // chunks)
    sizes = [min(each, size - i * each) for i in range(chunks) if i * each < size]
    return e.b.op("Split", [e.value(x), e.b.const(sizes, np.int64)], "chunk",
                  outputs=len(sizes), axis=dim)


def _cat(e: OnnxExporter, n: GraphNode) -> str:
    dim = int(n.args[1]) if len(n.args) > 1 else 0
    return e.b.op("Concat", [e.value(t) for t in n.args[0]], "cat", axis=dim)


def _gelu_tanh(e: OnnxExporter, x: str) -> str:
    """0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
    cube = e.b.op("Mul", [e.b.op("Mul", [x, x], "g"), x], "g")
    inner = e.b.op("Add", [x, e.b.op("Mul", [cube, e.b.const(0.044715)], "g")], "g")
    tanh = e.b.op("Tanh", [e.b.op("Mul", [inner, e.b.const(math.sqrt(2 / math.pi))], "g")],
                  "g")
    half = e.b.op("Mul", [x, e.b.const(0.5)], "g")
    return e.b.op("Mul", [half, e.b.op("Add", [tanh, e.b.const(1.0)], "g")], "gelu")

HANDLERS: dict[str, Callable[[OnnxExporter, GraphNode], Any]] = {
    "aten.relu.default": _unary("Relu"),
    "aten.sigmoid.default": _unary("Sigmoid"),
    "aten.tanh.default": _unary("Tanh"),
    "aten.neg.default": _unary("Neg"),
    "aten.exp.default": _unary("Exp"),
    "aten.sqrt.default": _unary("Sqrt"),
    "aten.add.Tensor": _binary("Add"),
    "aten.sub.Tensor": _binary("Sub"),
    "aten.mul.Tensor": _binary("Mul"),
    "aten.div.Tensor": _binary("Div"),
    "aten.matmul.default": _binary("MatMul"),
    "aten.bmm.default": _binary("MatMul"),
    "aten.batch_norm.default": _batch_norm,
    "aten.layer_norm.default": _layer_norm,
    "aten.max_pool2d.default": _pool("MaxPool"),
    "aten.avg_pool2d.default": _pool("AveragePool"),
    "aten.adaptive_avg_pool2d.default": _adaptive_avg_pool2d,
    "aten.flatten.using_ints": _flatten,
    "aten.view.default": _reshape,
    "aten.reshape.default": _reshape,
    "aten._unsafe_view.default": _reshape,
    "aten.sym_size.int": _sym_size,
    "sym_mul": _size_op("Mul"),
    "aten.transpose.int": _transpose,
    "aten.permute.default": _permute,
    "aten.t.default": lambda e, n: e.b.op("Transpose", [e.value(n.args[0])], "t", perm=[1, 0]),
    "aten.softmax.int": _softmax,
    "aten._softmax.default": _softmax,
    "aten.mean.dim": _mean,
    "aten.gelu.default": _gelu,
    "aten.chunk.default": _chunk,
    "aten.cat.default": _cat,
    "aten.clone.default": _identity,
    "aten.contiguous.default": _identity,
    "aten.alias.default": _identity,
    "aten.detach.default": _identity,
    "aten.dropout.default": _identity,
    "aten.abs.default": _unary("Abs"),
    "aten.erf.default": _unary("Erf"),
    "aten.reciprocal.default": _unary("Reciprocal"),
    "aten.logical_not.default": _unary("Not"),
    "aten.bitwise_not.default": _unary("Not"),
    "aten.bitwise_and.Tensor": _binary("And"),
    "aten.bitwise_or.Tensor": _binary("Or"),
    **TENSOR_HANDLERS,
    **MATH_HANDLERS,
}
