"""NeFT: training noise = chip noise, feedback points, the loss, fine-tuning, CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neftc.cli.main import main
from neftc.datasets.digits import load_digits
from neftc.errors import NeftcError, PassError
from neftc.frontend.trace import trace_module
from neftc.frontend.zoo import build
from neftc.ir.node_info import crossbar_nodes
from neftc.ir.pass_manager import PassContext, PassManager
from neftc.neft.finetune import finetune, neft_loss
from neftc.neft.modules import DeviceNoise, FeedbackHead, WeightNoise, cell_weight_std
from neftc.neft.pipeline import NeftSettings
from neftc.passes import Normalize
from neftc.passes.inject_noise import InjectNoise
from neftc.passes.insert_feedback import PLAN_KEY, InsertFeedback
from neftc.passes.strip_training import StripTraining
from neftc.targets import resolve_target
from neftc.targets.device_model import normalisation


def normalized(module: nn.Module, example: torch.Tensor, target):
    ctx = PassContext(target, example)
    return PassManager([Normalize()]).run(trace_module(module, example), ctx), ctx


@pytest.fixture
def lenet_graph(fefet):
    torch.manual_seed(0)
    example = torch.randn(1, 1, 8, 8)
    return normalized(build("lenet", (1, 8, 8), 10), example, fefet)


def test_inject_noise_structure_and_eval_identity(lenet_graph) -> None:
    gm, ctx = lenet_graph
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        before = gm(x)
    gm = PassManager([InjectNoise(sigma=0.1)]).run(gm, ctx)
    nodes = crossbar_nodes(gm)
    assert all(n.args[1].op == "call_module" and str(n.args[1].target).startswith("neft_noise_")
               for n in nodes)
    assert len([m for m in gm.modules() if isinstance(m, WeightNoise)]) == len(nodes) == 5
    gm.eval()
    with torch.no_grad():
        assert torch.equal(gm(x), before)  # eval mode: exactly the model
    assert not InjectNoise(sigma=0.1).run(gm, ctx).modified  # idempotent
    assert InjectNoise(sigma=0.2).run(gm, ctx).modified  # a new sigma is applied


def test_training_noise_has_the_chip_variance(fefet) -> None:
    target = resolve_target("fefet6_128x128")
    noise = DeviceNoise.of(target)
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    module = WeightNoise(noise, sigma=0.2)
    module.generator = torch.Generator().manual_seed(1)
    draws = torch.stack([module(weight) - weight for _ in range(400)])
    scale = weight.abs().max() / target.qmax
    q = torch.clamp(torch.round(weight / scale), -target.qmax, target.qmax)
    expected = cell_weight_std(q, bits=8, cell_bits=2, encoding="differential",
                               sigma=0.2, state_ratio=6.0) * scale
    # 400 draws x 2048 weights: the pooled std is within 3 % (its sampling error is ~0.2 %).
    assert abs(math.sqrt(draws.var(dim=0).mean() / (expected**2).mean()) - 1) < 0.03


def test_training_noise_paper_mode() -> None:
    target = resolve_target("rram1_128x128")
    module = WeightNoise(DeviceNoise.of(target, mode="paper"), sigma=0.3)
    module.generator = torch.Generator().manual_seed(2)
    weight = torch.rand(16, 16) * 0.2 + 0.8  # all in the top band: no state dependence
    draws = torch.stack([module(weight) - weight for _ in range(400)])
    # docs/neft.md: std = sigma' (L-1) sqrt(sum_s L^(2s)) / qmax * max|W| (0.7776 sigma' max|W|
    # for 8 bits on four 2-bit cells), derived here from the target's numbers.
    levels = 2**target.cell.bits
    factor = (levels - 1) * math.sqrt(sum(levels ** (2 * s) for s in range(target.slices)))
    expected = factor / target.qmax * 0.3 / normalisation(1.0) * float(weight.abs().max())
    assert abs(float(draws.std()) / expected - 1) < 0.03


def test_ovf_plan(lenet_graph) -> None:
    gm, ctx = lenet_graph
    passes = [InjectNoise(sigma=0.1), InsertFeedback("ovf", beta=1e-3, sigma=0.1, num_classes=10)]
    gm = PassManager(passes).run(gm, ctx)
    plan = gm.meta[PLAN_KEY]
    assert plan.sigma_offsets == (0.15, 0.10, 0.05) and plan.gammas == (1.0, 0.1, 0.01)


def test_irs_heads_and_strip_restores_deployed_graph(lenet_graph) -> None:
    gm, ctx = lenet_graph
    deployed_code = gm.code
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        deployed_out = gm(x)
    passes = [InjectNoise(sigma=0.1), InsertFeedback("irs", beta=1e-2, sigma=0.1, num_classes=10)]
    gm = PassManager(passes).run(gm, ctx)
    heads = [m for m in gm.modules() if isinstance(m, FeedbackHead)]
    assert len(heads) == 3
    gm.train()
    for m in gm.modules():
        if isinstance(m, WeightNoise):
            m.generator = torch.Generator().manual_seed(0)
    gm(x)
    assert all(h.logits is not None and h.logits.shape == (5, 10) for h in heads)
    gm = PassManager([StripTraining()]).run(gm, ctx)
    assert gm.code == deployed_code  # the deployed graph is exactly the model's own
    assert PLAN_KEY not in gm.meta
    assert not any(isinstance(m, (FeedbackHead, WeightNoise)) for m in gm.modules())
    gm.eval()
    with torch.no_grad():
        assert torch.equal(gm(x), deployed_out)
    assert not StripTraining().run(gm, ctx).modified  # nothing left to strip


def test_irs_named_taps_and_errors(lenet_graph) -> None:
    gm, ctx = lenet_graph
    manager = PassManager([InjectNoise(sigma=0.1),
                           InsertFeedback("irs", 1e-2, 0.1, 10, taps=("relu_1",))])
    gm = manager.run(gm, ctx)
    assert len([m for m in gm.modules() if isinstance(m, FeedbackHead)]) == 1
    gm2, ctx2 = normalized(build("mlp", (1, 8, 8), 10), torch.randn(1, 1, 8, 8), ctx.target)
    with pytest.raises(PassError, match="IRS taps"):
        PassManager([InjectNoise(sigma=0.1), InsertFeedback("irs", 1e-2, 0.1, 10, taps=5)]).run(
            gm2, ctx2)
    gm3, ctx3 = normalized(build("mlp", (1, 8, 8), 10), torch.randn(1, 1, 8, 8), ctx.target)
    with pytest.raises(PassError, match="not in the graph"):
        PassManager([InjectNoise(sigma=0.1), InsertFeedback("irs", 1e-2, 0.1, 10,
                                                            taps=("nope",))]).run(gm3, ctx3)


def test_neft_loss_formula() -> None:
    out = torch.randn(4, 3)
    f1, f2 = torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    beta = 0.5
    expected = F.cross_entropy((out - beta * (1.0 * f1 + 0.1 * f2)) / 3, y)
    assert torch.allclose(neft_loss(out, [f1, f2], (1.0, 0.1), beta, y), expected)


def test_ovf_runs_three_extra_forwards_at_larger_sigma(lenet_graph) -> None:
    gm, ctx = lenet_graph
    gm = PassManager([InjectNoise(sigma=0.2),
                      InsertFeedback("ovf", 1e-3, 0.2, 10)]).run(gm, ctx)
    seen: list[float] = []
    noise = next(m for m in gm.modules() if isinstance(m, WeightNoise))
    noise.register_forward_pre_hook(lambda module, _: seen.append(round(module.sigma, 6)))
    data = load_digits().train
    small = type(data)(data.x[:64], data.y[:64])
    finetune(gm, small, sigma=0.2, epochs=1, batch_size=64, progress=False)
    assert seen == [0.2, 0.35, 0.3, 0.25]


def test_finetune_is_repeatable(fefet) -> None:
    data = load_digits().train
    small = type(data)(data.x[:256], data.y[:256])
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        gm, ctx = normalized(build("lenet", (1, 8, 8), 10), torch.randn(1, 1, 8, 8), fefet)
        gm = PassManager([InjectNoise(sigma=0.1),
                          InsertFeedback("irs", 1e-2, 0.1, 10)]).run(gm, ctx)
        finetune(gm, small, sigma=0.1, epochs=2, seed=7, progress=False)
        weights.append(torch.cat([p.detach().flatten() for p in gm.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_nit_fine_tuning_trains_under_noise(trained_lenet, fefet) -> None:
    """The mechanism of NIT (its effect on robustness is a result: benchmarks/nit_robustness.py):
    in training mode the weights are noisy (two forwards differ), and fine-tuning lowers the
    loss measured under the same noise draws (the mean over 8 fixed draws on 256 training
    images, the same draws before and after; measured 1.10 -> 0.97, -12 %; the check asks -5 %)."""
    data = trained_lenet.data
    small = type(data.train)(data.train.x[:256], data.train.y[:256])
    gm, ctx = normalized(trained_lenet.model(), small.x[:1], fefet)
    sigma = 0.15
    gm = PassManager([InjectNoise(sigma=sigma)]).run(gm, ctx)

    noise = [m for m in gm.modules() if isinstance(m, WeightNoise)]

    def noisy_loss() -> float:
        gm.train()
        losses = []
        for draw in range(8):
            for index, module in enumerate(noise):
                module.generator = torch.Generator().manual_seed(100 * draw + index)
            with torch.no_grad():
                losses.append(float(F.cross_entropy(gm(small.x), small.y)))
        return sum(losses) / len(losses)

    gm.train()
    for index, module in enumerate(noise):
        module.generator = torch.Generator().manual_seed(index)
    with torch.no_grad():
        assert not torch.equal(gm(small.x[:4]), gm(small.x[:4]))  # the training noise is on
    before = noisy_loss()
    finetune(gm, small, sigma=sigma, epochs=3, seed=0, progress=False)
    after = noisy_loss()
    assert after < 0.95 * before, (before, after)


def test_finetune_and_train_cli(tmp_path, capsys) -> None:
    model = tmp_path / "mlp.pt2"
    assert main(["train", "mlp", "--data", "digits", "--epochs", "3", "-o", str(model),
                 "-q"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    tuned = tmp_path / "tuned.pt2"
    assert main(["finetune", str(model), "--neft", "ovf", "--epochs", "1", "-o", str(tuned),
                 "-q"]) == 0
    assert main(["compile", str(tuned), "-o", str(tmp_path / "out"), "-q"]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_neft_bad_input(tmp_path, capsys, exported_cnn) -> None:
    no_train = tmp_path / "test_only.npz"
    np.savez(no_train, x_test=np.zeros((4, 3, 8, 8), np.float32), y_test=np.zeros(4, np.int64))
    code = main(["compile", str(exported_cnn), "--neft", "nit", "--data", str(no_train),
                 "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no training split" in err and "Traceback" not in err
    code = main(["compile", str(exported_cnn), "--neft", "nit", "--data", "digits",
                 "-o", str(tmp_path / "o")])
    assert code == 2 and "shape" in capsys.readouterr().err  # digits are 1x8x8, model 3x8x8
    with pytest.raises(NeftcError, match="no CUDA"):
        NeftSettings(mode="nit", data="digits", device="cuda").validate()
    assert not (tmp_path / "o").exists()
