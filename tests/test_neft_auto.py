"""``--neft auto`` (neftc.neft.auto): the validation split is carved from the training data only,
the candidates meet the same simulated chips, the winner is the best validation score, and the
choice is recorded in the layout and printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neftc.cli.main import main
from neftc.datasets.base import Split
from neftc.frontend.trace import trace_module
from neftc.ir.pass_manager import PassContext, PassManager
from neftc.neft.auto import CANDIDATES, carve_validation, noisy_accuracies, resolve
from neftc.neft.modules import DeviceNoise
from neftc.neft.pipeline import NEFT_MODES, NeftSettings
from neftc.neft.train import accuracy
from neftc.passes import Normalize


def _split(count: int) -> Split:
    return Split(torch.arange(count, dtype=torch.float32).reshape(count, 1),
                 torch.zeros(count, dtype=torch.int64))


def test_validation_is_a_seeded_disjoint_part_of_the_training_data() -> None:
    train, validation = carve_validation(_split(1000), 0.1, seed=4)
    assert (len(train), len(validation)) == (900, 100)
    seen = torch.cat([train.x, validation.x]).flatten().sort().values
    assert torch.equal(seen, torch.arange(1000, dtype=torch.float32))  # disjoint and complete
    again = carve_validation(_split(1000), 0.1, seed=4)[1]
    assert torch.equal(again.x, validation.x)
    other = carve_validation(_split(1000), 0.1, seed=5)[1]
    assert not torch.equal(other.x, validation.x)


def test_too_little_training_data_is_refused() -> None:
    from neftc.errors import DataError

    with pytest.raises(DataError, match="too few"):
        carve_validation(_split(50), 0.1, seed=0)


def _graph(model: torch.nn.Module, example: torch.Tensor, target
           ) -> tuple[torch.fx.GraphModule, PassContext]:
    ctx = PassContext(target, example)
    return PassManager([Normalize()]).run(trace_module(model, example), ctx), ctx


def test_noisy_accuracies_draw_the_chip_noise(trained_lenet, fefet) -> None:
    """Noise off, every chip has the float accuracy; with noise, the chips are the same on every
    call (seeded per chip), differ from each other, and the accuracy falls with sigma."""
    data = trained_lenet.data
    gm, _ = _graph(trained_lenet.model(), data.test.x[:1], fefet)
    noise = DeviceNoise.of(fefet)
    clean = noisy_accuracies(gm, data.test, noise, 0.0, chips=3, seed=0)
    assert clean == (pytest.approx(accuracy(gm, data.test)),) * 3
    first = noisy_accuracies(gm, data.test, noise, 0.3, chips=4, seed=0)
    assert noisy_accuracies(gm, data.test, noise, 0.3, chips=4, seed=0) == first
    assert len(set(first)) > 1
    worse = noisy_accuracies(gm, data.test, noise, 0.6, chips=4, seed=0)
    assert sum(worse) < sum(first) < sum(clean)


def test_resolve_scores_every_candidate_and_picks_the_best(trained_lenet, fefet) -> None:
    data = trained_lenet.data
    example = data.test.x[:1]
    gm, ctx = _graph(trained_lenet.model(), example, fefet)
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    facts = set(ctx.facts)
    lines: list[str] = []
    settings = NeftSettings(mode="auto", data="digits", epochs=1, sigma=0.3, auto_epochs=1,
                            auto_chips=2)
    chosen, choice = resolve(gm, ctx, settings, report=lines.append)
    assert choice is not None
    assert len(choice.scores) == len(CANDIDATES)
    assert choice.winner.mean == max(s.mean for s in choice.scores)
    assert chosen.mode in NEFT_MODES and chosen.mode == choice.winner.overrides["mode"]
    assert chosen.sigma == choice.winner.train_sigma
    assert chosen.epochs == 1 and chosen.data == "digits"
    assert all(len(s.accuracies) == 2 for s in choice.scores)
    assert lines[0].startswith("auto: 6 candidates x 1 epochs") and lines[-1].startswith(
        "auto: chose")
    # the normalised graph handed in is not trained in place
    assert all(torch.equal(before[k], v) for k, v in gm.state_dict().items())
    assert ctx.facts == facts
    # a chosen mode passes through unchanged
    plain = NeftSettings(mode="nit", data="digits")
    assert resolve(gm, ctx, plain) == (plain, None)


def test_compile_neft_auto_records_the_choice(tmp_path: Path, trained_lenet, capsys) -> None:
    data = trained_lenet.data
    model_file = tmp_path / "lenet.pt2"
    program = torch.export.export(trained_lenet.model(), (data.test.x[:1],))
    torch.export.save(program, model_file)
    out = tmp_path / "out"
    code = main(["compile", str(model_file), "--target", "fefet6_128x128", "-o", str(out),
                 "--neft", "auto", "--data", "digits", "--neft-epochs", "1",
                 "--auto-epochs", "1", "--auto-chips", "2", "--train-sigma", "0.3"])
    assert code == 0
    err = capsys.readouterr().err
    assert "auto: chose" in err
    neft = json.loads((out / "layout.json").read_text())["options"]["neft"]
    assert neft["mode"] in NEFT_MODES
    assert len(neft["auto"]["candidates"]) == len(CANDIDATES)
    assert neft["auto"]["chosen"].startswith(f"mode {neft['mode']}")
    best = max(c["validation_accuracy"] for c in neft["auto"]["candidates"])
    chosen = [c for c in neft["auto"]["candidates"] if c["settings"] == neft["auto"]["chosen"]]
    assert chosen[0]["validation_accuracy"] == best


def test_auto_is_not_for_training_from_scratch(tmp_path: Path, capsys) -> None:
    code = main(["train", "lenet", "--data", "digits", "-o", str(tmp_path / "m.pt2"),
                 "--neft", "auto", "--from-scratch", "--epochs", "1"])
    assert code != 0
    assert "--from-scratch" in capsys.readouterr().err
    assert not (tmp_path / "m.pt2").exists()


def test_auto_budget_is_bounded(capsys) -> None:
    code = main(["finetune", "model.pt2", "--target", "fefet6_128x128", "--neft", "auto",
                 "--auto-chips", "0", "-o", "x.pt2"])
    assert code == 2
    assert "--auto-chips" in capsys.readouterr().err

