"""The ops a layout's digital graph may call, the arguments each accepts, and the size bounds of
every value the graph computes (docs/layout.md section 7.1.1).

A layout is data. Its graph may call only the ops of ``OPS`` (the ATen ops the compiler emits for
the models it supports, plus ``getitem``): none of them has a side effect, touches a file or
draws random numbers; the factories (``ones``, ``zeros``, ``full``, ``arange``, ``*_like``) and
the ops that take sizes (``view``, ``reshape``, ``expand``) are bounded like every value.
Every argument has a kind with bounds (``ARG_KINDS``). ``check_call`` checks one node's op and
arguments; ``check_values`` then propagates shapes through the whole graph on PyTorch's
``meta`` device (sizes only: nothing is allocated or computed) at the layout's batch and at
that batch plus ``BATCH_PROBE``, and bounds every value, all values together and the work of
one forward pass, each as a fixed part plus a part per sample of the batch. ``load_layout``
runs both before anything executes; the compiler runs both on the graph it is about to write.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_RANK = 8  # dimensions of any value; dim arguments lie in [-MAX_RANK - 1, MAX_RANK]
MAX_DIM = 2**31 - 1  # a size, an index or an output size
MAX_WINDOW = 1024  # one entry of a kernel, stride, padding or dilation
MAX_PARTS = 1024  # chunks of a chunk, tensors of a cat
MAX_INT = 2**63 - 1  # slice bounds (ATen writes an open end as 2**63 - 1)
MAX_ELEMENTS = 2**26  # elements of any one value, at the layout's batch and per sample
MAX_WORK = 2**32  # elements read, written and multiply-accumulated by one forward pass
MAX_MADE = 2**28  # elements of all the values one forward pass computes, together (1 GiB)
BATCH_PROBE = 2**16  # the second propagation runs at the layout's batch plus this


class OpError(Exception):
    """A node the layout format does not allow: ``field`` (relative to the node, e.g. ``target``,
    ``args[1]``, ``kwargs.alpha``) and a one-line ``problem``."""

    def __init__(self, field: str, problem: str, node: int | None = None) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.node = node  # index in graph.nodes, for check_values


# --------------------------------------------------------------------------- argument kinds

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) and abs(value) <= MAX_INT) or (
        isinstance(value, float) and math.isfinite(value))


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"node"} and isinstance(value["node"], str)


def _int_in(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and low <= v <= high


def _list_of(check: Callable[[Any], bool], low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and low <= len(v) <= high and all(map(check, v))


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_dim = _int_in(-MAX_RANK - 1, MAX_RANK)
_window_entry = _int_in(1, MAX_WINDOW)
_padding_entry = _int_in(0, MAX_WINDOW)
_dims = _list_of(_dim, 0, MAX_RANK)
_DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                "uint8", "bool")  # graph_codec.DTYPES

# kind -> (what it accepts, in words; the check of its JSON value)
ARG_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "tensor": ("a reference {\"node\": NAME} to a node whose value is a tensor", _is_ref),
    "tensor?": ("a tensor reference or null", _optional(_is_ref)),
    "tensor-or-number": ("a tensor reference or a finite number", lambda v: _is_ref(v) or
                      _is_number(v)),
    "tensors": (f"a list of 1..{MAX_PARTS} tensor references", _list_of(_is_ref, 1, MAX_PARTS)),
    "parts": ("a reference to a node whose value is a list of tensors (chunk)", _is_ref),
    "part": (f"an integer 0..{MAX_PARTS - 1}", _int_in(0, MAX_PARTS - 1)),
    "number": ("a finite number", _is_number),
    "number?": ("a finite number or null", _optional(_is_number)),
    "eps": ("a finite number >= 0", lambda v: _is_number(v) and v >= 0),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "false": ("false (inference only)", lambda v: v is False),
    "dim": (f"an integer {-MAX_RANK - 1}..{MAX_RANK} (a dimension)", _dim),
    "dims": (f"a list of at most {MAX_RANK} dimensions", _dims),
    "dims?": (f"null or a list of at most {MAX_RANK} dimensions", _optional(_dims)),
    "index": (f"an integer {-MAX_DIM}..{MAX_DIM}", _int_in(-MAX_DIM, MAX_DIM)),
    "bound?": (f"null or an integer {-MAX_INT - 1}..{MAX_INT}",
               _optional(_int_in(-MAX_INT - 1, MAX_INT))),
    "step": (f"an integer 1..{MAX_DIM}", _int_in(1, MAX_DIM)),
    "chunks": (f"an integer 1..{MAX_PARTS}", _int_in(1, MAX_PARTS)),
    "groups": (f"an integer 1..{MAX_DIM}", _int_in(1, MAX_DIM)),
    "window": (f"an integer 1..{MAX_WINDOW} or a list of at most 3 of them",
               lambda v: _window_entry(v) or _list_of(_window_entry, 0, 3)(v)),
    "padding": (f"an integer 0..{MAX_WINDOW} or a list of at most 3 of them",
                lambda v: _padding_entry(v) or _list_of(_padding_entry, 0, 3)(v)),
    "divisor?": (f"null or an integer 1..{MAX_WINDOW}", _optional(_int_in(1, MAX_WINDOW))),
    "output_size": (f"an integer 1..{MAX_DIM} or a list of 1..3 of them",
                    lambda v: _int_in(1, MAX_DIM)(v) or _list_of(_int_in(1, MAX_DIM), 1, 3)(v)),
    "sizes": (f"a list of 1..{MAX_RANK} integers 1..{MAX_DIM}",
              _list_of(_int_in(1, MAX_DIM), 1, MAX_RANK)),
    "shape": ((f"a list of at most {MAX_RANK} entries, each an integer -1..{MAX_DIM} or a "
               "reference to an aten.sym_size.int node"),
              _list_of(lambda v: _int_in(-1, MAX_DIM)(v) or _is_ref(v), 0, MAX_RANK)),
    "dtype?": ("null or {\"dtype\": NAME}", _optional(
        lambda v: isinstance(v, dict) and set(v) == {"dtype"} and v["dtype"] in _DTYPE_NAMES)),
    "layout?": ("null or {\"layout\": \"strided\"}",
                _optional(lambda v: v == {"layout": "strided"})),
    "device?": ("null or {\"device\": \"cpu\"} (the runtime puts the tensor on its own device)",
                _optional(lambda v: v == {"device": "cpu"})),
    "memory_format?": ("null or {\"memory_format\": NAME}", _optional(
        lambda v: isinstance(v, dict) and set(v) == {"memory_format"} and v["memory_format"]
        in ("contiguous_format", "channels_last", "preserve_format"))),
    "false?": ("null or false", lambda v: v is None or v is False),
    "number-or-size": ("a finite number or a reference to an aten.sym_size.int node",
                       lambda v: _is_number(v) or _is_ref(v)),
    "approximate": ("\"none\" or \"tanh\"", lambda v: v in ("none", "tanh")),
}


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    default: str | None  # None: required; else the default's text (the argument may be left out)
    keyword_only: bool


@dataclass(frozen=True)
class OpSpec:
    name: str
    params: tuple[Param, ...]

    @property
    def positional(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if not p.keyword_only)

    def signature(self) -> str:
        parts: list[str] = []
        for p in self.params:
            if p.keyword_only and "*" not in parts:
                parts.append("*")
            parts.append(f"{p.name}: {p.kind}" + ("" if p.default is None else f" = {p.default}"))
        return ", ".join(parts)


def _spec(name: str, signature: str) -> OpSpec:
    """``'self: tensor, other: tensor-or-number, *, alpha: number = 1'`` -> an ``OpSpec``."""
    params: list[Param] = []
    keyword_only = False
    for part in (p.strip() for p in signature.split(",")):
        if part == "*":
            keyword_only = True
            continue
        head, _, default = part.partition("=")
        pname, _, kind = head.partition(":")
        assert kind.strip() in ARG_KINDS, (name, kind)
        params.append(Param(pname.strip(), kind.strip(), default.strip() or None, keyword_only))
    return OpSpec(name, tuple(params))


_UNARY = "self: tensor"
_CONV = ("input: tensor, weight: tensor, bias: tensor? = None, stride: window = 1, "
         "padding: padding = 0, dilation: window = 1, groups: groups = 1")
_MAX_POOL = ("self: tensor, kernel_size: window, stride: window = [], padding: padding = 0, "
             "dilation: window = 1, ceil_mode: bool = False")
_AVG_POOL = ("self: tensor, kernel_size: window, stride: window = [], padding: padding = 0, "
             "ceil_mode: bool = False, count_include_pad: bool = True")
_ADD = "self: tensor, other: tensor-or-number, *, alpha: number = 1"
_MUL = "self: tensor, other: tensor-or-number"
_REDUCE = "self: tensor, dim: dims?, keepdim: bool = False, *, dtype: dtype? = None"
_FACTORY = ("dtype: dtype? = None, layout: layout? = None, device: device? = None, "
            "pin_memory: false? = None")
_LIKE = _FACTORY + ", memory_format: memory_format? = None"
_SOFTMAX = "self: tensor, dim: dim, dtype: dtype? = None"

# The allow-list: every op the compiler emits for the models it supports (docs/layout.md 7.1.1).
OPS: dict[str, OpSpec] = {spec.name: spec for spec in (_spec(*entry) for entry in (
    # crossbar ops (also digital, when the weight is computed) and dynamic matmuls
    ("aten.linear.default", "input: tensor, weight: tensor, bias: tensor? = None"),
    ("aten.conv1d.default", _CONV),
    ("aten.conv2d.default", _CONV),
    ("aten.matmul.default", "self: tensor, other: tensor"),
    # normalisation
    ("aten.batch_norm.default", ("input: tensor, weight: tensor?, bias: tensor?, "
                                 "running_mean: tensor?, running_var: tensor?, training: false, "
                                 "momentum: number, eps: eps, cudnn_enabled: bool")),
    ("aten.layer_norm.default", ("input: tensor, normalized_shape: sizes, "
                                 "weight: tensor? = None, bias: tensor? = None, "
                                 "eps: eps = 1e-05, cudnn_enable: bool = True")),
    # elementwise
    ("aten.relu.default", _UNARY),
    ("aten.sigmoid.default", _UNARY),
    ("aten.tanh.default", _UNARY),
    ("aten.silu.default", _UNARY),
    ("aten.hardswish.default", _UNARY),
    ("aten.hardsigmoid.default", _UNARY),
    ("aten.exp.default", _UNARY),
    ("aten.neg.default", _UNARY),
    ("aten.gelu.default", "self: tensor, *, approximate: approximate = 'none'"),
    ("aten.hardtanh.default", "self: tensor, min_val: number = -1, max_val: number = 1"),
    ("aten.leaky_relu.default", "self: tensor, negative_slope: number = 0.01"),
    ("aten.elu.default", ("self: tensor, alpha: number = 1, scale: number = 1, "
                          "input_scale: number = 1")),
    ("aten.clamp.default", "self: tensor, min: number? = None, max: number? = None"),
    ("aten.add.Tensor", _ADD),
    ("aten.sub.Tensor", _ADD),
    ("aten.mul.Tensor", _MUL),
    ("aten.div.Tensor", _MUL),
    # reductions
    ("aten.mean.dim", _REDUCE),
    ("aten.sum.dim_IntList", _REDUCE),
    ("aten.amax.default", "self: tensor, dim: dims = [], keepdim: bool = False"),
    ("aten.softmax.int", _SOFTMAX),
    ("aten.log_softmax.int", _SOFTMAX),
    ("aten.cumsum.default", "self: tensor, dim: dim, *, dtype: dtype? = None"),
    # pooling
    ("aten.max_pool1d.default", _MAX_POOL),
    ("aten.max_pool2d.default", _MAX_POOL),
    ("aten.avg_pool1d.default", _AVG_POOL),
    ("aten.avg_pool2d.default", _AVG_POOL + ", divisor_override: divisor? = None"),
    ("aten.adaptive_avg_pool1d.default", "self: tensor, output_size: output_size"),
    ("aten.adaptive_avg_pool2d.default", "self: tensor, output_size: output_size"),
    # shapes: views, selections and joins of existing values
    ("aten.flatten.using_ints", "self: tensor, start_dim: dim = 0, end_dim: dim = -1"),
    ("aten.view.default", "self: tensor, size: shape"),
    ("aten.reshape.default", "self: tensor, shape: shape"),
    ("aten.expand.default", "self: tensor, size: shape, *, implicit: bool = False"),
    ("aten.transpose.int", "self: tensor, dim0: dim, dim1: dim"),
    ("aten.t.default", "self: tensor"),
    ("aten.permute.default", "self: tensor, dims: dims"),
    ("aten.unsqueeze.default", "self: tensor, dim: dim"),
    ("aten.squeeze.dim", "self: tensor, dim: dim"),
    ("aten.slice.Tensor", ("self: tensor, dim: dim = 0, start: bound? = None, "
                           "end: bound? = None, step: step = 1")),
    ("aten.select.int", "self: tensor, dim: dim, index: index"),
    ("aten.chunk.default", "self: tensor, chunks: chunks, dim: dim = 0"),
    ("aten.cat.default", "tensors: tensors, dim: dim = 0"),
    ("aten.sym_size.int", "self: tensor, dim: dim"),
    # new tensors, of sizes given by literals or by the input's sizes (bounded like all values)
    ("aten.ones.default", "size: shape, *, " + _FACTORY),
    ("aten.zeros.default", "size: shape, *, " + _FACTORY),
    ("aten.full.default", "size: shape, fill_value: number, *, " + _FACTORY),
    ("aten.arange.default", "end: number-or-size, *, " + _FACTORY),
    ("aten.arange.start", "start: number-or-size, end: number-or-size, *, " + _FACTORY),
    ("aten.arange.start_step", "start: number-or-size, end: number-or-size, "
     "step: number-or-size = 1, *, " + _FACTORY),
    ("aten.ones_like.default", "self: tensor, *, " + _LIKE),
    ("aten.zeros_like.default", "self: tensor, *, " + _LIKE),
    ("aten.full_like.default", "self: tensor, fill_value: number, *, " + _LIKE),
    # Python's operator.getitem: one output of a multi-output op (chunk)
    ("getitem", "self: parts, index: part"),
))}

_SHAPE_OPS = {"aten.view.default", "aten.reshape.default", "aten.expand.default"}
_BATCH_INDEXING = {"aten.slice.Tensor", "aten.select.int", "aten.chunk.default"}


def op_table() -> str:
    """The allow-list as the markdown table of docs/layout.md section 7.1.1."""
    rows = ["| op | arguments (`name: kind = default`) |", "|---|---|"]
    rows += [f"| `{spec.name}` | `{spec.signature()}` |" for spec in OPS.values()]
    return "\n".join(rows)


def kind_table() -> str:
    """The argument kinds as the markdown table of docs/layout.md section 7.1.1."""
    rows = ["| kind | JSON value |", "|---|---|"]
    rows += [f"| `{kind}` | {words} |" for kind, (words, _) in ARG_KINDS.items()]
    return "\n".join(rows)


# --------------------------------------------------------------------------- one node

def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_call(target: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> OpSpec:
    """The spec of ``target`` if it is an allowed op and ``args``/``kwargs`` (JSON-encoded, as in
    layout.json) match its parameters; else ``OpError`` naming the field."""
    spec = OPS.get(target) if isinstance(target, str) else None
    if spec is None:
        raise OpError("target", f"{_short(target)} is not supported by the layout format: a "
                      f"layout's graph may call only the {len(OPS)} ops listed in "
                      "docs/layout.md section 7.1.1 (no op with side effects, file access, "
                      "randomness or sizes of its own)")
    positional = spec.positional
    if len(args) > len(positional):
        raise OpError("args", f"{target} takes at most {len(positional)} positional arguments "
                      f"({spec.signature()}), not {len(args)}")
    given: set[str] = set()
    for k, (param, value) in enumerate(zip(positional, args)):
        _check_value(spec, param, value, f"args[{k}]")
        given.add(param.name)
    by_name = {p.name: p for p in spec.params}
    for name, value in kwargs.items():
        param = by_name.get(name)
        if param is None:
            raise OpError(f"kwargs.{name}", f"{target} has no argument '{name}' "
                          f"({spec.signature()})")
        if name in given:
            raise OpError(f"kwargs.{name}", f"'{name}' of {target} is also given as a "
                          "positional argument")
        _check_value(spec, param, value, f"kwargs.{name}")
        given.add(name)
    missing = [p.name for p in spec.params if p.default is None and p.name not in given]
    if missing:
        raise OpError("args", f"{target} needs the argument(s) {', '.join(missing)} "
                      f"({spec.signature()})")
    return spec


def _check_value(spec: OpSpec, param: Param, value: Any, field: str) -> None:
    words, check = ARG_KINDS[param.kind]
    if not check(value):
        raise OpError(field, f"{_short(value)} is not a valid '{param.name}' of {spec.name}: "
                      f"it must be {words}")


# --------------------------------------------------------------------------- the whole graph

@dataclass(frozen=True)
class GraphInput:
    """What ``check_values`` needs of a layout, as plain data."""

    input_shape: Sequence[int]
    nodes: Sequence[Any]  # GraphNode records (name, op, target, args, kwargs, layer)
    tensors: Mapping[str, tuple[Sequence[int], str]]  # tensors records: name -> (shape, dtype)
    weights: Mapping[str, Sequence[int]]  # layer name -> weight_shape


def check_values(graph: GraphInput) -> None:
    """Propagate shapes through the graph on the meta device at the layout's batch ``b`` and at
    ``b + BATCH_PROBE``; raise ``OpError`` (with ``node`` set) where a value or the work breaks
    the bounds of docs/layout.md section 7.1.1. Every node must already pass ``check_call``."""
    shape = list(graph.input_shape)
    if not (1 <= len(shape) <= MAX_RANK and all(_int_in(1, MAX_DIM)(d) for d in shape)):
        raise OpError("input_shape", f"{_short(shape)} must be 1..{MAX_RANK} sizes, each "
                      f"1..{MAX_DIM}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise OpError("input_shape", f"{shape} holds {math.prod(shape)} elements, more than "
                      f"{MAX_ELEMENTS} (2**26)")
    batch = shape[0]
    at_batch = _propagate(graph, batch)
    try:
        at_probe = _propagate(graph, batch + BATCH_PROBE)
    except OpError as exc:
        raise OpError(exc.field, f"{exc.problem}; the graph runs at the layout's batch {batch} "
                      "only, but a layout's batch dimension must stay dynamic (write the model "
                      "without a fixed batch size, e.g. x.flatten(1), not x.view(1, -1))",
                      exc.node) from None
    span = BATCH_PROBE
    for k, (small, large) in enumerate(zip(at_batch.values, at_probe.values)):
        node = graph.nodes[k]
        if node.op != "call_function":
            continue  # the input (input_shape, above) and constants (held by the files)
        what = f"{node.target} makes"
        for j, (a, b) in enumerate(zip(small, large)):
            out = f" output {j}" if len(small) > 1 else ""
            varying = [d for d, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
            if len(a.shape) != len(b.shape) or len(varying) > 1:
                raise OpError("args", f"{what} a value{out} of shape {list(a.shape)} at batch "
                              f"{batch} but {list(b.shape)} at batch {batch + span}: more than "
                              "one dimension follows the batch size, so its size would grow "
                              "faster than the batch", k)
            growth = (b.numel - a.numel) / span  # elements per sample of the batch
            base = a.numel - growth * batch  # and the part that does not follow the batch
            if growth > MAX_ELEMENTS or base > MAX_ELEMENTS:
                raise OpError("args", f"{what} a value{out} of shape {list(a.shape)} at the "
                              f"layout's batch {batch} ({base:.0f} elements plus {growth:.0f} "
                              f"per sample); a value may hold at most {MAX_ELEMENTS} (2**26) "
                              "elements plus as many per sample", k)
        indexed, probed = at_batch.indexed.get(k), at_probe.indexed.get(k)
        if indexed != probed:  # (dim, size) differ, or the whole dimension at one batch only
            dim = (indexed or probed)[0]  # type: ignore[index]
            raise OpError("args", f"{node.target} takes part of dimension {dim}, whose size "
                          "follows the batch; only the whole of a batch-sized dimension may be "
                          "taken", k)
    growth = (at_probe.made - at_batch.made) / span
    base = at_batch.made - growth * batch
    if growth > MAX_MADE or base > MAX_MADE:
        raise OpError("args", f"one forward pass computes values of about {base:.3g} elements "
                      f"plus {growth:.3g} per sample in all; at most {MAX_MADE} (2**28) plus as "
                      "many per sample are allowed (this node makes the largest)",
                      at_probe.largest)
    growth = (at_probe.work - at_batch.work) / span
    base = at_batch.work - growth * batch
    if growth > MAX_WORK or base > MAX_WORK:
        raise OpError("args", f"one forward pass takes about {base:.3g} element operations plus "
                      f"{growth:.3g} per sample; at most {MAX_WORK} (2**32) plus as many per "
                      "sample are allowed (this node is the heaviest)", at_probe.heaviest)


@dataclass(frozen=True)
class _Value:
    shape: tuple[int, ...]
    numel: int


@dataclass
class _Propagation:
    values: list[list[_Value]]  # per node: its tensor values (none for ints and the output)
    indexed: dict[int, tuple[int, int] | None]  # slice/select/chunk node -> (dim, size) or None
    work: float
    heaviest: int
    made: float  # elements of all values computed
    largest: int


def _propagate(graph: GraphInput, batch: int) -> _Propagation:
    import torch

    from neftc.format.graph_codec import DTYPES, decode_arg

    meta = torch.device("meta")
    env: dict[str, Any] = {}
    values: list[list[_Value]] = []
    indexed: dict[int, tuple[int, int] | None] = {}
    work, heaviest, heaviest_work = 0.0, 0, -1.0
    made, largest, largest_made = 0.0, 0, -1.0
    placeholders = 0
    by_name = {node.name: node for node in graph.nodes}
    for k, node in enumerate(graph.nodes):
        out: Any = None
        if node.op == "placeholder":
            placeholders += 1
            if placeholders > 1:
                raise OpError("op", "a second placeholder: a layout's graph has exactly one "
                              "input", k)
            out = torch.empty((batch, *graph.input_shape[1:]), device=meta)
        elif node.op == "get_attr":
            shape, dtype = ((graph.weights[node.layer], "float32") if node.layer is not None
                            else graph.tensors[node.target])
            if len(shape) > MAX_RANK or not all(_int_in(0, MAX_INT)(d) for d in shape):
                raise OpError("target", f"the tensor has shape {_short(list(shape))}; a tensor "
                              f"has at most {MAX_RANK} dimensions of 0..{MAX_INT}", k)
            try:
                out = torch.empty(tuple(shape), dtype=DTYPES[dtype], device=meta)
            except RuntimeError as exc:  # e.g. a shape whose element count overflows
                raise OpError("target", f"the tensor of shape {_short(list(shape))} cannot "
                              f"exist: {str(exc).strip().splitlines()[0][:200]}", k) from None
        elif node.op == "call_function":
            spec = OPS[node.target]
            args = [decode_arg(a, env) for a in node.args]
            kwargs = {name: decode_arg(v, env) for name, v in node.kwargs.items()}
            _check_refs(spec, node.args, node.kwargs, args, kwargs, by_name, k)
            if node.target in _BATCH_INDEXING:
                indexed[k] = _indexed_dim(node.target, args, kwargs)
            if any(p.name == "device" for p in spec.params):
                kwargs["device"] = meta  # a factory: sizes only, never an allocation
            try:
                with torch.no_grad():
                    out = (operator.getitem if node.target == "getitem" else
                           _aten(node.target))(*args, **kwargs)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise OpError("args", f"{node.target} cannot run on the values it is given at "
                              f"batch {batch}: {first[:200]}", k) from None
            cost = _work(node.target, args, out)
            work += cost
            if cost > heaviest_work:
                heaviest, heaviest_work = k, cost
        tensors = [out] if isinstance(out, torch.Tensor) else [
            t for t in out if isinstance(t, torch.Tensor)] if isinstance(out, (list, tuple)) \
            else []
        for t in tensors:
            if t.dim() > MAX_RANK:
                raise OpError("args", f"{node.target} makes a value of {t.dim()} dimensions; "
                              f"values have at most {MAX_RANK}", k)
        values.append([_Value(tuple(t.shape), t.numel()) for t in tensors])
        if node.op == "call_function":
            size = float(sum(t.numel() for t in tensors))
            made += size
            if size > largest_made:
                largest, largest_made = k, size
        env[node.name] = out
    if placeholders != 1:
        raise OpError("nodes", "the graph has no placeholder node; a layout's graph has exactly "
                      "one input")
    return _Propagation(values, indexed, work, heaviest, made, largest)


def _aten(name: str) -> Any:
    import torch

    _, op, overload = name.split(".")
    return getattr(getattr(torch.ops.aten, op), overload)


def _check_refs(spec: OpSpec, raw_args: Sequence[Any], raw_kwargs: Mapping[str, Any],
                args: Sequence[Any], kwargs: Mapping[str, Any], names: Mapping[str, Any],
                k: int) -> None:
    """Node references point at values of the kind the parameter needs."""
    import torch

    items = [(p, f"args[{j}]", raw, value) for j, (p, raw, value)
             in enumerate(zip(spec.positional, raw_args, args))]
    items += [(next(p for p in spec.params if p.name == name), f"kwargs.{name}",
               raw_kwargs[name], value) for name, value in kwargs.items()]
    for param, field, raw, value in items:
        if param.kind == "parts":
            if not isinstance(value, (list, tuple)):
                raise OpError(field, f"{spec.name} takes one output of a multi-output op "
                              f"(chunk); '{raw['node']}' has a single value", k)
            continue
        if param.kind in ("shape", "number-or-size"):
            entries = list(zip(raw, value)) if param.kind == "shape" else [(raw, value)]
            for j, (entry, size) in enumerate(entries):
                if _is_ref(entry) and (names[entry["node"]].target != "aten.sym_size.int" or
                                       not _is_int(size)):
                    where = f"{field}[{j}]" if param.kind == "shape" else field
                    raise OpError(where, f"a size given by reference must be the value of an "
                                  f"aten.sym_size.int node, not of '{entry['node']}'", k)
            continue
        refs = raw if param.kind == "tensors" else [raw]
        got = value if param.kind == "tensors" else [value]
        for j, (entry, item) in enumerate(zip(refs, got)):
            if _is_ref(entry) and not isinstance(item, torch.Tensor):
                where = f"{field}[{j}]" if param.kind == "tensors" else field
                raise OpError(where, f"'{entry['node']}' is not a tensor value; '{param.name}' "
                              f"of {spec.name} must be a tensor", k)


def _indexed_dim(target: str, args: Sequence[Any], kwargs: Mapping[str, Any]
                 ) -> tuple[int, int] | None:
    """``(dim, size)`` of the dimension a slice/select/chunk takes part of, or None when a slice
    takes the whole dimension."""
    import torch

    spec = OPS[target]
    bound = {p.name: v for p, v in zip(spec.positional, args)} | dict(kwargs)
    tensor = bound.get("self")
    if not isinstance(tensor, torch.Tensor) or tensor.dim() == 0:
        return None  # ATen refuses it when it runs
    dim = bound.get("dim", 0)
    if not _is_int(dim) or not -tensor.dim() <= dim < tensor.dim():
        return None
    dim %= tensor.dim()
    size = int(tensor.shape[dim])
    if target == "aten.slice.Tensor":
        start, end, step = bound.get("start"), bound.get("end"), bound.get("step", 1)
        if start in (None, 0) and (end is None or end >= size) and step == 1:
            return None
    return dim, size


def _work(target: str, args: Sequence[Any], out: Any) -> float:
    """Elements read and written, plus multiply-accumulates of contractions and windows."""
    import torch

    def numel(value: Any) -> float:
        if isinstance(value, torch.Tensor):
            return float(value.numel())
        if isinstance(value, (list, tuple)):
            return sum(numel(v) for v in value)
        return 0.0

    cost = numel(list(args)) + numel(out)
    produced = numel(out)
    if target in ("aten.linear.default", "aten.matmul.default") and len(args) > 1:
        lhs = args[0]
        if isinstance(lhs, torch.Tensor) and lhs.dim() >= 1:
            cost += produced * lhs.shape[-1]
    elif target in ("aten.conv1d.default", "aten.conv2d.default") and len(args) > 1:
        weight = args[1]
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            cost += produced * math.prod(weight.shape[1:])
    elif "pool" in target and "adaptive" not in target and len(args) > 1:
        kernel = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        cost += produced * math.prod(int(v) for v in kernel)
    return cost


__all__ = [
    "ARG_KINDS",
    "BATCH_PROBE",
    "MAX_ELEMENTS",
    "MAX_MADE",
    "MAX_WORK",
    "OPS",
    "GraphInput",
    "OpError",
    "OpSpec",
    "Param",
    "check_call",
    "check_values",
    "kind_table",
    "op_table",
]
