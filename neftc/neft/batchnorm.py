"""BatchNorm statistics during NeFT fine-tuning (``--bn-stats``).

The normalised graph holds each BatchNorm as ``aten.batch_norm.default(x, weight, bias,
running_mean, running_var, training, momentum, eps, cudnn)`` with ``training=False``
(``passes/normalize.py``): fine-tuning then normalises with the deployed statistics, frozen
(``frozen``, the default). ``train`` is the protocol of the paper's reference code: BatchNorm in
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
