"""Several processes, one job: the ``torch.distributed`` group a command runs in.

A command joins the group its environment describes: ``torchrun`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (``env://``); ``neftc ... --workers K`` sets
``RANK``, ``WORLD_SIZE`` and ``NEFTC_DIST_INIT`` (a ``file://`` rendezvous in a private temporary
folder, so no port is needed). Without them the command is the one process of a group of one,
and nothing of ``torch.distributed`` is touched.

Work is split by :meth:`Group.shard` (item ``i`` runs on rank ``i mod world``) and put back
together by sums that are exact (:meth:`Group.sum`: every value is computed by exactly one rank and
the others add zeros, or the values are integers), so what rank 0 reports does not depend on the
number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

from neftc.errors import NeftcError

if TYPE_CHECKING:  # torch is imported where a collective runs: `neftc --help` does without it
    import torch

#: Environment variable naming the rendezvous of ``--workers`` (an ``init_method`` URL).
INIT_ENV = "NEFTC_DIST_INIT"
#: Seconds a collective waits for the other processes before the run fails (torch's default).
DEFAULT_TIMEOUT_S = 1800.0
#: Most processes in one group.
MAX_WORLD = 4096

Item = TypeVar("Item")


class DistributedError(NeftcError):
    """The process group cannot be joined, or another process of it failed."""

    exit_code = 3


@dataclass(frozen=True)
class Group:
    """This process's place in the job: ``rank`` of ``world`` processes (0 of 1 alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0  # the process's place on its machine (torchrun's LOCAL_RANK)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes outputs and prints the report."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, items: Sequence[Item]) -> Sequence[Item]:
        """This rank's share of ``items``: those at positions ``rank, rank + world, ...`` (a
        slice: a ``range`` stays a lazy ``range``)."""
        return items[self.rank::self.world]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over all ranks (in place; returned). Exact when
        each element is non-zero on at most one rank, or the dtype is an integer."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def max(self, value: float) -> float:
        """The largest ``value`` over all ranks."""
        if not self.distributed:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def device(self, name: str) -> str:
        """The device this process runs on: a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU
        per process, as torchrun lays them out); ``cpu`` and an explicit ``cuda:N`` stay."""
        return f"cuda:{self.local_rank}" if name == "cuda" and self.distributed else name

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


SINGLE = Group()


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"environment variable {name}={text!r} is not an integer; "
                               f"start the processes with torchrun or --workers") from None


def group_from_env(env: Mapping[str, str]) -> Group:
    """The rank and world size ``env`` describes (a group of one when it sets neither)."""
    rank, world = _int_env(env, "RANK"), _int_env(env, "WORLD_SIZE")
    if rank is None and world is None:
        return SINGLE
    if rank is None or world is None:
        missing = "RANK" if rank is None else "WORLD_SIZE"
        raise DistributedError(f"{missing} is not set while the other of RANK/WORLD_SIZE is; "
                               f"start the processes with torchrun or --workers")
    if not 1 <= world <= MAX_WORLD or not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} of WORLD_SIZE={world} is not a valid place in a "
                               f"process group (0 <= RANK < WORLD_SIZE <= {MAX_WORLD})")
    local = _int_env(env, "LOCAL_RANK")
    if local is not None and not 0 <= local < world:
        raise DistributedError(f"LOCAL_RANK={local} is not a valid place among WORLD_SIZE="
                               f"{world} processes")
    return Group(rank, world, rank if local is None else local)


def _backend(device: str) -> str:
    """gloo for CPU tensors (the Monte Carlo's sums always are); with a CUDA device, CUDA
    tensors (DDP's gradients) go through nccl where this torch has it."""
    import torch.distributed as dist

    if device.startswith("cuda") and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def _lost_peer(message: str) -> bool:
    """Whether a RuntimeError's message is the backend's report of a lost or silent process."""
    text = message.lower()
    return any(mark in text for mark in ("gloo", "nccl", "connection closed", "timed out"))


@contextmanager
def process_group(device: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S,
                  env: Mapping[str, str] | None = None) -> Iterator[Group]:
    """Join the process group the environment describes for the ``with`` block, and leave it
    after. ``gloo`` for CPU tensors, ``nccl`` for CUDA tensors when ``device`` is a CUDA device;
    a collective that waits more than ``timeout_s`` seconds for another process fails the run
    instead of hanging. Use ``group.device(device)`` for the device this process runs on."""
    env = os.environ if env is None else env
    group = group_from_env(env)
    if not group.distributed:
        yield group
        return
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; run one process")
    init = env.get(INIT_ENV, "env://")
    if init == "env://" and ("MASTER_ADDR" not in env or "MASTER_PORT" not in env):
        raise DistributedError("RANK and WORLD_SIZE are set but MASTER_ADDR/MASTER_PORT are "
                               "not; start the processes with torchrun (which sets them) or "
                               "--workers")
    try:
        dist.init_process_group(
            _backend(device), init_method=init, rank=group.rank, world_size=group.world,
            timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"rank {group.rank} of {group.world} could not join the process "
                               f"group ({init}): {exc}") from None
    try:
        yield group
        dist.barrier()  # every process past its last collective before any tears the group down
    except RuntimeError as exc:  # dist.DistError is one; gloo reports a lost peer as another
        if not isinstance(exc, dist.DistError) and not _lost_peer(str(exc)):
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DistributedError(f"process {group.rank} of {group.world}: a collective failed "
                               f"(another process stopped, or none answered within the "
                               f"timeout): {first}") from None
    finally:
        dist.destroy_process_group()
