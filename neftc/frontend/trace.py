"""From a module to an fx graph: ``torch.fx`` tracing of an unmodified module, ``torch.export``
with a dynamic batch, and the plain GraphModule of an exported program."""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from neftc.errors import TraceError
from neftc.frontend.model_file import first_line


def export_dynamic_batch(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export with the batch dimension dynamic (a batch of 2 avoids export's
    specialisation of size-1 dimensions); a model that needs a static batch keeps the example's."""
    batch2 = example[:1].expand(2, *example.shape[1:]).contiguous()
    try:
        return torch.export.export(module, (batch2,),
                                   dynamic_shapes=({0: torch.export.Dim.AUTO},))
    except Exception:
        return torch.export.export(module, (example,))


def unexported(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A plain GraphModule from ``ExportedProgram.module()``: without export's input-guard call
    (not part of the model's computation) and with ordinary ``train()``/``eval()`` (which the
    exported module refuses)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    plain = torch.fx.GraphModule(gm, gm.graph)
    plain.meta.update(gm.meta)
    return plain


def trace_module(module: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Trace an unmodified module with torch.fx; name the failing op when it cannot be traced."""
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as exc:
        raise TraceError(
            f"{type(module).__name__} cannot be traced by torch.fx: {first_line(exc)}. "
            "This usually means Python control flow on tensor values or shapes. Export it "
            "instead: torch.export.save(torch.export.export(model.eval(), (example,)), "
            "'model.pt2'), then compile the .pt2"
        ) from None
    try:
        with torch.no_grad():
            gm(example)
    except Exception as exc:
        raise TraceError(f"the traced {type(module).__name__} fails on an input of shape "
                         f"{tuple(example.shape)}: {first_line(exc)}. "
                         "Check --input-shape") from None
    return gm
