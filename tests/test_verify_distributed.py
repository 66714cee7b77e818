"""``neftc verify`` over several processes (torch.distributed, gloo on the CPU): the same per-chip
accuracies and report for any number of processes, and a lost process ends the run with an
error instead of a hang."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from neftc.distributed import DistributedError, Group, group_from_env

#: A run that fails must end within this many seconds of the failure (it would hang otherwise).
ENDS_WITHIN_S = 120


@pytest.fixture
def layout(trained_lenet_layout: Path) -> Path:
    return trained_lenet_layout  # read only: --no-report, and sweeps write their own store


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _verify(layout: Path, *argv: str, launcher: tuple[str, ...] = (sys.executable, "-m"),
            ) -> dict:
    done = subprocess.run([*launcher, "neftc", "verify", str(layout), "--json", "--no-report",
                           *argv], capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    for row in report["results"]:  # wall-clock fields differ run to run
        del row["seconds"], row["trials_per_second"]
    return report


@pytest.mark.parametrize("periphery", [
    ("--ideal-periphery",), pytest.param((), marks=pytest.mark.slow)], ids=["ideal", "dac-adc"])
def test_any_number_of_processes_gives_the_same_report(layout, periphery) -> None:
    """World sizes 1, 2 and 3 (more processes than some ranks have chips at --mc 4 x 3): every
    per-chip accuracy, statistic and the uncertainty are equal to the last bit."""
    argv = ("--mc", "4", "--sigma", "0.1", "--sigma", "0.25", *periphery)
    one = _verify(layout, *argv)
    for workers in (2, 3):
        assert _verify(layout, *argv, "--workers", str(workers)) == one, workers
    accuracies = one["results"][1]["chip_accuracies"]
    assert len(accuracies) == 4 and len(set(accuracies)) > 1  # distinct chips, all reported


def test_torchrun_gives_the_same_report(layout) -> None:
    argv = ("--mc", "5", "--sigma", "0.2", "--ideal-periphery")
    one = _verify(layout, *argv)
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3",
                "--master-port", str(_free_port()), "-m")
    assert _verify(layout, *argv, launcher=torchrun) == one


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
def test_a_killed_worker_stops_the_run(layout) -> None:
    """--workers 2, worker 1 killed mid-run: the command fails naming it, and stops worker 0."""
    run = subprocess.Popen([sys.executable, "-m", "neftc", "verify", str(layout), "--mc", "100000",
                            "--sigma", "0.1", "--ideal-periphery", "--no-report", "-q",
                            "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=_env())
    try:
        _wait_for(lambda: len(_children(run.pid)) == 2)
        workers = _children(run.pid)
        time.sleep(3)  # both started and in the Monte Carlo (or still starting: either way)
        os.kill(workers[1], signal.SIGKILL)
        _, err = run.communicate(timeout=ENDS_WITHIN_S)
    finally:
        run.kill()
    assert run.returncode != 0
    assert "worker process 1 of 2 was killed by signal 9" in err
    assert not Path(f"/proc/{workers[0]}").exists() or \
        Path(f"/proc/{workers[0]}/stat").read_text().split()[2] == "Z"


def test_a_lost_rank_fails_the_others_with_an_error(layout) -> None:
    """Two ranks started as torchrun starts them (env://), rank 1 killed: rank 0 ends with a
    one-line error and exit code 3 within a round of chips (the ranks add up their progress
    after each), not at the end of its 50,000 chips, and without a hang or a traceback."""
    env = _env(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    argv = [sys.executable, "-m", "neftc", "verify", str(layout), "--mc", "100000", "--sigma",
            "0.1", "--ideal-periphery", "--no-report", "-q"]
    ranks = [subprocess.Popen(argv, env={**env, "RANK": str(r)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        time.sleep(6)
        ranks[1].kill()
        _, err = ranks[0].communicate(timeout=ENDS_WITHIN_S)
    finally:
        for rank in ranks:
            rank.kill()
    assert ranks[0].returncode == 3, err
    assert "process 0 of 2" in err and "Traceback" not in err


def test_a_rank_that_never_joins_times_out(layout) -> None:
    env = _env(WORLD_SIZE="2", RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()))
    done = subprocess.run([sys.executable, "-m", "neftc", "verify", str(layout), "--mc", "2",
                           "--no-report", "--dist-timeout", "3"], env=env, capture_output=True,
                          text=True, timeout=ENDS_WITHIN_S)
    assert done.returncode == 3
    assert "could not join the process group" in done.stderr


def test_group_shards_cover_every_item_once() -> None:
    items = list(range(11))
    for world in (1, 2, 3, 11, 12):
        shards = [Group(rank, world).shard(items) for rank in range(world)]
        assert sorted(i for shard in shards for i in shard) == items
        assert all(i % world == rank for rank, shard in enumerate(shards) for i in shard)


@pytest.mark.parametrize("env, message", [
    ({"RANK": "0"}, "WORLD_SIZE is not set"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "not a valid place"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "not an integer"),
])
def test_a_bad_environment_is_refused(env, message) -> None:
    with pytest.raises(DistributedError, match=message):
        group_from_env(env)


def test_no_environment_is_one_process() -> None:
    group = group_from_env({})
    assert (group.rank, group.world, group.is_main, group.distributed) == (0, 1, True, False)
    assert torch.equal(group.sum(torch.ones(3)), torch.ones(3))


def test_workers_under_torchrun_is_refused(layout, capsys, monkeypatch) -> None:
    from neftc.cli.main import main

    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(["verify", str(layout), "--workers", "2", "--no-report"]) == 2
    assert "leave out --workers under torchrun" in capsys.readouterr().err


def test_each_process_gets_its_own_gpu() -> None:
    """torchrun's LOCAL_RANK picks the GPU of a bare ``cuda``; an explicit index is kept."""
    group = group_from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (group.rank, group.local_rank) == (5, 1)
    assert group.device("cuda") == "cuda:1"
    assert group.device("cuda:0") == "cuda:0" and group.device("cpu") == "cpu"
    assert group_from_env({}).device("cuda") == "cuda"


@pytest.mark.parametrize("codes, cause", [
    ([3, -9], (1, -9)),  # rank 0 lost its peer; rank 1 was killed: name the killed one
    ([3, None], (0, 3)),
    ([2, 3, 0], (0, 2)),  # rank 0's own error (a bad input), rank 1 lost it
    ([3, 3], (0, 3)),
])
def test_the_launcher_names_the_cause(codes, cause) -> None:
    from neftc.cli.workers import _cause

    assert _cause(codes) == cause
