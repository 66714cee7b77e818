"""The device variation model (DESIGN.md section 4): the one definition of which noise a cell and
a weight get. The emulator (per cell, from the layout's levels) and NeFT training (per weight,
from the weight's own slices, ``neftc.format.encoding``) both call it with the same quantisation
scales.

Cell level (what a chip does): a cell at level ``l`` of ``L`` has normalised conductance
``g = l / (L-1)`` and is programmed once per chip instance to ``g + e``,
``e ~ N(0, (sigma * k(l))^2)``, ``k(l) = 1`` for the two extreme levels and ``s`` for the others,
all divided by ``sqrt(0.4 s^2 + 0.6)``. In level units (what the crossbar sums) the noise of a
cell is ``(L-1) * e``.

Per weight (the exact fold): the effective integer weight of a chip is
``sum_{p,s} sign_p L^s (level[p,s] + (L-1) e[p,s])``, so its noise is one Gaussian with variance
``sum_{p,s} (L^s * cell_std[p,s])^2``.

Paper mode (the NeFT reference code): one Gaussian per weight with
``std = sigma' * (L-1) * sqrt(sum_s L^(2s)) * scale`` (``= 0.7776 sigma' max|W|`` for 8 bits on
four 2-bit cells), times ``s`` for weights with ``0.25 < |w| / max|W| < 0.75``; no sign column.
"""

from __future__ import annotations

import math

import torch


def normalisation(state_ratio: float) -> float:
    """``sqrt(0.4 s^2 + 0.6)``: keeps the average cell variance at sigma^2 (reference code)."""
    return math.sqrt(0.4 * state_ratio**2 + 0.6)


def cell_std_levels(levels: torch.Tensor, n_levels: int, sigma: float,
                    state_ratio: float) -> torch.Tensor:
    """Per-cell noise std in level units for integer ``levels`` (any shape)."""
    extreme = (levels == 0) | (levels == n_levels - 1)
    k = torch.where(extreme, 1.0, float(state_ratio)) / normalisation(state_ratio)
    return (n_levels - 1) * sigma * k


def folded_std(cell_std: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Per-weight std (integer-weight units) of ``sum_{p,s} coefficients[p,s] e[p,s]`` for
    independent cells of std ``cell_std[p, s, ...]``; ``coefficients`` is ``sign_p L^s`` [P, S]."""
    c = coefficients.reshape(*coefficients.shape, *([1] * (cell_std.dim() - 2)))
    return ((cell_std * c) ** 2).sum(dim=(0, 1)).sqrt()


def weight_std_levels(levels: torch.Tensor, coefficients: torch.Tensor, n_levels: int,
                      sigma: float, state_ratio: float) -> torch.Tensor:
    """Per-weight std (integer-weight units) of the cell-level noise of weights whose cells hold
    ``levels[p, s, ...]``: the exact Gaussian equivalent the emulator and NeFT training share."""
    return folded_std(cell_std_levels(levels, n_levels, sigma, state_ratio), coefficients)


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


def level_conductances_us(g_min_us: float, g_max_us: float, n_levels: int) -> list[float]:
    """The programmed conductance of each level ``l`` in microsiemens: the normalised
    ``g = l / (L-1)`` spread linearly over the cell's range ``[g_min_us, g_max_us]``."""
    return [g_min_us + (g_max_us - g_min_us) * level / (n_levels - 1)
            for level in range(n_levels)]
