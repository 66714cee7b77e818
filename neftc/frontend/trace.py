"""From a module to an fx graph: ``torch.fx`` tracing of an unmodified module, ``torch.export``
with a dynamic batch, and the plain GraphModule of an exported program; torch's log lines kept
off the terminal meanwhile (``quiet_torch``)."""

from __future__ import annotations

import contextlib
import linecache
import logging
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

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
    """Trace an unmodified module with torch.fx; when it cannot be traced, name the failing
    operation and the model's source line, and say what to change."""
    try:
        with quiet_torch():
            gm = torch.fx.symbolic_trace(module)
    except Exception as exc:
        raise TraceError(untraceable_message(type(module).__name__, exc)) from None
    try:
        with torch.no_grad(), quiet_torch():
            gm(example)
    except Exception as exc:
        raise TraceError(f"the traced {type(module).__name__} fails on an input of shape "
                         f"{tuple(example.shape)}: {first_line(exc)}. "
                         "Check --input-shape") from None
    return gm


#: The Proxy methods torch.fx calls for Python control flow on a traced value, and what the model
#: did to get there.
_CONTROL_FLOW = {"__bool__": "an if/while/assert (or and/or/not) on a traced value",
                 "to_bool": "an if/while/assert (or and/or/not) on a traced value",
                 "__iter__": "a loop over (or unpacking of) a traced value",
                 "iter": "a loop over (or unpacking of) a traced value",
                 "__len__": "len() of a traced value",
                 "keys": "** unpacking of a traced value"}
#: Traced operations whose value depends only on shapes, which torch.export can handle.
_SHAPE_OPS = {"size", "dim", "numel", "shape", "ndim"}


def untraceable_message(name: str, exc: BaseException) -> str:
    """Why ``name`` cannot be traced: the operation (the traced value used in control flow, or the
    call that failed), the model's source line, and the change that makes it traceable."""
    frames = list(traceback.walk_tb(exc.__traceback__))
    torch_dir = str(Path(torch.__file__).parent)
    here = str(Path(__file__))
    user = [(f, line) for f, line in frames
            if not f.f_code.co_filename.startswith(torch_dir) and f.f_code.co_filename != here]
    where = ""
    if user:
        frame, line = user[-1]
        code = linecache.getline(frame.f_code.co_filename, line).strip()
        where = f" at {frame.f_code.co_filename}:{line} ({frame.f_code.co_name}: {code!r})"
    proxy, construct = _control_flow_proxy(frames)
    if proxy is None:
        return (f"{name} cannot be traced by torch.fx: {first_line(exc)}{where}. Rewrite that "
                "line with torch operations, or export the model instead: "
                "torch.export.save(torch.export.export(model.eval(), (example,)), 'model.pt2'), "
                "then compile the .pt2")
    node = proxy.node
    op = node.name if node.op == "placeholder" else (
        f"{_target_name(node.target)}({', '.join(map(str, node.args))})")
    if construct == _CONTROL_FLOW["to_bool"] and _depends_on_data(node):
        return (f"{name} cannot be traced by torch.fx: {construct}{where}; the value is {op}, "
                "computed from the input's values. A compiled model has one fixed graph, so "
                "torch.export fails on this line too. Compute both branches and select per "
                "sample with torch.where(condition, a, b) (e.g. torch.where(x.sum(-1, "
                "keepdim=True) > 0, a, b)), or make the branch depend on shapes or constants; "
                "a loop: a fixed number of steps (torch.cond is not compiled by neftc)")
    return (f"{name} cannot be traced by torch.fx: {construct}{where}; the value is {op}, "
            "which depends on the input's shape. torch.export handles shape-dependent control "
            "flow: torch.export.save(torch.export.export(model.eval(), (example,)), "
            "'model.pt2'), then compile the .pt2")


def _control_flow_proxy(frames: list[tuple[FrameType, int]]) -> tuple[torch.fx.Proxy | None, str]:
    for frame, _ in reversed(frames):
        construct = _CONTROL_FLOW.get(frame.f_code.co_name)
        if construct is None:
            continue
        for key in ("obj", "self"):
            value = frame.f_locals.get(key)
            if isinstance(value, torch.fx.Proxy):
                return value, construct
    return None, ""


def _target_name(target: object) -> str:
    return str(target) if isinstance(target, str) else getattr(target, "__name__", str(target))


def _depends_on_data(node: torch.fx.Node) -> bool:
    """Whether a traced value reaches an input's or parameter's values other than through a
    shape (``size``, ``dim``, ``numel``, ``.shape``)."""
    seen: set[torch.fx.Node] = set()
    todo = [node]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op in ("placeholder", "get_attr"):
            return True
        if _target_name(current.target) in _SHAPE_OPS or (
                current.op == "call_function" and current.target is getattr
                and len(current.args) > 1 and current.args[1] in _SHAPE_OPS):
            continue
        todo.extend(current.all_input_nodes)
    return False


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
