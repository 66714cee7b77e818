"""A model's inputs as its program records them, and example inputs drawn from them.

One ``InputSpec`` per user input, in the order the graph's placeholders take them: its name, its
dtype, the example shape (batch first) and, for integer inputs, the valid range: token ids that
feed an ``aten.embedding`` go from 0 to the table's ``num_embeddings`` (read from the weight's
shape); any other integer input (an attention mask, a flag) from 0 to 2.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.fx

from neftc.errors import ModelFileError

aten = torch.ops.aten

DTYPES: dict[torch.dtype, str] = {torch.float32: "float32", torch.int64: "int64",
                                  torch.int32: "int32", torch.bool: "bool"}
TORCH_DTYPES = {name: dtype for dtype, name in DTYPES.items()}

# ops through which a tensor of token ids keeps its values (only its shape or dtype changes)
_SAME_VALUES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
                aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims,
                aten.flatten.using_ints,
                aten.clone.default, aten.contiguous.default, aten._to_copy.default,
                aten.to.dtype, aten.expand.default, aten.slice.Tensor, aten.select.int,
                aten.permute.default, aten.transpose.int, aten.alias.default,
                aten.detach.default, operator.getitem}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: str  # "float32" | "int64" | "int32" | "bool"
    shape: tuple[int, ...]  # example shape, batch first
    low: int | None = None  # integer inputs: valid values low <= v < high
    high: int | None = None

    @property
    def is_integer(self) -> bool:
        return self.dtype in ("int64", "int32")

    def with_batch(self, batch: int) -> InputSpec:
        return replace(self, shape=(batch, *self.shape[1:]))


def example_inputs(specs: tuple[InputSpec, ...] | list[InputSpec],
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """One example tensor per input, drawn from one explicit generator: float inputs
    ``randn``; integer inputs uniform in ``[low, high)``, except masks (a name ending in
    ``mask``), which are ones like bool inputs (a random mask may hide every token)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: list[torch.Tensor] = []
    for spec in specs:
        dtype = TORCH_DTYPES[spec.dtype]
        if spec.dtype == "bool" or (spec.is_integer and spec.name.lower().endswith("mask")):
            tensors.append(torch.ones(spec.shape, dtype=dtype))
        elif spec.is_integer:
            low = 0 if spec.low is None else spec.low
            high = low + 2 if spec.high is None else spec.high
            tensors.append(torch.randint(low, high, spec.shape, generator=generator, dtype=dtype))
        else:
            tensors.append(torch.randn(spec.shape, generator=generator, dtype=dtype))
    return tuple(tensors)


def float_inputs(examples: tuple[torch.Tensor, ...], names: tuple[str, ...] = ()
                 ) -> tuple[InputSpec, ...]:
    """The specs of a traced module's example inputs (float32, as the zoo and ``--input-shape``
    give them), named ``names`` where given."""
    return tuple(InputSpec(names[i] if i < len(names) else f"input_{i}",
                           DTYPES.get(t.dtype, "float32"), tuple(t.shape))
                 for i, t in enumerate(examples))


def input_specs(gm: torch.fx.GraphModule, names: tuple[str, ...] | None,
                shapes: tuple[tuple[int, ...], ...], source: str) -> tuple[InputSpec, ...]:
    """The specs of ``gm``'s placeholders (every placeholder is a user input), named ``names``
    where given; ``shapes`` are the example shapes."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    specs: list[InputSpec] = []
    for i, (node, shape) in enumerate(zip(placeholders, shapes, strict=True)):
        name = names[i] if names is not None else str(node.target)
        val = node.meta.get("val")
        dtype = DTYPES.get(val.dtype) if isinstance(val, torch.Tensor) else "float32"
        if dtype is None:
            raise ModelFileError(f"'{source}': input '{name}' is {val.dtype}; neftc takes "
                                 f"float32, int64, int32 or bool inputs. Export the model with "
                                 f"float32 example inputs (model.float())")
        low, high = token_range(gm, node) if dtype in ("int64", "int32") else (None, None)
        specs.append(InputSpec(name, dtype, shape, low, high))
    return tuple(specs)


def token_range(gm: torch.fx.GraphModule, node: torch.fx.Node) -> tuple[int, int]:
    """The valid values ``[low, high)`` of an integer input: token ids ``0 ..`` the rows of the
    embedding tables they index; any other integer input (a mask) ``0 .. 2``."""
    return 0, _embedding_rows(gm, node) or 2


def _embedding_rows(gm: torch.fx.GraphModule, node: torch.fx.Node) -> int | None:
    """The smallest ``num_embeddings`` of the embedding tables that ``node``'s values index."""
    rows: list[int] = []
    stack, seen = [node], {node}
    while stack:
        current = stack.pop()
        for user in current.users:
            if user.target is aten.embedding.default and len(user.args) > 1 \
                    and user.args[1] is current:
                weight = _tensor_of(gm, user.args[0])
                if weight is not None and weight.dim() == 2:
                    rows.append(int(weight.shape[0]))
            elif user.target in _SAME_VALUES and user.args and user.args[0] is current \
                    and user not in seen:
                seen.add(user)
                stack.append(user)
    return min(rows) if rows else None


def _tensor_of(gm: torch.fx.GraphModule, arg: Any) -> torch.Tensor | None:
    if not isinstance(arg, torch.fx.Node):
        return None
    if arg.op == "get_attr":
        value: Any = gm
        for part in str(arg.target).split("."):
            value = getattr(value, part, None)
        return value if isinstance(value, torch.Tensor) else None
    val = arg.meta.get("val")
    return val if isinstance(val, torch.Tensor) else None
