"""NeFT fine-tuning driver: train a graph that carries noise and feedback points.

Loss for a classifier with backbone logits ``out`` and N feedback logits ``out_n``
(DESIGN.md section 5): ``CE((out - beta * sum_n gamma_n out_n) / (N + 1), y)``,
``gamma_n = 10^-(n-1)``, nothing detached. OVF's ``out_n`` are extra forwards of the same batch and
weights at ``sigma + offset_n`` with fresh noise; IRS's are the snapshot heads' logits. NIT is the
plain cross-entropy with noisy weights; ``none`` the plain cross-entropy without noise.

BatchNorm runs with its deployed (inference) statistics, frozen: the fine-tuned model is
normalised exactly as the chip's digital periphery will normalise it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from tqdm import tqdm

from neftc.datasets.loader import Split
from neftc.neft.modules import FeedbackHead, WeightNoise
from neftc.neft.train import check_loss, check_weights
from neftc.passes.insert_feedback import PLAN_KEY, FeedbackPlan

# The paper's reference hyper-parameters (Qin et al., TCAD 2025): Adam, cosine schedule, batch 128;
# beta (OVF, IRS): VGG-8/MNIST 1e-3, 1e-2; VGG-8/CIFAR-10 1e-3, 1e-1; ResNet-18/CIFAR-10 1e-1, 1e-3.
DEFAULT_BETA = {"ovf": 1e-3, "irs": 1e-2, "nit": 0.0, "none": 0.0}
DEFAULT_LR = 1e-3
DEFAULT_BATCH = 128


@dataclass
class TrainLog:
    epochs: int
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean loss per epoch


def _noise_modules(gm: torch.nn.Module) -> list[WeightNoise]:
    return [m for m in gm.modules() if isinstance(m, WeightNoise)]


def _set_sigma(modules: list[WeightNoise], sigma: float) -> None:
    for module in modules:
        module.sigma = sigma


def neft_loss(out: torch.Tensor, feedback: list[torch.Tensor], gammas: tuple[float, ...],
              beta: float, y: torch.Tensor) -> torch.Tensor:
    combined = out
    for gamma, out_n in zip(gammas, feedback):
        combined = combined - beta * gamma * out_n
    return F.cross_entropy(combined / (len(feedback) + 1), y)


def finetune(gm: torch.fx.GraphModule, data: Split, *, sigma: float, epochs: int,
             lr: float = DEFAULT_LR, batch_size: int = DEFAULT_BATCH, seed: int = 0,
             device: str = "cpu", progress: bool = True,
             on_epoch: Callable[[int, float], None] | None = None) -> TrainLog:
    """Fine-tune ``gm`` in place on ``data`` according to its feedback plan (``gm.meta['neft']``;
    without one: plain NIT if noise modules are present, else plain training)."""
    plan: FeedbackPlan | None = gm.meta.get(PLAN_KEY)
    mode = plan.mode if plan is not None else "nit"
    noise = _noise_modules(gm)
    gm.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    order_generator = torch.Generator().manual_seed(seed + 1)
    for module in noise:
        module.generator = generator
    heads = [gm.get_submodule(name) for name in plan.heads] if plan and mode == "irs" else []
    params = [p for p in gm.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    steps_per_epoch = -(-len(data) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                          max(epochs * steps_per_epoch, 1))
    gm.train()
    log = TrainLog(epochs, 0, 0.0)
    start = time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"neft {mode}", disable=not progress,
               leave=False)
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=order_generator)
        total, count = 0.0, 0
        for step, first in enumerate(range(0, len(data), batch_size)):
            idx = order[first:first + batch_size]
            x, y = data.x[idx].to(device), data.y[idx].to(device)
            _set_sigma(noise, sigma)
            out = gm(x)
            feedback: list[torch.Tensor] = []
            if mode == "ovf" and plan is not None:
                for offset in plan.sigma_offsets:
                    _set_sigma(noise, sigma + offset)
                    feedback.append(gm(x))
                _set_sigma(noise, sigma)
            elif mode == "irs":
                feedback = [head.logits for head in heads if isinstance(head, FeedbackHead)
                            and head.logits is not None]
            if feedback and plan is not None:
                loss = neft_loss(out, feedback, plan.gammas, plan.beta, y)
            else:
                loss = F.cross_entropy(out, y)
            check_loss(loss, epoch, epochs, step, steps_per_epoch, what=f"NeFT {mode} fine-tuning")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            log.steps += 1
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            bar.update()
        log.losses.append(total / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch, log.losses[-1])
    bar.close()
    check_weights(gm, what=f"NeFT {mode} fine-tuning")
    log.seconds = time.perf_counter() - start
    gm.eval()
    gm.to("cpu")
    return log
