"""quantize: symmetric weight quantisation to the target's weight bits.

For every crossbar node, ``q = clamp(round(W / scale), -qmax, qmax)`` with one scale per layer (the
default) or per output channel. The scale comes from max-abs calibration (``scale = max|W|/qmax``,
the default) or from a percentile of ``|W|`` (weights beyond it are clipped). The pass records
``QuantInfo`` and replaces the weight by its fake-quantised value ``q * scale``, so the graph after
this pass computes exactly what the quantised chip computes with ideal periphery.

The scales and integer weights come from ``neftc.ir.quantization`` (``weight_scales``,
``quantize_matrix``). NeFT's training noise is built from this pass object
(``Quantize.device_noise``), so it uses the same options by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.fx

from neftc.ir.facts import Fact
from neftc.ir.node_info import QuantInfo, crossbar_nodes, get_info, update_info
from neftc.ir.pass_manager import PassContext, PassResult
from neftc.ir.quantization import DEFAULT_PERCENTILE, Calibration, quantize_matrix
from neftc.ir.weights import get_weight, set_weight, weight_matrix
from neftc.neft.modules import DeviceNoise, TrainNoiseMode
from neftc.targets.spec import TargetSpec


@dataclass(frozen=True)
class Quantize:
    per_channel: bool = False
    calibration: Calibration = "max-abs"
    percentile: float = DEFAULT_PERCENTILE

    name: ClassVar[str] = "quantize"
    requires: ClassVar[frozenset[Fact]] = frozenset({Fact.NORMALIZED})
    provides: ClassVar[frozenset[Fact]] = frozenset({Fact.QUANTIZED})
    forbids: ClassVar[frozenset[Fact]] = frozenset({Fact.NOISY_WEIGHTS, Fact.FEEDBACK})

    def device_noise(self, target: TargetSpec, mode: TrainNoiseMode = "cell",
                     t_inference_s: float | None = None) -> DeviceNoise:
        """The training noise of the chip this pass produces for ``target``, read
        ``t_inference_s`` seconds after programming (None: at the drift model's reference read):
        computed from the integer weights and scales of this pass's options (NeFT reads them
        here, never a copy)."""
        return DeviceNoise.of(target, self.per_channel, mode, calibration=self.calibration,
                              percentile=self.percentile, t_inference_s=t_inference_s)

    def run(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        qmax = ctx.target.qmax
        modified = False
        for node in crossbar_nodes(gm):
            weight = get_weight(gm, node)
            matrix = weight_matrix(weight).to(torch.float64)
            q, scales = quantize_matrix(matrix, qmax, per_channel=self.per_channel,
                                        calibration=self.calibration,
                                        percentile=self.percentile)
            previous = get_info(node).quant  # type: ignore[union-attr]
            q_np = q.to(torch.int32).numpy()
            scales_np = scales.reshape(-1).to(torch.float32).numpy()
            scales_np = np.broadcast_to(scales_np, (matrix.shape[1],)).copy()
            if (previous is None or previous.bits != ctx.target.weight.bits
                    or not np.array_equal(previous.q, q_np)
                    or not np.allclose(previous.scales, scales_np, rtol=1e-6, atol=0)):
                modified = True
            update_info(node, quant=QuantInfo(ctx.target.weight.bits, qmax, self.per_channel,
                                              scales_np, q_np))
            fake = torch.from_numpy(q_np.astype(np.float32) * scales_np).t()
            set_weight(gm, node, fake)
        return PassResult(gm, modified)
