"""inject-noise: make every crossbar weight noisy in training, exactly as the target's chip is.

Between each crossbar op and its ``get_attr`` weight the pass inserts a ``WeightNoise`` module
(``neft_noise_<i>``), which in training mode adds per weight the Gaussian equivalent of the
target's cell-level variation at ``sigma`` (same variance as the emulator, computed from the
weight's own slices and encoding) or the NeFT reference formula (``mode="paper"``). The weight is
quantised for that as the chip's ``quantize`` pass will quantise it: the ``quantize`` field holds
that pass (in a compile, the very object of the compile's pipeline). In eval mode the graph
computes exactly what it did before. No model code is edited.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch.fx

from neftc.ir.facts import Fact
from neftc.ir.node_info import crossbar_nodes
from neftc.ir.pass_manager import PassContext, PassResult
from neftc.neft.modules import DeviceNoise, TrainNoiseMode, WeightNoise
from neftc.passes.quantize import Quantize
from neftc.targets.spec import TargetSpec

NOISE_PREFIX = "neft_noise_"


@dataclass(frozen=True)
class InjectNoise:
    sigma: float
    mode: TrainNoiseMode = "cell"
    # The chip's quantize pass: the noise is computed from its integer weights and scales.
    quantize: Quantize = field(default_factory=Quantize)
    # The noise std carries the gradient of the quantisation scale (WeightNoise.scale_gradient).
    scale_gradient: bool = True
    # Seconds after programming the chip is read at (drift of the target's effects; None: t0).
    t_inference_s: float | None = None

    name: ClassVar[str] = "inject-noise"
    requires: ClassVar[frozenset[Fact]] = frozenset({Fact.NORMALIZED})
    provides: ClassVar[frozenset[Fact]] = frozenset({Fact.NOISY_WEIGHTS})
    invalidates: ClassVar[frozenset[Fact]] = frozenset({Fact.DEPLOYABLE})

    def device_noise(self, target: TargetSpec) -> DeviceNoise:
        """The noise every inserted ``WeightNoise`` computes, for ``target``."""
        return self.quantize.device_noise(target, self.mode, self.t_inference_s)

    def run(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        device_noise = self.device_noise(ctx.target)
        modified = False
        for index, node in enumerate(crossbar_nodes(gm)):
            weight = node.args[1]
            assert isinstance(weight, torch.fx.Node)
            if weight.op == "call_module" and str(weight.target).startswith(NOISE_PREFIX):
                module = gm.get_submodule(str(weight.target))
                assert isinstance(module, WeightNoise)
                if (module.sigma, module.device_noise, module.scale_gradient) != (
                        self.sigma, device_noise, self.scale_gradient):
                    module.sigma, module.device_noise = self.sigma, device_noise
                    module.scale_gradient = self.scale_gradient
                    modified = True
                continue
            name = f"{NOISE_PREFIX}{index}"
            gm.add_submodule(name, WeightNoise(device_noise, self.sigma,
                                                   self.scale_gradient))
            with gm.graph.inserting_before(node):
                noisy = gm.graph.call_module(name, (weight,))
            node.replace_input_with(weight, noisy)
            modified = True
        gm.recompile()
        return PassResult(gm, modified)
