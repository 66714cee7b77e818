"""A program exported with a fixed batch made batch-agnostic, or refused with the fix.

``torch.export`` with static shapes bakes the example's batch size into the graph:
``x.reshape(x.shape[0], -1)`` becomes ``view(x, [1, 400])`` with one example sample, a ViT's
class token ``expand(cls, [2, -1, -1])`` with two. neftc replays a program at other batch sizes
(calibration, verify, the emulator, ONNX), so such a program is rewritten: every size argument
whose leading entry is the baked batch and whose result carries the batch (a reshape of the
input's values, an ``expand``, ``repeat`` or a new tensor) takes the batch from the input instead
(``aten.sym_size``); the graph is then exported again with a dynamic batch (fresh shapes for the
passes) and must give, for a batch of three samples and for one sample, what the original gives
for each sample on its own. Otherwise the program is refused with the one-line fix.
"""

from __future__ import annotations

import torch
import torch.fx

from neftc.errors import ModelFileError
from neftc.frontend.inputs import InputSpec, example_inputs
from neftc.frontend.model_file import first_line
from neftc.frontend.trace import export_dynamic_batch, plain_signature, unexported

aten = torch.ops.aten

# size-taking ops: target -> index of the size argument
_RESHAPES = {aten.view.default: 1, aten.reshape.default: 1, aten._unsafe_view.default: 1}
_MAKERS = {aten.expand.default: 1, aten.repeat.default: 1, aten.new_zeros.default: 1,
           aten.new_ones.default: 1, aten.new_empty.default: 1, aten.new_full.default: 1,
           aten.zeros.default: 0, aten.ones.default: 0, aten.empty.memory_format: 0,
           aten.full.default: 0, aten.arange.default: 0}  # arange(batch): a batch index
_VERIFY_BATCHES = (3, 1)
_RTOL = 1e-4  # the batched and the per-sample run differ by float summation order only


def fixed_batch(gm: torch.fx.GraphModule) -> int | None:
    """The batch size baked into ``gm`` (its inputs' leading dimension when that is a plain
    integer), or None when the batch is symbolic (exported with a dynamic batch)."""
    for node in gm.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        if isinstance(val, torch.Tensor) and val.dim() > 0 and isinstance(val.shape[0], int):
            return int(val.shape[0])
    return None


def batch_agnostic(gm: torch.fx.GraphModule, specs: tuple[InputSpec, ...], batch: int,
                   source: str, seed: int = 0) -> tuple[torch.fx.GraphModule, str]:
    """``gm`` (exported with the fixed ``batch``) rewritten to take any batch, and a note for
    the compile log; a ``ModelFileError`` with the fix when the graph does not allow it."""
    rewritten, changed = _batch_from_input(gm, batch)
    try:
        with torch.no_grad():
            program = export_dynamic_batch(rewritten, example_inputs(specs, seed),
                                           static_fallback=False)
        result = plain_signature(unexported(program.module()), 0)
        if fixed_batch(result) is not None:
            raise ValueError("torch.export keeps the batch fixed")
        _check_per_sample(gm, result, specs, batch, seed)
    except Exception as exc:
        raise ModelFileError(_refusal(source, specs, batch, exc)) from None
    where = f" ({changed} size argument(s) rewritten)" if changed else ""
    return result, (f"the program was exported with a fixed batch of {batch}; neftc made it "
                    f"batch-agnostic{where}")


def _batch_from_input(gm: torch.fx.GraphModule, batch: int) -> tuple[torch.fx.GraphModule, int]:
    """A copy of ``gm`` whose baked batch sizes read ``sym_size(first input, 0)``."""
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    gm = torch.fx.GraphModule(gm, graph)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    carries = set(placeholders)  # nodes whose values depend on an input
    for node in graph.nodes:
        if node.op == "call_function" and any(a in carries for a in node.all_input_nodes):
            carries.add(node)
    with graph.inserting_after(placeholders[-1]):
        size = graph.call_function(aten.sym_size.int, (placeholders[0], 0))
    changed = 0
    for node in list(graph.nodes):
        index = _RESHAPES.get(node.target) if node.args and node.args[0] in carries else None
        index = _MAKERS.get(node.target, index)  # type: ignore[arg-type]
        if index is None or len(node.args) <= index:
            continue
        sizes = node.args[index]
        val = node.meta.get("val")
        scalar = isinstance(sizes, int) and not isinstance(sizes, bool)
        leading = sizes if scalar else sizes[0] if isinstance(sizes, (list, tuple)) and sizes \
            else None
        if leading != batch or not isinstance(val, torch.Tensor) or val.dim() == 0 \
                or val.shape[0] != batch:
            continue
        if node.target is aten.repeat.default and node.args[0] in carries:
            continue  # repeats an input-dependent tensor: the leading factor is not the batch
        new = size if scalar else [size, *sizes[1:]]  # type: ignore[index]
        node.args = (*node.args[:index], new, *node.args[index + 1:])
        changed += 1
    if not changed:
        graph.erase_node(size)
    gm.recompile()
    return gm, changed


def _check_per_sample(original: torch.fx.GraphModule, result: torch.fx.GraphModule,
                      specs: tuple[InputSpec, ...], batch: int, seed: int) -> None:
    """``result`` on a batch of several samples (and of one) must equal ``original`` (fixed
    ``batch``) on each sample repeated ``batch`` times, row 0."""
    for n in _VERIFY_BATCHES:
        inputs = example_inputs([s.with_batch(n) for s in specs], seed + n)
        with torch.no_grad():
            got = result(*inputs)
            want = torch.cat([original(*(t[i:i + 1].expand(batch, *t.shape[1:]).contiguous()
                                         for t in inputs))[:1] for i in range(n)])
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            raise ValueError(f"a batch of {n} gives an output of shape "
                             f"{tuple(getattr(got, 'shape', ()))}, not {tuple(want.shape)}")
        scale = float(want.abs().max()) if want.numel() else 0.0
        if not torch.allclose(got, want, rtol=_RTOL, atol=_RTOL * max(scale, 1.0)):
            raise ValueError(f"with a batch of {n}, the samples' outputs depend on each other "
                             "(differ from each sample run alone)")


def _refusal(source: str, specs: tuple[InputSpec, ...], batch: int, exc: Exception) -> str:
    dims = ", ".join(f"'{s.name}': {{0: batch}}" for s in specs)
    return (f"'{source}' was exported with its batch size fixed to {batch}, and its graph "
            f"does not run at other batch sizes ({first_line(exc)}); neftc replays models at "
            f"any batch. Export it with a dynamic batch: batch = torch.export.Dim('batch'); "
            f"torch.export.export(model, args, dynamic_shapes={{{dims}}}), with a batch of 2 "
            "in the example input")
