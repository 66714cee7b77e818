"""From a module to an fx graph: ``torch.fx`` tracing of an unmodified module, ``torch.export``
with a dynamic batch, and the plain GraphModule of an exported program; torch's log lines kept
off the terminal meanwhile (``quiet_torch``)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.fx
from torch import nn

from neftc.errors import TraceError
from neftc.frontend.model_file import first_line


def export_dynamic_batch(module: nn.Module, example: torch.Tensor | Sequence[torch.Tensor], *,
                         static_fallback: bool = True) -> torch.export.ExportedProgram:
    """torch.export with the batch dimension of every input dynamic (a batch of 2 avoids
    export's specialisation of size-1 dimensions); a model that needs a static batch keeps the
    example's (``static_fallback``) or raises torch's error."""
    examples = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    batch2 = tuple(t[:1].expand(2, *t.shape[1:]).contiguous() for t in examples)
    try:
        with quiet_torch():
            return torch.export.export(module, batch2, dynamic_shapes=tuple(
                {0: torch.export.Dim.AUTO} for _ in batch2))
    except Exception:
        if not static_fallback:
            raise
        with quiet_torch():
            return torch.export.export(module, examples)


def plain_signature(gm: torch.fx.GraphModule, output: int) -> torch.fx.GraphModule:
    """``gm`` (from ``ExportedProgram.module()``) called as ``gm(*inputs)``, its placeholders in
    order, returning its flat output number ``output`` alone (the others' computation dropped)."""
    node = next(n for n in gm.graph.nodes if n.op == "output")
    flat = node.args[0]
    flat = list(flat) if isinstance(flat, (list, tuple)) else [flat]
    node.args = (flat[output],)
    gm.graph._codegen = torch.fx.graph.CodeGen()
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


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
        with quiet_torch():
            gm = torch.fx.symbolic_trace(module)
    except Exception as exc:
        raise TraceError(
            f"{type(module).__name__} cannot be traced by torch.fx: {first_line(exc)}. "
            "This usually means Python control flow on tensor values or shapes. Export it "
            "instead: torch.export.save(torch.export.export(model.eval(), (example,)), "
            "'model.pt2'), then compile the .pt2"
        ) from None
    try:
        with torch.no_grad(), quiet_torch():
            gm(example)
    except Exception as exc:
        raise TraceError(f"the traced {type(module).__name__} fails on an input of shape "
                         f"{tuple(example.shape)}: {first_line(exc)}. "
                         "Check --input-shape") from None
    return gm


@contextlib.contextmanager
def quiet_torch(records: list[logging.LogRecord] | None = None) -> Iterator[None]:
    """Keep torch's log lines (warnings, some with tracebacks, "Use tlparse" hints) off stderr
    while a model file loads or a program is traced or exported; the records are kept in
    ``records`` so that an error can name the cause. Python warnings are dropped."""
    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if records is not None:
                records.append(record)

    handler = _Keep(logging.DEBUG)
    # torch's logging setup attaches handlers to "torch" and to some of its children directly:
    # replace them all (and stop propagation) while torch works, then put them back.
    names = ["torch", *(name for name in logging.root.manager.loggerDict
                        if name.startswith("torch."))]
    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger.propagate, logger.handlers) for logger in loggers]
    for logger in loggers:
        logger.handlers = [handler]
        logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, (propagate, handlers) in zip(loggers, saved, strict=True):
            logger.handlers = handlers
            logger.propagate = propagate
