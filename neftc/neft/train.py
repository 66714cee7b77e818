"""Plain supervised training and evaluation of a classifier (used by the demo)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

from neftc.datasets.loader import Split
from neftc.errors import NeftcError


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


def train_classifier(model: nn.Module, data: Split, *, epochs: int, lr: float = 1e-3,
                     batch_size: int = 128, seed: int = 0, progress: bool = True,
                     desc: str = "train") -> nn.Module:
    """Adam with a cosine schedule and cross-entropy; deterministic for a given seed. A NaN or
    infinite loss or weight stops it with a :class:`~neftc.errors.NeftcError` naming the step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch = -(-len(data) // batch_size)
    steps = epochs * per_epoch
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for step, start in enumerate(range(0, len(data), batch_size)):
            idx = order[start:start + batch_size]
            loss = loss_fn(model(data.x[idx]), data.y[idx])
            check_loss(loss, epoch, epochs, step, per_epoch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update()
    bar.close()
    check_weights(model)
    return model.eval()


@torch.no_grad()
def accuracy(forward: Callable[[torch.Tensor], torch.Tensor], data: Split,
             batch_size: int = 512) -> float:
    correct = 0
    for start in range(0, len(data), batch_size):
        logits = forward(data.x[start:start + batch_size])
        correct += int((logits.argmax(dim=1) == data.y[start:start + batch_size]).sum())
    return correct / max(len(data), 1)
