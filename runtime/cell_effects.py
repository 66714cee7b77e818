"""Programming-time effects on a chip's cells, applied in this order after the programming draw
(docs/emulator.md, "Device effects"): write-verify, clip, drift (with its compensation). Each
takes one pipeline copy's cells ``[P, S, R, C]`` in level units and returns new ones; the random
draws come from the chip's own streams (``neftc.runtime.variation``: ``WRITE_STREAM``,
``DRIFT_STREAM``), made on the CPU and moved to the cells' device. The per-level moments of the
same model, for training: ``neftc.targets.device_model.cell_effect_moments``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from neftc.targets.cell_model import tolerance_levels
from neftc.targets.device_model import g_min_levels
from neftc.targets.physics import DriftSpec
from neftc.targets.spec import CellSpec


@dataclass(frozen=True)
class CellWindow:
    """What the cell effects need of the target's cell: its levels, the write-verify band and
    the conductance range (``target.cell``, read from the layout, never copied)."""

    n_levels: int
    tolerance: float  # write-verify band, level units: (L-1) * cell.write_verify_tolerance_rel
    g_min: float  # r = g_min (L-1) / (g_max - g_min): physical g is proportional to v + r

    @classmethod
    def of(cls, cell: CellSpec) -> CellWindow:
        return cls(cell.levels, tolerance_levels(cell.write_verify_tolerance_rel, cell.levels),
                   g_min_levels(cell.g_min_us, cell.g_max_us, cell.levels))


def write_verify(e: torch.Tensor, std: torch.Tensor, tolerance: float, max_pulses: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Program-and-verify of cells with deviations ``e`` from their levels (the first pulse) and
    per-cell std ``std``: a cell with ``|e| > tolerance`` is programmed again with a fresh
    ``N(0, std^2)`` draw, up to ``max_pulses`` pulses in all; the last draw stays. Returns the
    final deviations and the pulses of each cell (int32). The fresh draws are one normal per
    failing cell per pulse, in the cells' C order."""
    e = e.clone()
    pulses = torch.ones(e.shape, dtype=torch.int32, device=e.device)
    flat, spread, counts = e.view(-1), std.reshape(-1), pulses.view(-1)
    failing = (flat.abs() > tolerance).nonzero().squeeze(1)  # ascending: C order
    for _ in range(max_pulses - 1):
        if failing.numel() == 0:
            break
        fresh = torch.randn(failing.numel(), generator=generator).to(e.device)
        fresh = fresh * spread[failing]
        flat[failing] = fresh
        counts[failing] += 1
        failing = failing[fresh.abs() > tolerance]
    return e, pulses


def clip(cells: torch.Tensor, n_levels: int) -> torch.Tensor:
    """The cells clipped to the conductance window ``[0, L-1]`` (``[g_min, g_max]``)."""
    return cells.clamp(0.0, float(n_levels - 1))


def drift(cells: torch.Tensor, spec: DriftSpec, time_s: float, g_min: float,
          generator: torch.Generator) -> torch.Tensor:
    """The cells at ``time_s`` after programming: each cell's physical conductance (proportional
    to ``v + g_min``, level units) times ``(t/t0)^-nu``, ``nu ~ N(nu, nu_std^2)`` per cell (one
    normal per cell, C order; a negative draw is 0). Global compensation divides the drifted
    conductances by ``sum(drifted g) / sum(programmed g)`` over the cells given (one layer's
    copy: its calibration read with every input at 1)."""
    nu = torch.randn(cells.shape, generator=generator, dtype=torch.float64)
    nu = nu.mul_(spec.nu_std).add_(spec.nu).clamp_(min=0.0).to(cells.device)
    physical = cells.to(torch.float64) + g_min
    drifted = physical * torch.exp(-nu * math.log(time_s / spec.t0_s))
    total = drifted.sum()
    if spec.compensation == "global" and total != 0:  # 0: every cell at 0 S, nothing to read
        drifted = drifted * (physical.sum() / total)
    return (drifted - g_min).to(cells.dtype)
