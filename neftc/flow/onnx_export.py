"""Export a layout's deployed network as standard ONNX.

Crossbar layers become ``MatMul``/``Conv`` with their dequantised weights (``q * scale``, exactly
the weights the emulator uses noise-free); the digital graph's ATen ops map one-to-one (or to a
few nodes) onto ONNX operators, opset 17. The result passes ``onnx.checker`` with full shape
inference, and onnxruntime reproduces the emulator's noise-free ideal-periphery outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from neftc.atomic import atomic_file
from neftc.errors import LayoutError
from neftc.format.reader import Layout
from neftc.format.schema import GraphNode
from neftc.runtime.emulator import Emulator

OPSET = 17


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__{self._count}"

    def const(self, value: Any, dtype: Any = np.float32, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def add_initializer(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, outputs: int = 1,
           **attrs: Any) -> Any:
        names = [self.fresh(hint) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attrs))
        return names[0] if outputs == 1 else names


def _ints(value: Any, rank: int) -> list[int]:
    if isinstance(value, int):
        return [value] * rank
    values = [int(v) for v in value]
    return values * rank if len(values) == 1 else values


class _Exporter:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.b = _Builder()
        self.env: dict[str, Any] = {}  # layout node name -> ONNX value name(s) or constant
        emulator = Emulator(layout, sigma=0.0)
        example = torch.randn(*layout.doc.graph.input_shape, generator=torch.Generator()
                              .manual_seed(0))
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(emulator.module).propagate(example, emulator.chip)
        self.shapes: dict[str, tuple[int, ...]] = {}
        for node in emulator.module.graph.nodes:
            meta = node.meta.get("tensor_meta")
            if meta is not None and hasattr(meta, "shape"):
                self.shapes[node.name] = tuple(meta.shape)
        self.layers = {layer.name: layer for layer in layout.doc.layers}

    # -------------------------------------------------------------- arguments

    def value(self, arg: Any, dtype: Any = np.float32) -> str:
        """An ONNX value name for an encoded argument (a node output or a scalar constant)."""
        if isinstance(arg, dict) and "node" in arg:
            found = self.env[arg["node"]]
            if found is None:
                raise LayoutError(f"ONNX export: node '{arg['node']}' has no tensor value")
            return found
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            return self.b.const(arg, dtype)
        raise LayoutError(f"ONNX export: cannot use argument {arg!r} as a tensor")

    def rank(self, node: GraphNode, index: int = 0) -> int:
        ref = node.args[index]
        return len(self.shapes[ref["node"]])

    def shape_tensor(self, entries: list[Any]) -> str:
        """A 1-D int64 shape from ints and sym_size node refs."""
        parts = []
        for entry in entries:
            if isinstance(entry, dict) and "node" in entry:
                parts.append(self.env[entry["node"]])
            else:
                parts.append(self.b.const([int(entry)], np.int64, "dim"))
        return parts[0] if len(parts) == 1 else self.b.op("Concat", parts, "shape", axis=0)

    # -------------------------------------------------------------- ops

    def export(self, path: Path) -> onnx.ModelProto:
        doc = self.layout.doc
        inputs, outputs = [], []
        for node in doc.graph.nodes:
            if node.op == "placeholder":
                shape = ["batch", *doc.graph.input_shape[1:]]
                inputs.append(helper.make_tensor_value_info(node.name, TensorProto.FLOAT, shape))
                self.env[node.name] = node.name
            elif node.op == "get_attr":
                if node.layer is not None:
                    self.env[node.name] = None
                    continue
                array = self.layout.tensor(node.target)
                self.env[node.name] = self.b.add_initializer(node.target, array.copy())
            elif node.op == "call_function":
                if node.layer is not None:
                    self.env[node.name] = self.crossbar(node)
                elif node.target == "getitem":
                    self.env[node.name] = self.env[node.args[0]["node"]][node.args[1]]
                else:
                    handler = HANDLERS.get(node.target)
                    if handler is None:
                        raise LayoutError(f"ONNX export: op '{node.target}' (node '{node.name}')"
                                          " has no ONNX mapping yet")
                    self.env[node.name] = handler(self, node)
            else:
                results = node.args[0] if isinstance(node.args[0], list) else [node.args[0]]
                for index, ref in enumerate(results):
                    name = "output" if len(results) == 1 else f"output_{index}"
                    self.b.nodes.append(helper.make_node("Identity", [self.value(ref)], [name]))
                    dims = self.shapes.get(ref["node"])
                    shape = ["batch", *dims[1:]] if dims else None
                    outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        graph = helper.make_graph(self.b.nodes, "neftc_deployed", inputs, outputs,
                                  self.b.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="neftc")
        model.ir_version = 8
        helper.set_model_props(model, {"neftc_target": doc.target.name,
                                       "neftc_source": doc.source.path,
                                       "neftc_source_sha256": doc.source.sha256})
        return model

    def crossbar(self, node: GraphNode) -> str:
        record = self.layers[node.layer]  # type: ignore[index]
        weight = self.layout.weights(record.name)
        x = self.value(node.args[0])
        bias = self.value(node.args[2]) if node.args[2] is not None else None
        if record.op == "linear":
            w_t = self.b.add_initializer(f"{record.name}.weight_T", weight.T.copy())
            out = self.b.op("MatMul", [x, w_t], "linear")
            return self.b.op("Add", [out, bias], "linear_bias") if bias else out
        conv = record.conv
        assert conv is not None
        w = self.b.add_initializer(f"{record.name}.weight", weight)
        pads = list(conv.padding) * 2
        return self.b.op("Conv", [x, w] + ([bias] if bias else []), "conv",
                         kernel_shape=list(conv.kernel), strides=list(conv.stride), pads=pads,
                         dilations=list(conv.dilation), group=conv.groups)


def _unary(op_type: str) -> Callable[[_Exporter, GraphNode], str]:
    return lambda e, n: e.b.op(op_type, [e.value(n.args[0])], op_type.lower())


def _binary(op_type: str) -> Callable[[_Exporter, GraphNode], str]:
    def handler(e: _Exporter, n: GraphNode) -> str:
        rhs = e.value(n.args[1])
        alpha = n.kwargs.get("alpha", n.args[2] if len(n.args) > 2 else 1)
        if alpha != 1:
            rhs = e.b.op("Mul", [rhs, e.b.const(alpha)], "alpha")
        return e.b.op(op_type, [e.value(n.args[0]), rhs], op_type.lower())
    return handler


def _identity(e: _Exporter, n: GraphNode) -> str:
    return e.value(n.args[0])


def _batch_norm(e: _Exporter, n: GraphNode) -> str:
    x, weight, bias, mean, var = n.args[:5]
    eps = float(n.args[7])
    channels = e.shapes[x["node"]][1]
    w = e.value(weight) if weight is not None else e.b.const(np.ones(channels))
    b = e.value(bias) if bias is not None else e.b.const(np.zeros(channels))
    return e.b.op("BatchNormalization", [e.value(x), w, b, e.value(mean), e.value(var)], "bn",
                  epsilon=eps)


def _layer_norm(e: _Exporter, n: GraphNode) -> str:
    x, shape, weight, bias = n.args[:4]
    eps = float(n.args[4]) if len(n.args) > 4 else 1e-5
    inputs = [e.value(x), e.value(weight) if weight is not None else
              e.b.const(np.ones(shape))]
    if bias is not None:
        inputs.append(e.value(bias))
    return e.b.op("LayerNormalization", inputs, "ln", axis=-len(shape), epsilon=eps)


def _pool(op_type: str) -> Callable[[_Exporter, GraphNode], str]:
    def handler(e: _Exporter, n: GraphNode) -> str:
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


def _adaptive_avg_pool2d(e: _Exporter, n: GraphNode) -> str:
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


def _flatten(e: _Exporter, n: GraphNode) -> str:
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


def _reshape(e: _Exporter, n: GraphNode) -> str:
    return e.b.op("Reshape", [e.value(n.args[0]), e.shape_tensor(n.args[1])], "reshape")


def _sym_size(e: _Exporter, n: GraphNode) -> str:
    dim = n.args[1] % e.rank(n)
    return e.b.op("Shape", [e.value(n.args[0])], "size", start=dim, end=dim + 1)


def _transpose(e: _Exporter, n: GraphNode) -> str:
    rank = e.rank(n)
    perm = list(range(rank))
    a, b = n.args[1] % rank, n.args[2] % rank
    perm[a], perm[b] = perm[b], perm[a]
    return e.b.op("Transpose", [e.value(n.args[0])], "transpose", perm=perm)


def _permute(e: _Exporter, n: GraphNode) -> str:
    rank = e.rank(n)
    return e.b.op("Transpose", [e.value(n.args[0])], "permute",
                  perm=[d % rank for d in n.args[1]])


def _softmax(e: _Exporter, n: GraphNode) -> str:
    return e.b.op("Softmax", [e.value(n.args[0])], "softmax", axis=int(n.args[1]))


def _mean(e: _Exporter, n: GraphNode) -> str:
    keep = bool(n.args[2]) if len(n.args) > 2 else bool(n.kwargs.get("keepdim", False))
    return e.b.op("ReduceMean", [e.value(n.args[0])], "mean", axes=list(n.args[1]),
                  keepdims=int(keep))


def _gelu(e: _Exporter, n: GraphNode) -> str:
    if n.kwargs.get("approximate", "none") != "none":
        raise LayoutError("ONNX export: tanh-approximated GELU is not supported")
    x = e.value(n.args[0])
    erf = e.b.op("Erf", [e.b.op("Mul", [x, e.b.const(1 / math.sqrt(2))], "g")], "erf")
    half = e.b.op("Mul", [x, e.b.const(0.5)], "g")
    return e.b.op("Mul", [half, e.b.op("Add", [erf, e.b.const(1.0)], "g")], "gelu")


def _chunk(e: _Exporter, n: GraphNode) -> list[str]:
    x = n.args[0]
    chunks, dim = int(n.args[1]), int(n.args[2]) if len(n.args) > 2 else 0
    size = e.shapes[x["node"]][dim]
    each = -(-size // chunks)
    sizes = [min(each, size - i * each) for i in range(chunks) if i * each < size]
    return e.b.op("Split", [e.value(x), e.b.const(sizes, np.int64)], "chunk",
                  outputs=len(sizes), axis=dim)


def _cat(e: _Exporter, n: GraphNode) -> str:
    dim = int(n.args[1]) if len(n.args) > 1 else 0
    return e.b.op("Concat", [e.value(t) for t in n.args[0]], "cat", axis=dim)


HANDLERS: dict[str, Callable[[_Exporter, GraphNode], Any]] = {
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
}


def layout_to_onnx(layout: Layout) -> onnx.ModelProto:
    model = _Exporter(layout).export(Path("."))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).splitlines()[0]
        raise LayoutError(f"ONNX export produced an invalid model: {first_line}") from None
    return model


def export_onnx(layout: Layout, path: str | Path) -> onnx.ModelProto:
    """Write the layout's deployed network to ``path`` (atomically)."""
    model = layout_to_onnx(layout)
    with atomic_file(Path(path)) as tmp:
        onnx.save(model, str(tmp))
    return model
