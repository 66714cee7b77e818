"""The device variation model's scalar facts, without torch (``neftc inspect`` and the cost model
read them without importing torch): the programming std of a cell at one level, and write-verify's
per-pulse acceptance and expected pulses. The tensor forms are in ``neftc.targets.device_model``,
built on these.
"""

from __future__ import annotations

import math


def normalisation(state_ratio: float) -> float:
    """``sqrt(0.4 s^2 + 0.6)``: keeps the average cell variance at sigma^2 (reference code)."""
    return math.sqrt(0.4 * state_ratio**2 + 0.6)


def level_std(level: int, n_levels: int, sigma: float, state_ratio: float) -> float:
    """The programming std, in level units, of a cell at ``level`` of ``n_levels``:
    ``(L-1) sigma k / sqrt(0.4 s^2 + 0.6)``, ``k`` 1 at the two extreme levels, ``s`` between."""
    k = 1.0 if level in (0, n_levels - 1) else float(state_ratio)
    return (n_levels - 1) * sigma * k / normalisation(state_ratio)


def normal_cdf(x: float) -> float:
    """The standard normal distribution function."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def tolerance_levels(tolerance_rel: float, n_levels: int) -> float:
    """The write-verify acceptance band ``+-(L-1) tol`` in level units, for the tolerance
    relative to the full range (``cell.write_verify_tolerance_rel``, as ``neftc program``)."""
    return (n_levels - 1) * tolerance_rel


def acceptance(std: float, tolerance: float) -> float:
    """Probability that one programming pulse lands within ``+-tolerance`` of its level for a
    cell of Gaussian deviation std ``std`` (level units)."""
    if std <= 0:
        return 1.0
    return 2.0 * normal_cdf(tolerance / std) - 1.0


def expected_pulses(p: float, max_pulses: int) -> float:
    """Expected pulses per cell with write-verify of at most ``max_pulses`` pulses and per-pulse
    acceptance ``p``: ``sum_{k<N} (1-p)^k = (1 - (1-p)^N) / p`` (1 when write-verify is off,
    ``max_pulses`` 0)."""
    if max_pulses <= 1:
        return 1.0
    if p <= 0:
        return float(max_pulses)
    return (1.0 - (1.0 - p) ** max_pulses) / p


def pulses_per_cell(n_levels: int, sigma: float, state_ratio: float, tolerance_rel: float,
                    max_pulses: int) -> float:
    """Expected write-verify pulses of the cell that needs the most (the level with the largest
    programming std: an intermediate one when ``s > 1``): an upper bound on the mean over any
    mix of levels. 1 without write-verify (``max_pulses`` 0)."""
    tolerance = tolerance_levels(tolerance_rel, n_levels)
    std = max(level_std(level, n_levels, sigma, state_ratio) for level in range(min(n_levels, 2)))
    return expected_pulses(acceptance(std, tolerance), max_pulses)
