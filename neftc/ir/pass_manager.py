"""The pass contract and the pass manager.

A pass is a frozen dataclass whose fields are its options (its text form: ``neftc.ir.pass_spec``).
It has a kebab-case ``name``, the facts (``neftc.ir.facts.Fact``) it ``requires``, ``provides``
and, optionally, ``invalidates`` and ``forbids``, and ``run(gm, ctx) -> PassResult``. The manager
checks the order before running anything, lints and re-runs the graph on the example input after
each pass, and wraps any failure with the pass name (and the node, when the pass names one).
Instruments (``PassInstrument``: timings, dumps, progress; ``neftc.ir.instruments``) see every
pass before and after it runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
import torch.fx

from neftc.errors import NeftcError, PassError, PassOrderError
from neftc.ir.facts import INITIAL_FACTS, Fact, fact_names, facts_of
from neftc.targets.spec import TargetSpec


@dataclass
class PassContext:
    """What every pass may read: the target, the example input(s) and what is known of the model's
    inputs, plus the facts so far."""

    target: TargetSpec
    example: torch.Tensor | tuple[torch.Tensor, ...]  # one tensor per model input
    facts: set[Fact] = field(default_factory=lambda: set(INITIAL_FACTS))
    # The model's input specs (neftc.frontend.inputs.InputSpec: name, dtype, shape, low, high),
    # when the model file records them; empty for a module given with one example tensor.
    inputs: tuple[Any, ...] = ()

    @property
    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """The example as a tuple, one tensor per model input (what the graph is called with)."""
        return self.example if isinstance(self.example, tuple) else (self.example,)


@dataclass(frozen=True)
class PassResult:
    gm: torch.fx.GraphModule
    modified: bool


class Pass(Protocol):
    name: ClassVar[str]
    requires: ClassVar[frozenset[Fact]]
    provides: ClassVar[frozenset[Fact]]
    # Optional on a pass (absent: none): ``invalidates`` (facts no longer true after it) and
    # ``forbids`` (facts that must not hold before it), read through ``facts_of``.

    def run(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult: ...


class PassInstrument(Protocol):
    """Sees every pass a manager runs: ``before_pass`` just before ``run``, ``after_pass`` after
    the graph was verified, with the pass's result and its wall-clock seconds (run and verify)."""

    def before_pass(self, pass_: Pass, gm: torch.fx.GraphModule) -> None: ...

    def after_pass(self, pass_: Pass, gm: torch.fx.GraphModule, result: PassResult,
                   seconds: float) -> None: ...


class NodeError(Exception):
    """Raised inside a pass to name the node that could not be handled."""

    def __init__(self, node: torch.fx.Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


def check_order(passes: Sequence[Pass], facts: Iterable[Fact | str] = INITIAL_FACTS,
                catalogue: Iterable[Any] = ()) -> None:
    """Raise PassOrderError if some pass requires a fact that does not hold when it runs (no
    earlier pass provides it, or one retracted it), or forbids one that does. The message names
    the passes that would fix it, from ``passes`` and ``catalogue`` (e.g. the registered pass
    classes, ``neftc.passes.PASSES.values()``)."""
    candidates = [*passes, *catalogue]
    known = {Fact(f) for f in facts}
    for index, p in enumerate(passes):
        where = f"pass {index + 1} '{p.name}'"
        missing = facts_of(p, "requires") - known
        if missing:
            providers = sorted({q.name for q in candidates
                                if facts_of(q, "provides") & missing})
            hint = f" (run {', '.join(providers)} before it)" if providers else ""
            raise PassOrderError(f"{where} requires {fact_names(missing)}, which no earlier "
                                 f"pass provides or a later one retracted{hint}")
        present = facts_of(p, "forbids") & known
        if present:
            removers = sorted({q.name for q in candidates
                               if facts_of(q, "invalidates") & present})
            hint = (f"run {', '.join(removers)} before it" if removers
                    else "remove the pass that provides it, or retract it before")
            raise PassOrderError(f"{where} cannot run on a graph with {fact_names(present)}; "
                                 f"{hint}")
        known = (known - facts_of(p, "invalidates")) | facts_of(p, "provides")


def graph_text(gm: torch.fx.GraphModule) -> str:
    """A readable dump of the graph with each node's neftc annotation summarised."""
    from neftc.ir.node_info import (
        get_info,  # local: keeps this module free of meta's numpy import cost
    )

    lines = [str(gm.graph), "", "# neftc annotations"]
    for node in gm.graph.nodes:
        info = get_info(node)
        if info is None:
            continue
        parts = [f"{node.name}: layer={info.layer} op={info.op}",
                 f"matrix={info.matrix_rows}x{info.matrix_cols}"]
        if info.quant is not None:
            parts.append(f"bits={info.quant.bits} per_channel={info.quant.per_channel}")
        if info.slices is not None:
            parts.append(f"levels={list(info.slices.levels.shape)}")
        if info.tiles:
            parts.append(f"tiles={len(info.tiles)}")
            placed = [t for t in info.tiles if t.core >= 0]
            if placed:
                parts.append(f"arrays={[(t.core, t.array) for t in info.tiles][:8]}")
        lines.append("  " + " ".join(parts))
    return "\n".join(lines) + "\n"


@dataclass
class PassManager:
    passes: Sequence[Pass]
    instruments: Sequence[PassInstrument] = ()

    def run(self, gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
        check_order(self.passes, ctx.facts)
        for p in self.passes:
            for instrument in self.instruments:
                instrument.before_pass(p, gm)
            start = time.perf_counter()
            result = _run_one(p, gm, ctx)
            seconds = time.perf_counter() - start
            gm = result.gm
            ctx.facts = (ctx.facts - facts_of(p, "invalidates")) | facts_of(p, "provides")
            for instrument in self.instruments:
                instrument.after_pass(p, gm, result, seconds)
        return gm


def _run_one(p: Pass, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run one pass and verify its graph; any failure names the pass (and the node)."""
    try:
        result = p.run(gm, ctx)
        _verify(result.gm, ctx)
        return result
    except NeftcError as exc:
        if isinstance(exc, PassError):
            raise
        raise type(exc)(f"pass '{p.name}': {exc}") from None
    except NodeError as exc:
        raise PassError(f"pass '{p.name}' failed at node '{exc.node.name}' "
                        f"({exc.node.format_node()}): {exc.message}") from None
    except Exception as exc:
        raise PassError(f"pass '{p.name}' failed: {type(exc).__name__}: {exc}") from exc


def _verify(gm: torch.fx.GraphModule, ctx: PassContext) -> None:
    """A pass must leave a well-formed graph that still runs on the example input."""
    gm.graph.lint()
    gm.recompile()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a batch-1 check gains nothing from more, and stalls on busy cores
    try:
        with evaluating(gm), torch.no_grad():
            gm(*ctx.example_inputs)
    finally:
        torch.set_num_threads(threads)


@contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the duration (training-only modules such as weight noise and feedback heads
    are the identity in eval mode), then the previous mode again."""
    training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(training)
