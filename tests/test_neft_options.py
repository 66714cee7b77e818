"""NeFT training options of issue 13: the loss temperature, --beta 0 as the no-feedback control,
the comparable cross-entropy (``TrainLog.ce_losses``), mode ``ovf+irs``, the training-sigma
schedule, BatchNorm statistics learned under the noise (``--bn-stats train``) and
``train --from-scratch``.

The loss values are checked against an independent computation: a copy of the graph, its noise
modules given a generator seeded as fine-tuning seeds its own, one forward of the whole (one-batch)
training set, and the formula of docs/neft.md written out. With one batch and one epoch the logged
loss is that of the first step, computed before the optimiser moves anything."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import SmallBnCNN
from torch import nn

from neftc.cli.main import main
from neftc.datasets.base import Split
from neftc.datasets.digits import load_digits
from neftc.frontend.trace import trace_module
from neftc.frontend.zoo import build
from neftc.ir.pass_manager import PassContext, PassManager
from neftc.neft.batchnorm import batch_norm_nodes
from neftc.neft.finetune import finetune, scheduled_sigma
from neftc.neft.modules import FeedbackHead, WeightNoise
from neftc.neft.pipeline import NeftSettings
from neftc.passes import Normalize
from neftc.passes.inject_noise import InjectNoise
from neftc.passes.insert_feedback import PLAN_KEY, InsertFeedback
from neftc.passes.strip_training import StripTraining

SIGMA = 0.2
SEED = 3
TOL = dict(rel=1e-5, abs=1e-6)


@pytest.fixture(scope="module")
def small() -> Split:
    data = load_digits().train
    return Split(data.x[:64], data.y[:64])


def lenet(target, passes, model: nn.Module | None = None
          ) -> tuple[torch.fx.GraphModule, PassContext]:
    """LeNet's normalised graph (``model``, default: untrained, seed 0) after ``passes``."""
    torch.manual_seed(0)
    example = torch.randn(1, 1, 8, 8)
    ctx = PassContext(target, example)
    model = build("lenet", (1, 8, 8), 10) if model is None else model
    gm = PassManager([Normalize()]).run(trace_module(model, example), ctx)
    return PassManager(passes).run(gm, ctx), ctx


def seeded(gm: torch.fx.GraphModule, seed: int = SEED) -> torch.fx.GraphModule:
    """A copy of ``gm`` in training mode whose noise modules draw from one generator seeded
    ``seed``, as :func:`finetune` seeds them."""
    ref = copy.deepcopy(gm).train()
    generator = torch.Generator().manual_seed(seed)
    for module in ref.modules():
        if isinstance(module, WeightNoise):
            module.generator = generator
    return ref


def first_step(gm: torch.fx.GraphModule, data: Split, **options):
    """The logged objective and noisy cross-entropy of one full-batch step."""
    log = finetune(gm, data, sigma=SIGMA, epochs=1, batch_size=len(data), seed=SEED,
                   progress=False, **options)
    return log.losses[0], log.ce_losses[0]


@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_temperature_divides_the_logits(fefet, small, trained_lenet, temperature) -> None:
    gm, _ = lenet(fefet, [InjectNoise(sigma=SIGMA), InsertFeedback("nit", 0.0, SIGMA, 10)],
                  trained_lenet.model())
    with torch.no_grad():
        out = seeded(gm)(small.x)
    loss, ce = first_step(gm, small, temperature=temperature)
    assert loss == pytest.approx(float(F.cross_entropy(out / temperature, small.y)), **TOL)
    assert ce == pytest.approx(float(F.cross_entropy(out, small.y)), **TOL)
    if temperature != 1.0:
        assert abs(loss - ce) > 1e-3  # the temperature did change the objective


def test_default_temperature_is_n_plus_one_and_settings_resolve_it() -> None:
    assert NeftSettings("nit", "digits").resolved_temperature() == 4.0  # measured default
    # ... for fine-tuning; from scratch plain NIT measured better (docs/results.md)
    assert NeftSettings("nit", "digits").resolved_temperature(from_scratch=True) == 1.0
    assert NeftSettings("nit", "digits", temperature=4).resolved_temperature(True) == 4.0
    assert NeftSettings("ovf", "digits").resolved_temperature(from_scratch=True) == 4.0
    assert NeftSettings("none", "digits").resolved_temperature() == 1.0
    assert NeftSettings("ovf", "digits").resolved_temperature() == 4.0
    assert NeftSettings("irs", "digits", taps=2).resolved_temperature() == 3.0
    assert NeftSettings("ovf+irs", "digits").resolved_temperature() == 7.0
    assert NeftSettings("ovf", "digits", temperature=1.5).resolved_temperature() == 1.5
    assert NeftSettings("ovf+irs", "digits").resolved_beta() == 1e-2


@pytest.mark.parametrize("mode", ["ovf", "irs"])
def test_beta_zero_is_nit_at_the_mode_temperature(fefet, small, mode) -> None:
    """With beta 0 the objective of ovf/irs is CE(out / (N + 1), y) of the backbone's forward:
    NIT at the mode's temperature (the feedback forwards only cost time)."""
    gm, _ = lenet(fefet, [InjectNoise(sigma=SIGMA), InsertFeedback(mode, 0.0, SIGMA, 10)])
    with torch.no_grad():
        out = seeded(gm)(small.x)  # the first forward: the backbone (IRS heads draw inside it)
    loss, ce = first_step(gm, small)
    assert loss == pytest.approx(float(F.cross_entropy(out / 4, small.y)), **TOL)
    assert ce == pytest.approx(float(F.cross_entropy(out, small.y)), **TOL)


def test_ovf_plus_irs_has_both_feedback_terms(fefet, small, trained_lenet) -> None:
    beta = 0.5
    gm, _ = lenet(fefet, [InjectNoise(sigma=SIGMA), InsertFeedback("ovf+irs", beta, SIGMA, 10,
                                                                    taps=2)],
                  trained_lenet.model())
    plan = gm.meta[PLAN_KEY]
    assert plan.sigma_offsets == (0.15, 0.10, 0.05) and len(plan.heads) == 2
    assert plan.gammas == (1.0, 0.1, 0.01, 1.0, 0.1)
    ref = seeded(gm)
    noise = [m for m in ref.modules() if isinstance(m, WeightNoise)]
    heads = [m for m in ref.modules() if isinstance(m, FeedbackHead)]
    with torch.no_grad():
        for m in noise:
            m.sigma = SIGMA
        out = ref(small.x)
        irs = [head.logits for head in heads]
        ovf = []
        for head in heads:
            head.active = False
        for offset in (0.15, 0.10, 0.05):
            for m in noise:
                m.sigma = SIGMA + offset
            ovf.append(ref(small.x))
    feedback = ovf[0] + 0.1 * ovf[1] + 0.01 * ovf[2] + irs[0] + 0.1 * irs[1]
    expected = F.cross_entropy((out - beta * feedback) / 6, small.y)
    without_irs = F.cross_entropy((out - beta * (feedback - irs[0] - 0.1 * irs[1])) / 6,
                                  small.y)
    loss, ce = first_step(gm, small)
    assert loss == pytest.approx(float(expected), **TOL)
    assert abs(float(expected) - float(without_irs)) > 1e-3  # the IRS terms count
    assert ce == pytest.approx(float(F.cross_entropy(out, small.y)), **TOL)


def test_ovf_plus_irs_forwards_and_heads(fefet, small) -> None:
    """Four forwards per step (backbone, then three OVF ones at sigma + offset); the heads compute
    their logits in the backbone's forward only. strip-training removes them."""
    gm, ctx = lenet(fefet, [InjectNoise(sigma=SIGMA),
                            InsertFeedback("ovf+irs", 1e-2, SIGMA, 10, taps=2)])
    seen: list[float] = []
    calls: list[bool] = []
    backbone = next(m for name, m in gm.named_modules() if name.startswith("neft_noise_"))
    backbone.register_forward_pre_hook(lambda module, _: seen.append(round(module.sigma, 6)))
    head = next(m for m in gm.modules() if isinstance(m, FeedbackHead))
    head.noise1.register_forward_pre_hook(lambda *_: calls.append(True))
    head.register_forward_pre_hook(lambda module, _: calls.append(False))
    finetune(gm, small, sigma=SIGMA, epochs=1, batch_size=len(small), progress=False)
    assert seen == [0.2, 0.35, 0.3, 0.25]
    # The head is called in each of the 4 forwards, computes its logits in the first only.
    assert calls == [False, True, False, False, False]
    gm = PassManager([StripTraining()]).run(gm, ctx)
    assert not any(isinstance(m, (FeedbackHead, WeightNoise)) for m in gm.modules())


def test_head_computes_only_when_active() -> None:
    from neftc.neft.modules import DeviceNoise
    from neftc.targets import resolve_target

    noise = DeviceNoise.of(resolve_target("fefet_128x128"))
    head = FeedbackHead(4, 2, 2, 8, 3, noise, 0.0, torch.Generator().manual_seed(0)).train()
    x = torch.randn(2, 4, 4, 4)
    head(x)
    first = head.logits
    head.active = False
    assert torch.equal(head(x), x) and head.logits is first


def test_ramp_schedule_values() -> None:
    steps = 8
    assert [scheduled_sigma("ramp", 0.4, k, steps) for k in range(steps)] == pytest.approx(
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4])
    assert [scheduled_sigma("constant", 0.4, k, steps) for k in range(steps)] == [0.4] * 8
    assert scheduled_sigma("ramp", 0.4, 0, 1) == 0.0  # one step: sigma 0 (R = 1)


@pytest.mark.parametrize("mode, expected", [
    # 2 epochs x 2 batches = 4 steps, R = 2: sigma 0, 0.1, 0.2, 0.2 (OVF offsets on top).
    ("nit", [0.0, 0.1, 0.2, 0.2]),
    ("ovf", [0.0, 0.15, 0.1, 0.05, 0.1, 0.25, 0.2, 0.15, 0.2, 0.35, 0.3, 0.25,
             0.2, 0.35, 0.3, 0.25]),
])
def test_ramp_schedule_in_fine_tuning(fefet, small, mode, expected) -> None:
    gm, _ = lenet(fefet, [InjectNoise(sigma=SIGMA), InsertFeedback(mode, 1e-3, SIGMA, 10)])
    seen: list[float] = []
    noise = next(m for m in gm.modules() if isinstance(m, WeightNoise))
    noise.register_forward_pre_hook(lambda module, _: seen.append(round(module.sigma, 6)))
    finetune(gm, small, sigma=SIGMA, epochs=2, batch_size=32, progress=False,
             sigma_schedule="ramp")
    assert seen == pytest.approx(expected)


def tiny_bn_graph(target) -> tuple[torch.fx.GraphModule, PassContext]:
    torch.manual_seed(0)
    model = SmallBnCNN().eval()
    example = torch.randn(1, 1, 8, 8)
    ctx = PassContext(target, example)
    gm = PassManager([Normalize()]).run(trace_module(model, example), ctx)
    return PassManager([InjectNoise(sigma=SIGMA), InsertFeedback("nit", 0.0, SIGMA, 10)]).run(
        gm, ctx), ctx


def running_stats(gm: torch.fx.GraphModule) -> list[torch.Tensor]:
    return [b.detach().clone() for name, b in gm.named_buffers()
            if "running" in name or "mean" in name or "var" in name]


def test_bn_stats_train_learns_running_stats_frozen_keeps_them(fefet, small) -> None:
    codes = {}
    for stats in ("frozen", "train"):
        gm, ctx = tiny_bn_graph(fefet)
        nodes = batch_norm_nodes(gm)
        assert len(nodes) == 1 and nodes[0].args[5] is False
        before = running_stats(gm)
        assert len(before) == 2  # the mean and the variance buffer
        finetune(gm, small, sigma=SIGMA, epochs=1, batch_size=32, progress=False,
                 bn_stats=stats)
        after = running_stats(gm)
        if stats == "frozen":
            assert all(torch.equal(a, b) for a, b in zip(before, after))
        else:
            # The batch statistics of the digits' conv activations (of order 1, far from the
            # initial mean 0 / variance 1): momentum 0.1 over 2 steps moves them by > 1e-3.
            assert all(float((a - b).abs().max()) > 1e-3 for a, b in zip(before, after))
        assert batch_norm_nodes(gm)[0].args[5] is False  # restored
        codes[stats] = PassManager([StripTraining()]).run(gm, ctx).code
    assert codes["frozen"] == codes["train"]


def test_settings_refuse_bad_values() -> None:
    from neftc.errors import NeftcError

    NeftSettings("ovf", "digits", beta=0.0).validate()  # the control is allowed
    with pytest.raises(NeftcError, match="no-feedback control"):
        NeftSettings("ovf", "digits", beta=-1e-3).validate()
    for bad in (0.0, -1.0, float("nan"), 1e9):
        with pytest.raises(NeftcError, match="--temperature"):
            NeftSettings("nit", "digits", temperature=bad).validate()
    with pytest.raises(NeftcError, match="sigma schedule"):
        NeftSettings("nit", "digits", sigma_schedule="cosine").validate()  # type: ignore
    with pytest.raises(NeftcError, match="BatchNorm"):
        NeftSettings("nit", "digits", bn_stats="eval").validate()  # type: ignore


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("mlp") / "mlp.pt2"
    assert main(["train", "mlp", "--data", "digits", "--epochs", "1", "-o", str(path),
                 "-q"]) == 0
    return str(path)


@pytest.mark.parametrize("flags, message", [
    (["--beta", "-0.01"], "--beta 0 is the no-feedback control"),
    (["--temperature", "-2"], "--temperature must be a finite number > 0"),
    (["--temperature", "0"], "--temperature must be a finite number > 0"),
])
def test_cli_refuses_negative_beta_and_temperature(tmp_path, capsys, mlp_file, flags,
                                                   message) -> None:
    for argv in (["finetune", mlp_file, "-o", str(tmp_path / "t.pt2")],
                 ["train", "mlp", "-o", str(tmp_path / "m.pt2")],
                 ["compile", mlp_file, "-o", str(tmp_path / "out")]):
        code = main([*argv, "--neft", "ovf", *flags, "-q"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)
    assert list(tmp_path.iterdir()) == []


def test_cli_prints_the_comparable_loss(tmp_path, capsys, mlp_file) -> None:
    assert main(["finetune", mlp_file, "--neft", "ovf+irs", "--irs-taps", "1",
                 "--neft-epochs", "1", "--beta", "0", "-o", str(tmp_path / "t.pt2"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "final ovf+irs objective" in out and "final noisy cross-entropy" in out
    assert "comparable across modes" in out


def test_compile_records_the_new_settings(tmp_path, capsys, mlp_file) -> None:
    out = tmp_path / "out"
    assert main(["compile", mlp_file, "--neft", "nit", "--neft-epochs", "1", "--temperature",
                 "4", "--sigma-schedule", "ramp", "--bn-stats", "train", "-o", str(out)]) == 0
    assert "final noisy cross-entropy" in capsys.readouterr().err
    neft = json.loads((out / "layout.json").read_text())["options"]["neft"]
    assert (neft["mode"], neft["temperature"], neft["sigma_schedule"], neft["bn_stats"]) == (
        "nit", 4.0, "ramp", "train")
    # Two losses: the objective CE(out / 4), and CE(out), comparable across modes.
    assert neft["final_ce"] > 0 and abs(neft["final_loss"] - neft["final_ce"]) > 1e-3


def test_train_from_scratch(tmp_path, capsys) -> None:
    path = tmp_path / "scratch.pt2"
    assert main(["train", "lenet", "--data", "digits", "--epochs", "2", "--neft", "nit",
                 "--from-scratch", "-o", str(path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "trained lenet from scratch with NeFT nit" in out and "fine-tuned" not in out
    # From scratch NIT's default temperature is 1: its objective is the plain cross-entropy.
    objective, ce = re.search(r"final nit objective ([0-9.]+), final noisy cross-entropy "
                              r"([0-9.]+)", out).groups()
    assert objective == ce
    program = torch.export.load(str(path))
    x = load_digits().test.x[:5]
    assert program.module()(x).shape == (5, 10)
    assert main(["compile", str(path), "-o", str(tmp_path / "out"), "-q"]) == 0
    code = main(["train", "lenet", "--from-scratch", "-o", str(tmp_path / "x.pt2"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "--from-scratch" in err and "Traceback" not in err


def test_bn_stats_train_skips_a_batch_of_one(fefet, small) -> None:
    """aten.batch_norm in training mode on one value per channel writes NaN into the running
    variance without an error: a last batch of one sample is skipped (the running statistics
    stay finite), and batches of one sample are refused before training, naming the fix."""
    from neftc.errors import NeftcError

    gm, _ = tiny_bn_graph(fefet)
    odd = Split(small.x[:33], small.y[:33])
    log = finetune(gm, odd, sigma=SIGMA, epochs=2, batch_size=32, progress=False,
                   bn_stats="train")
    assert log.steps == 2  # one batch of 32 per epoch; the batch of one is skipped
    assert all(bool(torch.isfinite(s).all()) for s in running_stats(gm))
    before = running_stats(gm)
    with pytest.raises(NeftcError, match="--neft-batch-size 2"):
        finetune(gm, odd, sigma=SIGMA, epochs=1, batch_size=1, progress=False, bn_stats="train")
    assert all(torch.equal(a, b) for a, b in zip(before, running_stats(gm)))
    log = finetune(gm, odd, sigma=SIGMA, epochs=1, batch_size=32, progress=False,
                   bn_stats="frozen")
    assert log.steps == 2  # frozen statistics: every batch trains


def test_train_neft_is_from_scratch_unless_fine_tune(tmp_path, capsys) -> None:
    """Since issue 13 ``train --neft MODE`` trains from scratch (it won on real data);
    ``--fine-tune`` trains plainly first, then fine-tunes; the two flags exclude each other."""
    assert main(["train", "mlp", "--data", "digits", "--epochs", "1", "--neft", "nit",
                 "-o", str(tmp_path / "a.pt2"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "from scratch with NeFT nit" in out and "fine-tuned" not in out
    assert main(["train", "mlp", "--data", "digits", "--epochs", "1", "--neft", "nit",
                 "--fine-tune", "--neft-epochs", "1", "-o", str(tmp_path / "b.pt2"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuned with NeFT nit" in out and "from scratch" not in out
    code = main(["train", "mlp", "--neft", "nit", "--fine-tune", "--from-scratch",
                 "-o", str(tmp_path / "c.pt2"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "exclude each other" in err and "Traceback" not in err
    assert not (tmp_path / "c.pt2").exists()
