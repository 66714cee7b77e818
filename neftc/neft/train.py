"""Training: the one training loop (plain training and NeFT fine-tuning share it), plain
supervised training of a classifier, and evaluation.

A model of several inputs (token ids and an attention mask) is fed ``Split.x`` and the split's
extras in order (a split fitted to the model, ``neftc.datasets.fit``): a batch is then a tuple,
and ``feed(model, x)`` calls the model with it.

Several processes (``neftc.distributed.Group``; torchrun or ``--workers``): every rank draws the
same shuffled order each epoch and trains on its share of it (:func:`epoch_share`, the semantics
of ``torch.utils.data.DistributedSampler``), with the model wrapped in
``torch.nn.parallel.DistributedDataParallel`` (gradients averaged over the ranks: the effective
batch is ``world x batch_size``). A group of one trains exactly as a single process always has."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from neftc.datasets.base import Split
from neftc.distributed import SINGLE, Group
from neftc.errors import NeftcError
from neftc.progress import no_bar


def check_loss(loss: torch.Tensor, epoch: int, epochs: int, step: int, steps: int,
               what: str = "training") -> None:
    """Stop with an error naming the step when the loss is NaN or infinite (before the optimiser
    step spreads it into the weights). ``epoch`` and ``step`` count from 0."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NeftcError(f"{what} diverged at epoch {epoch + 1}/{epochs} step {step + 1}/{steps} "
                         f"(loss {value}); lower --lr, or check that the data is scaled "
                         f"(inputs of order 1)")


def check_weights(model: torch.nn.Module, what: str = "training") -> None:
    """Stop with an error naming the parameter when training left a NaN or infinite weight."""
    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param.detach()).all()):
            raise NeftcError(f"{what} diverged: parameter '{name}' holds NaN or infinite values "
                             f"after the last step; lower --lr")


@dataclass
class TrainLog:
    epochs: int
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean objective per epoch
    #: Mean plain cross-entropy per epoch of the (noisy) backbone's logits at temperature 1: the
    #: training loss that is comparable across NeFT modes (plain training: equal to ``losses``).
    ce_losses: list[float] = field(default_factory=list)
    #: What was decided before training, in words (``--neft auto``'s candidates and choice).
    notes: list[str] = field(default_factory=list)
    #: The NeFT mode that trained (``--neft auto``: the one it chose); None for plain training.
    mode: str | None = None


#: A batch of inputs: one tensor, or a tuple of tensors (x, then the extras) in the model's order.
Batch = torch.Tensor | tuple[torch.Tensor, ...]

# The loss of one batch: (model, x, y) -> (objective to minimise, plain cross-entropy of the
# backbone's logits at temperature 1, detached: the comparable loss ``TrainLog.ce_losses`` logs).
BatchLoss = Callable[[nn.Module, Batch, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def feed(model: Callable[..., torch.Tensor], x: Batch) -> torch.Tensor:
    """The model's output for a batch: ``model(x)``, or ``model(*x)`` for several inputs."""
    return model(*x) if isinstance(x, tuple) else model(x)


def batch_of(data: Split, index: torch.Tensor | slice, device: str | torch.device) -> Batch:
    """Samples ``index`` of ``data``'s inputs on ``device``: ``x`` alone when the split has no
    extras, else the tuple of x and the extras."""
    part = data.take(index)
    if not part.extras:
        return part.x.to(device)
    return tuple(t.to(device) for t in part.inputs())


def epoch_share(permutation: torch.Tensor, group: Group) -> torch.Tensor:
    """This rank's share of an epoch's order ``permutation`` (the same on every rank), as
    ``torch.utils.data.DistributedSampler`` takes it: the order is padded with its own first
    samples to a multiple of the world size, then rank ``r`` takes positions ``r, r + world,
    ...``. Every rank gets ``ceil(N / world)`` samples, so all run the same number of steps
    (DDP needs that); at most ``world - 1`` samples are seen twice. A group of one gets
    ``permutation`` itself."""
    if not group.distributed:
        return permutation
    count = len(permutation)
    total = -(-count // group.world) * group.world
    if total != count:
        permutation = permutation.repeat(-(-total // count))[:total]
    return permutation[group.rank::group.world]


def _distributed(model: nn.Module, group: Group) -> nn.Module:
    """``model`` wrapped for data-parallel training when ``group`` has several processes (its
    constructor gives every rank rank 0's parameters and buffers), else ``model``.

    ``find_unused_parameters`` stays off: every trainable parameter reaches the loss (the NeFT
    feedback heads' logits are part of it; OVF's extra forwards reuse the same parameters), so
    no search of the graph is needed, and a parameter that did not would fail the step with
    DDP's error rather than pass silently. ``broadcast_buffers`` (DDP's default): before each
    forward, rank 0's buffers (BatchNorm running statistics) are copied to every rank, so the
    running statistics follow rank 0's batches; the batch statistics a training-mode BatchNorm
    normalises with are each rank's own (no SyncBatchNorm)."""
    if not group.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, find_unused_parameters=False)


def _buffers_from_main(model: nn.Module, group: Group) -> None:
    """Give every rank rank 0's buffers: after the last step each rank's BatchNorm running
    statistics include its own last batch; rank 0's are those it writes, so all ranks end with
    the very model rank 0 saves."""
    if not group.distributed:
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def train_loop(model: nn.Module, data: Split, loss_of: BatchLoss, *, epochs: int, lr: float,
               batch_size: int, order: torch.Generator, device: str = "cpu",
               progress: bool = True, desc: str = "train", what: str = "training",
               on_epoch: Callable[[int, float], None] | None = None,
               before_step: Callable[[int, int], None] | None = None,
               min_batch: int = 1, group: Group = SINGLE) -> TrainLog:
    """The one training loop (plain training and NeFT fine-tuning): Adam over the parameters that
    require gradients, a cosine schedule over all steps, batches in the order drawn from ``order``
    each epoch. ``loss_of(model, x, y)`` computes a batch's objective and plain cross-entropy;
    ``before_step(step, steps)``, if given, is called before each step with the step index
    (from 0, over all epochs) and the number of steps. A NaN or infinite loss or weight
    stops it with a :class:`~neftc.errors.NeftcError` naming the step; ``what`` names the job in
    that message. Leaves ``model`` in training mode on ``device``.

    With a ``group`` of several processes, each rank trains on its :func:`epoch_share` of the
    order (``order`` must be seeded alike on every rank) through ``DistributedDataParallel``;
    the logged losses are means over all ranks' samples, a diverged loss on any rank stops
    every rank at the same step, and all ranks end with rank 0's model."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    share = -(-len(data) // group.world)  # samples per rank and epoch (len(data) for one)
    per_epoch = -(-share // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs * per_epoch, 1))
    model.train()
    trained = _distributed(model, group)
    log = TrainLog(epochs, 0, 0.0)
    start = time.perf_counter()
    bar = tqdm(total=epochs * per_epoch, desc=desc, disable=no_bar(progress and group.is_main),
               leave=False)
    for epoch in range(epochs):
        permutation = epoch_share(torch.randperm(len(data), generator=order), group)
        total, total_ce, count = 0.0, 0.0, 0
        for step, first in enumerate(range(0, len(permutation), batch_size)):
            idx = permutation[first:first + batch_size]
            if len(idx) < min_batch:  # e.g. one sample: no BatchNorm statistics (skipped)
                continue
            if before_step is not None:
                before_step(log.steps, epochs * per_epoch)
            loss, ce = loss_of(trained, batch_of(data, idx, device), data.y[idx].to(device))
            # The step's loss over all ranks' samples, the same on every rank (one process:
            # its own): a diverged loss anywhere stops every rank at this step.
            sums = group.sum(torch.tensor([float(loss.detach()) * len(idx),
                                           float(ce.detach()) * len(idx), len(idx)],
                                          dtype=torch.float64))
            check_loss(sums[0] / sums[2], epoch, epochs, step, per_epoch, what=what)
            total, total_ce, count = (total + float(sums[0]), total_ce + float(sums[1]),
                                      count + int(sums[2]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            log.steps += 1
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            bar.update()
        log.losses.append(total / max(count, 1))
        log.ce_losses.append(total_ce / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch, log.losses[-1])
    bar.close()
    _buffers_from_main(model, group)
    check_weights(model, what=what)
    log.seconds = time.perf_counter() - start
    return log


def _cross_entropy(model: nn.Module, x: Batch,
                   y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    loss = F.cross_entropy(feed(model, x), y)
    return loss, loss.detach()


def train_classifier(model: nn.Module, data: Split, *, epochs: int, lr: float = 1e-3,
                     batch_size: int = 128, seed: int = 0, progress: bool = True,
                     desc: str = "train", group: Group = SINGLE) -> nn.Module:
    """Plain supervised training with cross-entropy through :func:`train_loop`; deterministic for
    a given seed (the batch order is drawn from ``seed``) and number of processes (``group``)."""
    train_loop(model, data, _cross_entropy, epochs=epochs, lr=lr, batch_size=batch_size,
               order=torch.Generator().manual_seed(seed), progress=progress, desc=desc,
               group=group)
    return model.eval()


@torch.no_grad()
def accuracy(forward: Callable[..., torch.Tensor], data: Split,
             batch_size: int = 512) -> float:
    correct = 0
    for start in range(0, len(data), batch_size):
        logits = feed(forward, batch_of(data, slice(start, start + batch_size), data.x.device))
        correct += int((logits.argmax(dim=1) == data.y[start:start + batch_size]).sum())
    return correct / max(len(data), 1)
