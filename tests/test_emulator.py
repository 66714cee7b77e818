"""The emulator: exactness, device-noise statistics, seeds, faults and the DAC/ADC path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from neftc.driver.compiler import compile_module
from neftc.format.reader import load_layout
from neftc.runtime.emulator import Emulator
from neftc.runtime.periphery import InputQuant
from neftc.targets import resolve_target
from neftc.targets.device_model import normalisation


@pytest.fixture
def cnn_layout(tmp_path, residual_cnn, cnn_input, fefet):
    result = compile_module(residual_cnn, cnn_input, fefet, tmp_path / "cnn")
    return result, load_layout(tmp_path / "cnn")


def mlp_layout(tmp_path, target_tag: str, overrides=(), per_channel=False):
    from neftc.driver.compiler import CompileSettings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)).eval()
    target = resolve_target(target_tag, list(overrides))
    out = tmp_path / f"mlp-{target_tag}"
    compile_module(model, torch.randn(1, 64), target, out,
                   settings=CompileSettings.with_options(per_channel=per_channel))
    return load_layout(out)


def test_noise_off_ideal_periphery_equals_fake_quant_model(cnn_layout, cnn_input) -> None:
    result, layout = cnn_layout
    emulator = Emulator(layout, sigma=0.0, ideal_periphery=True)
    emulator.program_ideal()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    # Same float32 weights (integers below 2^24 times the same scales) and the same ATen ops in
    # the same order: the outputs agree to float32 rounding of reordered accumulation at most.
    torch.testing.assert_close(emulator(x), result.gm(x), rtol=1e-6, atol=1e-6)


def test_effective_weights_without_noise_are_the_layout_weights(cnn_layout) -> None:
    _, layout = cnn_layout
    emulator = Emulator(layout, sigma=0.0, ideal_periphery=True)
    emulator.program_chip(0)
    for name, weight in emulator.effective_weights().items():
        assert np.array_equal(weight.numpy(), layout.weights(name))


def _weight_errors(layout, emulator: Emulator, name: str, chips: int) -> np.ndarray:
    ideal = layout.weights(name)
    errors = []
    for _ in emulator.chips(chips):
        errors.append(emulator.effective_weights()[name].numpy() - ideal)
    return np.stack(errors)


def test_paper_mode_rram1_std_matches_reference_formula(tmp_path) -> None:
    layout = mlp_layout(tmp_path, "rram1_128x128")
    sigma = 0.2
    emulator = Emulator(layout, sigma=sigma, noise="paper", seed=1, ideal_periphery=True)
    errors = _weight_errors(layout, emulator, "0", 300)
    max_w = np.abs(layout.weights("0")).max()
    predicted = 0.7776 * sigma * max_w  # s = 1: sigma' = sigma
    # 300 chips x 3072 weights: the std estimate is far tighter than the 3 % required.
    assert abs(errors.std() / predicted - 1) < 0.03


def test_paper_mode_fefet6_state_dependent_split(tmp_path) -> None:
    layout = mlp_layout(tmp_path, "fefet6_128x128")
    sigma, s = 0.1, 6.0
    emulator = Emulator(layout, sigma=sigma, noise="paper", seed=2, ideal_periphery=True)
    errors = _weight_errors(layout, emulator, "0", 300)
    weights = layout.weights("0")
    max_w = np.abs(weights).max()
    ratio = np.abs(weights) / max_w
    mid = (ratio > 0.25) & (ratio < 0.75)
    base = 0.7776 * sigma / normalisation(s) * max_w
    assert mid.any() and (~mid).any()
    assert abs(errors[:, mid].std() / (s * base) - 1) < 0.03
    assert abs(errors[:, ~mid].std() / base - 1) < 0.03


@pytest.mark.parametrize("tag,encoding", [("rram1_128x128", "differential"),
                                          ("fefet6_128x128", "differential"),
                                          ("rram4_128x128", "offset")])
def test_cell_mode_std_matches_device_model(tmp_path, tag, encoding) -> None:
    layout = mlp_layout(tmp_path, tag, [f"weight.sign_encoding={encoding}"], per_channel=True)
    sigma = 0.15
    spec = layout.doc.target
    emulator = Emulator(layout, sigma=sigma, seed=3, ideal_periphery=True)
    errors = _weight_errors(layout, emulator, "0", 300)
    # Predicted per-weight variance from the weight's own cells: sum over polarities and slices
    # of (L^s (L-1) sigma k(l))^2, times scale^2.
    n_levels = 2**spec.cell.bits
    levels = layout.levels("0").astype(np.float64)  # [P, S, R, C]
    extreme = (levels == 0) | (levels == n_levels - 1)
    k = np.where(extreme, 1.0, spec.noise.state_ratio) / normalisation(spec.noise.state_ratio)
    slice_w = (n_levels ** np.arange(levels.shape[1]))[None, :, None, None]
    var_q = ((slice_w * (n_levels - 1) * sigma * k) ** 2).sum(axis=(0, 1))  # [R, C]
    var_w = (var_q * layout.scales("0")[None, :] ** 2).T  # weight layout [C, R]
    empirical = errors.var(axis=0)
    # Pooled over 3072 weights x 300 chips: within 3 % of the model's variance (std: 1.5 %).
    assert abs(math.sqrt(empirical.mean() / var_w.mean()) - 1) < 0.03
    # And per weight, the ratio scatters around 1 (each estimate from 300 chips).
    assert abs(np.median(empirical / var_w) - 1) < 0.05


def test_cells_are_independent_with_the_device_models_std(tmp_path) -> None:
    """The cells drawn given each weight's folded noise are distributed as independent per-cell
    draws: each cell's std is sigma k(level) (L-1), and cells of one weight are uncorrelated."""
    layout = mlp_layout(tmp_path, "fefet6_128x128")
    spec = layout.doc.target
    sigma, n_levels, s = 0.15, 2**spec.cell.bits, spec.noise.state_ratio
    emulator = Emulator(layout, sigma=sigma, seed=11, faults=False, ideal_periphery=True)
    levels = torch.from_numpy(layout.levels("0").astype(np.float32))  # [P, S, R, C]
    extreme = (levels == 0) | (levels == n_levels - 1)
    std = (n_levels - 1) * sigma * torch.where(extreme, 1.0, s) / normalisation(s)
    normalised = []
    for _ in emulator.chips(300):
        normalised.append((emulator.cell_conductances()["0"] - levels) / std)
    z = torch.stack(normalised).double()  # [chips, P, S, R, C], N(0, 1) per cell if exact
    # 300 chips x 24576 cells per class pooled: the std estimate is within 0.5 % (3 sigma).
    for mask in (extreme, ~extreme):
        assert mask.any()
        assert abs(float(z[:, mask].std()) - 1) < 0.01
    # Correlation of two cells of the same weight (slice 0 vs 3, positive vs negative polarity):
    # 921600 pairs, standard error 0.001.
    assert abs(float((z[:, 0, 0] * z[:, 0, 3]).mean())) < 0.006
    assert abs(float((z[:, 0, 1] * z[:, 1, 1]).mean())) < 0.006


@pytest.mark.parametrize("encoding", ["differential", "offset"])
def test_both_periphery_paths_program_the_same_cells(tmp_path, encoding) -> None:
    layout = mlp_layout(tmp_path, "rram4_128x128", [f"weight.sign_encoding={encoding}"])
    ideal = Emulator(layout, sigma=0.2, seed=5, ideal_periphery=True)
    adc = Emulator(layout, sigma=0.2, seed=5, ideal_periphery=False)
    ideal.program_chip(3)
    adc.program_chip(3)
    cells = ideal.cell_conductances()
    for name, layer in adc.layers.items():
        assert torch.equal(cells[name], adc.chip.layers[name].conductances[0])
        assert not torch.equal(cells[name], layer.levels)
        # The cells fold back to the ideal path's weight: float32 sums of 4-8 terms.
        torch.testing.assert_close(adc.effective_weights()[name],
                                   ideal.effective_weights()[name], rtol=1e-5, atol=1e-6)


def test_paper_mode_needs_ideal_periphery(tmp_path) -> None:
    from neftc.errors import NeftcError

    layout = mlp_layout(tmp_path, "rram1_128x128")
    with pytest.raises(NeftcError, match="--ideal-periphery"):
        Emulator(layout, sigma=0.1, noise="paper", ideal_periphery=False)


def test_same_seed_same_chip_different_seed_different_chip(cnn_layout) -> None:
    _, layout = cnn_layout
    a, b, c = (Emulator(layout, sigma=0.1, seed=seed, ideal_periphery=True) for seed in (5, 5, 6))
    a.program_chip(7)
    b.program_chip(7)
    c.program_chip(7)
    wa, wb, wc = (e.effective_weights()["block.0"] for e in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)
    a.program_chip(8)
    assert not torch.equal(a.effective_weights()["block.0"], wb)


def test_stuck_at_faults(tmp_path) -> None:
    layout = mlp_layout(tmp_path, "rram1_128x128",
                        ["faults.stuck_at_min_rate=0.1", "faults.stuck_at_max_rate=0.05"])
    emulator = Emulator(layout, sigma=0.05, seed=0, ideal_periphery=True)
    emulator.program_chip(0)
    conductance = emulator.cell_conductances()["0"]
    n = conductance.numel()
    low = float((conductance == 0).sum()) / n
    high = float((conductance == 3).sum()) / n
    # Binomial with n = 24576 cells: 4 sigma is about 0.8 % (low) and 0.6 % (high).
    assert abs(low - 0.1) < 0.01 and abs(high - 0.05) < 0.008
    clean = Emulator(layout, sigma=0.05, seed=0, faults=False, ideal_periphery=False)
    clean.program_chip(0)
    assert float((clean.cell_conductances()["0"] == 0).sum()) == 0


@pytest.mark.parametrize("encoding", ["differential", "offset"])
@pytest.mark.parametrize("signed", [False, True])
def test_bit_serial_path_equals_folded_mvm(tmp_path, encoding, signed) -> None:
    """The per-tile bit-serial path with an ADC that resolves every sum equals the folded
    matmul; 2-bit DAC cycles; 40-row arrays so the layer has two row tiles (40 + 24)."""
    overrides = [f"weight.sign_encoding={encoding}", "periphery.dac_bits_per_cycle=2",
                 "array.rows=40", "periphery.adc_bits=16"]
    layout = mlp_layout(tmp_path, "fefet_128x128", overrides)
    quant = {"0": InputQuant(scale=0.05, signed=signed, bits=8)}
    x = torch.randint(-127 if signed else 0, 128 if signed else 256, (9, 64)).float() * 0.05
    outputs = {}
    for shortcut in (True, False):
        emulator = Emulator(layout, sigma=0.0, ideal_periphery=False, adc_shortcut=shortcut)
        emulator.set_input_quant({name: quant["0"] for name in emulator.layers})
        outputs[shortcut] = emulator(x)
        # 4 cycles of 2 bits, 1 or 2 phases, 4 slices, 1 or 2 polarities (1: folded).
        polarities = emulator.layout.layer("0").slicing.polarities
        assert emulator.partial_mvms_per_weight()["0"] == (
            1 if shortcut else 4 * (2 if signed else 1) * 4 * polarities)
    # Terms up to ~1e6 accumulated in float32 in a different order (planes, slices,
    # polarities vs one folded matmul): agreement to 1e-4 relative. A wrong plane, slice,
    # polarity weight or row range would be off by at least one level unit x scale.
    torch.testing.assert_close(outputs[False], outputs[True], rtol=1e-4, atol=1e-3)
    # A coarse ADC really rounds: the same inputs through 4-bit conversions differ.
    coarse = mlp_layout(tmp_path / "coarse", "fefet_128x128",
                        [*overrides[:-1], "periphery.adc_bits=4"])
    emulator = Emulator(coarse, sigma=0.0, ideal_periphery=False)
    emulator.set_input_quant({name: quant["0"] for name in emulator.layers})
    assert not torch.allclose(emulator(x), outputs[True], atol=1e-2)


def test_target_adc_loses_little_on_a_trained_model(tmp_path, trained_lenet) -> None:
    from neftc.neft.train import accuracy

    data, model = trained_lenet.data, trained_lenet.model()
    compile_module(model, data.test.x[:1], resolve_target("fefet_128x128"), tmp_path / "l")
    ideal = Emulator(tmp_path / "l", sigma=0.0, ideal_periphery=True)
    adc = Emulator(tmp_path / "l", sigma=0.0, ideal_periphery=False)
    adc.calibrate(data.train.x[:512])
    acc_ideal, acc_adc = accuracy(ideal, data.test), accuracy(adc, data.test)
    # 8-bit DAC + 8-bit ADC over 128-row tiles (step 1.5 level units): a small, real loss.
    assert acc_ideal > 0.9 and acc_ideal - acc_adc < 0.03
    assert adc.partial_mvms_per_weight()["features.3"] == 8 * 4 * 2  # cycles x slices x pol


@pytest.mark.parametrize("encoding", ["differential", "offset"])
def test_cell_weight_std_matches_emulator_prediction(tmp_path, encoding) -> None:
    """The training-time Gaussian equivalent uses the same variance as the emulator's cells."""
    from neftc.neft.modules import cell_weight_std

    layout = mlp_layout(tmp_path, "fefet6_128x128", [f"weight.sign_encoding={encoding}"])
    spec = layout.doc.target
    q = torch.from_numpy(layout.integer_matrix("0")).float()
    std = cell_weight_std(q, bits=spec.weight.bits, cell_bits=spec.cell.bits,
                          encoding=encoding, sigma=0.2,
                          state_ratio=spec.noise.state_ratio) * torch.from_numpy(layout.scales("0"))
    n_levels = 2**spec.cell.bits
    levels = layout.levels("0").astype(np.float64)
    extreme = (levels == 0) | (levels == n_levels - 1)
    k = np.where(extreme, 1.0, spec.noise.state_ratio) / normalisation(spec.noise.state_ratio)
    slice_w = (n_levels ** np.arange(levels.shape[1]))[None, :, None, None]
    var_q = ((slice_w * (n_levels - 1) * 0.2 * k) ** 2).sum(axis=(0, 1))
    expected = np.sqrt(var_q) * layout.scales("0")[None, :]
    np.testing.assert_allclose(std.numpy(), expected, rtol=1e-5)


def test_uncertainty_expected_kl() -> None:
    from neftc.runtime.montecarlo import Uncertainty

    same = Uncertainty(5)
    for chip in range(5):
        same.add(chip, torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]))
    assert same.expected_kl() == pytest.approx(0.0, abs=1e-12)  # identical chips: no spread
    # Row 1: softmax([2, 0, -1]) peaks at e^2 / (e^2 + 1 + e^-1); row 2 is uniform (1/3).
    top = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))
    assert same.mean_confidence() == pytest.approx((top + 1 / 3) / 2, rel=1e-6)
    spread = Uncertainty(2)
    a, b = torch.tensor([[5.0, 0.0]]), torch.tensor([[0.0, 5.0]])
    spread.add(0, a)
    spread.add(1, b)
    p = torch.softmax(a.double(), 1)[0]
    mean = torch.tensor([0.5, 0.5], dtype=torch.float64)
    expected = float((p * (p / mean).log()).sum())  # both chips are equally far from the mean
    assert spread.expected_kl() == pytest.approx(expected, rel=1e-9)


def test_several_chips_per_pass_equal_one_by_one(cnn_layout) -> None:
    """Batched chip instances (for accelerators) give each chip's own outputs."""
    _, layout = cnn_layout
    emulator = Emulator(layout, sigma=0.2, seed=9, ideal_periphery=True)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    together = emulator.forward_chips([0, 1, 2], x)
    for chip, out in zip([0, 1, 2], together):
        emulator.program_chip(chip)
        # Grouped conv and bmm vs one conv/matmul per chip: float32 reordering only.
        torch.testing.assert_close(out, emulator(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(together[0], together[1])  # different chips, different outputs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("ideal", [True, False])
def test_cuda_emulator_equals_cpu(cnn_layout, ideal) -> None:
    _, layout = cnn_layout
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    outs = []
    for device in ("cpu", "cuda"):
        emulator = Emulator(layout, sigma=0.1, seed=3, ideal_periphery=ideal, device=device)
        if not ideal:
            emulator.calibrate(x)
        emulator.program_chip(5)
        outs.append(emulator(x).cpu())
        if ideal:
            together = emulator.forward_chips([5, 6], x)
            torch.testing.assert_close(together[0].cpu(), outs[-1], rtol=1e-4, atol=1e-4)
    # The same chip (noise drawn on the CPU); float kernels differ in rounding, and on the ADC
    # path a sum that lands on a rounding edge may take the neighbouring code.
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-3, atol=1e-2 if ideal else 0.1)


@pytest.mark.parametrize("ideal", [True, False])
def test_emulator_keeps_its_tensors_on_its_device(monkeypatch, tmp_path, residual_cnn, cnn_input,
                                                  ideal) -> None:
    """On the meta device (shapes only), an op that mixes in a CPU tensor raises: a CPU-only
    stand-in for an accelerator, for the allocations of every path (noise, faults, ADC)."""
    import neftc.runtime.emulator as emulator_module
    from neftc.runtime.periphery import InputQuant

    monkeypatch.setattr(emulator_module, "resolve_device", torch.device)
    target = resolve_target("fefet_128x128", ["faults.stuck_at_min_rate=0.01"])
    compile_module(residual_cnn, cnn_input, target, tmp_path / "cnn")
    emulator = Emulator(tmp_path / "cnn", sigma=0.1, ideal_periphery=ideal, device="meta")
    if not ideal:
        emulator.set_input_quant({name: InputQuant(0.01, True, 8) for name in emulator.layers})
    emulator.program_chip(3)
    x = torch.randn(4, *cnn_input.shape[1:])
    assert emulator(x).device.type == "meta"
    if ideal:
        assert all(out.device.type == "meta" for out in emulator.forward_chips([1, 2], x))


def test_both_periphery_paths_program_the_same_cells_on_a_cnn(tmp_path) -> None:
    """Conv and grouped-conv weights: the weight layout and the crossbar layout agree."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 10)).eval()
    x = torch.randn(4, 3, 6, 6)
    compile_module(model, x[:1], resolve_target("fefet_128x128"), tmp_path / "g")
    ideal = Emulator(tmp_path / "g", sigma=0.2, seed=8, ideal_periphery=True)
    adc = Emulator(tmp_path / "g", sigma=0.2, seed=8, ideal_periphery=False)
    ideal.program_chip(2)
    adc.program_chip(2)
    cells = ideal.cell_conductances()
    for name in adc.layers:
        assert torch.equal(cells[name], adc.chip.layers[name].conductances[0])
        torch.testing.assert_close(adc.effective_weights()[name],
                                   ideal.effective_weights()[name], rtol=1e-5, atol=1e-6)
    adc.calibrate(x)
    assert torch.isfinite(adc(x)).all()
