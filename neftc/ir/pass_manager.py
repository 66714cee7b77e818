"""The pass contract and the pass manager.

A pass is a frozen dataclass whose fields are its options. It has a kebab-case ``name``, the facts
it ``requires`` and ``provides``, and ``run(gm, ctx) -> PassResult``. The manager checks the order
before running anything, lints and re-runs the graph on the example input after each pass, and
wraps any failure with the pass name (and the node, when the pass names one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import torch
import torch.fx

from neftc.errors import NeftcError, PassError, PassOrderError
from neftc.targets.spec import TargetSpec

# Facts true of any graph the frontend hands over.
INITIAL_FACTS = frozenset({"traced"})


@dataclass
class PassContext:
    """What every pass may read: the target and the example input, plus the facts so far."""

    target: TargetSpec
    example_input: torch.Tensor
    facts: set[str] = field(default_factory=lambda: set(INITIAL_FACTS))
    passes_run: int = 0  # across pass managers sharing this context (numbers the dumps)


@dataclass(frozen=True)
class PassResult:
    gm: torch.fx.GraphModule
    modified: bool


class Pass(Protocol):
    name: ClassVar[str]
    requires: ClassVar[frozenset[str]]
    provides: ClassVar[frozenset[str]]

    def run(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult: ...


class NodeError(Exception):
    """Raised inside a pass to name the node that could not be handled."""

    def __init__(self, node: torch.fx.Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


def check_order(passes: Sequence[Pass], facts: frozenset[str] = INITIAL_FACTS) -> None:
    """Raise PassOrderError if some pass requires a fact no earlier pass provides."""
    known = set(facts)
    for index, p in enumerate(passes):
        missing = set(p.requires) - known
        if missing:
            providers = sorted(q.name for q in passes if set(q.provides) & missing)
            hint = f" (run {', '.join(providers)} before it)" if providers else ""
            raise PassOrderError(
                f"pass {index + 1} '{p.name}' requires {', '.join(sorted(missing))}, which no "
                f"earlier pass provides{hint}"
            )
        known |= set(p.provides)


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
    dump_dir: Path | None = None
    on_pass: Callable[[str, bool], None] | None = None

    def run(self, gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
        check_order(self.passes, frozenset(ctx.facts))
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            if ctx.passes_run == 0:
                (self.dump_dir / "00-input.txt").write_text(graph_text(gm))
        for p in self.passes:
            try:
                result = p.run(gm, ctx)
                gm = result.gm
                _verify(gm, ctx)
            except NeftcError as exc:
                if isinstance(exc, PassError):
                    raise
                raise type(exc)(f"pass '{p.name}': {exc}") from None
            except NodeError as exc:
                raise PassError(f"pass '{p.name}' failed at node '{exc.node.name}' "
                                f"({exc.node.format_node()}): {exc.message}") from None
            except Exception as exc:
                raise PassError(f"pass '{p.name}' failed: {type(exc).__name__}: {exc}") from exc
            ctx.facts |= set(p.provides)
            ctx.passes_run += 1
            if self.on_pass is not None:
                self.on_pass(p.name, result.modified)
            if self.dump_dir is not None:
                (self.dump_dir / f"{ctx.passes_run:02d}-{p.name}.txt").write_text(graph_text(gm))
        return gm


def _verify(gm: torch.fx.GraphModule, ctx: PassContext) -> None:
    """A pass must leave a well-formed graph that still runs on the example input."""
    gm.graph.lint()
    gm.recompile()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a batch-1 check gains nothing from more, and stalls on busy cores
    try:
        with evaluating(gm), torch.no_grad():
            gm(ctx.example_input)
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
