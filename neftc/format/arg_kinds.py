"""The kinds of argument a layout's graph may pass to an op (``ARG_KINDS``: what each accepts,
in words, and the check of its JSON value) and the bounds on sizes, dimensions and windows that
those checks enforce (docs/layout.md section 7.1.1)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

MAX_RANK = 8  # dimensions of any value; dim arguments lie in [-MAX_RANK - 1, MAX_RANK]
MAX_DIM = 2**31 - 1  # a size, an index or an output size
MAX_WINDOW = 1024  # one entry of a kernel, stride, padding or dilation
MAX_PARTS = 1024  # chunks of a chunk, tensors of a cat
MAX_INT = 2**63 - 1  # slice bounds (ATen writes an open end as 2**63 - 1)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (is_int(value) and abs(value) <= MAX_INT) or (
        isinstance(value, float) and math.isfinite(value))


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"node"} and isinstance(value["node"], str)


def int_in(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: is_int(v) and low <= v <= high


def _list_of(check: Callable[[Any], bool], low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and low <= len(v) <= high and all(map(check, v))


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_dim = int_in(-MAX_RANK - 1, MAX_RANK)
_window_entry = int_in(1, MAX_WINDOW)
_padding_entry = int_in(0, MAX_WINDOW)
_dims = _list_of(_dim, 0, MAX_RANK)
DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
               "uint8", "bool")  # torch.<name>: graph_codec.dtypes()

# kind -> (what it accepts, in words; the check of its JSON value)
ARG_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "tensor": ("a reference {\"node\": NAME} to a node whose value is a tensor", is_ref),
    "tensor?": ("a tensor reference or null", _optional(is_ref)),
    "tensor-or-number": ("a tensor reference or a finite number",
                         lambda v: is_ref(v) or is_number(v)),
    "tensors": (f"a list of 1..{MAX_PARTS} tensor references", _list_of(is_ref, 1, MAX_PARTS)),
    "parts": ("a reference to a node whose value is a list of tensors (chunk)", is_ref),
    "part": (f"an integer 0..{MAX_PARTS - 1}", int_in(0, MAX_PARTS - 1)),
    "number": ("a finite number", is_number),
    "number?": ("a finite number or null", _optional(is_number)),
    "eps": ("a finite number >= 0", lambda v: is_number(v) and v >= 0),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "false": ("false (inference only)", lambda v: v is False),
    "dim": (f"an integer {-MAX_RANK - 1}..{MAX_RANK} (a dimension)", _dim),
    "size": (f"an integer {-MAX_DIM}..{MAX_DIM} or a reference to a size node "
             "(aten.sym_size.int or sym_mul)",
             lambda v: is_ref(v) or int_in(-MAX_DIM, MAX_DIM)(v)),
    "dim?": (f"null or an integer {-MAX_RANK - 1}..{MAX_RANK} (a dimension)", _optional(_dim)),
    "dims": (f"a list of at most {MAX_RANK} dimensions", _dims),
    "dims?": (f"null or a list of at most {MAX_RANK} dimensions", _optional(_dims)),
    "index": (f"an integer {-MAX_DIM}..{MAX_DIM}", int_in(-MAX_DIM, MAX_DIM)),
    "bound?": (f"null, an integer {-MAX_INT - 1}..{MAX_INT} or a reference to a size node",
               _optional(lambda v: is_ref(v) or int_in(-MAX_INT - 1, MAX_INT)(v))),
    "step": (f"an integer 1..{MAX_DIM}", int_in(1, MAX_DIM)),
    "chunks": (f"an integer 1..{MAX_PARTS}", int_in(1, MAX_PARTS)),
    "groups": (f"an integer 1..{MAX_DIM}", int_in(1, MAX_DIM)),
    "window": (f"an integer 1..{MAX_WINDOW} or a list of at most 3 of them",
               lambda v: _window_entry(v) or _list_of(_window_entry, 0, 3)(v)),
    "padding": (f"an integer 0..{MAX_WINDOW} or a list of at most 3 of them",
                lambda v: _padding_entry(v) or _list_of(_padding_entry, 0, 3)(v)),
    "divisor?": (f"null or an integer 1..{MAX_WINDOW}", _optional(int_in(1, MAX_WINDOW))),
    "output_size": (f"an integer 1..{MAX_DIM} or a list of 1..3 of them",
                    lambda v: int_in(1, MAX_DIM)(v) or _list_of(int_in(1, MAX_DIM), 1, 3)(v)),
    "sizes": (f"a list of 1..{MAX_RANK} integers 1..{MAX_DIM}",
              _list_of(int_in(1, MAX_DIM), 1, MAX_RANK)),
    "shape": ((f"a list of at most {MAX_RANK} entries, each an integer -1..{MAX_DIM} or a "
               "reference to a size node (aten.sym_size.int or sym_mul)"),
              _list_of(lambda v: int_in(-1, MAX_DIM)(v) or is_ref(v), 0, MAX_RANK)),
    "dtype?": ("null or {\"dtype\": NAME}", _optional(
        lambda v: isinstance(v, dict) and set(v) == {"dtype"} and v["dtype"] in DTYPE_NAMES)),
    "layout?": ("null or {\"layout\": \"strided\"}",
                _optional(lambda v: v == {"layout": "strided"})),
    "device?": ("null or {\"device\": \"cpu\"} (the runtime puts the tensor on its own device)",
                _optional(lambda v: v == {"device": "cpu"})),
    "memory_format?": ("null or {\"memory_format\": NAME}", _optional(
        lambda v: isinstance(v, dict) and set(v) == {"memory_format"} and v["memory_format"]
        in ("contiguous_format", "channels_last", "preserve_format"))),
    "false?": ("null or false", lambda v: v is None or v is False),
    "number-or-size": ("a finite number or a reference to a size node",
                       lambda v: is_number(v) or is_ref(v)),
    "approximate": ("\"none\" or \"tanh\"", lambda v: v in ("none", "tanh")),
    "pads": (f"a list of at most {2 * MAX_RANK} integers {-MAX_WINDOW}..{MAX_WINDOW}, two per "
             "padded dimension, the last dimension first",
             lambda v: _list_of(int_in(-MAX_WINDOW, MAX_WINDOW), 0, 2 * MAX_RANK)(v)
             and len(v) % 2 == 0),
    "pad_mode": ("\"constant\", \"reflect\" or \"replicate\"",
                 lambda v: v in ("constant", "reflect", "replicate")),
    "dtype": ("{\"dtype\": NAME}", lambda v: isinstance(v, dict) and set(v) == {"dtype"}
              and v["dtype"] in DTYPE_NAMES),
}


def short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."

