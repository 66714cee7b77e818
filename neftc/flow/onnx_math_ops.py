"""The ONNX form of the activations, reductions and scans a layout's digital graph may call
(handlers of :mod:`neftc.flow.onnx_export`, merged into ``onnx_ops.HANDLERS``): SiLU, hard
swish/sigmoid, leaky ReLU, ELU, log-softmax, sum, amax, argmax and cumsum."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from neftc.flow.onnx_tensor_ops import ONNX_DTYPES
from neftc.format.schema import GraphNode

if TYPE_CHECKING:
    from neftc.flow.onnx_export import OnnxExporter

def _arg(n: GraphNode, index: int, name: str, default: Any) -> Any:
    """Argument ``index`` (positional) or ``name`` (keyword) of ``n``, else ``default``."""
    if len(n.args) > index:
        return n.args[index]
    return n.kwargs.get(name, default)


def _cast_to(e: OnnxExporter, x: str, dtype: Any) -> str:
    """``x`` cast to a layout dtype record (``{"dtype": "float32"}``), or ``x`` for None."""
    if dtype is None:
        return x
    return e.b.op("Cast", [x], "cast", to=ONNX_DTYPES[dtype["dtype"]])


def _silu(e: OnnxExporter, n: GraphNode) -> str:
    x = e.value(n.args[0])
    return e.b.op("Mul", [x, e.b.op("Sigmoid", [x], "sigmoid")], "silu")


def _hardswish(e: OnnxExporter, n: GraphNode) -> str:
    return e.b.op("HardSwish", [e.value(n.args[0])], "hardswish")


def _hardsigmoid(e: OnnxExporter, n: GraphNode) -> str:
    # torch: relu6(x + 3) / 6, i.e. ONNX's HardSigmoid with alpha 1/6, beta 1/2
    return e.b.op("HardSigmoid", [e.value(n.args[0])], "hardsigmoid", alpha=1 / 6, beta=0.5)


def _leaky_relu(e: OnnxExporter, n: GraphNode) -> str:
    slope = float(_arg(n, 1, "negative_slope", 0.01))
    return e.b.op("LeakyRelu", [e.value(n.args[0])], "leaky_relu", alpha=slope)


def _elu(e: OnnxExporter, n: GraphNode) -> str:
    """torch's ``scale * elu(x * input_scale, alpha)`` (ELU, SELU and CELU-like forms)."""
    alpha, scale = float(_arg(n, 1, "alpha", 1)), float(_arg(n, 2, "scale", 1))
    input_scale = float(_arg(n, 3, "input_scale", 1))
    x = e.value(n.args[0])
    if input_scale != 1:
        x = e.b.op("Mul", [x, e.b.const(input_scale)], "elu_in")
    out = e.b.op("Elu", [x], "elu", alpha=alpha)
    return out if scale == 1 else e.b.op("Mul", [out, e.b.const(scale)], "elu_out")


def _log_softmax(e: OnnxExporter, n: GraphNode) -> str:
    x = _cast_to(e, e.value(n.args[0]), _arg(n, 2, "dtype", None))
    return e.b.op("LogSoftmax", [x], "log_softmax", axis=int(n.args[1]))


def _sum(e: OnnxExporter, n: GraphNode) -> str:
    """``sum(x, dim, keepdim, dtype)``; ReduceSum takes its axes as an input (opset 13+); no
    axes (None or []) sums every element."""
    x = _cast_to(e, e.value(n.args[0]), _arg(n, 3, "dtype", None))
    dims = _arg(n, 1, "dim", None) or []
    keep = int(bool(_arg(n, 2, "keepdim", False)))
    inputs = [x, e.b.const([int(d) for d in dims], np.int64, "axes")] if dims else [x]
    return e.b.op("ReduceSum", inputs, "sum", keepdims=keep)


def _amax(e: OnnxExporter, n: GraphNode) -> str:
    """``amax(x, dim, keepdim)``; ReduceMax takes its axes as an attribute in opset 17."""
    dims = _arg(n, 1, "dim", []) or []
    keep = int(bool(_arg(n, 2, "keepdim", False)))
    attrs: dict[str, Any] = {"keepdims": keep}
    if dims:
        attrs["axes"] = [int(d) for d in dims]
    return e.b.op("ReduceMax", [e.value(n.args[0])], "amax", **attrs)


def _argmax(e: OnnxExporter, n: GraphNode) -> str:
    """``argmax(x, dim, keepdim)``; without a dim, of the flattened tensor (a scalar)."""
    dim, keep = _arg(n, 1, "dim", None), int(bool(_arg(n, 2, "keepdim", False)))
    x = e.value(n.args[0])
    if dim is None:
        flat = e.b.op("Reshape", [x, e.b.const([-1], np.int64, "flat")], "flat")
        return e.b.op("ArgMax", [flat], "argmax", axis=0, keepdims=0)
    return e.b.op("ArgMax", [x], "argmax", axis=int(dim), keepdims=keep)


def _cumsum(e: OnnxExporter, n: GraphNode) -> str:
    x = _cast_to(e, e.value(n.args[0]), _arg(n, 2, "dtype", None))
    return e.b.op("CumSum", [x, e.b.const(int(n.args[1]), np.int64, "axis")], "cumsum")


MATH_HANDLERS: dict[str, Callable[[OnnxExporter, GraphNode], Any]] = {
    "aten.silu.default": _silu,
    "aten.hardswish.default": _hardswish,
    "aten.hardsigmoid.default": _hardsigmoid,
    "aten.leaky_relu.default": _leaky_relu,
    "aten.elu.default": _elu,
    "aten.log_softmax.int": _log_softmax,
    "aten.sum.dim_IntList": _sum,
    "aten.amax.default": _amax,
    "aten.argmax.default": _argmax,
    "aten.cumsum.default": _cumsum,
}
