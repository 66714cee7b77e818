"""Plain supervised training and evaluation of a classifier (used by the demo)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

from neftc.datasets import Split


def train_classifier(model: nn.Module, data: Split, *, epochs: int, lr: float = 1e-3,
                     batch_size: int = 128, seed: int = 0, progress: bool = True,
                     desc: str = "train") -> nn.Module:
    """Adam with a cosine schedule and cross-entropy; deterministic for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(data) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), batch_size):
            idx = order[start:start + batch_size]
            loss = loss_fn(model(data.x[idx]), data.y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update()
    bar.close()
    return model.eval()


@torch.no_grad()
def accuracy(forward: Callable[[torch.Tensor], torch.Tensor], data: Split,
             batch_size: int = 512) -> float:
    correct = 0
    for start in range(0, len(data), batch_size):
        logits = forward(data.x[start:start + batch_size])
        correct += int((logits.argmax(dim=1) == data.y[start:start + batch_size]).sum())
    return correct / max(len(data), 1)
