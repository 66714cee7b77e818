"""Golden dumps of the default pipeline, pass by pass, and a graph on which every pass does nothing.

The dumps are ``graph_text`` (the graph and each node's neftc annotation: no addresses, no
timings), for a small Conv + Linear model built here from a fixed generator. A difference means
a pass now builds another graph: if that is intended, regenerate the files with

    NEFTC_UPDATE_GOLDEN=1 python -m pytest tests/test_pass_goldens.py

and review the diff of tests/golden/passes/ like code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from golden_files import UPDATE, check_golden, regenerate_command
from torch import nn

from neftc.frontend.trace import trace_module
from neftc.ir.node_info import crossbar_nodes
from neftc.ir.pass_manager import PassContext, PassManager, graph_text
from neftc.passes import default_pipeline
from neftc.targets import resolve_target

GOLDEN = Path(__file__).resolve().parent / "golden" / "passes"
REGENERATE = regenerate_command("tests/test_pass_goldens.py")


class ConvLinear(nn.Module):
    """A conv (with bias) and a linear layer: both map to crossbars; relu and pooling stay
    digital."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(torch.flatten(x, 1))


class DigitalOnly(nn.Module):
    """relu, flatten and add: nothing with a static weight, so no crossbar op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(torch.relu(x), 1) + torch.flatten(x, 1)


def dumps_after_each_pass() -> dict[str, str]:
    """{file name: graph_text} for the input and after each pass of the default pipeline."""
    example = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ctx = PassContext(resolve_target("fefet_128x128"), example)
    gm = trace_module(ConvLinear().eval(), example)
    dumps = {"00-input.txt": graph_text(gm)}
    for index, pass_ in enumerate(default_pipeline(), start=1):
        gm = PassManager([pass_]).run(gm, ctx)
        dumps[f"{index:02d}-{pass_.name}.txt"] = graph_text(gm)
    return dumps


def test_each_pass_of_the_default_pipeline_matches_its_golden_dump() -> None:
    dumps = dumps_after_each_pass()
    assert list(dumps) == ["00-input.txt", "01-normalize.txt", "02-quantize.txt",
                           "03-bit-slice.txt", "04-map-tiles.txt", "05-place.txt"]
    for name, text in dumps.items():
        assert "0x" not in text, f"{name} holds an address: the dump would not be stable"
        check_golden(GOLDEN / name, text, f"the dump of {name}", "tests/test_pass_goldens.py")
    if not UPDATE:  # nothing stale is left behind from a pass that was renamed or removed
        assert sorted(p.name for p in GOLDEN.iterdir()) == sorted(dumps), REGENERATE


@pytest.mark.parametrize("name", [
    "quantize", "bit-slice", "map-tiles", "place"])
def test_pass_does_nothing_on_a_digital_only_graph(name: str) -> None:
    """After normalize, each pass of the default pipeline (those before it run first) reports
    ``modified=False`` and leaves the graph text unchanged on a graph with no crossbar op."""
    example = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    ctx = PassContext(resolve_target("fefet_128x128"), example)
    model = DigitalOnly().eval()
    passes = default_pipeline()
    names = [p.name for p in passes]
    assert names == ["normalize", "quantize", "bit-slice", "map-tiles", "place"]
    gm = PassManager(passes[:names.index(name)]).run(trace_module(model, example), ctx)
    assert crossbar_nodes(gm) == []
    before = graph_text(gm)
    result = passes[names.index(name)].run(gm, ctx)
    assert not result.modified, f"{name} reports a change on a digital-only graph"
    assert graph_text(result.gm) == before
    torch.testing.assert_close(result.gm(example), model(example), rtol=0, atol=0)
