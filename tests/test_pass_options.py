"""A pass's options live on the pass: pass specs as text, typed facts with invalidation, the
pass-manager instrument hook, and NeFT training for the compile's own quantize pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from neftc.cli.main import main
from neftc.driver.compiler import CompileSettings, compile_module
from neftc.errors import NeftcError, PassOrderError
from neftc.format.reader import load_layout
from neftc.frontend.trace import trace_module
from neftc.frontend.zoo import build
from neftc.ir.facts import Fact
from neftc.ir.instruments import DumpGraphs, PassTimer
from neftc.ir.pass_manager import PassContext, PassManager, check_order
from neftc.ir.pass_spec import PipelineSpecError, pipeline_text, spec_text
from neftc.neft.modules import DeviceNoise
from neftc.neft.pipeline import NeftSettings
from neftc.passes import (
    PASSES,
    BitSlice,
    InjectNoise,
    InsertFeedback,
    MapTiles,
    Normalize,
    Place,
    Quantize,
    StripTraining,
    default_pipeline,
    parse_pipeline,
)

# ---------------------------------------------------------------- text form


def test_spec_text_golden() -> None:
    assert spec_text(Quantize(per_channel=True, calibration="percentile")) == (
        "quantize{per-channel=true calibration=percentile percentile=99.99}")
    assert spec_text(BitSlice()) == "bit-slice"
    assert spec_text(InjectNoise(sigma=0.1, quantize=Quantize(per_channel=True))) == (
        "inject-noise{sigma=0.1 mode=cell "
        "quantize=quantize{per-channel=true calibration=max-abs percentile=99.99} "
        "scale-gradient=true t-inference-s=none}")


ROUND_TRIP = [
    default_pipeline(),
    default_pipeline(fold_bn=True, per_channel=True, calibration="percentile",
                     placement="in-order", replicate=False),
    [Normalize(), InjectNoise(sigma=0.25, mode="paper", quantize=Quantize(percentile=99.5),
                              t_inference_s=86400.0),
     InsertFeedback("irs", beta=0.01, sigma=0.25, num_classes=7, sigma_offsets=(),
                    taps=("relu_1", "a b,c{d}"), quantize=Quantize(per_channel=True), seed=3),
     InsertFeedback("ovf", beta=1e-3, sigma=0.1, num_classes=10, taps=4),
     StripTraining(), Quantize(), BitSlice(), MapTiles(), Place(max_swap_rounds=0)],
]


@pytest.mark.parametrize("passes", ROUND_TRIP, ids=["default", "options", "training"])
def test_pipeline_text_round_trips(passes) -> None:
    text = pipeline_text(passes)
    assert parse_pipeline(text) == passes
    assert pipeline_text(parse_pipeline(text)) == text


def test_parse_takes_a_subset_of_fields_with_their_types() -> None:
    passes = parse_pipeline("normalize, quantize{per-channel=true calibration=percentile},"
                            "bit-slice,map-tiles,place{strategy=in-order replicate=false}")
    assert passes == default_pipeline(per_channel=True, calibration="percentile",
                                      placement="in-order", replicate=False)
    feedback = parse_pipeline("insert-feedback{mode=irs beta=0.01 sigma=0.1 num-classes=10 "
                              "taps=2}")[0]
    assert feedback.taps == 2 and isinstance(feedback.beta, float)
    assert parse_pipeline("insert-feedback{mode=irs beta=1 sigma=0 num-classes=3 "
                          "taps=[relu,conv2d_1]}")[0].taps == ("relu", "conv2d_1")


@pytest.mark.parametrize("text, needles", [
    ("quantise", ["unknown pass 'quantise'", "Did you mean 'quantize'?"]),
    ("quantize{per_channel=true}", ["no option 'per_channel'", "Did you mean 'per-channel'?"]),
    ("quantize{per-channel=yes}", ["quantize{per-channel}", "write true or false"]),
    ("quantize{calibration=percentil}", ["not one of max-abs, percentile",
                                         "Did you mean 'percentile'?"]),
    ("place{max-swap-rounds=two}", ["place{max-swap-rounds}", "not an integer"]),
    ("insert-feedback{mode=ovf}", ["needs option(s) beta, sigma, num-classes"]),
    ("normalize,quantize{per-channel=true", ["unclosed", "missing '}'"]),
    ("quantize{per-channel}", ["has no value", "per-channel=VALUE"]),
    (" , ", ["names no pass"]),
])
def test_bad_pipeline_text_is_a_typed_error_naming_pass_and_fix(text, needles) -> None:
    with pytest.raises(PipelineSpecError) as info:
        parse_pipeline(text)
    assert isinstance(info.value, NeftcError)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_registry_holds_every_pass_by_its_name() -> None:
    assert sorted(PASSES) == ["bit-slice", "inject-noise", "insert-feedback", "map-tiles",
                              "normalize", "place", "quantize", "strip-training"]
    assert all(dataclasses.is_dataclass(cls) and cls.name == name for name, cls in PASSES.items())


# ---------------------------------------------------------------- facts


def test_strip_training_retracts_noisy_weights() -> None:
    noisy = [Normalize(), InjectNoise(sigma=0.1), StripTraining()]
    check_order([*noisy, Quantize()])  # stripped: quantize may run
    with pytest.raises(PassOrderError, match="requires noisy-weights"):
        check_order([*noisy, InsertFeedback("ovf", 1e-3, 0.1, 10)])  # retracted by strip


def test_quantize_on_a_noisy_graph_fails_in_the_order_check(fefet) -> None:
    passes = [Normalize(), InjectNoise(sigma=0.1), Quantize()]
    with pytest.raises(PassOrderError, match="'quantize' cannot run on a graph with "
                                             "noisy-weights; run strip-training before it"):
        check_order(passes, catalogue=PASSES.values())
    with pytest.raises(PassOrderError, match="retract it before"):
        check_order(passes)  # without the catalogue: the fix in general words
    model = nn.Sequential(nn.Linear(6, 4)).eval()
    gm = trace_module(model, torch.randn(1, 6))
    ran = PassTimer()
    with pytest.raises(PassOrderError):
        PassManager(passes, [ran]).run(gm, PassContext(fefet, torch.randn(1, 6)))
    assert ran.timings == []  # refused before any pass ran


def test_facts_are_carried_across_managers(fefet) -> None:
    example = torch.randn(1, 6)
    ctx = PassContext(fefet, example)
    gm = PassManager([Normalize(), InjectNoise(sigma=0.1)]).run(
        trace_module(nn.Sequential(nn.Linear(6, 4)).eval(), example), ctx)
    assert Fact.NOISY_WEIGHTS in ctx.facts
    with pytest.raises(PassOrderError, match="'quantize' cannot run on a graph with noisy"):
        PassManager([Quantize()]).run(gm, ctx)
    gm = PassManager([StripTraining(), Quantize()]).run(gm, ctx)
    assert Fact.NOISY_WEIGHTS not in ctx.facts and Fact.QUANTIZED in ctx.facts


# ---------------------------------------------------------------- instruments


def test_instruments_see_every_pass_with_its_spec(tmp_path, fefet) -> None:
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    timer = PassTimer()
    passes = default_pipeline(per_channel=True)
    settings = CompileSettings(pipeline=tuple(passes), dump_after_each=tmp_path / "dump")
    result = compile_module(model, torch.randn(1, 12), fefet, settings=settings,
                            instruments=[timer])
    assert [t.spec for t in timer.timings] == [spec_text(p) for p in passes]
    assert all(t.seconds >= 0 and t.modified for t in timer.timings)
    dump = (tmp_path / "dump" / "02-quantize.txt").read_text()
    assert dump.splitlines()[0] == f"# after pass 2: {spec_text(passes[1])}"
    assert result.doc.options.pipeline == pipeline_text(passes)
    assert parse_pipeline(result.doc.options.pipeline) == passes


def test_dump_marks_a_pass_that_changed_nothing(tmp_path, fefet) -> None:
    example = torch.randn(1, 6)
    gm = trace_module(nn.Sequential(nn.Linear(6, 4)).eval(), example)
    dump = DumpGraphs(tmp_path)
    PassManager([Normalize(), StripTraining()], [dump]).run(gm, PassContext(fefet, example))
    assert "# (no change)" in (tmp_path / "02-strip-training.txt").read_text()
    assert "# (no change)" not in (tmp_path / "01-normalize.txt").read_text()


# ---------------------------------------------------------------- settings


def test_compile_settings_hold_the_passes_only() -> None:
    settings = CompileSettings.with_options(per_channel=True, placement="in-order")
    assert settings.pipeline == tuple(default_pipeline(per_channel=True, placement="in-order"))
    assert settings.quantize is settings.pipeline[1]
    with pytest.raises(NeftcError, match="set the options on the passes of your own pipeline"):
        CompileSettings.with_options(pipeline=settings.pipeline, per_channel=False)
    assert not hasattr(settings, "per_channel")  # the option lives on the pass only
    with pytest.raises(PassOrderError, match="has 0 'quantize' passes"):
        _ = CompileSettings(pipeline=(Normalize(), Place())).quantize


def test_compile_refuses_neft_settings_for_another_chip(fefet) -> None:
    neft = NeftSettings(mode="nit", data="digits", epochs=1, per_channel=False)
    with pytest.raises(NeftcError, match="trains for its own chip"):
        compile_module(build("lenet", (1, 8, 8), 10).eval(), torch.randn(1, 1, 8, 8), fefet,
                       settings=CompileSettings.with_options(per_channel=True, neft=neft))


def test_cli_neft_trains_with_the_scales_it_quantises_with(capsys, tmp_path, monkeypatch) -> None:
    """``neftc compile --per-channel --neft nit``: the scales DeviceNoise computed during
    fine-tuning are the layout's scales. The learning rate is tiny so the weights (and with them
    the scales) move by less than the tolerance during training."""
    torch.manual_seed(0)
    model = build("lenet", (1, 8, 8), 10).eval()
    path = tmp_path / "lenet.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 1, 8, 8),)), path)
    seen: dict[tuple[int, ...], torch.Tensor] = {}
    original = DeviceNoise.quantize

    def spy(self: DeviceNoise, weight: torch.Tensor):
        q, scales = original(self, weight)
        seen[tuple(weight.shape)] = scales.reshape(-1).detach().clone()
        return q, scales

    monkeypatch.setattr(DeviceNoise, "quantize", spy)
    out = tmp_path / "out"
    assert main(["compile", str(path), "-o", str(out), "-q", "--per-channel", "--neft", "nit",
                 "--data", "digits", "--neft-epochs", "1", "--neft-lr", "1e-9"]) == 0
    capsys.readouterr()
    layout = load_layout(out)
    assert layout.doc.options.per_channel
    assert "quantize{per-channel=true" in layout.doc.options.pipeline
    state = model.state_dict()
    for name in layout.layer_names:
        shape = tuple(state[name + ".weight"].shape)
        chip = layout.scales(name).astype(np.float64)
        assert len(np.unique(chip)) > 1, name  # per channel: a per-layer scale would differ
        # lr 1e-9 over one epoch moves max|W| by < 1e-6 relative.
        np.testing.assert_allclose(seen[shape].numpy(), chip, rtol=1e-5, atol=0, err_msg=name)


def test_cli_pipeline_text_and_flags_set_the_same_passes(capsys, tmp_path, exported_cnn) -> None:
    out = tmp_path / "out"
    assert main(["compile", str(exported_cnn), "-o", str(out), "-q", "--no-replicate",
                 "--pipeline", "normalize,quantize{calibration=percentile},bit-slice,map-tiles,"
                 "place{strategy=in-order}"]) == 0
    options = load_layout(out).doc.options
    assert parse_pipeline(options.pipeline) == default_pipeline(
        calibration="percentile", placement="in-order", replicate=False)
    assert (options.calibration, options.placement, options.replicate) == (
        "percentile", "in-order", False)
    # The layout's record is a pipeline the CLI takes back: same layout bytes.
    again = tmp_path / "again"
    assert main(["compile", str(exported_cnn), "-o", str(again), "-q",
                 "--pipeline", options.pipeline]) == 0
    assert (out / "layout.json").read_bytes() == (again / "layout.json").read_bytes()


@pytest.mark.parametrize("pipeline, needle", [
    ("normalize,inject-noise{sigma=0.1},quantize,bit-slice,map-tiles,place",
     "'quantize' cannot run on a graph with noisy-weights; run strip-training before it"),
    ("normalize,quantize,bit-slice,map-tiles", "has 0 'place' passes"),
    ("normalize,quantise", "Did you mean 'quantize'?"),
])
def test_cli_bad_pipeline_is_one_error_line(capsys, tmp_path, exported_cnn, pipeline,
                                            needle) -> None:
    code = main(["compile", str(exported_cnn), "-o", str(tmp_path / "out"), "-q",
                 "--pipeline", pipeline])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
