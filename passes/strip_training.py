"""strip-training: remove every training-only module (weight noise, feedback heads).

Every ``neft_noise_*`` and ``neft_head_*`` call is bypassed and deleted, and the feedback plan is
dropped, so the graph that goes on to quantize and map is exactly the model's own graph with its
fine-tuned weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.fx

from neftc.ir.facts import Fact
from neftc.ir.pass_manager import PassContext, PassResult
from neftc.passes.inject_noise import NOISE_PREFIX
from neftc.passes.insert_feedback import HEAD_PREFIX, PLAN_KEY


@dataclass(frozen=True)
class StripTraining:
    name: ClassVar[str] = "strip-training"
    requires: ClassVar[frozenset[Fact]] = frozenset({Fact.NORMALIZED})
    provides: ClassVar[frozenset[Fact]] = frozenset({Fact.DEPLOYABLE})
    invalidates: ClassVar[frozenset[Fact]] = frozenset({Fact.NOISY_WEIGHTS, Fact.FEEDBACK})

    def run(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = gm.meta.pop(PLAN_KEY, None) is not None
        for node in list(gm.graph.nodes):
            if node.op == "call_module" and str(node.target).startswith((NOISE_PREFIX,
                                                                         HEAD_PREFIX)):
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
                gm.delete_submodule(str(node.target))
                modified = True
        gm.recompile()
        return PassResult(gm, modified)
