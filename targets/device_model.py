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

import itertools
import math
from typing import TypeVar

import torch

from neftc.targets.cell_model import (
    acceptance,
    normal_cdf,
    normalisation,
    tolerance_levels,
)
from neftc.targets.physics import DriftSpec, EffectsSpec
from neftc.targets.spec import CellSpec


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


#: A number or a tensor of cell values.
Values = TypeVar("Values", float, torch.Tensor)


def conductance_us(level: Values, g_min_us: float, g_max_us: float, n_levels: int) -> Values:
    """The physical conductance in microsiemens of a cell at level value ``level`` (a number or
    a tensor; fractional values are analog states): the normalised ``g = l / (L-1)`` spread
    linearly over the cell's range, ``g_min + (g_max - g_min) l / (L-1)``. The one definition of
    the level <-> conductance map (``level_of`` is its inverse)."""
    return g_min_us + (g_max_us - g_min_us) * level / (n_levels - 1)


def level_of(g_us: Values, g_min_us: float, g_max_us: float, n_levels: int) -> Values:
    """The level value of a cell of conductance ``g_us`` (microsiemens): ``conductance_us``'s
    inverse."""
    return (g_us - g_min_us) * (n_levels - 1) / (g_max_us - g_min_us)


def level_conductances_us(g_min_us: float, g_max_us: float, n_levels: int) -> list[float]:
    """The programmed conductance of each level ``l`` in microsiemens (``conductance_us``)."""
    return [conductance_us(level, g_min_us, g_max_us, n_levels) for level in range(n_levels)]


# ------------------------------------------------------------------ programming-time cell effects
# (docs/emulator.md, "Device effects": write-verify, clip, drift). A cell's value ``v`` is in level
# units; its physical conductance is ``g = g_min + (g_max - g_min) v / (L-1)``, i.e. proportional
# to ``v + r`` with ``r = g_min (L-1) / (g_max - g_min)`` (``g_min_levels``).


def g_min_levels(g_min_us: float, g_max_us: float, n_levels: int) -> float:
    """``r = g_min (L-1) / (g_max - g_min)``: the physical conductance of a cell at level value
    ``v`` is proportional to ``v + r``."""
    return -level_of(0.0, g_min_us, g_max_us, n_levels)  # the level value of 0 siemens


def _pdf(x: float) -> float:
    return 0.0 if math.isinf(x) else math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def drift_moments(drift: DriftSpec, time_s: float, order: int) -> float:
    """``E[D^order]`` of a cell's drift factor ``D = (t/t0)^-nu`` at ``time_s``,
    ``nu ~ max(N(nu, nu_std^2), 0)`` (1 before ``t0``)."""
    if time_s <= drift.t0_s:
        return 1.0
    k_t = order * math.log(time_s / drift.t0_s)
    if drift.nu_std <= 0:
        return math.exp(-k_t * drift.nu)
    mu, sd = drift.nu, drift.nu_std
    # P(nu <= 0) + int_0^inf exp(-k_t x) N(x; mu, sd^2) dx, the second in log space
    log_tail = float(torch.special.log_ndtr(torch.tensor((mu - sd * sd * k_t) / sd,
                                                         dtype=torch.float64)))
    return normal_cdf(-mu / sd) + math.exp(-k_t * mu + 0.5 * (sd * k_t) ** 2 + log_tail)


def _clipped_moments(level: int, std: float, tolerance: float | None, max_pulses: int,
                     top: float | None) -> tuple[float, float]:
    """``(E[v], E[v^2])`` of one cell programmed to ``level`` with Gaussian deviation ``std``,
    after write-verify (``tolerance`` None: off) and clipping to ``[0, top]`` (None: off). The
    deviation's density is ``w(e) N(e; 0, std^2)``, ``w`` = ``(1-(1-p)^N)/p`` inside the band
    and ``(1-p)^(N-1)`` outside (accepted at some pulse, or the last of N failed draws)."""
    if std <= 0:
        return float(level), float(level) ** 2
    inf = math.inf
    w_in = w_out = 1.0
    cuts = [-inf, inf]
    if tolerance is not None and max_pulses >= 1:
        p = acceptance(std, tolerance)
        w_in = (1.0 - (1.0 - p) ** max_pulses) / p if p > 0 else 0.0
        w_out = (1.0 - p) ** (max_pulses - 1)
        cuts += [-tolerance, tolerance]
    if top is not None:
        cuts += [-float(level), top - level]
    cuts = sorted(set(cuts))
    mean = square = 0.0
    for a, b in itertools.pairwise(cuts):
        mid = (b - 1.0 if a == -inf else a + 1.0 if b == inf else 0.5 * (a + b))
        w = w_in if tolerance is not None and abs(mid) <= tolerance else w_out
        za, zb = a / std, b / std
        m0 = normal_cdf(zb) - normal_cdf(za)
        m1 = std * (_pdf(za) - _pdf(zb))
        m2 = std * std * (m0 + (0.0 if math.isinf(za) else za * _pdf(za))
                          - (0.0 if math.isinf(zb) else zb * _pdf(zb)))
        if top is not None and level + mid < 0:
            continue  # clipped to 0
        if top is not None and level + mid > top:
            mean += w * m0 * top
            square += w * m0 * top * top
        else:
            mean += w * (level * m0 + m1)
            square += w * (level * level * m0 + 2 * level * m1 + m2)
    return mean, square


def cell_effect_moments(n_levels: int, sigma: float, state_ratio: float, cell: CellSpec,
                        effects: EffectsSpec, time_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per level ``l`` (``[L]``, float64, level units): the mean shift ``E[v''] - l`` and the
    variance of a cell programmed to ``l`` after write-verify, clip and drift at ``time_s`` with
    the target's compensation, the programming variation at ``sigma``. Global compensation
    divides by ``E[D]`` (a layer's calibration ratio for many cells). What the emulator draws
    cell by cell (``neftc.runtime.cell_effects``), as moments: what training adds per weight."""
    levels = torch.arange(n_levels)
    stds = cell_std_levels(levels, n_levels, sigma, state_ratio).tolist()
    wv = effects.write_verify.max_pulses
    tolerance = tolerance_levels(cell.write_verify_tolerance_rel, n_levels) if wv > 0 else None
    top = float(n_levels - 1) if effects.clip else None
    r = g_min_levels(cell.g_min_us, cell.g_max_us, n_levels)
    d1, d2 = drift_moments(effects.drift, time_s, 1), drift_moments(effects.drift, time_s, 2)
    c = d1 if effects.drift.compensation == "global" else 1.0
    shift, var = [], []
    for level, std in enumerate(stds):
        mean, square = _clipped_moments(level, std, tolerance, wv, top)
        # v'' = (v + r) D / c - r, D independent of v
        shifted_square = square + 2 * r * mean + r * r
        shift.append((mean + r) * d1 / c - r - level)
        var.append(max(shifted_square * d2 - ((mean + r) * d1) ** 2, 0.0) / (c * c))
    return (torch.tensor(shift, dtype=torch.float64), torch.tensor(var, dtype=torch.float64))


def weight_effect_moments(levels: torch.Tensor, coefficients: torch.Tensor,
                          table: tuple[torch.Tensor, torch.Tensor]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per weight (integer-weight units): the mean shift and std of ``sum_{p,s} sign_p L^s
    (v''[p,s] - level[p,s])`` for independent cells holding integer ``levels[p, s, ...]``, from
    the per-level ``table`` of ``cell_effect_moments`` (folded like ``weight_std_levels``)."""
    shift_l, var_l = (x.to(levels.device) for x in table)
    index = levels.to(torch.int64)
    c = coefficients.reshape(*coefficients.shape, *([1] * (levels.dim() - 2)))
    c = c.to(device=levels.device, dtype=torch.float64)
    shift = (shift_l[index] * c).sum(dim=(0, 1))
    var = (var_l[index] * c * c).sum(dim=(0, 1))
    return shift, var.sqrt()
