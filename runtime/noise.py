"""The device variation model (DESIGN.md section 4), at cell level and in the paper's weight form.

Cell level (what a chip does): a cell at level ``l`` of ``L`` has normalised conductance
``g = l / (L-1)`` and is programmed once per chip instance to ``g + e``,
``e ~ N(0, (sigma * k(l))^2)``, ``k(l) = 1`` for the two extreme levels and ``s`` for the others,
all divided by ``sqrt(0.4 s^2 + 0.6)``. In level units (what the crossbar sums) the noise of a
cell is ``(L-1) * e``.

Paper mode (the NeFT reference code): one Gaussian per weight with
``std = sigma' * (L-1) * sqrt(sum_s L^(2s)) * scale`` (``= 0.7776 sigma' max|W|`` for 8 bits on
four 2-bit cells), times ``s`` for weights with ``0.25 < |w| / max|W| < 0.75``; no sign column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

NoiseMode = Literal["cell", "paper", "off"]


def normalisation(state_ratio: float) -> float:
    """``sqrt(0.4 s^2 + 0.6)``: keeps the average cell variance at sigma^2 (reference code)."""
    return math.sqrt(0.4 * state_ratio**2 + 0.6)


def cell_std_levels(levels: torch.Tensor, n_levels: int, sigma: float,
                    state_ratio: float) -> torch.Tensor:
    """Per-cell noise std in level units for integer ``levels`` (any shape)."""
    extreme = (levels == 0) | (levels == n_levels - 1)
    k = torch.where(extreme, 1.0, float(state_ratio)) / normalisation(state_ratio)
    return (n_levels - 1) * sigma * k


def paper_weight_std(weights: torch.Tensor, qmax: int, n_levels: int, n_slices: int,
                     sigma: float, state_ratio: float) -> torch.Tensor:
    """Per-weight std of the reference formula for a layer's (dequantised) ``weights``.

    ``std = sigma' * max|W| * (L-1) * sqrt(sum_s L^(2s)) / qmax``, times ``s`` where
    ``0.25 < |w| / max|W| < 0.75``.
    """
    max_w = float(weights.abs().max())
    base = sigma / normalisation(state_ratio) * max_w * (n_levels - 1) * math.sqrt(
        sum(n_levels ** (2 * s) for s in range(n_slices))) / qmax
    ratio = weights.abs() / max(max_w, 1e-30)
    mid = (ratio > 0.25) & (ratio < 0.75)
    return base * torch.where(mid, float(state_ratio), 1.0)


@dataclass(frozen=True)
class NoiseModel:
    """What one chip instance's variation looks like."""

    sigma: float
    state_ratio: float
    mode: NoiseMode = "cell"
    stuck_at_min_rate: float = 0.0
    stuck_at_max_rate: float = 0.0

    @property
    def active(self) -> bool:
        return self.mode != "off" and (self.sigma > 0 or self.has_faults)

    @property
    def has_faults(self) -> bool:
        return self.stuck_at_min_rate > 0 or self.stuck_at_max_rate > 0


def cell_weight_std(q: torch.Tensor, scales: torch.Tensor, *, bits: int, cell_bits: int,
                    encoding: str, sigma: float, state_ratio: float) -> torch.Tensor:
    """Per-weight std (weight units) of the exact Gaussian equivalent of the cell-level noise.

    ``q`` holds integer weights (any shape whose last dimension matches ``scales``, or scalar
    scales). The effective weight of a chip is ``sum_{p,s} sign_p L^s (level + (L-1) e)`` times
    the scale, so its variance is ``sum_{p,s} (L^s (L-1) sigma k(level_{p,s}))^2 scale^2``: the
    weight's own slices on both polarities (differential) or of ``q + offset`` (offset).
    """
    n_levels = 2**cell_bits
    n_slices = -(-bits // cell_bits)
    if encoding == "differential":
        magnitudes = [q.clamp(min=0), (-q).clamp(min=0)]
    else:
        magnitudes = [q + 2 ** (bits - 1)]
    variance = torch.zeros_like(q, dtype=torch.float32)
    for magnitude in magnitudes:
        remaining = magnitude.to(torch.float32)
        for s in range(n_slices):
            level = torch.remainder(remaining, n_levels)
            remaining = torch.div(remaining - level, n_levels)
            std = cell_std_levels(level, n_levels, sigma, state_ratio) * float(n_levels**s)
            variance = variance + std * std
    return variance.sqrt() * scales
