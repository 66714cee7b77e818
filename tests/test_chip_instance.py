"""A chip instance is a value (issue 11, item 3): frozen, passed to a stateless forward, and
calibration or Monte Carlo build the chips they need and drop them."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from neftc.driver.compiler import compile_module
from neftc.runtime import Emulator
from neftc.runtime.montecarlo import monte_carlo
from neftc.targets import resolve_target

# Grouped conv, pipeline copies (2 cores x 4 arrays leave free arrays) and stuck-at faults.
TARGET = ["chip.cores=2", "chip.arrays_per_core=4", "faults.stuck_at_min_rate=0.01"]


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 10)).eval()
    out = tmp_path_factory.mktemp("chip") / "layout"
    compile_module(model, torch.randn(1, 3, 6, 6), resolve_target("fefet_128x128", TARGET), out)
    return out


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def _emulator(layout, ideal: bool, x: torch.Tensor) -> Emulator:
    emulator = Emulator(layout, sigma=0.2, seed=3, ideal_periphery=ideal, adc_shortcut=False)
    if not ideal:
        emulator.calibrate(x)
    return emulator


def test_a_chip_instance_is_immutable(layout) -> None:
    emulator = _emulator(layout, False, _x())
    chip = emulator.instance(2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        chip.index = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        chip.layers["0"] = chip.layers["2"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        chip.periphery.shortcut = True  # type: ignore[misc]
    assert chip.periphery.dac is not None
    with pytest.raises(TypeError):
        chip.periphery.dac["0"] = chip.periphery.dac["2"]  # type: ignore[index]
    # Every copy of every layer carries its own cells (the DAC/ADC path needs them).
    assert all(state.conductances is not None and len(state.conductances) == layer.copies
               for (name, state), layer in zip(chip.layers.items(), emulator.layers.values()))


@pytest.mark.parametrize("ideal", [True, False])
def test_interleaved_chips_equal_each_chip_alone(layout, ideal) -> None:
    """No hidden state: forwards of two chip values in turn give, bit for bit, what an emulator
    holding only that chip gives."""
    x = _x()
    alone = {}
    for index in (1, 2):
        emulator = _emulator(layout, ideal, x)
        emulator.program_chip(index)
        alone[index] = emulator(x)
    assert not torch.equal(alone[1], alone[2])  # two chips, two results: the test can fail
    shared = _emulator(layout, ideal, x)
    chips = {index: shared.instance(index) for index in (1, 2)}
    for index in (1, 2, 2, 1, 2):
        assert torch.equal(shared(x, chips[index]), alone[index])
    # The layer modules too: called with each chip in turn, each gives its own outputs.
    layer, h = shared.layers["2"], torch.randn(2, 8, 6, 6, generator=torch.Generator()
                                                .manual_seed(5))
    first = layer(h, chips[1])
    layer(h, chips[2])
    assert torch.equal(layer(h, chips[1]), first)


@pytest.mark.parametrize("ideal", [True, False])
def test_calibration_leaves_the_chip_unchanged(layout, ideal) -> None:
    """Calibrating after programming a chip gives that chip, exactly, with the new DAC ranges:
    the same cells, weights and outputs as an emulator that never calibrated and was handed the
    same ranges."""
    x = _x()
    calibrated = Emulator(layout, sigma=0.2, seed=3, ideal_periphery=ideal, adc_shortcut=False)
    calibrated.program_chip(4)
    chip = calibrated.chip
    settings = calibrated.calibrate(x)
    never = Emulator(layout, sigma=0.2, seed=3, ideal_periphery=ideal, adc_shortcut=False)
    never.set_input_quant(settings)
    never.program_chip(4)
    for name, state in calibrated.chip.layers.items():
        assert state is chip.layers[name]  # the very same cells, not a restored copy
        for copy, weight in enumerate(state.weights):
            assert torch.equal(weight, never.chip.layers[name].weights[copy])
    assert torch.equal(calibrated(x), never(x))


def test_monte_carlo_and_forward_chips_leave_the_chip(layout) -> None:
    x, y = _x(), torch.arange(8) % 10
    emulator = _emulator(layout, True, x)
    emulator.program_chip(6)
    chip, out = emulator.chip, emulator(x)
    monte_carlo(emulator, x, y, 3, chips_per_pass=2)
    emulator.forward_chips([1, 2], x)
    assert emulator.chip is chip and torch.equal(emulator(x), out)
