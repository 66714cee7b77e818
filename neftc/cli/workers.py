"""``--workers K``: run a command as K local processes of one ``torch.distributed`` group, the
one-machine case of ``torchrun --nproc-per-node K -m neftc ...``.

The command re-runs itself K times (``python -m neftc`` with the same arguments, ``--workers``
removed), with ``RANK``/``WORLD_SIZE`` and a ``file://`` rendezvous in a private temporary folder
(``neftc.distributed``). Rank 0 prints and writes what one process would; the others print only
errors. When one process fails, the others are stopped and the command fails with its exit code:
it never hangs on a lost process.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from neftc.bounds import check_number
from neftc.distributed import INIT_ENV, MAX_WORLD, DistributedError
from neftc.errors import NeftcError

#: Seconds the other processes get to stop after one failed, before they are killed.
STOP_GRACE_S = 5.0
#: Most intra-op threads ``--threads`` may ask for.
MAX_THREADS = 1024

#: ``--threads``' help: the default rule, in one place.
THREADS_HELP = ("intra-op threads of each process (default: OMP_NUM_THREADS when set, else the "
                "free cores: the cores this process may use minus the 1-minute load average, "
                "rounded, at least 1, divided among --workers processes). On a busy machine "
                "fewer threads than cores is faster: threads waiting for a busy core stall "
                "every small op")


#: ``--workers``' help where the processes split chip instances (verify, sweep).
SAME_RESULTS_HELP = ("run as K local processes that split the work (torch.distributed, gloo; the "
                     "same results as one process); each gets --threads threads (default: "
                     "OMP_NUM_THREADS, else the free cores / K). Under torchrun, leave it out: "
                     "the processes come from torchrun (default 1)")


def add_workers_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                     workers_help: str = SAME_RESULTS_HELP) -> None:
    """``--workers K`` (with ``workers_help``: what K processes do for this command) and
    ``--dist-timeout S``."""
    parser.add_argument("--workers", type=int, default=1, metavar="K", help=workers_help)
    parser.add_argument("--dist-timeout", type=float, default=1800.0, metavar="S",
                        help="with several processes, fail the run when one waits more than S "
                        "seconds for another (default 1800)")
    add_threads_arg(parser)


def add_threads_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--threads N`` (``THREADS_HELP``; applied by ``use_threads``)."""
    parser.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)


def free_cores() -> int:
    """The cores this process may run on (its affinity) minus the 1-minute load average
    (rounded), at least 1: never more threads than cores other processes leave free."""
    cores = len(os.sched_getaffinity(0))
    try:
        busy = os.getloadavg()[0]
    except OSError:  # no load average on this system: assume idle
        busy = 0.0
    return max(1, min(cores, cores - round(busy)))


def default_threads(workers: int) -> int:
    """The threads of each of ``workers`` processes when ``--threads`` is not given:
    ``OMP_NUM_THREADS`` when set to a positive integer, else ``free_cores() // workers``
    (at least 1)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return min(int(env), MAX_THREADS)
    return max(1, free_cores() // workers)


def use_threads(args: argparse.Namespace) -> int:
    """Check ``--threads`` and set torch's intra-op threads for this process: the flag, else
    ``default_threads`` for the processes of this run (``--workers``, or ``WORLD_SIZE`` under
    torchrun or in a worker). Returns the number used."""
    threads = args.threads
    if threads is None:
        world = os.environ.get("WORLD_SIZE", "")
        workers = int(world) if world.isdigit() and int(world) > 0 else 1
        threads = default_threads(max(workers, getattr(args, "workers", 1)))
    check_number("--threads", threads, 1, MAX_THREADS, integer=True)
    import torch

    torch.set_num_threads(threads)
    return threads


def check_workers(args: argparse.Namespace) -> None:
    """Check ``--workers`` and ``--dist-timeout``, and apply ``--threads`` (``use_threads``)."""
    if not 1 <= args.workers <= MAX_WORLD:
        raise NeftcError(f"--workers must be between 1 and {MAX_WORLD}, got {args.workers}")
    if not 1 <= args.dist_timeout <= 7 * 24 * 3600:
        raise NeftcError(f"--dist-timeout must be between 1 and 604800 seconds, got "
                         f"{args.dist_timeout}")
    if args.workers > 1 and "WORLD_SIZE" in os.environ:
        raise NeftcError("--workers starts its own processes, but this one is already part of "
                         "a process group (WORLD_SIZE is set, e.g. by torchrun); leave out "
                         "--workers under torchrun")
    if hasattr(args, "threads"):
        use_threads(args)


def _without_workers(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--workers K`` / ``--workers=K`` removed."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch(argv: Sequence[str], workers: int, command: str, threads: int | None = None) -> int:
    """Run ``neftc argv`` (``--workers`` removed) as ``workers`` processes; return the exit code
    (0 when all succeed, else the first failure's). Each process gets ``threads`` intra-op
    threads (``--threads``), else ``default_threads(workers)``, as ``OMP_NUM_THREADS``."""
    with tempfile.TemporaryDirectory(prefix="neftc-workers-") as folder:
        rendezvous = Path(folder) / "rendezvous"
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = str(threads if threads is not None else
                                     default_threads(workers))
        env[INIT_ENV] = rendezvous.as_uri()
        env["WORLD_SIZE"] = str(workers)
        processes: list[subprocess.Popen[bytes]] = []
        try:
            for rank in range(workers):
                env.update(RANK=str(rank), LOCAL_RANK=str(rank))
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "neftc", *_without_workers(argv)], env=dict(env),
                    stdout=None if rank == 0 else subprocess.DEVNULL))
            return _wait(processes, command)
        except KeyboardInterrupt:
            _stop(processes)
            raise
        except OSError as exc:
            _stop(processes)
            raise DistributedError(f"could not start the worker processes: {exc}") from None


#: Seconds the launcher lets the other processes fail on their own after the first failure, so
#: that it names the cause (a killed process) rather than a process that lost it as a peer.
SETTLE_S = 1.0
#: The exit code of a process that lost a peer (``DistributedError``): a consequence, not a cause.
LOST_PEER_CODE = 3


def _cause(codes: list[int | None]) -> tuple[int, int]:
    """(rank, exit code) of the failure to report: a process killed by a signal, else one that
    failed for its own reason, else the first failed one."""
    failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
    for wanted in (lambda c: c < 0, lambda c: c != LOST_PEER_CODE, lambda c: True):
        for rank, code in failed:
            assert code is not None
            if wanted(code):
                return rank, code
    raise AssertionError("no process failed")


def _wait(processes: list[subprocess.Popen[bytes]], command: str) -> int:
    while True:
        codes = [process.poll() for process in processes]
        if any(code not in (None, 0) for code in codes):
            deadline = time.monotonic() + SETTLE_S
            while time.monotonic() < deadline and any(code is None for code in codes):
                time.sleep(0.05)
                codes = [process.poll() for process in processes]
            rank, code = _cause(codes)
            _stop(processes)
            reason = (f"was killed by signal {-code}" if code < 0 else
                      f"exited with code {code}")
            print(f"neftc {command}: error: worker process {rank} of {len(processes)} {reason}; "
                  f"the others were stopped (see the messages above)", file=sys.stderr)
            return code if code > 0 else 1
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.05)
