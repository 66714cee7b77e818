"""Monte-Carlo accuracy sign-off: one trial = one chip instance evaluated on the whole test set."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from neftc.runtime.emulator import Emulator

# Two-sided 95 % Student-t quantiles for 1..29 degrees of freedom; 1.96 beyond.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045]


@dataclass(frozen=True)
class McStats:
    trials: int
    mean: float
    std: float
    ci95: float  # half-width of the 95 % confidence interval of the mean (Student t)
    min: float
    p5: float
    max: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(accuracies: np.ndarray) -> McStats:
    n = int(accuracies.size)
    std = float(accuracies.std(ddof=1)) if n > 1 else 0.0
    t = _T95[n - 2] if 2 <= n <= 30 else 1.96
    return McStats(trials=n, mean=float(accuracies.mean()), std=std,
                   ci95=t * std / math.sqrt(n) if n > 1 else float("nan"),
                   min=float(accuracies.min()), p5=float(np.percentile(accuracies, 5)),
                   max=float(accuracies.max()))


@torch.no_grad()
def evaluate(emulator: Emulator, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Top-1 accuracy of the currently programmed chip instance."""
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        logits = emulator.forward(x[start:start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start:start + batch_size]).sum())
    return correct / max(int(y.shape[0]), 1)


@dataclass(frozen=True)
class McResult:
    accuracies: np.ndarray
    stats: McStats
    seconds: float

    @property
    def trials_per_second(self) -> float:
        return self.stats.trials / self.seconds if self.seconds > 0 else float("inf")


def monte_carlo(emulator: Emulator, x: torch.Tensor, y: torch.Tensor, trials: int, *,
                batch_size: int = 1024,
                on_trial: Callable[[int, float], None] | None = None) -> McResult:
    """Accuracy of ``trials`` chip instances (0 .. trials-1 of the emulator's seed)."""
    start = time.perf_counter()
    accuracies = np.empty(trials)
    for i, chip in enumerate(emulator.chips(trials)):
        accuracies[i] = evaluate(emulator, x, y, batch_size)
        if on_trial is not None:
            on_trial(chip, float(accuracies[i]))
    seconds = time.perf_counter() - start
    emulator.program_ideal()
    return McResult(accuracies, summarize(accuracies), seconds)
