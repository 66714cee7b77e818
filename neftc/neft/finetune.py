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

from collections.abc import Callable

import torch
import torch.fx
import torch.nn.functional as F

from neftc.datasets.base import Split
from neftc.neft.modules import FeedbackHead, WeightNoise
from neftc.neft.train import Batch, BatchLoss, TrainLog, feed, train_loop
from neftc.passes.insert_feedback import PLAN_KEY, FeedbackPlan

# The paper's reference hyper-parameters (Qin et al., TCAD 2025): Adam, cosine schedule, batch 128;
# beta (OVF, IRS): VGG-8/MNIST 1e-3, 1e-2; VGG-8/CIFAR-10 1e-3, 1e-1; ResNet-18/CIFAR-10 1e-1, 1e-3.
DEFAULT_BETA = {"ovf": 1e-3, "irs": 1e-2, "nit": 0.0, "none": 0.0}
DEFAULT_LR = 1e-3
DEFAULT_BATCH = 128


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


def _batch_loss(gm: torch.fx.GraphModule, plan: FeedbackPlan | None, mode: str, sigma: float,
                noise: list[WeightNoise], heads: list[torch.nn.Module]) -> BatchLoss:
    """The loss of one batch for ``mode``: the backbone at ``sigma``; OVF adds forwards at
    ``sigma + offset_n``, IRS reads its heads' logits; with feedback, :func:`neft_loss`."""

    def loss_of(model: torch.nn.Module, x: Batch, y: torch.Tensor) -> torch.Tensor:
        _set_sigma(noise, sigma)
        out = feed(model, x)
        feedback: list[torch.Tensor] = []
        if mode == "ovf" and plan is not None:
            for offset in plan.sigma_offsets:
                _set_sigma(noise, sigma + offset)
                feedback.append(feed(model, x))
            _set_sigma(noise, sigma)
        elif mode == "irs":
            feedback = [head.logits for head in heads if isinstance(head, FeedbackHead)
                        and head.logits is not None]
        if feedback and plan is not None:
            return neft_loss(out, feedback, plan.gammas, plan.beta, y)
        return F.cross_entropy(out, y)

    return loss_of


def finetune(gm: torch.fx.GraphModule, data: Split, *, sigma: float, epochs: int,
             lr: float = DEFAULT_LR, batch_size: int = DEFAULT_BATCH, seed: int = 0,
             device: str = "cpu", progress: bool = True,
             on_epoch: Callable[[int, float], None] | None = None) -> TrainLog:
    """Fine-tune ``gm`` in place on ``data`` according to its feedback plan (``gm.meta['neft']``;
    without one: plain NIT if noise modules are present, else plain training), through the one
    training loop (:func:`neftc.neft.train.train_loop`). The training noise is drawn from
    ``seed``, the batch order from ``seed + 1``."""
    plan: FeedbackPlan | None = gm.meta.get(PLAN_KEY)
    mode = plan.mode if plan is not None else "nit"
    noise = _noise_modules(gm)
    gm.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for module in noise:
        module.generator = generator
    heads = [gm.get_submodule(name) for name in plan.heads] if plan and mode == "irs" else []
    log = train_loop(gm, data, _batch_loss(gm, plan, mode, sigma, noise, heads), epochs=epochs,
                     lr=lr, batch_size=batch_size, order=torch.Generator().manual_seed(seed + 1),
                     device=device, progress=progress, desc=f"neft {mode}",
                     what=f"NeFT {mode} fine-tuning", on_epoch=on_epoch)
    gm.eval()
    gm.to("cpu")
    return log
