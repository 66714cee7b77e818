"""Issue 16, the contract of the device effects (``target.effects``): the switches, the time
flag, the verify record, and layouts written before the effects existed (version 3)."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from test_layout_reader import resign

from neftc.cli.common import duration_s
from neftc.cli.main import main
from neftc.driver.compiler import compile_module
from neftc.errors import NeftcError
from neftc.format.reader import load_layout
from neftc.frontend.zoo import build
from neftc.runtime.effects import EFFECT_NAMES, Effects, effects_for
from neftc.runtime.emulator import Emulator
from neftc.targets import resolve_target
from neftc.targets.physics import EffectsSpec

ON = ["effects.clip=true", "effects.read_noise.std_rel=0.02", "effects.drift.nu=0.05",
      "effects.wire.r_segment_ohm=1", "effects.adc.offset_lsb_std=0.5",
      "effects.dac.gain_rel_std=0.01", "effects.write_verify.max_pulses=4"]


@pytest.mark.parametrize("device", ["rram1", "fefet2", "rram4", "fefet6"])
def test_effects_presets_are_the_paper_models_with_typical_effects(device) -> None:
    """``<device>_128x128_effects``: the paper's device model, every field equal, with the
    typical effects on (write-verify off: the model's sigma is what programming leaves)."""
    paper = resolve_target(f"{device}_128x128")
    typical = resolve_target(f"{device}_128x128_effects")
    same = {"name", "description", "sources", "effects"}
    assert typical.model_dump(exclude=same) == paper.model_dump(exclude=same)
    assert paper.effects == EffectsSpec()
    assert effects_for(typical.effects, t_inference_s=86400.0).active == tuple(
        name for name in EFFECT_NAMES if name != "write-verify")


def test_the_report_says_when_stated_drift_was_not_read() -> None:
    from neftc.flow.records import EffectsRecord, effects_text

    spec = resolve_target("fefet_128x128", ["effects.drift.nu=0.05"]).effects
    for time_s, words in ((None, "drift stated but read at its reference time t0 = 1 s"),
                          (86400.0, "device effects: drift, read 24 h after programming")):
        effects = effects_for(spec, t_inference_s=time_s)
        record = EffectsRecord(active=list(effects.active), ideal=[],
                               t_inference_s=effects.time_s, spec=effects.spec)
        assert words in effects_text(record, "fefet_128x128")


def test_presets_have_every_effect_off() -> None:
    spec = resolve_target("fefet_128x128")
    assert spec.effects == EffectsSpec()
    assert effects_for(spec.effects) == Effects() and Effects().active == ()


def test_switches_turn_each_effect_off_and_all_turns_off_every_one() -> None:
    spec = resolve_target("fefet_128x128", ON).effects
    every = effects_for(spec, t_inference_s=86400.0)
    assert every.active == EFFECT_NAMES  # each one on, in the order they act
    for name in EFFECT_NAMES:
        assert name not in effects_for(spec, ideal=[name], t_inference_s=86400.0).active
    assert effects_for(spec, ideal=["all"]).spec == EffectsSpec()
    # drift needs time: at the reference read nothing has drifted yet
    assert "drift" not in effects_for(spec).active


@pytest.mark.parametrize(("kwargs", "words"), [({"ideal": ["read_noise"]}, "read-noise"),
                                              ({"t_inference_s": 0.0}, "--t-inference"),
                                              ({"t_inference_s": 1e12}, "--t-inference")])
def test_bad_switches_are_refused(kwargs, words) -> None:
    with pytest.raises(NeftcError, match=words):
        effects_for(EffectsSpec(), **kwargs)


@pytest.mark.parametrize(("text", "seconds"), [("3600", 3600.0), ("90s", 90.0), ("5min", 300.0),
                                               ("1h", 3600.0), ("2d", 172800.0),
                                               ("1y", 365.25 * 86400)])
def test_durations(text, seconds) -> None:
    assert duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1 week", "-1h", "0", "nan", "inf"])
def test_bad_durations(text) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration_s(text)


def test_verify_records_the_effects_and_refuses_unknown_names(capsys, mlp_layout,
                                                              tmp_path) -> None:
    out = tmp_path / "run.json"
    assert main(["verify", str(mlp_layout), "--mc", "2", "--ideal-periphery", "-q",
                 "--ideal", "clip,drift", "--t-inference", "1d", "-o", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["effects"]["active"] == [] and record["effects"]["ideal"] == ["clip", "drift"]
    assert record["effects"]["t_inference_s"] == 86400.0
    capsys.readouterr()
    assert main(["verify", str(mlp_layout), "--mc", "2", "--ideal", "readnoise"]) == 2
    err = capsys.readouterr().err
    assert "unknown device effect" in err and "read-noise" in err and "Traceback" not in err


def test_a_version_3_layout_reads_with_every_effect_off(mlp_layout, tmp_path) -> None:
    """A layout written before the effects (version 3, no ``target.effects``) loads as a version
    4 one whose effects are off, and replays the same outputs."""
    old = tmp_path / "v3"
    shutil.copytree(mlp_layout, old)
    doc = json.loads((old / "layout.json").read_text())
    doc["version"] = 3
    del doc["target"]["effects"]
    (old / "layout.json").write_text(json.dumps(doc, indent=1) + "\n")
    resign(old)
    layout = load_layout(old)
    assert layout.doc.version == 4 and layout.doc.target.effects == EffectsSpec()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    a, b = (Emulator(root, sigma=0.2, seed=3, ideal_periphery=True) for root in (old, mlp_layout))
    a.program_chip(2)
    b.program_chip(2)
    assert torch.equal(a(x), b(x))


def test_training_deployment_time_reaches_the_noise_and_the_layout() -> None:
    """``--t-inference`` of NeFT training: the settings hand it to both training passes, whose
    device noise then stands for that time, and the layout records it."""
    from neftc.driver.compiler import CompileSettings
    from neftc.neft.pipeline import NeftSettings, training_passes
    from neftc.neft.train import TrainLog

    target = resolve_target("fefet_128x128", ["effects.drift.nu=0.05"])
    settings = NeftSettings(mode="ovf", data="digits", t_inference_s=86400.0)
    inject, feedback = training_passes(settings, target, classes=10)
    for noise in (inject.device_noise(target),
                  feedback.quantize.device_noise(target, "cell", feedback.t_inference_s)):
        assert noise.time_s == 86400.0 and noise.cell_effects
    assert not training_passes(NeftSettings(mode="ovf", data="digits"), target, 10)[0] \
        .device_noise(target).cell_effects  # by default: the reference read, no drift
    log = TrainLog(epochs=1, steps=1, seconds=0.0, losses=[1.0], ce_losses=[1.0])
    options = CompileSettings(neft=settings).options(target, log)
    assert options.neft is not None and options.neft.t_inference_s == 86400.0
    with pytest.raises(NeftcError, match="--t-inference"):
        NeftSettings(mode="nit", data="digits", t_inference_s=0.0).validate()


def test_verify_applies_the_targets_effects_and_lists_the_ones_that_acted(capsys,
                                                                            tmp_path) -> None:
    """A layout whose target states read noise and ADC errors: ``verify`` runs its chips with
    them (the accuracy differs from ``--ideal all``'s), lists them, drops the converters on the
    ideal periphery, and refuses batched chips with read noise."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build("mlp", (1, 8, 8), 10).eval()
    target = resolve_target("fefet_128x128", ["effects.read_noise.std_rel=0.3",
                                              "effects.adc.offset_lsb_std=2"])
    layout = tmp_path / "layout"
    compile_module(model, torch.zeros(1, 1, 8, 8), target, layout)
    records = {}
    for name, extra in (("target", []), ("ideal", ["--ideal-periphery"]),
                        ("off", ["--ideal-periphery", "--ideal", "all"])):
        out = tmp_path / f"{name}.json"
        assert main(["verify", str(layout), "--mc", "2", "-q", "--sigma", "0.05", *extra,
                     "-o", str(out)]) == 0
        records[name] = json.loads(out.read_text())
    assert records["target"]["effects"]["active"] == ["read-noise", "adc"]
    assert records["ideal"]["effects"]["active"] == ["read-noise"]
    assert records["off"]["effects"]["active"] == []
    from neftc.flow.records import VerifyRecord
    from neftc.flow.verify import format_verify
    texts = {name: format_verify(VerifyRecord.model_validate(record))
             for name, record in records.items()}
    assert "device effects: read-noise, adc\n" in texts["target"]
    assert "device effects: none besides programming variation; switched off: all" in texts["off"]
    chips = [records[name]["results"][0]["chip_accuracies"] for name in ("ideal", "off")]
    assert chips[0] != chips[1]  # the read noise changed the chips' answers
    capsys.readouterr()
    assert main(["verify", str(layout), "--mc", "2", "--ideal-periphery",
                 "--chips-per-pass", "2"]) == 2
    err = capsys.readouterr().err
    assert "--ideal read-noise" in err and "Traceback" not in err
