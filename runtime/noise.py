"""What one chip instance's variation looks like (the emulator's noise settings). The variation
model itself (cell std per level, its per-weight fold, the paper formula) is defined once in
``neftc.targets.device_model``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NoiseMode = Literal["cell", "paper", "off"]


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
