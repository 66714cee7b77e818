"""insert-feedback: the NeFT feedback points (DESIGN.md section 5).

- ``ovf`` (oriented variational forward): no graph change; the plan records the extra forwards'
  sigma offsets (+0.15, +0.10, +0.05 by default) and their weights gamma_n = 10^-(n-1).
- ``irs`` (intermediate representation snapshot): a training-only ``FeedbackHead`` at each of N
  taps (default 3, evenly spaced over the crossbar layers, or named nodes); each passes its input
  through and, in training, computes snapshot logits with noisy weights.
- ``ovf+irs``: both: the OVF forwards' offsets and the IRS heads; the feedback terms are the OVF
  forwards' logits, then the heads' logits (N = offsets + heads), each family weighted
  gamma = 10^-(n-1) in its own order.
- ``nit`` (noise-injection training) and ``none``: no feedback.

The plan is stored in ``gm.meta["neft"]``; ``strip-training`` removes heads and noise before
quantisation, leaving the deployed graph exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.fx

from neftc.ir.facts import Fact
from neftc.ir.node_info import crossbar_nodes
from neftc.ir.pass_manager import NodeError, PassContext, PassResult, evaluating
from neftc.neft.modules import FeedbackHead
from neftc.passes.quantize import Quantize

NeftMode = Literal["ovf", "irs", "ovf+irs", "nit", "none"]
HEAD_PREFIX = "neft_head_"
PLAN_KEY = "neft"


@dataclass(frozen=True)
class FeedbackPlan:
    mode: NeftMode
    beta: float
    sigma_offsets: tuple[float, ...] = ()  # OVF (and ovf+irs)
    heads: tuple[str, ...] = ()  # IRS (and ovf+irs) submodule names, in tap order

    @property
    def gammas(self) -> tuple[float, ...]:
        """The weight of each feedback term, in the loss's order: the OVF forwards' (one per
        offset), then the IRS heads' (one per head); 10^-(n-1) within each family."""
        return (tuple(10.0 ** -i for i in range(len(self.sigma_offsets)))
                + tuple(10.0 ** -i for i in range(len(self.heads))))


def _even_taps(count: int, candidates: list[torch.fx.Node]) -> list[torch.fx.Node]:
    """``count`` nodes evenly spaced over ``candidates`` (never the last one: it is the output)."""
    pool = candidates[:-1]
    if count > len(pool):
        raise ValueError(f"{count} IRS taps asked for, but the model has only {len(pool)} "
                         "crossbar layers before its last")
    step = len(pool) / count
    return [pool[min(len(pool) - 1, round((i + 1) * step) - 1)] for i in range(count)]


def _tap_point(node: torch.fx.Node) -> torch.fx.Node:
    """Tap after the activation that follows a crossbar op, if there is exactly one."""
    users = list(node.users)
    while len(users) == 1 and users[0].op == "call_function" and \
            users[0].target in (torch.ops.aten.relu.default, torch.ops.aten.batch_norm.default,
                                torch.ops.aten.relu_.default):
        node = users[0]
        users = list(node.users)
    return node


@dataclass(frozen=True)
class InsertFeedback:
    mode: NeftMode
    beta: float
    sigma: float
    num_classes: int
    sigma_offsets: tuple[float, ...] = (0.15, 0.10, 0.05)
    taps: int | tuple[str, ...] = 3
    pool_size: int = 2
    hidden: int = 512
    noise_mode: Literal["cell", "paper"] = "cell"
    # The chip's quantize pass: the heads' weight noise uses its scales (as inject-noise's).
    quantize: Quantize = field(default_factory=Quantize)
    seed: int = 0  # initialisation of the IRS heads (an explicit generator, never global state)
    t_inference_s: float | None = None  # as inject-noise's: the heads' noise at that time

    name: ClassVar[str] = "insert-feedback"
    requires: ClassVar[frozenset[Fact]] = frozenset({Fact.NORMALIZED, Fact.NOISY_WEIGHTS})
    provides: ClassVar[frozenset[Fact]] = frozenset({Fact.FEEDBACK})
    invalidates: ClassVar[frozenset[Fact]] = frozenset({Fact.DEPLOYABLE})

    def run(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        previous = gm.meta.get(PLAN_KEY)
        offsets = self.sigma_offsets if self.mode in ("ovf", "ovf+irs") else ()
        if self.mode not in ("irs", "ovf+irs"):
            plan = FeedbackPlan(self.mode, self.beta, offsets)
            gm.meta[PLAN_KEY] = plan
            return PassResult(gm, previous != plan)
        device_noise = self.quantize.device_noise(ctx.target, self.noise_mode, self.t_inference_s)
        if previous is not None and previous.heads:
            # Heads already there: their weight noise (sigma, quantisation), the mode (irs or
            # ovf+irs), beta and the offsets can change.
            plan = FeedbackPlan(self.mode, self.beta, offsets, previous.heads)
            modified = plan != previous
            gm.meta[PLAN_KEY] = plan
            for name in previous.heads:
                head = gm.get_submodule(name)
                for noise in (head.noise1, head.noise2):
                    if noise.sigma != self.sigma or noise.device_noise != device_noise:
                        noise.sigma, noise.device_noise = self.sigma, device_noise
                        modified = True
            return PassResult(gm, modified)
        by_name = {n.name: n for n in gm.graph.nodes}
        if isinstance(self.taps, int):
            try:
                taps = [_tap_point(n) for n in _even_taps(self.taps, crossbar_nodes(gm))]
            except ValueError as exc:
                raise NodeError(next(iter(gm.graph.nodes)), str(exc)) from None
        else:
            missing = [t for t in self.taps if t not in by_name]
            if missing:
                raise NodeError(next(iter(gm.graph.nodes)),
                                f"IRS tap node(s) {missing} not in the graph; see "
                                "--dump-after-each for node names")
            taps = [by_name[t] for t in self.taps]
        shapes = _tap_shapes(gm, ctx.example_inputs, taps)
        heads = []
        generator = torch.Generator().manual_seed(self.seed)
        for index, (tap, shape) in enumerate(zip(taps, shapes)):
            name = f"{HEAD_PREFIX}{index}"
            head = FeedbackHead(shape[1], len(shape) - 2, self.pool_size, self.hidden,
                                self.num_classes, device_noise, self.sigma, generator)
            gm.add_submodule(name, head)
            users = list(tap.users)
            with gm.graph.inserting_after(tap):
                through = gm.graph.call_module(name, (tap,))
            for user in users:
                user.replace_input_with(tap, through)
            heads.append(name)
        gm.meta[PLAN_KEY] = FeedbackPlan(self.mode, self.beta, offsets, tuple(heads))
        gm.recompile()
        return PassResult(gm, True)


def _tap_shapes(gm: torch.fx.GraphModule, examples: tuple[torch.Tensor, ...],
                taps: list[torch.fx.Node]) -> list[tuple[int, ...]]:
    from torch.fx.passes.shape_prop import ShapeProp

    with evaluating(gm):
        ShapeProp(gm).propagate(*examples)
    return [tuple(tap.meta["tensor_meta"].shape) for tap in taps]
