"""Issue 16, the programming-time cell effects (write-verify, clip, drift): their statistics over
many cells against numpy references written from the formulas of docs/emulator.md ("Device
effects"), the order and determinism of the draws, every effect off bit-identical, accuracy
against drift time, what training sees (the per-weight moments) and the programming energy."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from neftc.driver.compiler import compile_module
from neftc.errors import NeftcError
from neftc.flow.programming import program_layout
from neftc.format.reader import load_layout
from neftc.runtime.emulator import Emulator
from neftc.runtime.variation import program_cells
from neftc.targets import resolve_target

SIGMA = 0.1
T_INFERENCE = 1e6


def _normal_cdf(x: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(x) / math.sqrt(2.0)))


def _compile(root: Path, overrides: list[str]) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)).eval()
    compile_module(model, torch.randn(1, 64, generator=torch.Generator().manual_seed(1)),
                   resolve_target("fefet_128x128", overrides), root)
    return root


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return _compile(tmp_path_factory.mktemp("cells") / "plain", [])


def _cells(emulator: Emulator, chips: int, name: str = "0") -> tuple[np.ndarray, np.ndarray]:
    """The programmed cells of layer ``name`` over ``chips`` chips, and their levels."""
    levels = emulator.layers[name].levels.numpy()
    cells = [emulator.cell_conductances()[name].numpy() for _ in emulator.chips(chips)]
    return np.stack(cells), np.broadcast_to(levels, (chips, *levels.shape))


def _cell_std(levels: np.ndarray, sigma: float, s: float, n_levels: int) -> np.ndarray:
    """The device model's programming std in level units (docs/emulator.md)."""
    k = np.where((levels == 0) | (levels == n_levels - 1), 1.0, s) / math.sqrt(0.4 * s * s + 0.6)
    return (n_levels - 1) * sigma * k


def test_write_verify_residual_and_pulses(tmp_path) -> None:
    pulses = 3
    root = _compile(tmp_path / "wv", [f"effects.write_verify.max_pulses={pulses}"])
    layout = load_layout(root)
    # the tolerance is the one `neftc program` writes to the programming manifest
    program_layout(layout, tmp_path / "program", ("npz",))
    manifest = json.loads((tmp_path / "program" / "manifest.json").read_text())
    cell = layout.doc.target.cell
    n_levels = cell.levels
    tol = manifest["write_verify_tolerance_us"] / (cell.g_max_us - cell.g_min_us) * (n_levels - 1)
    emulator = Emulator(layout, sigma=SIGMA, seed=4, ideal_periphery=True)
    cells, levels = _cells(emulator, 6)
    e = cells - levels
    s = layout.doc.target.noise.state_ratio
    for extreme in (True, False):
        mask = ((levels == 0) | (levels == n_levels - 1)) == extreme
        std = float(_cell_std(levels[mask][:1], SIGMA, s, n_levels)[0])
        p = 2 * float(_normal_cdf(tol / std)) - 1
        within = 1 - (1 - p) ** pulses
        a = tol / std
        phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
        var_in, var_out = std**2 * (1 - 2 * a * phi / p), std**2 * (1 + 2 * a * phi / (1 - p))
        residual = math.sqrt(within * var_in + (1 - p) ** pulses * var_out)
        assert mask.sum() > 20_000
        assert abs(float((np.abs(e[mask]) <= tol).mean()) - within) < 0.01
        assert float(e[mask].std()) == pytest.approx(residual, rel=0.03)
    # the pulses each cell took: mean (1 - (1-p)^N) / p per level class, 1 .. N
    chip = emulator.chip
    folded = {name: state.folded for name, state in chip.layers.items()}
    _, counts = program_cells(emulator.layers, emulator.variation, chip.seed, chip.index, folded, 0)
    assert set(counts) == set(emulator.layers)
    count = counts["0"].numpy()
    assert count.min() == 1 and count.max() == pulses
    mid = (levels[0] > 0) & (levels[0] < n_levels - 1)
    std = float(_cell_std(np.array([1]), SIGMA, s, n_levels)[0])
    p = 2 * float(_normal_cdf(tol / std)) - 1
    assert float(count[mid].mean()) == pytest.approx((1 - (1 - p) ** pulses) / p, rel=0.03)


def test_one_pulse_changes_nothing(tmp_path, plain) -> None:
    root = _compile(tmp_path / "wv1", ["effects.write_verify.max_pulses=1"])
    a = Emulator(root, sigma=SIGMA, seed=2, ideal_periphery=True)
    b = Emulator(plain, sigma=SIGMA, seed=2, ideal_periphery=True)
    a.program_chip(3)
    b.program_chip(3)
    for name, cells in a.cell_conductances().items():
        assert torch.equal(cells, b.cell_conductances()[name])


def test_clip_keeps_cells_in_the_window_and_shifts_the_extreme_levels(tmp_path) -> None:
    sigma = 0.3
    root = _compile(tmp_path / "clip", ["effects.clip=true"])
    emulator = Emulator(root, sigma=sigma, seed=1, ideal_periphery=True)
    n_levels = emulator.n_levels
    cells, levels = _cells(emulator, 4)
    assert cells.min() >= 0.0 and cells.max() <= n_levels - 1
    assert (cells == 0).any() and (cells == n_levels - 1).any()
    s = load_layout(root).doc.target.noise.state_ratio
    std = float(_cell_std(np.array([0]), sigma, s, n_levels)[0])
    clipped_mean = std / math.sqrt(2 * math.pi)  # E[max(e, 0)], e ~ N(0, std^2)
    assert float(cells[levels == 0].mean()) == pytest.approx(clipped_mean, rel=0.03)
    top = levels == n_levels - 1
    assert top.sum() > 500
    assert float((n_levels - 1 - cells[top]).mean()) == pytest.approx(clipped_mean, rel=0.1)


def _rectified_moments(mu: float, sd: float) -> tuple[float, float]:
    """Mean and std of max(nu, 0), nu ~ N(mu, sd^2), by numerical integration."""
    x = np.linspace(0.0, mu + 12 * sd, 200_001)
    density = np.exp(-0.5 * ((x - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    m1 = np.trapezoid(x * density, x)
    m2 = np.trapezoid(x * x * density, x)
    return m1, math.sqrt(m2 - m1 * m1)


@pytest.mark.parametrize("compensation", ["none", "global"])
def test_drift_of_each_cell_and_the_global_compensation(tmp_path, compensation) -> None:
    nu, nu_std, t0 = 0.06, 0.04, 10.0
    root = _compile(tmp_path / f"drift-{compensation}",
                    [f"effects.drift.nu={nu}", f"effects.drift.nu_std={nu_std}",
                     f"effects.drift.t0_s={t0}", f"effects.drift.compensation={compensation}"])
    cell = load_layout(root).doc.target.cell
    # no programming variation: each cell is its level, drifted
    emulator = Emulator(root, seed=5, noise="off", ideal_periphery=True,
                        t_inference_s=T_INFERENCE)
    r = cell.g_min_us * (cell.levels - 1) / (cell.g_max_us - cell.g_min_us)
    log_t = math.log(T_INFERENCE / t0)
    ratios = []
    for _ in emulator.chips(3):
        for name, cells in emulator.cell_conductances().items():
            g0 = emulator.layers[name].levels.double().numpy() + r  # programmed, physical / step
            g = cells.double().numpy() + r
            ratios.append(g.sum() / g0.sum())
            if name == "0":
                log_ratio = np.log(g / g0)
    mean, std = _rectified_moments(nu, nu_std)
    if compensation == "none":
        assert float(log_ratio.mean()) == pytest.approx(-log_t * mean, rel=0.01)
        x = np.linspace(0, nu + 12 * nu_std, 200_001)  # E[D] of the rectified normal
        density = np.exp(-0.5 * ((x - nu) / nu_std) ** 2) / (nu_std * math.sqrt(2 * math.pi))
        expected = _normal_cdf(-nu / nu_std) + np.trapezoid(np.exp(-log_t * x) * density, x)
        assert np.mean(ratios) == pytest.approx(float(expected), rel=0.01)
    else:  # every layer's calibration read gives back the programmed total
        assert np.allclose(ratios, 1.0, rtol=1e-6)
    assert float(log_ratio.std()) == pytest.approx(log_t * std, rel=0.02)


def test_same_chip_on_every_path_and_run(tmp_path) -> None:
    root = _compile(tmp_path / "all", ["effects.clip=true", "effects.write_verify.max_pulses=4",
                                       "effects.drift.nu=0.05", "effects.drift.nu_std=0.02"])
    x = torch.rand(8, 64, generator=torch.Generator().manual_seed(0))
    runs = [Emulator(root, sigma=0.2, seed=9, ideal_periphery=ideal, t_inference_s=T_INFERENCE)
            for ideal in (True, True, False)]
    chips = [emulator.instance(2) for emulator in runs]
    for name in runs[0].layers:
        first = chips[0].layers[name]
        assert first.conductances is not None
        for other in chips[1:]:
            assert other.layers[name].conductances is not None
            assert torch.equal(first.conductances[0], other.layers[name].conductances[0])
        # the ideal path's weights are the folded cells, and cell_conductances gives the same
        assert torch.equal(first.weights[0], runs[0].layers[name].weight_of(first.conductances[0]))
        runs[0].program_chip(2)
        assert torch.equal(runs[0].cell_conductances()[name], first.conductances[0])
    assert torch.equal(runs[0](x, chips[0]), runs[1](x, chips[1]))


def test_every_effect_off_is_bit_identical(tmp_path, plain) -> None:
    root = _compile(tmp_path / "on", ["effects.clip=true", "effects.write_verify.max_pulses=4",
                                      "effects.drift.nu=0.05", "effects.wire.r_segment_ohm=1"])
    x = torch.rand(8, 64, generator=torch.Generator().manual_seed(0))
    for ideal_periphery in (True, False):
        a = Emulator(root, sigma=0.2, seed=3, ideal_periphery=ideal_periphery,
                     ideal_effects=("all",), t_inference_s=T_INFERENCE)
        b = Emulator(plain, sigma=0.2, seed=3, ideal_periphery=ideal_periphery)
        for emulator in (a, b):
            emulator.program_chip(1)
        for name, weight in a.effective_weights().items():
            assert torch.equal(weight, b.effective_weights()[name])
        for name, cells in a.cell_conductances().items():
            assert torch.equal(cells, b.cell_conductances()[name])
        if ideal_periphery:
            assert torch.equal(a(x), b(x))


def test_noise_off_with_effects_is_the_levels_plus_the_effects(tmp_path) -> None:
    root = _compile(tmp_path / "clip-wv", ["effects.clip=true",
                                           "effects.write_verify.max_pulses=4"])
    emulator = Emulator(root, sigma=0.3, noise="off", ideal_periphery=True)
    assert emulator.noise.active
    emulator.program_chip(0)
    for name, cells in emulator.cell_conductances().items():
        assert torch.equal(cells, emulator.layers[name].levels)
        assert torch.equal(emulator.effective_weights()[name], emulator.layers[name].ideal_weight)


def test_paper_mode_with_a_cell_effect_is_refused(tmp_path) -> None:
    root = _compile(tmp_path / "paper", ["effects.clip=true"])
    with pytest.raises(NeftcError, match="--ideal clip"):
        Emulator(root, sigma=0.1, noise="paper", ideal_periphery=True)
    Emulator(root, sigma=0.1, noise="paper", ideal_periphery=True, ideal_effects=("clip",))


def test_accuracy_falls_with_drift_time(trained_lenet, tmp_path) -> None:
    """The trained LeNet with drift (nu 0.1 +- 0.05, global compensation) read at growing times
    after programming (from t0, no drift): the mean accuracy over 4 chips falls at each step by
    more than 1 point."""
    data, model = trained_lenet.data, trained_lenet.model()
    target = resolve_target("fefet_128x128", ["effects.drift.nu=0.1", "effects.drift.nu_std=0.05"])
    compile_module(model, data.test.x[:1], target, tmp_path / "lenet")
    x, y = data.test.x, data.test.y
    accuracies = []
    for t in (1.0, 1e2, 1e4, 1e6):
        emulator = Emulator(tmp_path / "lenet", sigma=0.05, seed=0, ideal_periphery=True,
                            t_inference_s=t)
        correct = [float((emulator(x).argmax(-1) == y).float().mean())
                   for _ in emulator.chips(4)]
        accuracies.append(float(np.mean(correct)))
    assert all(a > b + 0.01 for a, b in itertools.pairwise(accuracies)), accuracies


def test_training_noise_has_the_emulators_per_weight_moments(tmp_path) -> None:
    """The per-weight mean shift and std that NeFT training adds (``DeviceNoise``) equal the
    emulator's over 400 chips with write-verify, clip and compensated drift on: the mean over
    the weights of the z-score of each weight's mean shift is within 0.2 of 0 and of its
    square within 0.25 of 1, and the summed variance within 3 %."""
    from neftc.neft.modules import DeviceNoise

    sigma, chips, t = 0.15, 400, 1e6
    overrides = ["effects.write_verify.max_pulses=3", "effects.clip=true",
                 "effects.drift.nu=0.05", "effects.drift.nu_std=0.03"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 16)).eval()
    target = resolve_target("fefet_128x128", overrides)
    compile_module(model, torch.randn(1, 64), target, tmp_path / "one")
    emulator = Emulator(tmp_path / "one", sigma=sigma, seed=0, ideal_periphery=True,
                        t_inference_s=t)
    ideal = emulator.layers["0"].ideal_weight.double()
    weights = torch.stack([emulator.effective_weights()["0"].double()
                           for _ in emulator.chips(chips)]) - ideal
    noise = DeviceNoise.of(target, t_inference_s=t)
    assert noise.cell_effects
    q, scales = noise.quantize(model[0].weight)
    torch.testing.assert_close((q * scales).t().float(), ideal.float())  # the same weights
    shift, std = (x.double() for x in noise.weight_noise(model[0].weight, sigma))
    assert float(shift.abs().max()) > 0.05 * float(std.mean())  # clip shifts the weights
    z = (weights.mean(0) - shift) / (std / math.sqrt(chips))
    assert abs(float(z.mean())) < 0.2 and abs(float((z * z).mean()) - 1) < 0.25
    assert float(weights.var(0).sum() / (std**2).sum()) == pytest.approx(1.0, rel=0.03)
    # effects off: the shift is 0 and the std is the plain cell-level one
    plain = DeviceNoise.of(resolve_target("fefet_128x128"))
    shift0, std0 = plain.weight_noise(model[0].weight, sigma)
    assert not bool(shift0.any())
    assert torch.equal(std0, plain.weight_std(model[0].weight, sigma))


def test_ir_drop_acts_last_on_the_programmed_cells(tmp_path) -> None:
    """With wire resistance, the cells are ``ir_drop_cells`` of the cells the other effects
    made (the same chip without wires)."""
    from neftc.runtime.ir_drop import ir_drop_cells

    common = ["effects.clip=true", "effects.write_verify.max_pulses=2"]
    wired = Emulator(_compile(tmp_path / "wired", [*common, "effects.wire.r_segment_ohm=2"]),
                     sigma=0.1, seed=6, ideal_periphery=True)
    bare = Emulator(_compile(tmp_path / "bare", common), sigma=0.1, seed=6, ideal_periphery=True)
    wired.program_chip(1)
    bare.program_chip(1)
    cell = wired.layout.doc.target.cell
    for name, cells in bare.cell_conductances().items():
        expected = ir_drop_cells(cells, bare.layers[name], cell, 2.0,
                                 array_rows=bare.layout.doc.target.array.rows)
        assert not torch.equal(expected, cells)
        assert torch.equal(wired.cell_conductances()[name], expected)


def test_programming_energy_counts_the_expected_pulses(tmp_path, plain) -> None:
    from neftc.flow.cost import cost_estimate

    pulses = 5
    doc = load_layout(_compile(tmp_path / "wv5", [f"effects.write_verify.max_pulses={pulses}"])).doc
    target = doc.target
    n_levels, s = target.cell.levels, target.noise.state_ratio
    std = float(_cell_std(np.array([1]), target.noise.sigma_rel, s, n_levels)[0])
    tol = (n_levels - 1) * target.cell.write_verify_tolerance_rel
    p = 2 * float(_normal_cdf(tol / std)) - 1
    expected = (1 - (1 - p) ** pulses) / p
    programming = cost_estimate(doc).programming
    assert programming.pulses_per_cell == pytest.approx(expected, rel=1e-9) and expected > 1.5
    assert programming.energy_pj == pytest.approx(
        programming.cells * expected * target.cost.cell_write_energy_pj, rel=1e-12)
    # without write-verify one pulse per cell: the energy of before
    off = cost_estimate(load_layout(plain).doc).programming
    assert off.pulses_per_cell == 1.0
    assert off.energy_pj == off.cells * target.cost.cell_write_energy_pj


def test_the_scalar_cell_model_is_the_tensor_one() -> None:
    from neftc.targets.cell_model import level_std
    from neftc.targets.device_model import cell_std_levels

    for n_levels, s in ((2, 1.0), (4, 6.0), (16, 3.5)):
        stds = cell_std_levels(torch.arange(n_levels), n_levels, 0.13, s)
        assert [level_std(level, n_levels, 0.13, s) for level in range(n_levels)] == \
            pytest.approx(stds.tolist(), rel=1e-6)


def test_clip_and_drift_keep_their_tensors_on_the_emulators_device(monkeypatch, tmp_path) -> None:
    """On the meta device (shapes only) an op that mixes in a CPU tensor raises: the cell
    effects' draws are made on the CPU and moved (write-verify and the compensation read data,
    which meta tensors have not: they are checked on CUDA below, where present)."""
    import neftc.runtime.emulator as emulator_module

    monkeypatch.setattr(emulator_module, "resolve_device", torch.device)
    root = _compile(tmp_path / "meta", ["effects.clip=true", "effects.drift.nu=0.05",
                                        "effects.drift.compensation=none"])
    emulator = Emulator(root, sigma=0.1, ideal_periphery=True, device="meta",
                        t_inference_s=T_INFERENCE)
    emulator.program_chip(3)
    assert emulator(torch.randn(4, 64)).device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cell_effects_are_the_same_chip_on_cuda(tmp_path) -> None:
    from neftc.neft.modules import DeviceNoise

    overrides = ["effects.clip=true", "effects.write_verify.max_pulses=4",
                 "effects.drift.nu=0.05", "effects.drift.nu_std=0.02"]
    root = _compile(tmp_path / "cuda", overrides)
    cells = []
    for device in ("cpu", "cuda"):
        emulator = Emulator(root, sigma=0.2, seed=1, ideal_periphery=True, device=device,
                            t_inference_s=T_INFERENCE)
        emulator.program_chip(2)
        cells.append({name: c.cpu() for name, c in emulator.cell_conductances().items()})
    for name, c in cells[0].items():
        torch.testing.assert_close(cells[1][name], c, rtol=1e-5, atol=1e-5)
    noise = DeviceNoise.of(resolve_target("fefet_128x128", overrides),
                           t_inference_s=T_INFERENCE)
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    on_cpu = noise.weight_noise(weight, 0.2)
    on_gpu = noise.weight_noise(weight.cuda(), 0.2)
    for a, b in zip(on_cpu, on_gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a)
