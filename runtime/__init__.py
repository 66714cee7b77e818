"""The noisy runtime emulator (DESIGN.md section 7). It reads only a layout directory.
Runtime layer. May import: the base modules, ``format`` and ``targets`` (tests/test_layers.py).

``neftc.runtime.Emulator(layout, sigma=..., seed=..., noise="cell", ideal_periphery=False)``;
``neftc.runtime.monte_carlo(emulator, x, y, trials)``; a chip instance is a frozen value,
``ChipInstance`` (``Emulator.instance(i)``, ``Emulator.forward(x, chip)``), with its
``Periphery`` (DAC ranges, ``InputQuant``, and ADC). Imported lazily: ``import neftc.runtime``
does no work.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ChipInstance", "Emulator", "InputQuant", "NoiseModel", "Periphery", "monte_carlo",
           "summarize"]


def __getattr__(name: str) -> Any:
    if name == "Emulator":
        from neftc.runtime.emulator import Emulator

        return Emulator
    if name in ("monte_carlo", "summarize"):
        from neftc.runtime import montecarlo

        return getattr(montecarlo, name)
    if name == "NoiseModel":
        from neftc.runtime.noise import NoiseModel

        return NoiseModel
    if name == "ChipInstance":
        from neftc.runtime.chip import ChipInstance

        return ChipInstance
    if name in ("InputQuant", "Periphery"):
        from neftc.runtime import periphery

        return getattr(periphery, name)
    raise AttributeError(f"module 'neftc.runtime' has no attribute '{name}'")
