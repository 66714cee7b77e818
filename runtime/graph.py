"""Rebuild an executable fx.GraphModule from a layout's digital graph.

Digital ops are resolved by name through ``neftc.format.graph_codec.resolve_op``, which knows only
the format's allow-list (``neftc.format.ops``: the ATen ops the compiler emits, and
``operator.getitem``), after ``load_layout`` has checked every node's arguments and bounded every
size; nothing else can be called, so a layout cannot run arbitrary code. Crossbar
nodes become ``CrossbarLayer`` submodules that read only the layout's levels. The module takes
the chip instance (``neftc.runtime.chip.ChipInstance``) as its last input and passes it to every
crossbar layer: ``module(x, chip)``; it holds no per-chip state.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch import nn

from neftc.format.graph_codec import decode_arg, resolve_op
from neftc.format.reader import Layout
from neftc.runtime.batchnorm import BATCH_NORM_OP, DigitalBatchNorm
from neftc.runtime.crossbar import CrossbarLayer

#: The name of the graph module's last input, the chip instance: ``module(*inputs, chip)``.
CHIP_INPUT = "neftc_chip"


def build_module(layout: Layout, device: torch.device | None = None
                 ) -> tuple[torch.fx.GraphModule, dict[str, CrossbarLayer]]:
    """The network of ``layout`` as a GraphModule called as ``module(x, chip)``, and its
    crossbar layers by name; ops that create tensors (``device=`` in the graph) create them on
    ``device`` (default: the CPU)."""
    root = nn.Module()
    graph = torch.fx.Graph()
    env: dict[str, Any] = {}
    layers: dict[str, CrossbarLayer] = {}
    n_levels = 2 ** layout.doc.target.cell.bits
    records = {layer.name: layer for layer in layout.doc.layers}
    chip = graph.placeholder(CHIP_INPUT)  # moved behind the layout's inputs below
    for index, node in enumerate(layout.doc.graph.nodes):
        if node.op == "placeholder":
            env[node.name] = graph.placeholder(node.name)
            continue
        if node.op == "get_attr":
            if node.layer is not None:
                env[node.name] = None  # a crossbar weight: its layer module owns it
                continue
            buffer = f"t{index}"
            root.register_buffer(buffer, torch.from_numpy(layout.tensor(node.target).copy()))
            env[node.name] = graph.get_attr(buffer)
            continue
        elif node.op == "call_function" and node.layer is not None:
            record = records[node.layer]
            bias = torch.from_numpy(layout.tensor(record.bias).copy()) if record.bias else None
            module = CrossbarLayer(record, torch.from_numpy(layout.levels(record.name)), bias,
                                   n_levels)
            name = f"xbar{len(layers)}"
            root.add_module(name, module)
            layers[record.name] = module
            env[node.name] = graph.create_node("call_module", name,
                                               (decode_arg(node.args[0], env), chip), {},
                                               name=node.name)
        elif (node.op == "call_function" and node.target == BATCH_NORM_OP
              and len(node.args) == 9 and not node.kwargs):
            x, weight, bias, mean, var, _training, momentum, eps, cudnn = (
                decode_arg(a, env) for a in node.args)
            name = f"bn{sum(isinstance(m, DigitalBatchNorm) for m in root.children())}"
            root.add_module(name, DigitalBatchNorm(node.name, float(momentum), float(eps),
                                                   bool(cudnn)))
            env[node.name] = graph.create_node("call_module", name,
                                               (x, weight, bias, mean, var, chip), {},
                                               name=node.name)
        elif node.op == "call_function":
            kwargs = {k: decode_arg(v, env) for k, v in node.kwargs.items()}
            if device is not None and isinstance(kwargs.get("device"), torch.device):
                kwargs["device"] = device
            env[node.name] = graph.create_node(
                "call_function", resolve_op(node.target),
                tuple(decode_arg(a, env) for a in node.args), kwargs, name=node.name)
        else:
            env[node.name] = graph.output(decode_arg(node.args[0], env))
    inputs = [node for node in graph.nodes if node.op == "placeholder" and node is not chip]
    if inputs:
        inputs[-1].append(chip)  # the chip instance is the last input: module(*inputs, chip)
    graph.lint()
    module = torch.fx.GraphModule(root, graph)
    return (module, layers) if device is None else (module.to(device), layers)
