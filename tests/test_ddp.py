"""Training and NeFT fine-tuning as several processes (DistributedDataParallel, gloo on the CPU):
each rank's share of an epoch is ``DistributedSampler``'s, the ranks end with one model, a run is
repeatable, world 2 at batch B is one process at batch 2B (without noise), one process trains
exactly as before, and only rank 0 writes.

The multi-process checks run this file as a script (``python tests/test_ddp.py OUT``) in two
processes joined by a ``file://`` rendezvous, as ``--workers`` starts them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SmallBnCNN
from torch import nn

from neftc.datasets.base import Split
from neftc.datasets.digits import load_digits
from neftc.distributed import INIT_ENV, SINGLE, Group, process_group
from neftc.frontend.trace import trace_module
from neftc.frontend.zoo import build
from neftc.ir.pass_manager import PassContext, PassManager
from neftc.neft.finetune import finetune, rank_seed
from neftc.neft.train import epoch_share, train_classifier, train_loop
from neftc.passes import Normalize
from neftc.passes.inject_noise import InjectNoise
from neftc.passes.insert_feedback import InsertFeedback
from neftc.targets import resolve_target

WORLD = 2
#: Samples of the plain-training check (even: no padding, so world 2 x batch B = one batch 2B).
PLAIN_SAMPLES, PLAIN_BATCH = 200, 25
#: Samples of the sampler check (odd: one sample padded in).
SEEN_SAMPLES, SEEN_BATCH, SEEN_EPOCHS = 101, 16, 2


# ------------------------------------------------------------------ what each process runs


def digits(count: int) -> Split:
    data = load_digits().train
    return Split(data.x[:count], data.y[:count])


def plain_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build("mlp", (1, 8, 8), 10)


def neft_graph(mode: str):
    torch.manual_seed(0)
    example = torch.randn(1, 1, 8, 8)
    ctx = PassContext(resolve_target("fefet_128x128"), example)
    gm = PassManager([Normalize()]).run(trace_module(SmallBnCNN().eval(), example), ctx)
    return PassManager([InjectNoise(sigma=0.1), InsertFeedback(mode, 1e-2, 0.1, 10, taps=1)]).run(
        gm, ctx)


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def auto_scores(group: Group) -> tuple[float, ...]:
    """--neft auto's per-chip validation accuracies of a fixed graph (chips split over ranks)."""
    from neftc.neft.auto import noisy_accuracies
    from neftc.neft.modules import DeviceNoise

    example = torch.zeros(1, 1, 8, 8)
    target = resolve_target("fefet_128x128")
    gm = PassManager([Normalize()]).run(trace_module(plain_model().eval(), example),
                                        PassContext(target, example))
    return noisy_accuracies(gm, digits(300), DeviceNoise.of(target), 0.3, chips=5, seed=3,
                            group=group)


def run_rank(out: Path) -> None:
    """One rank's part: plain training, NeFT (ovf+irs, twice from scratch), the samples each
    step of a recording loop drew (written to ``out/rank{r}.pt``), and ``neftc finetune``'s
    job (``finetune_file``: rank 0 writes ``out/written/tuned.pt2``)."""
    from neftc.driver.neft_jobs import finetune_file, save_program
    from neftc.neft.pipeline import NeftSettings

    with process_group("cpu", 120.0) as group:
        plain = train_classifier(plain_model(), digits(PLAIN_SAMPLES), epochs=1, lr=3e-3,
                                 batch_size=PLAIN_BATCH, seed=3, progress=False, group=group)
        tuned = []
        for _ in range(2):  # a run is repeatable: the same weights from the same seed
            gm = neft_graph("ovf+irs")
            log = finetune(gm, digits(120), sigma=0.1, epochs=1, batch_size=32, seed=7,
                           progress=False, group=group)
            tuned.append((state(gm), log.losses))
        seen: list[list[int]] = []
        ids = torch.arange(SEEN_SAMPLES, dtype=torch.float32)[:, None]

        def record(model: nn.Module, x: torch.Tensor,
                   y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            seen[-1].extend(int(v) for v in x[:, 0])
            loss = nn.functional.cross_entropy(model(x), y)
            return loss, loss.detach()

        def new_epoch(epoch: int, loss: float) -> None:
            seen.append([])

        seen.append([])
        train_loop(nn.Linear(1, 3), Split(ids, torch.arange(SEEN_SAMPLES) % 3), record,
                   epochs=SEEN_EPOCHS, lr=1e-3, batch_size=SEEN_BATCH,
                   order=torch.Generator().manual_seed(5), progress=False, on_epoch=new_epoch,
                   group=group)
        model = out / f"mlp{group.rank}.pt2"
        save_program(plain_model().eval(), torch.zeros(1, 1, 8, 8), model)
        written = out / "written"
        written.mkdir(exist_ok=True)
        finetune_file(model, resolve_target("fefet_128x128"),
                      NeftSettings("nit", "digits", epochs=1), written / "tuned.pt2",
                      progress=False, group=group)
        chips = auto_scores(group)
    torch.save({"plain": state(plain), "tuned": tuned, "seen": seen[:SEEN_EPOCHS],
                "chips": chips},
               out / f"rank{group.rank}.pt")


# ------------------------------------------------------------------ tests


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of two processes trained and saw (one launch, shared by the tests below)."""
    out = tmp_path_factory.mktemp("ddp")
    init = (out / "rendezvous").as_uri()
    processes = [subprocess.Popen([sys.executable, __file__, str(out)],
                                  env=_env(RANK=str(rank), WORLD_SIZE=str(WORLD),
                                           **{INIT_ENV: init}),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for rank in range(WORLD)]
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    return [{**torch.load(out / f"rank{rank}.pt"), "out": out} for rank in range(WORLD)]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_epoch_share_is_distributed_samplers() -> None:
    """Independent reference: torch's DistributedSampler (shuffle off) over the permutation."""
    from torch.utils.data import DistributedSampler

    for count, world in ((10, 2), (11, 2), (11, 3), (2, 3), (7, 1)):
        permutation = torch.randperm(count, generator=torch.Generator().manual_seed(count))
        for rank in range(world):
            sampler = DistributedSampler(range(count), num_replicas=world, rank=rank,
                                         shuffle=False)
            expected = permutation[list(sampler)]
            assert torch.equal(epoch_share(permutation, Group(rank, world)), expected)
    permutation = torch.randperm(9)
    assert epoch_share(permutation, SINGLE) is permutation


def test_rank_seeds() -> None:
    assert rank_seed(7, 0) == 7  # one process keeps its noise stream
    seeds = {rank_seed(seed, rank) for seed in (0, 1, 7, 2**62) for rank in range(8)}
    assert len(seeds) == 32 and all(0 <= s < 2**63 for s in seeds)


def test_one_process_trains_as_before() -> None:
    """Values computed on main before DDP (commit 4b81fa8, this test's code): the summed change
    of the weights, to 1e-6 relative (thread counts move it by ~1e-9)."""
    gm = neft_reference_graph()
    before = torch.cat([p.detach().flatten() for p in gm.parameters()]).double()
    data = digits(200)
    log = finetune(gm, data, sigma=0.1, epochs=1, batch_size=48, seed=7, progress=False)
    after = torch.cat([p.detach().flatten() for p in gm.parameters()]).double()
    assert float((after - before).abs().sum()) == pytest.approx(66.65080612065117, rel=1e-6)
    assert log.steps == 5 and log.losses[0] == pytest.approx(2.3026935863494873, rel=1e-6)
    model = plain_model()
    before = torch.cat([p.detach().flatten() for p in model.parameters()]).double()
    train_classifier(model, data, epochs=1, lr=3e-3, batch_size=48, seed=3, progress=False)
    after = torch.cat([p.detach().flatten() for p in model.parameters()]).double()
    assert float((after - before).abs().sum()) == pytest.approx(209.42394477260223, rel=1e-6)


def neft_reference_graph():
    torch.manual_seed(0)
    example = torch.randn(1, 1, 8, 8)
    ctx = PassContext(resolve_target("fefet_128x128"), example)
    gm = PassManager([Normalize()]).run(trace_module(build("lenet", (1, 8, 8), 10), example), ctx)
    return PassManager([InjectNoise(sigma=0.1),
                        InsertFeedback("ovf+irs", 1e-2, 0.1, 10)]).run(gm, ctx)


def test_ranks_see_their_share_of_every_epoch(ranks) -> None:
    for epoch in range(SEEN_EPOCHS):
        seen = [rank["seen"][epoch] for rank in ranks]
        share = -(-SEEN_SAMPLES // WORLD)
        assert [len(s) for s in seen] == [share] * WORLD  # the same number of steps
        assert set(seen[0]) | set(seen[1]) == set(range(SEEN_SAMPLES))  # the whole epoch
        assert len(set(seen[0]) & set(seen[1])) == WORLD * share - SEEN_SAMPLES  # the padding
    assert ranks[0]["seen"][0] != ranks[0]["seen"][1]  # a new order each epoch


def test_ranks_end_with_one_model_and_runs_repeat(ranks) -> None:
    assert _equal(ranks[0]["plain"], ranks[1]["plain"])
    (first, losses), (second, losses_again) = ranks[0]["tuned"]
    assert any(k.endswith("running_mean") for k in first)  # BatchNorm buffers included
    assert _equal(first, second) and losses == losses_again  # repeatable
    for rank in ranks[1:]:
        assert _equal(rank["tuned"][0][0], first)  # every rank holds rank 0's model
        assert rank["tuned"][0][1] == losses  # the loss over all ranks' samples
    # the noise streams differ by rank: the world-2 model is not the one-process one
    gm = neft_graph("ovf+irs")
    finetune(gm, digits(120), sigma=0.1, epochs=1, batch_size=32, seed=7, progress=False)
    alone = state(gm)
    assert alone.keys() == first.keys()
    assert not all(torch.allclose(alone[k].float(), first[k].float()) for k in first)


def test_auto_chips_split_over_ranks_score_as_one_process(ranks) -> None:
    alone = auto_scores(SINGLE)
    assert len(set(alone)) > 1  # distinct chips
    assert all(rank["chips"] == alone for rank in ranks)  # exactly, on every rank


def test_two_processes_average_gradients(ranks) -> None:
    """Without noise or BatchNorm, world 2 at batch B takes the steps of one process at batch
    2B (its batches are the union of the ranks'; the mean of two equal-size means is the mean):
    equal to float rounding."""
    model = train_classifier(plain_model(), digits(PLAIN_SAMPLES), epochs=1, lr=3e-3,
                             batch_size=WORLD * PLAIN_BATCH, seed=3, progress=False)
    for name, value in state(model).items():
        torch.testing.assert_close(ranks[0]["plain"][name], value, rtol=1e-4, atol=1e-5)


def _neftc(cwd: Path, *argv: str, launcher: tuple[str, ...] = (sys.executable, "-m")
           ) -> subprocess.CompletedProcess:
    done = subprocess.run([*launcher, "neftc", *argv], cwd=cwd, capture_output=True, text=True,
                          env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture
def mlp_file(tmp_path) -> Path:
    from neftc.driver.neft_jobs import save_program

    path = tmp_path / "in" / "mlp.pt2"
    path.parent.mkdir()
    save_program(plain_model().eval(), torch.zeros(1, 1, 8, 8), path)
    return path


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_only_rank_0_writes(ranks) -> None:
    written = ranks[0]["out"] / "written"
    assert _files(written) == {"tuned.pt2"}  # nothing else (no partial or temporary file)
    torch.export.load(written / "tuned.pt2")


@pytest.mark.slow
def test_finetune_workers_only_rank_0_writes_and_prints(tmp_path, mlp_file) -> None:
    out = tmp_path / "out"
    out.mkdir()
    done = _neftc(out, "finetune", str(mlp_file), "--neft", "nit", "--neft-epochs", "1",
                  "-o", "tuned.pt2", "-q", "--workers", "2")
    assert _files(out) == {"tuned.pt2"}  # nothing else, from either process
    assert done.stdout.count("fine-tuned with NeFT nit") == 1
    assert "(6 steps" in done.stdout  # 1348 digits / 2 ranks = 674 = 6 batches of 128
    torch.export.load(out / "tuned.pt2")


def test_workers_flags_are_the_same_on_the_training_commands() -> None:
    from neftc.cli.main import build_parser
    from neftc.cli.neft_options import PROCESSES_GROUP

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    declared = []
    for name in ("compile", "finetune", "train"):
        command = sub.choices[name]
        group = next(g for g in command._action_groups if g.title == PROCESSES_GROUP)
        declared.append([(a.option_strings, a.default, a.help, a.type)
                         for a in group._group_actions])
    assert declared[0] == declared[1] == declared[2]
    assert [flags for flags, *_ in declared[0]] == [["--workers"], ["--dist-timeout"],
                                                   ["--threads"]]


def test_workers_refusals(capsys, tmp_path, mlp_file) -> None:
    from neftc.cli.main import main

    assert main(["compile", str(mlp_file), "-o", str(tmp_path / "x"), "--workers", "2"]) != 0
    assert "--workers splits NeFT fine-tuning" in capsys.readouterr().err
    assert main(["finetune", str(mlp_file), "--neft", "nit", "-o", str(tmp_path / "t.pt2"),
                 "--workers", "0"]) != 0
    assert "--workers must be between 1" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_neft_and_train_under_several_processes(tmp_path, mlp_file) -> None:
    """compile --neft --workers 2 writes one layout; train --neft under torchrun one model."""
    out = tmp_path / "out"
    out.mkdir()
    done = _neftc(out, "compile", str(mlp_file), "--neft", "ovf", "--neft-epochs", "1",
                  "-o", "layout", "-q", "--workers", "2")
    assert done.stdout.count("wrote layout/") == 1
    assert {p.split("/")[0] for p in _files(out)} == {"layout"}
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-port", str(_free_port()), "-m")
    done = _neftc(out, "train", "mlp", "--epochs", "1", "--neft", "nit", "-o", "m.pt2", "-q",
                  launcher=torchrun)
    assert done.stdout.count("trained mlp from scratch") == 1
    assert {p.split("/")[0] for p in _files(out)} == {"layout", "m.pt2"}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
def test_a_killed_worker_ends_the_training_and_leaves_no_file(tmp_path, mlp_file) -> None:
    """finetune --workers 2, worker 1 killed mid-training: rank 0 fails at its next gradient
    all-reduce (no hang), the command fails naming worker 1, and no model file is written."""
    import time

    run = subprocess.Popen([sys.executable, "-m", "neftc", "finetune", str(mlp_file), "--neft",
                            "nit", "--neft-epochs", "1000", "-o", "tuned.pt2", "-q",
                            "--workers", "2"], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=_env())
    children = Path(f"/proc/{run.pid}/task/{run.pid}/children")
    try:
        deadline = time.monotonic() + 120
        while len(children.read_text().split()) < WORLD:
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        workers = [int(pid) for pid in children.read_text().split()]
        time.sleep(8)  # both training (or still starting: either way the run must end)
        os.kill(workers[1], 9)
        _, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode != 0
    assert "worker process 1 of 2 was killed by signal 9" in err
    assert not (tmp_path / "tuned.pt2").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    run_rank(Path(sys.argv[1]))
