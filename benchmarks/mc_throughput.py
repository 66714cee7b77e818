"""Monte-Carlo throughput: the time one chip instance costs, four ways, in the same run.

One Monte-Carlo trial = one chip instance evaluated over the whole test set (top-1 accuracy). For
each model (untrained; timing only) compiled with ``compile_module`` for ``fefet_128x128``
without pipeline copies (``replicate=False``: one chip instance per layer) into a
temporary directory, on the same test set, the script times per trial:

- (a) reference: the NeFT reference protocol as a per-trial loop over the float PyTorch model:
      ``model.load_state_dict(saved_state)``, then per crossbar layer quantise the reloaded weight
      with the layout's scales (``clamp(round(W / scale), -qmax, qmax) * scale``), draw one Gaussian
      per weight with ``std = paper_weight_std(...)`` (targets/device_model.py) from an explicit
      ``torch.Generator`` and add it, then evaluate the test set with the plain model;
- (b) float: plain inference of the PyTorch model over the test set, no noise (the floor);
- (c) neftc, ideal periphery: ``Emulator(layout, sigma=0.1, ideal_periphery=True)``,
      ``program_chip(i)`` (the folded noise of every weight's cells, exact; see docs/emulator.md)
      + ``runtime.montecarlo.evaluate``;
- (c') the same as (c) on the compiler's default layout, whose free arrays hold pipeline copies of
      the bottleneck layers, each copy programmed as a chip of its own (information: no target);
- (d) neftc, target DAC/ADC: ``Emulator(layout, sigma=0.1, ideal_periphery=False)`` after
      ``calibrate(train_x[:512])``, ``program_chip(i)`` + ``evaluate``.

Test set: the built-in digits test split (449 images, 1x8x8) tiled to 10,000 samples, the size of
the MNIST and CIFAR-10 test sets the paper's protocol evaluates every trial on. (b) and (c) are
also timed on the plain 449-sample split, to show how their ratio depends on the test-set size.
Batch size 1024 everywhere (``neftc verify``'s default), ``torch.no_grad``, torch's default
thread count.

Timing: ``time.perf_counter``; every method is warmed up once (one trial; for (d) one batch of
1024 samples), then ``--repeats`` rounds of ``--trials`` trials in which (a), (b) and (c) take
turns trial by trial (a, b, c, a, b, c, ...: a slow spell of the machine hits all three alike);
the reported time per trial is the median over all timed trials, and the ratios c/b, c/a, a/b
are paired: the median over trials of the ratio of the two methods' times in the same turn.
(d) costs ~64x a float inference per trial, so it runs ``--periphery-trials`` trials in
``--periphery-repeats`` rounds (default 1 x 1).

Each (d) trial is followed by one (b) trial, and the (d) target divides by that (b) (printed
beside it), so that a slow spell of the machine during the long (d) trials hits both. Beside
(d) the script prints ``partial_mvms_per_weight()`` per layer and its MAC-weighted average
(each layer weighted by its MACs per sample: rows x cols, times the output positions of a conv,
read from one forward pass).

Per-effect section (``--effects``; issue 16): on LeNet (the demo's model, untrained) compiled
without copies for ``fefet_128x128`` with the typical device effects of
``benchmarks/effects_results.py`` (``typical``: FeFET2's ``_effects`` preset plus
write-verify, read at ``T_INFERENCE_S``), the time per chip instance (``program_chip`` +
``evaluate`` over the same 10,000 samples) with no effect
(``ideal_effects=("all",)``), each effect alone and all together; on the ideal periphery
(write-verify, clip, drift, ir-drop, read-noise; ``--trials`` x ``--repeats``, the settings
taking turns trial by trial) and on the target's DAC/ADC (dac, adc and all seven;
``--effects-periphery-trials`` each, taking turns). Ratios are paired against "no effect" on the
same periphery (median over turns of the ratio of the two times in the same turn).
``--effects-only`` skips (a)-(d).

Targets (from the issue), printed as PASS/MISS lines, never asserted, on the 10,000-sample set:
(c) <= 1.2 x (b); (c) <= (a); (d) <= 1.5 x (b) x (MAC-weighted partial MVMs per weight).

    python benchmarks/mc_throughput.py [--trials N] [--repeats N] [--periphery-trials N]
        [--periphery-repeats N] [--models a,b,c] [--threads N] [--json]
        [--effects] [--effects-only] [--effects-periphery-trials N]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _machine import busy_cpu_seconds  # benchmarks/_machine.py, beside this script
from effects_results import T_INFERENCE_S, typical  # benchmarks/effects_results.py
from torch import nn

from neftc.datasets.digits import load_digits
from neftc.driver.compiler import CompileSettings, compile_module
from neftc.format.reader import Layout, load_layout
from neftc.frontend.zoo import MLP, VGG8, LeNet
from neftc.runtime.crossbar import CrossbarLayer
from neftc.runtime.emulator import Emulator
from neftc.runtime.montecarlo import evaluate
from neftc.targets import resolve_target
from neftc.targets.device_model import paper_weight_std

TARGET = "fefet_128x128"
SIGMA = 0.1
BATCH = 1024
TEST_SAMPLES = 10_000  # MNIST / CIFAR-10 test-set size
CALIB_SAMPLES = 512
INPUT_SHAPE = (1, 8, 8)
CLASSES = 10

C_OVER_B = 1.2
D_OVER_B_PARTIAL = 1.5

MODELS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "lenet": ("LeNet (2 conv 5x5 + 3 FC)", lambda: LeNet(INPUT_SHAPE, CLASSES)),
    "mlp": ("MLP 64-256-128-10", lambda: MLP(INPUT_SHAPE, CLASSES)),
    "vgg8-w16": ("VGG8(width=16), 6 conv 3x3 + BN + 2 FC", lambda: VGG8(INPUT_SHAPE, CLASSES, 16)),
    "vgg8-w32": ("VGG8(width=32), 6 conv 3x3 + BN + 2 FC", lambda: VGG8(INPUT_SHAPE, CLASSES, 32)),
    "mlp-1024x1024": ("MLP 64-1024-1024-10",
                      lambda: MLP(INPUT_SHAPE, CLASSES, hidden=(1024, 1024))),
}
DEFAULT_MODELS = "lenet,vgg8-w16,mlp-1024x1024"


# ------------------------------------------------------------------------------ machine / load

_busy_cpu_seconds = busy_cpu_seconds


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LoadMeter:
    """Cores kept busy by OTHER processes while this one measured."""

    def __init__(self) -> None:
        self.busy, self.own = _busy_cpu_seconds(), _own_cpu_seconds()
        self.wall = time.perf_counter()

    def other_cores(self) -> float:
        wall = time.perf_counter() - self.wall
        other = (_busy_cpu_seconds() - self.busy) - (_own_cpu_seconds() - self.own)
        return max(0.0, other / wall) if wall > 0 else 0.0


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "numpy": np.__version__,
            "python": platform.python_version(), "cpu": cpu}


# ------------------------------------------------------------------------------ the four methods

@torch.no_grad()
def accuracy(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch_size: int = BATCH) -> float:
    """Top-1 accuracy, the same loop as runtime.montecarlo.evaluate."""
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        logits = forward(x[start:start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start:start + batch_size]).sum())
    return correct / max(int(y.shape[0]), 1)


class Reference:
    """(a) The NeFT reference protocol: reload the float weights, add weight-level noise per
    crossbar layer (reference formula on the quantised weights), evaluate the plain model."""

    def __init__(self, model: nn.Module, layout: Layout, sigma: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.saved_state = copy.deepcopy(self.model.state_dict())
        target = layout.doc.target
        self.n_levels = 2**target.cell.bits
        self.state_ratio = target.noise.state_ratio
        self.sigma = sigma
        self.layers = []  # (parameter, scale broadcast over the weight, qmax, slices)
        for name in layout.layer_names:
            rec = layout.layer(name)
            weight = self.model.get_submodule(name).weight
            scale = torch.from_numpy(layout.scales(name).copy()).reshape(
                -1, *([1] * (weight.dim() - 1)))
            self.layers.append((weight, scale, rec.quant.qmax, rec.slicing.slices))
        # Sanity: the per-trial quantisation reproduces the layout's weights.
        self.quant_mismatch = 0
        with torch.no_grad():
            for (weight, scale, qmax, _), name in zip(self.layers, layout.layer_names):
                wq = torch.clamp(torch.round(weight / scale), -qmax, qmax) * scale
                ref = torch.from_numpy(layout.weights(name).copy())
                self.quant_mismatch += int((~torch.isclose(wq, ref, rtol=1e-6, atol=0)).sum())

    @torch.no_grad()
    def trial(self, i: int, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.load_state_dict(self.saved_state)
        generator = torch.Generator().manual_seed(i)
        for weight, scale, qmax, slices in self.layers:
            wq = torch.clamp(torch.round(weight / scale), -qmax, qmax) * scale
            std = paper_weight_std(wq, qmax, self.n_levels, slices, self.sigma, self.state_ratio)
            weight.copy_(wq + std * torch.randn(wq.shape, generator=generator))
        return accuracy(self.model, x, y)


def chip_trial(emulator: Emulator) -> Callable[[int, torch.Tensor, torch.Tensor], float]:
    def trial(i: int, x: torch.Tensor, y: torch.Tensor) -> float:
        emulator.program_chip(i)
        return evaluate(emulator, x, y, BATCH)
    return trial


def float_trial(model: nn.Module) -> Callable[[int, torch.Tensor, torch.Tensor], float]:
    def trial(_i: int, x: torch.Tensor, y: torch.Tensor) -> float:
        return accuracy(model, x, y)
    return trial


# ------------------------------------------------------------------------------ geometry

def macs_per_sample(emulator: Emulator, x1: torch.Tensor) -> dict[str, int]:
    """MACs per sample of every crossbar layer: rows x cols (x output positions for a conv)."""
    positions: dict[str, int] = {}
    hooks = []
    for name, layer in emulator.layers.items():
        def hook(module: CrossbarLayer, _inputs, output, name=name) -> None:
            if module.record.op == "linear":
                positions[name] = int(np.prod(output.shape[1:-1], dtype=np.int64))
            else:
                positions[name] = int(np.prod(output.shape[2:], dtype=np.int64))
        hooks.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            emulator._run(x1)
    finally:
        for h in hooks:
            h.remove()
    return {name: layer.record.matrix_rows * layer.record.matrix_cols * positions[name]
            for name, layer in emulator.layers.items()}


# ------------------------------------------------------------------------------ measurement

def time_rounds(methods: dict[str, Callable], sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
                trials: int, repeats: int, log) -> dict[str, dict]:
    """``methods``: key -> (trial function, test-set key). The methods take turns trial by trial
    (a, b, c, a, b, c, ...), so that a slow spell of the machine hits all of them alike; the
    median over every timed trial is reported."""
    per_trial: dict[str, list[float]] = {k: [] for k in methods}
    accs: dict[str, list[float]] = {k: [] for k in methods}
    for fn, set_key in methods.values():  # warm-up: one untimed trial each
        fn(10**6, *sets[set_key])
    for r in range(repeats):
        meter = LoadMeter()
        this_round: dict[str, list[float]] = {k: [] for k in methods}
        for t in range(trials):
            for key, (fn, set_key) in methods.items():
                x, y = sets[set_key]
                start = time.perf_counter()
                accs[key].append(fn(r * trials + t, x, y))
                this_round[key].append(time.perf_counter() - start)
        for key, values in this_round.items():
            per_trial[key].extend(values)
        medians = ", ".join(f"{k} {1e3 * statistics.median(v):.1f} ms"
                            for k, v in this_round.items())
        log(f"    round {r + 1}/{repeats} (median per trial): {medians}; "
            f"other work {meter.other_cores():.2f} cores")
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                "all_s": v, "trials": trials * repeats, "mean_accuracy": float(np.mean(accs[k]))}
            for k, v in per_trial.items()}


def paired_ratio(times: dict[str, dict], numerator: str, denominator: str) -> float:
    """Median over trials of numerator / denominator, each pair timed in the same turn (one
    right after the other): a slow spell of the machine cancels out of each pair."""
    return statistics.median(n / d for n, d in zip(times[numerator]["all_s"],
                                                    times[denominator]["all_s"]))


def run_model(key: str, root: Path, data, x10k, y10k, args, log) -> dict:
    title, build = MODELS[key]
    torch.manual_seed(0)
    model = build().eval()
    target = resolve_target(TARGET)
    out_dir = root / key
    t0 = time.perf_counter()
    # (a)-(d) run the layout without pipeline copies (one chip instance per layer, the network
    # the float model computes); (c') the compiler's default layout, whose free arrays hold
    # copies of the bottleneck layers, each copy a chip of its own (more work per trial).
    compiled = compile_module(model, data.test.x[:1], target, out_dir,
                              settings=CompileSettings.with_options(replicate=False))
    compile_s = time.perf_counter() - t0
    compile_module(model, data.test.x[:1], target, root / f"{key}-copies")
    emu_copies = Emulator(root / f"{key}-copies", sigma=SIGMA, seed=0, ideal_periphery=True)
    copies = {name: layer.copies for name, layer in emu_copies.layers.items()}
    layout = load_layout(out_dir)
    summary = compiled.doc.summary
    params = sum(p.numel() for p in model.parameters())
    log(f"  {key}: {params} parameters, {summary.weights} crossbar weights, compiled in "
        f"{compile_s:.1f} s")

    ref = Reference(model, layout, SIGMA)
    emu_c = Emulator(layout, sigma=SIGMA, seed=0, ideal_periphery=True)
    emu_d = Emulator(layout, sigma=SIGMA, seed=0, ideal_periphery=False)
    emu_d.calibrate(data.train.x[:CALIB_SAMPLES])
    partial = emu_d.partial_mvms_per_weight()
    macs = macs_per_sample(emu_c, data.test.x[:1])
    total_macs = sum(macs.values())
    partial_avg = sum(macs[n] * partial[n] for n in macs) / total_macs

    sets = {"10k": (x10k, y10k), "449": (data.test.x, data.test.y)}
    methods = {
        "a_reference": (ref.trial, "10k"),
        "b_float": (float_trial(model), "10k"),
        "c_emulator_ideal": (chip_trial(emu_c), "10k"),
        "c_copies": (chip_trial(emu_copies), "10k"),
        "b_float_449": (float_trial(model), "449"),
        "c_emulator_ideal_449": (chip_trial(emu_c), "449"),
    }
    meter = LoadMeter()
    times = time_rounds(methods, sets, args.trials, args.repeats, log)
    other_abc = meter.other_cores()

    # (d): warm up on one batch, then --periphery-repeats rounds of --periphery-trials trials,
    # each followed by one trial of (b): (d) costs ~60 float inferences, and its target divides
    # by the (b) timed beside it, so that a slow spell of the machine hits both.
    emu_d.program_chip(10**6)
    with torch.no_grad():
        emu_d.forward(x10k[:BATCH])
    meter = LoadMeter()
    d_rounds, b_rounds, d_accs = [], [], []
    for r in range(args.periphery_repeats):
        d_sum = b_sum = 0.0
        for t in range(args.periphery_trials):
            start = time.perf_counter()
            d_accs.append(chip_trial(emu_d)(r * args.periphery_trials + t, x10k, y10k))
            middle = time.perf_counter()
            float_trial(model)(0, x10k, y10k)
            d_sum, b_sum = d_sum + middle - start, b_sum + time.perf_counter() - middle
        d_rounds.append(d_sum / args.periphery_trials)
        b_rounds.append(b_sum / args.periphery_trials)
        log(f"    (d) round {r + 1}/{args.periphery_repeats}: {d_rounds[-1]:.2f} s per trial, "
            f"(b) beside it {1e3 * b_rounds[-1]:.1f} ms")
    times["d_emulator_periphery"] = {
        "median_s": statistics.median(d_rounds), "min_s": min(d_rounds), "max_s": max(d_rounds),
        "trials": len(d_accs), "mean_accuracy": float(np.mean(d_accs))}
    times["b_float_beside_d"] = {
        "median_s": statistics.median(b_rounds), "min_s": min(b_rounds), "max_s": max(b_rounds),
        "trials": len(d_accs)}
    other_d = meter.other_cores()

    # Program-only cost of a chip instance (c and d), and the reference's noise step, for the
    # breakdown: median of 5.
    def median_time(fn: Callable[[], object], n: int = 5) -> float:
        values = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            values.append(time.perf_counter() - start)
        return statistics.median(values)

    program_c = median_time(lambda: emu_c.program_chip(7))
    program_d = median_time(lambda: emu_d.program_chip(7))

    def ref_noise_only() -> None:
        with torch.no_grad():
            ref.model.load_state_dict(ref.saved_state)
            g = torch.Generator().manual_seed(7)
            for weight, scale, qmax, slices in ref.layers:
                wq = torch.clamp(torch.round(weight / scale), -qmax, qmax) * scale
                std = paper_weight_std(wq, qmax, ref.n_levels, slices, ref.sigma, ref.state_ratio)
                weight.copy_(wq + std * torch.randn(wq.shape, generator=g))
    noise_a = median_time(ref_noise_only)

    d, b_d = (times[k]["median_s"] for k in ("d_emulator_periphery", "b_float_beside_d"))
    return {
        "name": key, "description": title, "parameters": params,
        "crossbar_weights": summary.weights,
        "cells": sum(int(layer.levels.numel()) for layer in emu_c.layers.values()),
        "layout_cells_used": summary.cells_used,
        "arrays": summary.arrays_used, "compile_s": compile_s, "copies": copies,
        "macs_per_sample": macs, "total_macs_per_sample": total_macs,
        "partial_mvms_per_weight": partial, "partial_mvms_mac_weighted": partial_avg,
        "reference_quantisation_mismatches": ref.quant_mismatch,
        "times": times, "program_chip_s": {"c": program_c, "d": program_d},
        "reference_noise_step_s": noise_a,
        "other_cores": {"abc": other_abc, "d": other_d},
        "ratios": {"c/b": paired_ratio(times, "c_emulator_ideal", "b_float"),
                   "c/a": paired_ratio(times, "c_emulator_ideal", "a_reference"),
                   "a/b": paired_ratio(times, "a_reference", "b_float"), "d/b": d / b_d,
                   "d/(b*partial)": d / (b_d * partial_avg),
                   "c/b_449": paired_ratio(times, "c_emulator_ideal_449", "b_float_449"),
                   "c'/b": paired_ratio(times, "c_copies", "b_float")},
    }


# ------------------------------------------------------------------------------ device effects

IDEAL_EFFECTS = ("write-verify", "clip", "drift", "ir-drop", "read-noise")
CONVERTER_EFFECTS = ("dac", "adc")


def effect_settings(periphery_effects: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Row name -> the effects switched off (``ideal_effects``): none, each alone, all."""
    every = IDEAL_EFFECTS + CONVERTER_EFFECTS
    rows = {"no effect": ("all",)}
    rows.update({name: tuple(e for e in every if e != name) for name in periphery_effects})
    rows["all"] = ()
    return rows


def run_effects(root: Path, data, x10k, y10k, args, log) -> dict:
    """Seconds per chip instance on LeNet with no effect, each effect alone and all together,
    on the ideal periphery and on the target's DAC/ADC (same layout, same chips)."""
    torch.manual_seed(0)
    model = LeNet(INPUT_SHAPE, CLASSES).eval()
    target = resolve_target(TARGET, typical("fefet2_128x128"))  # TARGET is FeFET2
    out_dir = root / "lenet-effects"
    compile_module(model, data.test.x[:1], target, out_dir,
                   settings=CompileSettings.with_options(replicate=False))
    layout = load_layout(out_dir)
    sets = {"10k": (x10k, y10k)}
    result: dict = {"overrides": typical("fefet2_128x128"), "t_inference_s": T_INFERENCE_S}

    ideal_rows = effect_settings(IDEAL_EFFECTS)
    emulators = {name: Emulator(layout, sigma=SIGMA, seed=0, ideal_periphery=True,
                                ideal_effects=off, t_inference_s=T_INFERENCE_S)
                 for name, off in ideal_rows.items()}
    log("  effects, ideal periphery: " + ", ".join(
        f"{name} {list(emu.active_effects)}" for name, emu in emulators.items()))
    times = time_rounds({name: (chip_trial(emu), "10k") for name, emu in emulators.items()},
                        sets, args.trials, args.repeats, log)
    result["ideal"] = {name: {"median_s": t["median_s"], "trials": t["trials"],
                              "mean_accuracy": t["mean_accuracy"],
                              "ratio": paired_ratio(times, name, "no effect"),
                              "active": list(emulators[name].active_effects)}
                       for name, t in times.items()}

    target_rows = effect_settings(CONVERTER_EFFECTS)
    emulators = {}
    for name, off in target_rows.items():
        emu = Emulator(layout, sigma=SIGMA, seed=0, ideal_periphery=False, ideal_effects=off,
                       t_inference_s=T_INFERENCE_S)
        emu.calibrate(data.train.x[:CALIB_SAMPLES])
        emu.program_chip(10**6)  # warm-up: one batch
        with torch.no_grad():
            emu.forward(x10k[:BATCH])
        emulators[name] = emu
    per_trial: dict[str, list[float]] = {name: [] for name in emulators}
    meter = LoadMeter()
    for t in range(args.effects_periphery_trials):
        for name, emu in emulators.items():
            start = time.perf_counter()
            chip_trial(emu)(t, x10k, y10k)
            per_trial[name].append(time.perf_counter() - start)
        log(f"    (d) effects turn {t + 1}/{args.effects_periphery_trials}: " + ", ".join(
            f"{name} {per_trial[name][-1]:.2f} s" for name in emulators))
    result["target"] = {
        name: {"median_s": statistics.median(v), "trials": len(v),
               "ratio": statistics.median(a / b for a, b in zip(v, per_trial["no effect"])),
               "active": list(emulators[name].active_effects)}
        for name, v in per_trial.items()}
    result["other_cores"] = meter.other_cores()
    return result


def format_effects(effects: dict) -> str:
    lines = ["", "Device effects (issue 16): LeNet, time per chip instance on 10,000 samples, "
             f"sigma {SIGMA}, read at t = {effects['t_inference_s']:g} s; typical values: "
             + ", ".join(effects["overrides"])]
    head = f"{'effects on':<14} {'ideal ms':>9} {'x none':>7}   {'DAC/ADC ms':>10} {'x none':>7}"
    lines += [head, "-" * len(head)]
    names = [n for n in effects["ideal"] if n != "all"]
    names += [n for n in effects["target"] if n not in effects["ideal"]] + ["all"]
    for name in names:
        ideal, target = effects["ideal"].get(name), effects["target"].get(name)
        cells = (f"{_ms(ideal['median_s']):>9} {ideal['ratio']:>7.2f}" if ideal
                 else f"{'':>9} {'':>7}")
        cells += (f"   {1e3 * target['median_s']:>10.0f} {target['ratio']:>7.2f}" if target
                  else "")
        lines.append(f"{name:<14} {cells}")
    trials = next(iter(effects["ideal"].values()))["trials"]
    lines.append(f"ideal: median of {trials} trials per row; DAC/ADC: median of "
                 f"{next(iter(effects['target'].values()))['trials']} trials per row; rows take "
                 f"turns; 'x none' is paired per turn; other processes "
                 f"{effects['other_cores']:.2f} cores during the DAC/ADC rows")
    return "\n".join(lines)


def checks(results: list[dict]) -> list[dict]:
    out = []
    for r in results:
        ratios = r["ratios"]
        out += [
            {"name": f"{r['name']}: (c) ideal-periphery emulator within {C_OVER_B:g}x of (b) "
                     f"float inference [c/b]", "value": ratios["c/b"],
             "ok": ratios["c/b"] <= C_OVER_B},
            {"name": f"{r['name']}: (c) no slower than (a) reference protocol [c/a]",
             "value": ratios["c/a"], "ok": ratios["c/a"] <= 1.0},
            {"name": f"{r['name']}: (d) DAC/ADC emulator within {D_OVER_B_PARTIAL:g}x of (b) x "
                     f"{r['partial_mvms_mac_weighted']:.1f} partial MVMs/weight "
                     f"[d/(b*partial)]", "value": ratios["d/(b*partial)"],
             "ok": ratios["d/(b*partial)"] <= D_OVER_B_PARTIAL},
        ]
    return out


# ------------------------------------------------------------------------------ output

def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"


def format_report(report: dict) -> str:
    info, results = report["machine"], report["results"]
    lines = [
        f"Monte-Carlo throughput, target {TARGET}, sigma {SIGMA}: time per chip instance (one "
        f"trial = one chip evaluated on the whole test set)",
        f"machine: {info['nproc']} CPUs ({info['cpu']}), torch {info['torch']} with "
        f"{info['torch_threads']} threads; load average {report['load_average']['before'][0]:.2f}"
        f" -> {report['load_average']['after'][0]:.2f}",
        f"test set: digits test split ({report['test_samples_plain']} images 1x8x8) tiled to "
        f"{TEST_SAMPLES} samples = the size of the MNIST / CIFAR-10 test sets of the paper's "
        f"protocol; batch {BATCH}",
        f"(a),(b),(c): median over {report['repeats']} x {report['trials']} trials, taking turns "
        f"trial by trial; (d): "
        f"median over {report['periphery_repeats']} round(s) of {report['periphery_trials']} "
        f"trial(s); untrained weights",
        "",
    ]
    head = (f"{'model':<14} {'params':>8} {'xbar w':>8} {'cells':>9} {'MAC/smp':>8} "
            f"{'(a) ms':>8} {'(b) ms':>8} {'(c) ms':>8} {'(d) ms':>9} {'c/b':>5} {'c/a':>5} "
            f"{'a/b':>5} {'part.':>5} {'d/(b*p)':>7}")
    lines += [f"{TEST_SAMPLES} samples:", head, "-" * len(head)]
    for r in results:
        t, q = r["times"], r["ratios"]
        lines.append(
            f"{r['name']:<14} {r['parameters']:>8} {r['crossbar_weights']:>8} {r['cells']:>9} "
            f"{r['total_macs_per_sample']:>8} {_ms(t['a_reference']['median_s']):>8} "
            f"{_ms(t['b_float']['median_s']):>8} {_ms(t['c_emulator_ideal']['median_s']):>8} "
            f"{1e3 * t['d_emulator_periphery']['median_s']:>9.0f} {q['c/b']:>5.3f} "
            f"{q['c/a']:>5.3f} {q['a/b']:>5.3f} {r['partial_mvms_mac_weighted']:>5.1f} "
            f"{q['d/(b*partial)']:>7.2f}")
    lines += ["", f"{report['test_samples_plain']} samples (the plain digits test split):"]
    head2 = (f"{'model':<14} {'(b) ms':>8} {'(c) ms':>8} {'c/b':>6}   "
             f"program_chip ms: (c) {'(d)':>6}")
    lines += [head2, "-" * len(head2)]
    for r in results:
        t = r["times"]
        lines.append(f"{r['name']:<14} {_ms(t['b_float_449']['median_s']):>8} "
                     f"{_ms(t['c_emulator_ideal_449']['median_s']):>8} "
                     f"{r['ratios']['c/b_449']:>6.2f}"
                     f"   {'':>16}{1e3 * r['program_chip_s']['c']:>5.1f} "
                     f"{1e3 * r['program_chip_s']['d']:>6.1f}")
    lines += ["", "(c') the compiler's default layout, with pipeline copies (each copy a chip "
              "of its own), ideal periphery, 10,000 samples:"]
    for r in results:
        ratio = r["ratios"]["c'/b"]
        lines.append(f"  {r['name']}: {_ms(r['times']['c_copies']['median_s'])} ms, "
                     f"c'/b {ratio:.2f}; copies per layer "
                     + ", ".join(f"{n} {c}" for n, c in r["copies"].items()))
    lines += ["", "partial MVMs per weight on the target periphery (partial_mvms_per_weight()), "
              "MACs per sample per layer:"]
    for r in results:
        cells = ", ".join(f"{n} {r['partial_mvms_per_weight'][n]}x{m}"
                          for n, m in r["macs_per_sample"].items())
        lines.append(f"  {r['name']}: MAC-weighted {r['partial_mvms_mac_weighted']:.2f}  "
                     f"[layer partial x MACs: {cells}]")
    lines += ["", "(a) reference per-trial loop: load_state_dict + quantise + paper_weight_std "
              "noise per weight + plain model;", "(b) float model, no noise; (c) Emulator "
              "ideal_periphery=True, program_chip + evaluate; (d) Emulator ideal_periphery=False "
              "(calibrated), program_chip + evaluate.",
              "xbar w: crossbar weights; cells: programmed cells per chip instance (8 per "
              "weight: 4 slices x 2 polarities; replica arrays, if the layout has any, not "
              "counted): (c) draws their folded noise, one Gaussian per weight, (d) every cell;",
              "part.: MAC-weighted partial MVMs per weight.",
              "noise step of (a) alone (load_state_dict + quantise + draw), ms: " + ", ".join(
                  f"{r['name']} {1e3 * r['reference_noise_step_s']:.1f}" for r in results)]
    mism = [f"{r['name']} {r['reference_quantisation_mismatches']}" for r in results
            if r["reference_quantisation_mismatches"]]
    if mism:
        lines.append("note: (a)'s float32 re-quantisation lands one step off the layout's "
                     "(float64) on a few rounding ties: " + ", ".join(mism) + " weights")
    busiest = max(max(r["other_cores"].values()) for r in results)
    lines.append(f"other processes kept up to {busiest:.2f} cores busy during the measurements "
                 "(/proc/stat)")
    if busiest > 0.2:
        lines.append("WARNING: the machine was not quiet; times are inflated. Re-run.")
    lines.append("")
    for check in report["checks"]:
        lines.append(f"{'PASS' if check['ok'] else 'MISS'}  {check['name']}: "
                     f"{check['value']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30,
                        help="trials per round for (a), (b), (c) (default 30)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds for (a), (b), (c); the median is reported (default 3)")
    parser.add_argument("--periphery-trials", type=int, default=1,
                        help="trials per round for (d) (default 1: ~64 float inferences each)")
    parser.add_argument("--periphery-repeats", type=int, default=1,
                        help="rounds for (d) (default 1)")
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"comma-separated, from {', '.join(MODELS)} (default "
                             f"{DEFAULT_MODELS})")
    parser.add_argument("--threads", type=int,
                        help="torch.set_num_threads(N) (default: torch's choice, one per core)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--effects", action="store_true",
                        help="also time each device effect per chip (issue 16)")
    parser.add_argument("--effects-only", action="store_true",
                        help="time the device effects only (skips (a)-(d))")
    parser.add_argument("--effects-periphery-trials", type=int, default=2,
                        help="trials per row for the effects on the DAC/ADC (default 2)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if min(args.trials, args.repeats, args.periphery_trials, args.periphery_repeats,
           args.effects_periphery_trials) < 1:
        parser.error("--trials, --repeats, --periphery-trials, --periphery-repeats and "
                     "--effects-periphery-trials must be >= 1")
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    info = machine()
    load_before = os.getloadavg()
    log(f"machine: {info['nproc']} CPUs, torch {info['torch']}, load average {load_before[0]:.2f}")
    data = load_digits()
    reps = -(-TEST_SAMPLES // len(data.test))
    x10k = data.test.x.repeat(reps, 1, 1, 1)[:TEST_SAMPLES].contiguous()
    y10k = data.test.y.repeat(reps)[:TEST_SAMPLES].contiguous()
    start = time.perf_counter()
    effects = None
    with tempfile.TemporaryDirectory(prefix="neftc-mc-") as tmp:
        results = [] if args.effects_only else [
            run_model(k, Path(tmp), data, x10k, y10k, args, log) for k in keys]
        if args.effects or args.effects_only:
            effects = run_effects(Path(tmp), data, x10k, y10k, args, log)
    total = time.perf_counter() - start
    report = {
        "benchmark": "mc_throughput", "target": TARGET, "sigma": SIGMA, "batch_size": BATCH,
        "test_samples": TEST_SAMPLES, "test_samples_plain": len(data.test),
        "trials": args.trials, "repeats": args.repeats,
        "periphery_trials": args.periphery_trials, "periphery_repeats": args.periphery_repeats,
        "machine": info, "load_average": {"before": load_before, "after": os.getloadavg()},
        "total_s": total, "results": results, "checks": checks(results), "effects": effects,
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        if results:
            print(format_report(report))
        if effects is not None:
            print(format_effects(effects))
        print(f"\n(total {total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
