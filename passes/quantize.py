"""quantize: symmetric weight quantisation to the target's weight bits.

For every crossbar node, ``q = clamp(round(W / scale), -qmax, qmax)`` with one scale per layer (the
default) or per output channel. The scale comes from max-abs calibration (``scale = max|W|/qmax``,
the default) or from a percentile of ``|W|`` (weights beyond it are clipped). The pass records
``QuantInfo`` and replaces the weight by its fake-quantised value ``q * scale``, so the graph after
this pass computes exactly what the quantised chip computes with ideal periphery.

``weight_scales`` and ``quantize_matrix`` are the one definition of the scales and integer
weights: NeFT's training noise (``neftc.neft_modules.DeviceNoise``) calls them with the same
options, so it trains against the noise of the chip this pass produces (DESIGN.md section 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.fx

from neftc.errors import NeftcError
from neftc.meta import QuantInfo, crossbar_nodes, get_info, update_info
from neftc.pass_manager import PassContext, PassResult
from neftc.passes._weights import get_weight, set_weight, weight_matrix

Calibration = Literal["max-abs", "percentile"]
DEFAULT_PERCENTILE = 99.99


def weight_scales(matrix: torch.Tensor, qmax: int, *, per_channel: bool = False,
                  calibration: Calibration = "max-abs",
                  percentile: float = DEFAULT_PERCENTILE) -> torch.Tensor:
    """The quantisation scales of a crossbar matrix ``[rows, C_out]`` (``weight_matrix``):
    ``[1, C_out]`` (per channel) or ``[1, 1]`` (per layer), float64 holding float32 values, on
    ``matrix``'s device. The bound is ``max|W|`` or the ``percentile`` of ``|W|``, per layer or
    per output channel; an all-zero range gets scale ``1/qmax``."""
    magnitude = matrix.detach().abs().to(torch.float64)
    if calibration == "max-abs":
        bound = magnitude.amax(dim=0) if per_channel else magnitude.max().reshape(1)
    elif calibration == "percentile":
        # numpy: torch.quantile refuses inputs above 16 M elements
        values = np.percentile(magnitude.cpu().numpy(), percentile,
                               axis=0 if per_channel else None)
        bound = torch.as_tensor(values, dtype=torch.float64).reshape(-1).to(matrix.device)
    else:
        raise NeftcError(f"unknown calibration '{calibration}'; use max-abs or percentile")
    bound = torch.where(bound > 0, bound, torch.ones_like(bound))
    # Round the scale to float32 first so that q * scale is reproducible from the layout.
    return (bound / qmax).to(torch.float32).to(torch.float64).reshape(1, -1)


def quantize_matrix(matrix: torch.Tensor, qmax: int, *, per_channel: bool = False,
                    calibration: Calibration = "max-abs",
                    percentile: float = DEFAULT_PERCENTILE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scales)`` of a crossbar matrix ``[rows, C_out]``: ``q = clamp(round(W / scale),
    -qmax, qmax)`` (float64, integer values) and ``weight_scales``."""
    scales = weight_scales(matrix, qmax, per_channel=per_channel, calibration=calibration,
                           percentile=percentile)
    q = torch.clamp(torch.round(matrix.detach().to(torch.float64) / scales), -qmax, qmax)
    return q, scales


@dataclass(frozen=True)
class Quantize:
    per_channel: bool = False
    calibration: Calibration = "max-abs"
    percentile: float = DEFAULT_PERCENTILE

    name: ClassVar[str] = "quantize"
    requires: ClassVar[frozenset[str]] = frozenset({"normalized"})
    provides: ClassVar[frozenset[str]] = frozenset({"quantized"})

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
