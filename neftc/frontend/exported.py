"""A ``torch.export.save`` archive into a plain fx graph: ``gm(*inputs)`` with the inputs the
program records (names, dtypes, shapes, token-id ranges) and one output, at any batch size.

Untrusted, torch reads the data-only copy of the archive (``pt2_archive``); either way the
program's pytree specs are builtin containers (``treespec``), so nothing is imported to load it.
The model's output is the single tensor leaf of what the program returns, or the ``logits`` leaf
when there are several; a program exported with a fixed batch is made batch-agnostic or refused
(``batch``). torch's log lines never reach the terminal (``trace.quiet_torch``).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx

from neftc.errors import ModelFileError
from neftc.frontend.batch import batch_agnostic, fixed_batch
from neftc.frontend.inputs import InputSpec, example_inputs, input_specs
from neftc.frontend.model_file import RECOPY, first_line
from neftc.frontend.program_guard import check_graph_ops
from neftc.frontend.pt2_archive import data_only_archive, plain_specs_archive
from neftc.frontend.trace import plain_signature, quiet_torch, unexported
from neftc.frontend.zoo import InputShape

PREFERRED_OUTPUT = "logits"


@dataclass(frozen=True)
class ExportedModel:
    gm: torch.fx.GraphModule
    inputs: tuple[InputSpec, ...]
    example_inputs: tuple[torch.Tensor, ...]
    notes: tuple[str, ...]  # what loading decided, for the compile log


def load_exported(path: Path, raw: bytes, members: dict[str, bytes],
                  input_shape: InputShape | None, seed: int, trust_model: bool) -> ExportedModel:
    # Untrusted: torch reads a copy that holds only the members checked to be data.
    copy = (plain_specs_archive(path, raw, members) if trust_model
            else data_only_archive(path, members))
    records: list[logging.LogRecord] = []
    try:
        with quiet_torch(records):
            program = torch.export.load(io.BytesIO(copy.data))
    except Exception as exc:
        cause = next((r.exc_info[1] for r in records if r.exc_info and r.exc_info[1]), exc)
        raise ModelFileError(f"'{path}' is a damaged torch.export archive: "
                             f"{_short(first_line(cause))}; {RECOPY}") from None
    if not trust_model:
        check_graph_ops(path, program)
    names, shapes = _recorded_inputs(path, program, input_shape)
    try:
        with quiet_torch(records):
            gm = unexported(program.module())
    except Exception as exc:
        raise ModelFileError(f"'{path}' is a damaged torch.export archive: "
                             f"{_short(first_line(exc))}; {RECOPY}") from None
    check_finite_weights(gm, path)
    index, note = _choose_output(path, gm, copy.outputs)
    gm = plain_signature(gm, index)
    specs = input_specs(gm, names, shapes, str(path))
    notes = (note,) if note else ()
    batch = fixed_batch(gm)
    if batch is not None:
        gm, batch_note = batch_agnostic(gm, specs, batch, str(path), seed)
        notes += (batch_note,)
    return ExportedModel(gm, specs, example_inputs(specs, seed), notes)


def _short(text: str, limit: int = 240) -> str:
    """torch's message, cut (a node's repr holds its whole stack trace)."""
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _recorded_inputs(path: Path, program: torch.export.ExportedProgram,
                     input_shape: InputShape | None
                     ) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """The user inputs' names (the forward's argument names where they match) and example
    shapes; ``input_shape`` replaces the first input's shape after its batch dimension."""
    user_inputs = tuple(program.graph_signature.user_inputs)
    if not user_inputs:
        raise ModelFileError(f"'{path}' takes no tensor input; neftc compiles models whose "
                             "inputs are tensors")
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    shapes: list[tuple[int, ...]] = []
    for name in user_inputs:
        val = nodes[name].meta.get("val") if name in nodes else None
        try:  # a symbolic (dynamic) dimension gives its example value
            shape = tuple(int(d) for d in val.shape) if isinstance(val, torch.Tensor) else None
        except Exception:
            shape = None
        if shape is None:
            raise ModelFileError(f"'{path}' does not record the shape of its input '{name}'; "
                                 "re-export it with torch.export.save")
        shapes.append(shape)
    if input_shape is not None:
        shapes[0] = (shapes[0][0] if shapes[0] else 1, *input_shape)
    signature = program.module_call_graph[0].signature if program.module_call_graph else None
    arg_names = tuple(signature.forward_arg_names or ()) if signature is not None else ()
    if len(arg_names) != len(user_inputs) or len(set(arg_names)) != len(arg_names) \
            or not all(isinstance(a, str) and a.isidentifier() for a in arg_names):
        arg_names = user_inputs
    return arg_names, tuple(shapes)


def _choose_output(path: Path, gm: torch.fx.GraphModule,
                   names: tuple[str, ...]) -> tuple[int, str | None]:
    """The index of the model's output among the program's flat outputs: the one tensor, or the
    one named ``logits``; and a note saying which when there was a choice."""
    node = next(n for n in gm.graph.nodes if n.op == "output")
    flat = node.args[0]
    flat = list(flat) if isinstance(flat, (list, tuple)) else [flat]
    if len(names) != len(flat):
        names = tuple(f"output[{i}]" for i in range(len(flat)))
    tensors = [i for i, value in enumerate(flat) if isinstance(value, torch.fx.Node)
               and isinstance(value.meta.get("val"), torch.Tensor)]
    if len(tensors) == 1:
        return tensors[0], None
    preferred = [i for i in tensors if names[i] == PREFERRED_OUTPUT]
    listed = ", ".join(names[i] for i in tensors) or "none"
    if len(preferred) == 1:
        return preferred[0], (f"output: the '{PREFERRED_OUTPUT}' leaf of the {len(tensors)} "
                              f"tensors the program returns ({listed})")
    raise ModelFileError(f"'{path}' returns {len(tensors)} tensors ({listed}) and none is named "
                         f"'{PREFERRED_OUTPUT}'; neftc compiles a model with one output. Export "
                         "a wrapper module whose forward returns the tensor to deploy (e.g. "
                         "return self.model(x).<name>)")


def check_finite_weights(gm: torch.fx.GraphModule, source: str | Path) -> None:
    """Refuse NaN or inf in any parameter, buffer or tensor constant of ``gm`` (crossbar weights
    and digital tensors alike): quantising them would silently give garbage levels."""
    tensors: dict[str, torch.Tensor] = dict(gm.named_parameters())
    tensors.update(gm.named_buffers())
    for node in gm.graph.nodes:
        if node.op == "get_attr" and str(node.target) not in tensors:
            value: Any = gm
            for part in str(node.target).split("."):
                value = getattr(value, part, None)
            if isinstance(value, torch.Tensor):
                tensors[str(node.target)] = value
    for name, tensor in tensors.items():
        if tensor.device.type == "meta" or not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        finite = torch.isfinite(tensor.detach())
        if bool(finite.all()):
            continue
        bad = int(finite.numel() - int(finite.sum()))
        layer = name.rsplit(".", 1)[0] if "." in name else name
        raise ModelFileError(f"'{source}': tensor '{name}' of layer '{layer}' holds {bad} "
                             f"non-finite value(s) (NaN or inf) out of {tensor.numel()}; neftc "
                             "cannot quantise it. Retrain or restore the weights and save the "
                             "model again")
