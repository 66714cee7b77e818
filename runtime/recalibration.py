"""Per-chip BatchNorm re-calibration: a programmed chip re-estimates the statistics of each
digital BatchNorm from a batch of unlabelled inputs run through that chip (as on-chip
calibration does), and keeps them as part of the chip instance (``ChipInstance.batch_norm``).

One forward pass over the calibration batch, BatchNorms in network order: each BatchNorm's
statistics are the batch's (per channel, over the samples and every other position; the variance
is the population variance, as a forward with batch statistics normalises with), computed on
inputs that already went through the re-calibrated BatchNorms before it. The chip's cells, its
periphery (DAC ranges) and the layout are unchanged; only what the digital BatchNorms subtract
and divide by changes. Running the re-calibrated chip on the calibration batch gives what that
forward with batch statistics gave.
"""

from __future__ import annotations

from typing import Any

import torch

from neftc.runtime.batchnorm import DigitalBatchNorm
from neftc.runtime.chip import BnStats, ChipInstance
from neftc.runtime.emulator import Emulator
from neftc.runtime.inputs import Inputs


def batch_norms(emulator: Emulator) -> list[DigitalBatchNorm]:
    """The digital BatchNorms of the emulator's network, in network (graph) order."""
    return [module for module in emulator.module.modules() if isinstance(module, DigitalBatchNorm)]


@torch.no_grad()
def recalibrate_batch_norm(emulator: Emulator, chip: ChipInstance, x: Inputs) -> ChipInstance:
    """Chip instance ``chip`` with every digital BatchNorm's statistics re-estimated on the
    calibration batch ``x`` run through that chip, in one pass (the module docstring says how).
    A network without BatchNorm gives ``chip`` back. The emulator is unchanged."""
    if chip.stacked:
        raise ValueError("re-calibrate chip instances one at a time, not stacked")
    modules = batch_norms(emulator)
    if not modules:
        return chip
    stats: dict[str, BnStats] = {}
    hooks = []
    for module in modules:
        def batch_statistics(bn: DigitalBatchNorm, args: tuple[Any, ...],
                             _output: torch.Tensor) -> torch.Tensor:
            value, weight, bias = args[0], args[1], args[2]
            dims = [d for d in range(value.dim()) if d != 1]
            mean = value.mean(dim=dims)
            var = value.var(dim=dims, unbiased=False)
            stats[bn.node_name] = BnStats(mean, var)
            return bn.normalize(value, weight, bias, mean, var)  # what the layers after see
        hooks.append(module.register_forward_hook(batch_statistics))
    try:
        emulator.forward(x, chip)
    finally:
        for hook in hooks:
            hook.remove()
    return chip.with_batch_norm(stats)
