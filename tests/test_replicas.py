"""Pipeline copies are chips too (issue 9, item 4): each copy of a replicated layer is programmed
with its own cells and noise, and output position m of each sample is computed on copy
m % replication (docs/layout.md, 3.7). Checked against a reference built from torch's own conv
with each copy's weights, not from the emulator's dispatch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neftc.driver.compiler import CompileSettings, compile_module
from neftc.format.reader import load_layout
from neftc.runtime import Emulator
from neftc.runtime.periphery import InputQuant
from neftc.targets import resolve_target

# 2 cores x 4 arrays: the two convs (1 tile each) get 1 and 2 copies in the 5 free arrays.
SMALL_CHIP = ["chip.cores=2", "chip.arrays_per_core=4"]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 10)).eval()


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    target = resolve_target("fefet_128x128", SMALL_CHIP)
    x = torch.randn(1, 3, 6, 6)
    compile_module(_model(), x, target, root / "copies")
    compile_module(_model(), x, target, root / "single",
                   settings=CompileSettings.with_options(replicate=False))
    return root / "copies", root / "single"


def test_the_layout_has_copies(layouts) -> None:
    copies = load_layout(layouts[0])
    assert [layer.replication for layer in copies.doc.layers] == [2, 3, 1]
    assert all(layer.replication == 1 for layer in load_layout(layouts[1]).doc.layers)


@pytest.mark.parametrize("ideal", [True, False])
def test_noise_off_results_do_not_change(layouts, ideal) -> None:
    x = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    outs = []
    for path in layouts:
        emulator = Emulator(path, sigma=0.0, ideal_periphery=ideal)
        if not ideal:
            emulator.calibrate(x)
        outs.append(emulator(x))
    # Identical copies of identical levels: the same arithmetic on each position.
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-6)


def test_each_copy_has_its_own_noise(layouts) -> None:
    emulator = Emulator(layouts[0], sigma=0.2, seed=3, ideal_periphery=True)
    emulator.program_chip(0)
    first, second = emulator.effective_weights(0), emulator.effective_weights(1)
    assert set(second) == {"0", "2"}  # the layers that have a second copy
    ideal = torch.from_numpy(emulator.layout.weights("2"))
    dev = [(w["2"] - ideal).flatten() for w in (first, second)]
    assert not torch.equal(dev[0], dev[1])
    # Independent draws: correlation of the two copies' noise near 0 (576 weights: |r| < 0.2
    # is > 4.5 standard errors), each with the same std as copy 0 within 20 %.
    r = torch.corrcoef(torch.stack(dev))[0, 1]
    assert abs(float(r)) < 0.2
    assert 0.8 < float(dev[1].std() / dev[0].std()) < 1.25
    # Copy 0 is the chip it was before copies were programmed: same draw as a layout without
    # replicas (the first copy's random streams are unchanged).
    single = Emulator(layouts[1], sigma=0.2, seed=3, ideal_periphery=True)
    single.program_chip(0)
    torch.testing.assert_close(first["2"], single.effective_weights()["2"])


def _conv_by_position(x: torch.Tensor, weights: list[torch.Tensor], bias: torch.Tensor,
                      groups: int) -> torch.Tensor:
    """Reference: the conv with every copy's weights; position m taken from copy m % copies."""
    outs = [F.conv2d(x, w, bias, padding=1, groups=groups) for w in weights]
    _n, _c, h, w = outs[0].shape
    owner = torch.arange(h * w).reshape(h, w) % len(weights)
    out = torch.zeros_like(outs[0])
    for copy, o in enumerate(outs):
        out += o * (owner == copy)
    return out


def test_each_position_runs_on_its_copy(layouts) -> None:
    emulator = Emulator(layouts[0], sigma=0.2, seed=5, ideal_periphery=True)
    emulator.program_chip(2)
    layer = emulator.layers["2"]
    x = torch.randn(4, 8, 6, 6, generator=torch.Generator().manual_seed(2))
    weights = [emulator.effective_weights(copy)["2"] for copy in range(3)]
    expected = _conv_by_position(x, weights, layer.bias, groups=2)
    # Float32 convs vs matmuls of 36 terms: 1e-5.
    torch.testing.assert_close(layer(x, emulator.chip), expected, rtol=1e-5, atol=1e-5)


def test_forward_chips_equals_one_chip_at_a_time(layouts) -> None:
    emulator = Emulator(layouts[0], sigma=0.2, seed=5, ideal_periphery=True)
    x = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    stacked = emulator.forward_chips([2, 4], x)
    for chip, out in zip([2, 4], stacked):
        emulator.program_chip(chip)
        torch.testing.assert_close(out, emulator(x), rtol=1e-5, atol=1e-5)


def test_dac_adc_path_runs_each_copy_on_its_cells(layouts) -> None:
    """The DAC/ADC path reads each copy's own cells. A 16-bit ADC resolves every tile's sum
    at one level unit per code, so the path folds (no rounding of the noise) and must equal the
    ideal conv of each copy's weights on the DAC's integers."""
    target = resolve_target("fefet_128x128", [*SMALL_CHIP, "periphery.adc_bits=16"])
    path = layouts[0].parent / "exact-adc"
    compile_module(_model(), torch.randn(1, 3, 6, 6), target, path)
    ideal = Emulator(path, sigma=0.2, seed=7, ideal_periphery=True)
    adc = Emulator(path, sigma=0.2, seed=7, ideal_periphery=False)
    quant = InputQuant(scale=1 / 64, signed=True, bits=8)
    adc.set_input_quant({name: quant for name in adc.layers})
    ideal.program_chip(1)
    adc.program_chip(1)
    x = torch.randint(-127, 128, (4, 8, 6, 6), generator=torch.Generator().manual_seed(3)) / 64
    weights = [ideal.effective_weights(copy)["2"] for copy in range(3)]
    expected = _conv_by_position(x, weights, adc.layers["2"].bias, groups=2)
    # Float32 matmul of DAC integers with folded conductances vs torch's conv: 1e-4.
    torch.testing.assert_close(adc.layers["2"](x, adc.chip), expected, rtol=1e-4, atol=1e-4)
