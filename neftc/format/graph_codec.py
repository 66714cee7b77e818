"""Encode fx graph arguments as JSON (and back).

A JSON argument is a scalar (int, float, bool, str, null), a list, or one of the tagged objects
``{"node": NAME}`` (another node's output), ``{"dtype": "float32"}``, ``{"device": "cpu"}``,
``{"float": "inf" | "-inf" | "nan"}``, ``{"memory_format": NAME}``, ``{"layout": NAME}``.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

from neftc.errors import LayoutError
from neftc.format.arg_kinds import DTYPE_NAMES

if TYPE_CHECKING:  # torch is imported where a function needs it (`neftc inspect` starts fast)
    import torch
    import torch.fx

#: The memory formats a layout may name (``torch.<name>``).
MEMORY_FORMAT_NAMES = ("contiguous_format", "channels_last", "preserve_format")


def dtypes() -> dict[str, torch.dtype]:
    """The dtypes a layout may name: ``"float32"`` -> ``torch.float32`` (``DTYPE_NAMES``)."""
    import torch

    return {name: getattr(torch, name) for name in DTYPE_NAMES}


def memory_formats() -> dict[str, torch.memory_format]:
    """The memory formats a layout may name: ``"channels_last"`` -> ``torch.channels_last``."""
    import torch

    return {name: getattr(torch, name) for name in MEMORY_FORMAT_NAMES}


def __getattr__(name: str) -> Any:
    """``DTYPES`` and ``MEMORY_FORMATS``, the dicts above, made when asked for (not at import)."""
    if name == "DTYPES":
        return dtypes()
    if name == "MEMORY_FORMATS":
        return memory_formats()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Integer arithmetic on symbolic sizes (a dynamic batch times a constant, in a reshape's size:
# several samples' rows folded into one dimension): layout name -> the Python operator. Its
# operands are sizes (ints or size nodes), never tensors.
SIZE_OPS = {"sym_mul": operator.mul}
_SIZE_OP_NAMES = {function: name for name, function in SIZE_OPS.items()}


def target_name(node: torch.fx.Node) -> str:
    if node.op == "call_function":
        if node.target is operator.getitem:
            return "getitem"
        if node.target in _SIZE_OP_NAMES:
            return _SIZE_OP_NAMES[node.target]
        return str(node.target)  # e.g. 'aten.relu.default'
    return str(node.target)


class UnencodableArgument(TypeError):
    """An fx argument that has no JSON form in a layout."""


def encode_arg(value: Any) -> Any:
    """The JSON form of an fx node argument (``UnencodableArgument`` if it has none)."""
    import torch
    import torch.fx

    if isinstance(value, torch.fx.Node):
        return {"node": value.name}
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, (list, tuple)):
        return [encode_arg(v) for v in value]
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": "cpu"}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    raise UnencodableArgument(f"argument of type {type(value).__name__} cannot be written to a "
                              "layout")


def decode_arg(value: Any, env: dict[str, Any]) -> Any:
    """Inverse of ``encode_arg``; node references are looked up in ``env``."""
    import torch

    if isinstance(value, list):
        return [decode_arg(v, env) for v in value]
    if isinstance(value, dict):
        if "node" in value:
            return env[value["node"]]
        if "dtype" in value:
            return dtypes()[value["dtype"]]
        if "device" in value:
            return torch.device("cpu")
        if "float" in value:
            return float(value["float"])
        if "memory_format" in value:
            return memory_formats()[value["memory_format"]]
        if "layout" in value:
            return torch.strided
    return value


def node_refs(value: Any) -> list[str]:
    """Names of the nodes an encoded argument refers to."""
    if isinstance(value, list):
        return [name for v in value for name in node_refs(v)]
    if isinstance(value, dict):
        if "node" in value:
            return [str(value["node"])]
        return [name for v in value.values() for name in node_refs(v)]
    return []


def resolve_op(name: str) -> Any:
    """The callable a graph node's ``target`` names, if it is one of the ops a layout may call
    (``neftc.format.ops.OPS``, docs/layout.md section 7.1.1): ``'aten.relu.default'`` ->
    ``torch.ops.aten.relu.default``, ``'getitem'`` -> ``operator.getitem``. Any other name (an op
    outside the allow-list, ``prims.*``, a dunder) is a ``LayoutError``; nothing else is looked up.
    """
    import torch

    from neftc.format.ops import OPS  # ops reads this module's dtypes and decode_arg

    if not isinstance(name, str) or name not in OPS:
        raise LayoutError(f"the layout's graph calls {name!r}, which is not supported by the "
                          f"layout format; a layout may call only the {len(OPS)} ops listed in "
                          "docs/layout.md section 7.1.1")
    if name == "getitem":
        return operator.getitem
    if name in SIZE_OPS:
        return SIZE_OPS[name]
    _, op, overload = name.split(".")
    return getattr(getattr(torch.ops.aten, op), overload)
