"""Shared helpers: read and write the weight of an annotated crossbar node."""

from __future__ import annotations

import torch
import torch.fx


def weight_attr(node: torch.fx.Node) -> str:
    """Qualified name of the parameter a crossbar node reads as its weight."""
    from neftc.ir.pass_manager import NodeError

    weight = node.args[1]
    if not (isinstance(weight, torch.fx.Node) and weight.op == "get_attr"):
        raise NodeError(node, "its weight is not a plain parameter (training-only modules are "
                              "still in the graph?); run strip-training first")
    return str(weight.target)


def get_weight(gm: torch.fx.GraphModule, node: torch.fx.Node) -> torch.Tensor:
    obj: object = gm
    for part in weight_attr(node).split("."):
        obj = getattr(obj, part)
    assert isinstance(obj, torch.Tensor)
    return obj


def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The crossbar view of a weight: rows = C_in/groups * prod(kernel), cols = C_out."""
    return weight.detach().reshape(weight.shape[0], -1).t()


def set_weight(gm: torch.fx.GraphModule, node: torch.fx.Node, value: torch.Tensor) -> None:
    """Replace a crossbar node's weight parameter by a new one (never mutating the old tensor,
    which may be shared with the user's model)."""
    owner_path, _, attr = weight_attr(node).rpartition(".")
    owner: object = gm
    for part in owner_path.split(".") if owner_path else []:
        owner = getattr(owner, part)
    old = getattr(owner, attr)
    new = torch.nn.Parameter(value.to(old.dtype).reshape(old.shape).contiguous(),
                             requires_grad=old.requires_grad)
    setattr(owner, attr, new)
