"""The ONNX form of the digital ops of masks, casts, lookups, padding, slices and new tensors
(transformers' embeddings and attention masks, mobile CNNs' padding): the handlers
``neftc.flow.onnx_ops`` adds to its table, one function per op family. ATen's scalar arguments
take the type of the tensor they meet (``CastLike``), as ATen's type promotion does for ints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import TensorProto, numpy_helper

from neftc.format.schema import GraphNode

if TYPE_CHECKING:
    from neftc.flow.onnx_export import OnnxExporter


def _shape(e: OnnxExporter, ref: dict[str, Any]) -> tuple[int, ...]:
    """A value's shape: propagated, or (a stored tensor, e.g. a position-id buffer) its record's."""
    name = ref["node"]
    if name in e.shapes:
        return e.shapes[name]
    node = next(n for n in e.layout.doc.graph.nodes if n.name == name)
    return tuple(e.layout.tensor(node.target).shape)


def _rank(e: OnnxExporter, n: GraphNode) -> int:
    return len(_shape(e, n.args[0]))


ONNX_DTYPES = {"float32": 1, "uint8": 2, "int8": 3, "int16": 5, "int32": 6, "int64": 7,
                "bool": 9, "float16": 10, "float64": 11, "bfloat16": 16}  # TensorProto codes
_NUMPY_DTYPES = {"float32": np.float32, "int64": np.int64, "int32": np.int32, "bool": np.bool_,
                 "float64": np.float64, "float16": np.float16, "int8": np.int8,
                 "int16": np.int16, "uint8": np.uint8}


def _like(e: OnnxExporter, value: Any, tensor: str) -> str:
    """A scalar argument as a constant of the same element type as ``tensor`` (CastLike)."""
    if isinstance(value, dict):
        return e.value(value)
    return e.b.op("CastLike", [e.b.const(value), tensor], "like")


def _compare(op_type: str, negate: bool = False) -> Callable[[OnnxExporter, GraphNode], str]:
    def handler(e: OnnxExporter, n: GraphNode) -> str:
        lhs = e.value(n.args[0])
        out = e.b.op(op_type, [lhs, _like(e, n.args[1], lhs)], op_type.lower())
        return e.b.op("Not", [out], "not") if negate else out
    return handler


def _where(e: OnnxExporter, n: GraphNode) -> str:
    cond, a, b = n.args[:3]
    if isinstance(a, dict):
        x = e.value(a)
        return e.b.op("Where", [e.value(cond), x, _like(e, b, x)], "where")
    y = e.value(b)
    return e.b.op("Where", [e.value(cond), _like(e, a, y), y], "where")


def _masked_fill(e: OnnxExporter, n: GraphNode) -> str:
    x = e.value(n.args[0])
    fill = e.b.op("CastLike", [e.value(n.args[2]) if isinstance(n.args[2], dict)
                               else e.b.const(n.args[2]), x], "fill")
    return e.b.op("Where", [e.value(n.args[1]), fill, x], "masked_fill")


def _cast(e: OnnxExporter, n: GraphNode) -> str:
    dtype = n.kwargs.get("dtype")
    if dtype is None:
        return e.value(n.args[0])
    return e.b.op("Cast", [e.value(n.args[0])], "cast", to=ONNX_DTYPES[dtype["dtype"]])


def _embedding(e: OnnxExporter, n: GraphNode) -> str:
    return e.b.op("Gather", [e.value(n.args[0]), e.value(n.args[1])], "embedding", axis=0)


def _gather(e: OnnxExporter, n: GraphNode) -> str:
    return e.b.op("GatherElements", [e.value(n.args[0]), e.value(n.args[2])], "gather",
                  axis=int(n.args[1]))


def _index_select(e: OnnxExporter, n: GraphNode) -> str:
    return e.b.op("Gather", [e.value(n.args[0]), e.value(n.args[2])], "index_select",
                  axis=int(n.args[1]))


def _index(e: OnnxExporter, n: GraphNode) -> str:
    """``x[i0, ..., ik-1]`` (ATen's index.Tensor, every index a tensor): the indices broadcast
    to one shape (adding a zero of that shape), stacked on a last axis, then ``GatherND``."""
    indices = [e.b.op("Cast", [e.value(t)], "index_i64", to=TensorProto.INT64) for t in n.args[1]]
    total = indices[0]
    for index in indices[1:]:
        total = e.b.op("Add", [total, index], "index_sum")
    zero = e.b.op("Mul", [total, e.b.const(0, np.int64)], "index_zero")
    stacked = [e.b.op("Unsqueeze", [e.b.op("Add", [index, zero], "index_b"),
                                    e.b.const([-1], np.int64)], "index_u") for index in indices]
    joined = stacked[0] if len(stacked) == 1 else e.b.op("Concat", stacked, "index_cat", axis=-1)
    return e.b.op("GatherND", [e.value(n.args[0]), joined], "index")


def _pad(e: OnnxExporter, n: GraphNode) -> str:
    """ATen's pad list (last dimension first, begin/end pairs) as ONNX's begins then ends."""
    x = e.value(n.args[0])
    pad = [int(v) for v in n.args[1]]
    if n.target == "aten.constant_pad_nd.default":
        mode, value = "constant", n.args[2] if len(n.args) > 2 else n.kwargs.get("value", 0)
    else:
        mode = n.args[2] if len(n.args) > 2 else n.kwargs.get("mode", "constant")
        value = n.args[3] if len(n.args) > 3 else n.kwargs.get("value")
    rank = _rank(e, n)
    begins, ends = [0] * rank, [0] * rank
    for k in range(len(pad) // 2):
        begins[rank - 1 - k], ends[rank - 1 - k] = pad[2 * k], pad[2 * k + 1]
    inputs = [x, e.b.const(begins + ends, np.int64, "pads")]
    if mode == "constant":
        inputs.append(_like(e, 0.0 if value is None else value, x))
    return e.b.op("Pad", inputs, "pad", mode={"replicate": "edge"}.get(mode, mode))


def _hardtanh(e: OnnxExporter, n: GraphNode) -> str:
    low = n.args[1] if len(n.args) > 1 else n.kwargs.get("min_val", -1.0)
    high = n.args[2] if len(n.args) > 2 else n.kwargs.get("max_val", 1.0)
    return e.b.op("Clip", [e.value(n.args[0]), e.b.const(low), e.b.const(high)], "hardtanh")


def _clamp(e: OnnxExporter, n: GraphNode) -> str:
    x = e.value(n.args[0])
    low = n.args[1] if len(n.args) > 1 else n.kwargs.get("min")
    high = n.args[2] if len(n.args) > 2 else n.kwargs.get("max")
    bounds = [_like(e, v, x) if v is not None else "" for v in (low, high)]
    return e.b.op("Clip", [x, *bounds], "clamp")


def _pow(e: OnnxExporter, n: GraphNode) -> str:
    return e.b.op("Pow", [e.value(n.args[0]), e.b.const(n.args[1])], "pow")


def _rsub(e: OnnxExporter, n: GraphNode) -> str:
    x = e.value(n.args[0])
    alpha = n.args[2] if len(n.args) > 2 else n.kwargs.get("alpha", 1)
    if alpha != 1:
        x = e.b.op("Mul", [x, _like(e, alpha, x)], "alpha")
    return e.b.op("Sub", [_like(e, n.args[1], x), x], "rsub")


def _rsqrt(e: OnnxExporter, n: GraphNode) -> str:
    return e.b.op("Reciprocal", [e.b.op("Sqrt", [e.value(n.args[0])], "sqrt")], "rsqrt")


def _unsqueeze(e: OnnxExporter, n: GraphNode) -> str:
    dim = int(n.args[1]) % (_rank(e, n) + 1)
    return e.b.op("Unsqueeze", [e.value(n.args[0]), e.b.const([dim], np.int64)], "unsqueeze")


def _squeeze(e: OnnxExporter, n: GraphNode) -> str:
    dim = int(n.args[1]) % max(_rank(e, n), 1)
    if _shape(e, n.args[0])[dim] != 1:
        return e.value(n.args[0])  # torch squeezes a dimension of size 1 only
    return e.b.op("Squeeze", [e.value(n.args[0]), e.b.const([dim], np.int64)], "squeeze")


def _select(e: OnnxExporter, n: GraphNode) -> str:
    return e.b.op("Gather", [e.value(n.args[0]), e.b.const(int(n.args[2]), np.int64)],
                  "select", axis=int(n.args[1]) % _rank(e, n))


def _slice(e: OnnxExporter, n: GraphNode) -> str:
    args = list(n.args) + [None] * 5
    dim = int(args[1] if args[1] is not None else n.kwargs.get("dim", 0)) % _rank(e, n)
    start = args[2] if args[2] is not None else n.kwargs.get("start")
    end = args[3] if args[3] is not None else n.kwargs.get("end")
    step = args[4] if args[4] is not None else n.kwargs.get("step", 1)
    big = 2**63 - 1
    inputs = [e.value(n.args[0]), e.b.const([0 if start is None else int(start)], np.int64),
              e.b.const([big if end is None else min(int(end), big)], np.int64),
              e.b.const([dim], np.int64), e.b.const([int(step)], np.int64)]
    return e.b.op("Slice", inputs, "slice")


def _expand(e: OnnxExporter, n: GraphNode) -> str:
    """-1 (keep the size) becomes 1, which ONNX's broadcasting Expand keeps as the input's size."""
    sizes = [1 if isinstance(v, int) and v == -1 else v for v in n.args[1]]
    return e.b.op("Expand", [e.value(n.args[0]), e.shape_tensor(sizes)], "expand")


def _scalar(e: OnnxExporter, value: Any) -> str:
    """An arange bound as a 0-d int64 or float value (a sym_size reference is a [1] tensor)."""
    if isinstance(value, dict):
        return e.b.op("Squeeze", [e.value(value)], "bound")
    return e.b.const(value, np.int64 if isinstance(value, int) else np.float32, "bound")


def _factory_dtype(n: GraphNode, values: list[Any]) -> str:
    dtype = n.kwargs.get("dtype")
    if dtype is not None:
        return str(dtype["dtype"])
    if any(isinstance(v, bool) for v in values):
        return "bool"
    return "float32" if any(isinstance(v, float) for v in values) else "int64"


def _arange(e: OnnxExporter, n: GraphNode) -> str:
    bounds = list(n.args)
    start, end, step = ([0, bounds[0], 1] if len(bounds) == 1 else
                        [bounds[0], bounds[1], bounds[2] if len(bounds) > 2 else 1])
    dtype = _factory_dtype(n, [v for v in (start, end, step) if not isinstance(v, dict)])
    parts = [e.b.op("Cast", [_scalar(e, v)], "bound", to=ONNX_DTYPES[dtype])
             for v in (start, end, step)]
    return e.b.op("Range", parts, "arange")


def _filled(value: float | None) -> Callable[[OnnxExporter, GraphNode], str]:
    """ones/zeros (``value``) or full (None: its fill_value) as ConstantOfShape."""
    def handler(e: OnnxExporter, n: GraphNode) -> str:
        fill = n.args[1] if value is None else value
        dtype = _factory_dtype(n, [fill]) if value is None else \
            str((n.kwargs.get("dtype") or {"dtype": "float32"})["dtype"])
        tensor = numpy_helper.from_array(np.asarray([fill], dtype=_NUMPY_DTYPES[dtype]))
        return e.b.op("ConstantOfShape", [e.shape_tensor(list(n.args[0]))], "filled",
                      value=tensor)
    return handler

def _filled_like(value: float | None) -> Callable[[OnnxExporter, GraphNode], str]:
    """ones_like/zeros_like (``value``) or full_like (None: its fill_value): the input's shape,
    and its type unless a dtype is given."""
    def handler(e: OnnxExporter, n: GraphNode) -> str:
        x = e.value(n.args[0])
        fill = n.args[1] if value is None else value
        shape = e.b.op("Shape", [x], "shape")
        tensor = numpy_helper.from_array(np.asarray([fill], dtype=np.float64))
        out = e.b.op("ConstantOfShape", [shape], "filled", value=tensor)
        dtype = n.kwargs.get("dtype")
        if dtype is not None:
            return e.b.op("Cast", [out], "filled", to=ONNX_DTYPES[dtype["dtype"]])
        return e.b.op("CastLike", [out, x], "filled")
    return handler


TENSOR_HANDLERS: dict[str, Callable[[OnnxExporter, GraphNode], Any]] = {
    "aten.index.Tensor": _index,
    "aten.rsqrt.default": _rsqrt,
    "aten.pow.Tensor_Scalar": _pow,
    "aten.rsub.Scalar": _rsub,
    "aten.hardtanh.default": _hardtanh,
    "aten.clamp.default": _clamp,
    **{f"aten.{op}.{kind}": _compare(onnx_op, negate=op == "ne")
       for op, onnx_op in (("eq", "Equal"), ("ne", "Equal"), ("lt", "Less"),
                           ("le", "LessOrEqual"), ("gt", "Greater"), ("ge", "GreaterOrEqual"))
       for kind in ("Scalar", "Tensor")},
    "aten.where.self": _where,
    "aten.where.ScalarOther": _where,
    "aten.where.ScalarSelf": _where,
    "aten.masked_fill.Scalar": _masked_fill,
    "aten.masked_fill.Tensor": _masked_fill,
    "aten._to_copy.default": _cast,
    "aten.embedding.default": _embedding,
    "aten.gather.default": _gather,
    "aten.index_select.default": _index_select,
    "aten.pad.default": _pad,
    "aten.constant_pad_nd.default": _pad,
    "aten.unsqueeze.default": _unsqueeze,
    "aten.squeeze.dim": _squeeze,
    "aten.select.int": _select,
    "aten.slice.Tensor": _slice,
    "aten.expand.default": _expand,
    "aten.arange.default": _arange,
    "aten.arange.start": _arange,
    "aten.arange.start_step": _arange,
    "aten.ones.default": _filled(1.0),
    "aten.zeros.default": _filled(0.0),
    "aten.full.default": _filled(None),
    "aten.ones_like.default": _filled_like(1.0),
    "aten.zeros_like.default": _filled_like(0.0),
    "aten.full_like.default": _filled_like(None),
}
