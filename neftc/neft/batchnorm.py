"""BatchNorm statistics during NeFT fine-tuning (``--bn-stats``).

The normalised graph holds each BatchNorm as ``aten.batch_norm.default(x, weight, bias,
running_mean, running_var, training, momentum, eps, cudnn)`` with ``training=False``
(``passes/normalize.py``). ``frozen`` fine-tunes with the deployed statistics. ``train`` (the
default since issue 13: it won on VGG-8/Fashion-MNIST, ``docs/results.md``) is the protocol of
the paper's reference code: BatchNorm in
training mode while fine-tuning, normalising each batch by its own statistics and updating the
graph's running mean and variance buffers in place (with the graph's momentum), so the deployed
statistics are those of the activations under the training noise. :func:`batch_norm_mode` flips
the ``training`` argument for the duration and restores it: the graph's code afterwards is
exactly the frozen case's; only the statistics differ.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.fx

from neftc.errors import NeftcError

BnStats = Literal["frozen", "train"]
BN_STATS: tuple[BnStats, ...] = ("frozen", "train")
#: Position of ``training`` in ``aten.batch_norm.default``'s arguments.
_TRAINING_ARG = 5


def batch_norm_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes
            if n.op == "call_function" and n.target is torch.ops.aten.batch_norm.default]


def _set_training(gm: torch.fx.GraphModule, nodes: list[torch.fx.Node],
                  values: list[bool]) -> None:
    for node, value in zip(nodes, values):
        args = list(node.args)
        args[_TRAINING_ARG] = value
        node.args = tuple(args)
    gm.recompile()


@contextmanager
def batch_norm_mode(gm: torch.fx.GraphModule, stats: BnStats) -> Iterator[int]:
    """Within the block, the graph's BatchNorms run in training mode when ``stats`` is
    ``train`` (batch statistics; running statistics updated); nothing changes for ``frozen``.
    Yields the number of BatchNorms switched. The ``training`` arguments are restored on exit,
    also on an error."""
    nodes = batch_norm_nodes(gm) if stats == "train" else []
    if not nodes:
        yield 0
        return
    before = [bool(n.args[_TRAINING_ARG]) for n in nodes]
    _set_training(gm, nodes, [True] * len(nodes))
    try:
        yield len(nodes)
    finally:
        _set_training(gm, nodes, before)


def min_batch(gm: torch.fx.GraphModule, stats: BnStats, samples: int, batch_size: int) -> int:
    """The smallest batch fine-tuning may train on: 2 with ``train`` statistics on a graph with
    BatchNorm (a BatchNorm in training mode that sees one value per channel computes no
    variance, and ``aten.batch_norm`` then writes NaN into the running variance without an
    error), so a last batch of one sample is skipped; else 1. Batches of one sample, or a
    single sample, are refused."""
    if stats != "train" or not batch_norm_nodes(gm):
        return 1
    if batch_size == 1 or samples < 2:
        raise NeftcError(f"--bn-stats train with {samples} training samples in batches of "
                         f"{batch_size} gives batches of one sample, whose BatchNorm "
                         "statistics are undefined (the running variance would become NaN); "
                         "use --neft-batch-size 2 or more, or --bn-stats frozen")
    return 2
