"""NeFT fine-tuning driver: train a graph that carries noise and feedback points.

Loss for a classifier with backbone logits ``out`` and N feedback logits ``out_n``
(DESIGN.md section 5, docs/neft.md): ``CE((out - beta * sum_n gamma_n out_n) / T, y)``,
``gamma_n = 10^-(n-1)`` within each family, nothing detached; ``T`` is the temperature
(``--temperature``; default :func:`default_temperature`: N + 1 with feedback, 4 for NIT, 1
from scratch or without noise). OVF's
``out_n`` are extra forwards of the same batch and weights at ``sigma + offset_n`` with fresh
noise; IRS's are the snapshot heads' logits; ``ovf+irs`` takes both (OVF's first). NIT is
``CE(out / T, y)`` with noisy weights; ``none`` the same without noise.

Every mode also logs the plain cross-entropy ``CE(out, y)`` of the noisy backbone's logits at
temperature 1 (``TrainLog.ce_losses``, from the same forward): the training loss comparable across
modes.

The training sigma follows ``--sigma-schedule`` (:func:`scheduled_sigma`). BatchNorm runs with its
deployed statistics, frozen (``bn_stats="frozen"``), or in training mode with its running
statistics updated under the noise (``"train"``, ``neftc.neft.batchnorm``).

With several processes (``group``), every rank draws its training noise from its own generator,
seeded by :func:`rank_seed` (rank 0: ``seed`` itself, so one process draws what it always has),
and trains on its share of each epoch through ``DistributedDataParallel``
(``neftc.neft.train.train_loop``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.fx
import torch.nn.functional as F

from neftc.datasets.base import Split
from neftc.distributed import SINGLE, Group
from neftc.neft.batchnorm import BnStats, batch_norm_mode, min_batch
from neftc.neft.modules import FeedbackHead, WeightNoise
from neftc.neft.train import Batch, BatchLoss, TrainLog, feed, train_loop
from neftc.passes.insert_feedback import PLAN_KEY, FeedbackPlan

# The paper's reference hyper-parameters (Qin et al., TCAD 2025): Adam, cosine schedule, batch 128;
# beta (OVF, IRS): VGG-8/MNIST 1e-3, 1e-2; VGG-8/CIFAR-10 1e-3, 1e-1; ResNet-18/CIFAR-10 1e-1, 1e-3.
# ovf+irs (not in the paper): IRS's value, the larger of the two.
DEFAULT_BETA = {"ovf": 1e-3, "irs": 1e-2, "ovf+irs": 1e-2, "nit": 0.0, "none": 0.0}
DEFAULT_LR = 1e-3
DEFAULT_BATCH = 128

SigmaSchedule = Literal["constant", "ramp"]
SIGMA_SCHEDULES: tuple[SigmaSchedule, ...] = ("constant", "ramp")


#: Odd 64-bit constant (2^64 / golden ratio) that spreads the ranks' noise seeds apart.
_RANK_STRIDE = 0x9E3779B97F4A7C15


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s training-noise generator: ``seed`` for rank 0 (a single
    process keeps its stream), else ``seed + rank * _RANK_STRIDE`` mod 2^63, far from the seeds
    of the other ranks and from the batch order's ``seed + 1``."""
    return (seed + rank * _RANK_STRIDE) % 2**63


#: NIT's default loss temperature: the paper's N + 1 of OVF (three feedback terms). On
#: Fashion-MNIST it carries NeFT's whole gain over plain NIT (docs/results.md, "What carries the
#: gain"), so NIT keeps it and drops only the feedback forwards.
NIT_TEMPERATURE = 4.0
#: NIT's default loss temperature when a new model trains from scratch (``train --neft nit``):
#: plain NIT. There temperature 4 measured 0.7-1.0 points below 1 on Fashion-MNIST (LeNet,
#: three seeds; docs/results.md, "What carries the gain"); it helps fine-tuning, not this.
SCRATCH_NIT_TEMPERATURE = 1.0


def default_temperature(mode: str, feedback_terms: int, from_scratch: bool = False) -> float:
    """The loss temperature when ``--temperature`` is not given: ``N + 1`` for a mode with N
    feedback terms (ovf, irs, ovf+irs: the paper's loss), :data:`NIT_TEMPERATURE` for nit
    (:data:`SCRATCH_NIT_TEMPERATURE` when training ``from_scratch``), 1 for none (plain
    fine-tuning, no noise)."""
    if mode in ("ovf", "irs", "ovf+irs"):
        return float(feedback_terms + 1)
    if mode == "nit":
        return SCRATCH_NIT_TEMPERATURE if from_scratch else NIT_TEMPERATURE
    return 1.0


def scheduled_sigma(schedule: SigmaSchedule, sigma: float, step: int, steps: int) -> float:
    """The training sigma at ``step`` (from 0) of ``steps``: ``constant``: ``sigma``; ``ramp``:
    ``sigma * min(1, step / R)`` with ``R = max(1, steps // 2)``, from 0 at the first step to
    ``sigma`` at step R (half-way), then held."""
    if schedule == "constant":
        return sigma
    return sigma * min(1.0, step / max(1, steps // 2))


def _noise_modules(gm: torch.nn.Module) -> list[WeightNoise]:
    return [m for m in gm.modules() if isinstance(m, WeightNoise)]


def _set_sigma(modules: list[WeightNoise], sigma: float) -> None:
    for module in modules:
        module.sigma = sigma


def neft_loss(out: torch.Tensor, feedback: list[torch.Tensor], gammas: tuple[float, ...],
              beta: float, y: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
    """``CE((out - beta * sum_n gamma_n out_n) / T, y)``; ``T`` default: ``len(feedback) + 1``."""
    combined = out
    for gamma, out_n in zip(gammas, feedback, strict=True):
        combined = combined - beta * gamma * out_n
    t = float(len(feedback) + 1) if temperature is None else temperature
    return F.cross_entropy(combined / t, y)


class _Sigma:
    """The scheduled training sigma of the current step (set by the training loop's
    ``before_step``)."""

    def __init__(self, schedule: SigmaSchedule, sigma: float) -> None:
        self.schedule, self.sigma, self.value = schedule, sigma, sigma

    def before_step(self, step: int, steps: int) -> None:
        self.value = scheduled_sigma(self.schedule, self.sigma, step, steps)


def _batch_loss(plan: FeedbackPlan | None, mode: str, sigma: _Sigma, noise: list[WeightNoise],
                heads: list[FeedbackHead], temperature: float | None) -> BatchLoss:
    """The loss of one batch for ``mode``: the backbone at the step's sigma; IRS reads its heads'
    logits of that forward, OVF adds forwards at ``sigma + offset_n`` (heads off); with
    feedback, :func:`neft_loss`, else the cross-entropy at the temperature. Also returns the
    backbone's plain cross-entropy (temperature 1, detached)."""

    def loss_of(model: torch.nn.Module, x: Batch,
                y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _set_sigma(noise, sigma.value)
        out = feed(model, x)
        feedback: list[torch.Tensor] = []
        if heads:
            feedback = [head.logits for head in heads if head.logits is not None]
        if plan is not None and plan.sigma_offsets and mode in ("ovf", "ovf+irs"):
            for head in heads:
                head.active = False
            ovf = []
            for offset in plan.sigma_offsets:
                _set_sigma(noise, sigma.value + offset)
                ovf.append(feed(model, x))
            for head in heads:
                head.active = True
            _set_sigma(noise, sigma.value)
            feedback = ovf + feedback
        ce = F.cross_entropy(out.detach(), y)
        if feedback and plan is not None:
            return neft_loss(out, feedback, plan.gammas, plan.beta, y, temperature), ce
        t = default_temperature(mode, 0) if temperature is None else temperature
        return F.cross_entropy(out / t, y), ce

    return loss_of


def finetune(gm: torch.fx.GraphModule, data: Split, *, sigma: float, epochs: int,
             lr: float = DEFAULT_LR, batch_size: int = DEFAULT_BATCH, seed: int = 0,
             device: str = "cpu", progress: bool = True, temperature: float | None = None,
             sigma_schedule: SigmaSchedule = "constant", bn_stats: BnStats = "train",
             on_epoch: Callable[[int, float], None] | None = None,
             group: Group = SINGLE) -> TrainLog:
    """Fine-tune ``gm`` in place on ``data`` according to its feedback plan (``gm.meta['neft']``;
    without one: plain NIT if noise modules are present, else plain training), through the one
    training loop (:func:`neftc.neft.train.train_loop`). The training noise is drawn from
    ``seed``, the batch order from ``seed + 1``. ``temperature`` None: the mode's default
    (:func:`default_temperature`); ``sigma_schedule``: :func:`scheduled_sigma`; ``bn_stats``:
    ``neftc.neft.batchnorm``. The graph's code is the same afterwards in every case.

    ``group``: the processes that train together (each rank's noise from
    ``rank_seed(seed, rank)``, the batch order from ``seed + 1`` on all); a run is repeatable
    for a given number of processes."""
    smallest = min_batch(gm, bn_stats, len(data), batch_size)
    plan: FeedbackPlan | None = gm.meta.get(PLAN_KEY)
    mode = plan.mode if plan is not None else "nit"
    noise = _noise_modules(gm)
    gm.to(device)
    generator = torch.Generator(device=device).manual_seed(rank_seed(seed, group.rank))
    for module in noise:
        module.generator = generator
    heads = [head for head in (gm.get_submodule(name) for name in plan.heads)
             if isinstance(head, FeedbackHead)] if plan is not None else []
    scheduled = _Sigma(sigma_schedule, sigma)
    with batch_norm_mode(gm, bn_stats):
        log = train_loop(gm, data, _batch_loss(plan, mode, scheduled, noise, heads, temperature),
                         epochs=epochs, lr=lr, batch_size=batch_size,
                         order=torch.Generator().manual_seed(seed + 1), device=device,
                         progress=progress, desc=f"neft {mode}",
                         what=f"NeFT {mode} fine-tuning", on_epoch=on_epoch,
                         before_step=scheduled.before_step, min_batch=smallest, group=group)
    gm.eval()
    gm.to("cpu")
    return log
