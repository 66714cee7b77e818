"""The allow-list of ops a layout's graph may call (``OPS``: each op's parameters, by name, kind
and default), its markdown tables for docs/layout.md section 7.1.1, ``check_call``, the check of
one node's op and JSON arguments against it, and ``check_refs``, the check that its node
references point at values of the kind each parameter needs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neftc.format.arg_kinds import ARG_KINDS, is_int, is_ref, short


class OpError(Exception):
    """A node the layout format does not allow: ``field`` (relative to the node, e.g. ``target``,
    ``args[1]``, ``kwargs.alpha``) and a one-line ``problem``."""

    def __init__(self, field: str, problem: str, node: int | None = None) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.node = node  # index in graph.nodes, for check_values


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
_COMPARE_SCALAR = "self: tensor, other: number"
_COMPARE = "self: tensor, other: tensor"

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
    ("aten.sqrt.default", _UNARY),
    ("aten.rsqrt.default", _UNARY),
    ("aten.abs.default", _UNARY),
    ("aten.erf.default", _UNARY),
    ("aten.reciprocal.default", _UNARY),
    ("aten.pow.Tensor_Scalar", "self: tensor, exponent: number"),
    ("aten.rsub.Scalar", "self: tensor, other: number, alpha: number = 1"),
    ("aten.add.Tensor", _ADD),
    ("aten.sub.Tensor", _ADD),
    ("aten.mul.Tensor", _MUL),
    ("aten.div.Tensor", _MUL),
    # masks: comparisons, selections by a mask, and dtype casts (digital, any dtype)
    *((f"aten.{op}.Scalar", _COMPARE_SCALAR) for op in ("eq", "ne", "lt", "le", "gt", "ge")),
    *((f"aten.{op}.Tensor", _COMPARE) for op in ("eq", "ne", "lt", "le", "gt", "ge")),
    ("aten.logical_not.default", _UNARY),
    ("aten.bitwise_not.default", _UNARY),
    ("aten.bitwise_and.Tensor", _COMPARE),
    ("aten.bitwise_or.Tensor", _COMPARE),
    ("aten.where.self", "condition: tensor, self: tensor, other: tensor"),
    ("aten.where.ScalarOther", "condition: tensor, self: tensor, other: number"),
    ("aten.where.ScalarSelf", "condition: tensor, self: number, other: tensor"),
    ("aten.masked_fill.Scalar", "self: tensor, mask: tensor, value: number"),
    ("aten.masked_fill.Tensor", "self: tensor, mask: tensor, value: tensor"),
    ("aten._to_copy.default", ("self: tensor, *, " + _FACTORY + ", non_blocking: bool = False, "
                               "memory_format: memory_format? = None")),
    # lookups: embeddings (token and position tables) and gathers, digital
    ("aten.embedding.default", ("weight: tensor, indices: tensor, padding_idx: index = -1, "
                                "scale_grad_by_freq: bool = False, sparse: false = False")),
    ("aten.gather.default", "self: tensor, dim: dim, index: tensor, *, sparse_grad: false = False"),
    ("aten.index_select.default", "self: tensor, dim: dim, index: tensor"),
    # advanced indexing x[i0, i1, ...] of the leading dimensions (no None: every index a tensor)
    ("aten.index.Tensor", "self: tensor, indices: tensors"),
    # reductions
    ("aten.mean.dim", _REDUCE),
    ("aten.sum.dim_IntList", _REDUCE),
    ("aten.amax.default", "self: tensor, dim: dims = [], keepdim: bool = False"),
    ("aten.argmax.default", "self: tensor, dim: dim? = None, keepdim: bool = False"),
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
    # padding (mobile CNNs' "same" padding, cropping with negative entries)
    ("aten.pad.default", ("self: tensor, pad: pads, mode: pad_mode = 'constant', "
                          "value: number? = None")),
    ("aten.constant_pad_nd.default", "self: tensor, pad: pads, value: number = 0"),
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
    # integer arithmetic on symbolic sizes (Python's operators; operands are sizes, not tensors)
    ("sym_mul", "self: size, other: size"),
    # Python's operator.getitem: one output of a multi-output op (chunk)
    ("getitem", "self: parts, index: part"),
))}


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


def check_call(target: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> OpSpec:
    """The spec of ``target`` if it is an allowed op and ``args``/``kwargs`` (JSON-encoded, as in
    layout.json) match its parameters; else ``OpError`` naming the field."""
    spec = OPS.get(target) if isinstance(target, str) else None
    if spec is None:
        raise OpError("target", f"{short(target)} is not supported by the layout format: a "
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
        found = by_name.get(name)
        if found is None:
            raise OpError(f"kwargs.{name}", f"{target} has no argument '{name}' "
                          f"({spec.signature()})")
        param = found
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
        raise OpError(field, f"{short(value)} is not a valid '{param.name}' of {spec.name}: "
                      f"it must be {words}")


#: The nodes whose value is a size (an int): a shape entry or a size operand may refer to them.
SIZE_NODES = frozenset({"aten.sym_size.int", "sym_mul"})


def check_refs(spec: OpSpec, raw_args: Sequence[Any], raw_kwargs: Mapping[str, Any],
               args: Sequence[Any], kwargs: Mapping[str, Any], names: Mapping[str, Any],
               k: int) -> None:
    """Node references point at values of the kind the parameter needs (``args``/``kwargs``:
    the decoded values of node ``k``; ``names``: every node by name)."""
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
        if param.kind in ("shape", "number-or-size", "size", "bound?"):
            entries = list(zip(raw, value)) if param.kind == "shape" else [(raw, value)]
            for j, (entry, size) in enumerate(entries):
                if is_ref(entry) and (names[entry["node"]].target not in SIZE_NODES or
                                      not is_int(size)):
                    where = f"{field}[{j}]" if param.kind == "shape" else field
                    raise OpError(where, f"a size given by reference must be the value of an "
                                  f"aten.sym_size.int or sym_mul node, not of '{entry['node']}'",
                                  k)
            continue
        refs = raw if param.kind == "tensors" else [raw]
        got = value if param.kind == "tensors" else [value]
        for j, (entry, item) in enumerate(zip(refs, got)):
            if is_ref(entry) and not isinstance(item, torch.Tensor):
                where = f"{field}[{j}]" if param.kind == "tensors" else field
                raise OpError(where, f"'{entry['node']}' is not a tensor value; '{param.name}' "
                              f"of {spec.name} must be a tensor", k)
