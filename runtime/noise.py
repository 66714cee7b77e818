"""What one chip instance's variation looks like (the emulator's noise settings). The variation
model itself (cell std per level, its per-weight fold, the paper formula) is defined once in
``neftc.targets.device_model``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from neftc.runtime.effects import Effects

NoiseMode = Literal["cell", "paper", "off"]


@dataclass(frozen=True)
class NoiseModel:
    """What one chip instance's variation looks like."""

    sigma: float
    state_ratio: float
    mode: NoiseMode = "cell"
    stuck_at_min_rate: float = 0.0
    stuck_at_max_rate: float = 0.0
    effects: Effects = field(default_factory=Effects)  # besides programming variation

    @property
    def active(self) -> bool:
        """True when a chip instance differs from the ideal chip at programming time."""
        return (self.mode != "off" and (self.sigma > 0 or self.has_faults)) or \
            self.effects.cell_level

    @property
    def has_faults(self) -> bool:
        return self.stuck_at_min_rate > 0 or self.stuck_at_max_rate > 0
