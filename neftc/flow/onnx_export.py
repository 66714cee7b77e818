"""Export a layout's deployed network as standard ONNX.

Crossbar layers become ``MatMul``/``Conv`` with their dequantised weights (``q * scale``, exactly
the weights the emulator uses noise-free); the digital graph's ATen ops map one-to-one (or to a
few nodes) onto ONNX operators, opset 17. The result passes ``onnx.checker`` with full shape
inference, and onnxruntime reproduces the emulator's noise-free ideal-periphery outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from neftc.atomic import atomic_file
from neftc.errors import LayoutError
from neftc.flow.onnx_ops import HANDLERS
from neftc.format.reader import Layout
from neftc.format.schema import GraphNode
from neftc.runtime.emulator import Emulator
from neftc.runtime.inputs import example_inputs

#: The ONNX element type of each layout input dtype (token ids stay int64).
ONNX_INPUT_TYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64,
                    "int32": TensorProto.INT32, "bool": TensorProto.BOOL}

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


class OnnxExporter:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.b = _Builder()
        self.env: dict[str, Any] = {}  # layout node name -> ONNX value name(s) or constant
        emulator = Emulator(layout, sigma=0.0, ideal_periphery=True)
        records = layout.doc.graph.inputs
        examples = example_inputs(records, records[0].shape[0], torch.Generator().manual_seed(0))
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(emulator.module).propagate(*examples, emulator.chip)
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
        """A 1-D int64 shape from ints and sym_size node refs (empty: a scalar's shape)."""
        if not entries:
            return self.b.const(np.zeros(0, dtype=np.int64), np.int64, "scalar_shape")
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
        records = {record.name: record for record in doc.graph.inputs}
        for node in doc.graph.nodes:
            if node.op == "placeholder":
                record = records[node.name]  # load_layout: one record per placeholder, by name
                shape = ["batch", *record.shape[1:]]
                inputs.append(helper.make_tensor_value_info(
                    node.name, ONNX_INPUT_TYPES[record.dtype], shape))
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


def layout_to_onnx(layout: Layout) -> onnx.ModelProto:
    model = OnnxExporter(layout).export(Path("."))
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
