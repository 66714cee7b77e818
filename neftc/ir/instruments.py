"""Pass instruments (``neftc.ir.pass_manager.PassInstrument``): timings, graph dumps, progress.

One instrument may serve several pass managers in turn (a compile runs the mapping passes and
NeFT's training passes with separate managers): it numbers the passes it has seen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch.fx

from neftc.ir.pass_manager import Pass, PassResult, graph_text
from neftc.ir.pass_spec import spec_text


@dataclass(frozen=True)
class PassTiming:
    spec: str  # the pass's spec text
    seconds: float  # run and verify
    modified: bool


@dataclass
class PassTimer:
    """Records every pass's spec text, wall-clock seconds and whether it changed the graph."""

    timings: list[PassTiming] = field(default_factory=list)

    def before_pass(self, pass_: Pass, gm: torch.fx.GraphModule) -> None:
        pass

    def after_pass(self, pass_: Pass, gm: torch.fx.GraphModule, result: PassResult,
                   seconds: float) -> None:
        self.timings.append(PassTiming(spec_text(pass_), seconds, result.modified))


@dataclass
class DumpGraphs:
    """``--dump-after-each``: the graph before the first pass (``00-input.txt``) and after each
    pass (``NN-<name>.txt``, headed by the pass's spec text), in ``directory``."""

    directory: Path
    count: int = 0

    def before_pass(self, pass_: Pass, gm: torch.fx.GraphModule) -> None:
        if self.count == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / "00-input.txt").write_text("# input graph\n" + graph_text(gm))

    def after_pass(self, pass_: Pass, gm: torch.fx.GraphModule, result: PassResult,
                   seconds: float) -> None:
        self.count += 1
        header = f"# after pass {self.count}: {spec_text(pass_)}\n"
        if not result.modified:
            header += "# (no change)\n"
        (self.directory / f"{self.count:02d}-{pass_.name}.txt").write_text(header
                                                                          + graph_text(gm))


@dataclass(frozen=True)
class OnPass:
    """Calls ``callback(name, modified)`` after each pass (the CLI's progress lines)."""

    callback: Callable[[str, bool], None]

    def before_pass(self, pass_: Pass, gm: torch.fx.GraphModule) -> None:
        pass

    def after_pass(self, pass_: Pass, gm: torch.fx.GraphModule, result: PassResult,
                   seconds: float) -> None:
        self.callback(pass_.name, result.modified)


__all__ = ["DumpGraphs", "OnPass", "PassTimer", "PassTiming"]
