"""A layout's digital BatchNorm (``aten.batch_norm`` in inference form) as the chip runs it.

The layout stores each BatchNorm's running statistics (``tensors.bin``); a chip instance may carry
its own (``ChipInstance.batch_norm``, by the node's name: per-chip re-calibration,
``neftc.runtime.recalibration``). ``DigitalBatchNorm`` runs ``aten.batch_norm`` with the node's
own arguments, the chip's statistics replacing the running ones when it has them: without them
the result is the op's, bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from neftc.runtime.chip import ChipInstance

BATCH_NORM_OP = "aten.batch_norm.default"


class DigitalBatchNorm(nn.Module):
    """One ``aten.batch_norm`` node of the layout graph, called as
    ``module(x, weight, bias, running_mean, running_var, chip)``."""

    def __init__(self, node_name: str, momentum: float, eps: float, cudnn_enabled: bool) -> None:
        super().__init__()
        self.node_name = node_name
        self.momentum = momentum
        self.eps = eps
        self.cudnn_enabled = cudnn_enabled

    def normalize(self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                  mean: torch.Tensor | None, var: torch.Tensor | None) -> torch.Tensor:
        """``aten.batch_norm`` in inference form with the statistics ``mean`` / ``var``."""
        return torch.ops.aten.batch_norm.default(x, weight, bias, mean, var, False,
                                                 self.momentum, self.eps, self.cudnn_enabled)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                mean: torch.Tensor | None, var: torch.Tensor | None,
                chip: ChipInstance) -> torch.Tensor:
        stats = chip.batch_norm.get(self.node_name)
        if stats is None:
            return self.normalize(x, weight, bias, mean, var)
        if chip.stacked:
            raise ValueError("stacked chip instances carry no per-chip BatchNorm statistics")
        return self.normalize(x, weight, bias, stats.mean, stats.var)
