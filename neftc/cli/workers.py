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

from neftc.distributed import INIT_ENV, MAX_WORLD, DistributedError
from neftc.errors import NeftcError

#: Seconds the other processes get to stop after one failed, before they are killed.
STOP_GRACE_S = 5.0


#: ``--workers``' help where the processes split chip instances (verify, sweep).
SAME_RESULTS_HELP = ("run as K local processes that split the work (torch.distributed, gloo; the "
                     "same results as one process); each gets cores/K threads unless "
                     "OMP_NUM_THREADS is set. Under torchrun, leave it out: the processes come "
                     "from torchrun (default 1)")


def add_workers_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                     workers_help: str = SAME_RESULTS_HELP) -> None:
    """``--workers K`` (with ``workers_help``: what K processes do for this command) and
    ``--dist-timeout S``."""
    parser.add_argument("--workers", type=int, default=1, metavar="K", help=workers_help)
    parser.add_argument("--dist-timeout", type=float, default=1800.0, metavar="S",
                        help="with several processes, fail the run when one waits more than S "
                        "seconds for another (default 1800)")


def check_workers(args: argparse.Namespace) -> None:
    if not 1 <= args.workers <= MAX_WORLD:
        raise NeftcError(f"--workers must be between 1 and {MAX_WORLD}, got {args.workers}")
    if not 1 <= args.dist_timeout <= 7 * 24 * 3600:
        raise NeftcError(f"--dist-timeout must be between 1 and 604800 seconds, got "
                         f"{args.dist_timeout}")
    if args.workers > 1 and "WORLD_SIZE" in os.environ:
        raise NeftcError("--workers starts its own processes, but this one is already part of "
                         "a process group (WORLD_SIZE is set, e.g. by torchrun); leave out "
                         "--workers under torchrun")


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


def _threads_per_worker(workers: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // workers)


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


def launch(argv: Sequence[str], workers: int, command: str) -> int:
    """Run ``neftc argv`` (``--workers`` removed) as ``workers`` processes; return the exit code
    (0 when all succeed, else the first failure's)."""
    with tempfile.TemporaryDirectory(prefix="neftc-workers-") as folder:
        rendezvous = Path(folder) / "rendezvous"
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(_threads_per_worker(workers)))
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


def _wait(processes: list[subprocess.Popen[bytes]], command: str) -> int:
    while True:
        codes = [process.poll() for process in processes]
        failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            rank, code = failed[0]
            _stop(processes)
            assert code is not None
            reason = (f"was killed by signal {-code}" if code < 0 else
                      f"exited with code {code}")
            print(f"neftc {command}: error: worker process {rank} of {len(processes)} {reason}; "
                  f"the others were stopped (see the messages above)", file=sys.stderr)
            return code if code > 0 else 1
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.05)
