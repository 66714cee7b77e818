"""The size bounds of every value a layout's graph computes (docs/layout.md section 7.1.1):
``check_values`` propagates shapes through the graph on PyTorch's ``meta`` device (sizes only:
nothing is allocated or computed) at the layout's batch and at that batch plus ``BATCH_PROBE``,
and bounds every value, all values together and the work of one forward pass, each as a fixed
part plus a part per sample of the batch."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neftc.format.arg_kinds import MAX_DIM, MAX_INT, MAX_RANK, int_in, is_int, short
from neftc.format.op_table import OPS, OpError, check_refs

MAX_ELEMENTS = 2**26  # elements of any one value, at the layout's batch and per sample
MAX_WORK = 2**32  # elements read, written and multiply-accumulated by one forward pass
MAX_MADE = 2**28  # elements of all the values one forward pass computes, together (1 GiB)
BATCH_PROBE = 2**16  # the second propagation runs at the layout's batch plus this

BATCH_INDEXING = {"aten.slice.Tensor", "aten.select.int", "aten.chunk.default"}


#: The dtypes a layout's input may have (``InputRecord.dtype``).
INPUT_DTYPES = ("float32", "int64", "int32", "bool")
#: Bound of an integer input's ``low`` and ``high`` (token ids, positions): int32's range.
MAX_INPUT_VALUE = 2**31 - 1


@dataclass(frozen=True, kw_only=True)
class GraphInput:
    """What ``check_values`` needs of a layout, as plain data. The inputs are ``inputs`` (records
    with ``name``, ``dtype``, ``shape``, ``low``, ``high``, in placeholder order), or, as a
    version 2 layout had them, one float32 input of ``input_shape``: give exactly one."""

    nodes: Sequence[Any]  # GraphNode records (name, op, target, args, kwargs, layer)
    tensors: Mapping[str, tuple[Sequence[int], str]]  # tensors records: name -> (shape, dtype)
    weights: Mapping[str, Sequence[int]]  # layer name -> weight_shape
    inputs: Sequence[Any] = ()
    input_shape: Sequence[int] | None = None

    def input_list(self) -> list[tuple[str, Sequence[int]]]:
        """(dtype, shape) of every input, in placeholder order."""
        if self.input_shape is not None:
            return [("float32", self.input_shape)]
        return [(record.dtype, record.shape) for record in self.inputs]


def check_values(graph: GraphInput) -> None:
    """Propagate shapes through the graph on the meta device at the layout's batch ``b`` and at
    ``b + BATCH_PROBE``; raise ``OpError`` (with ``node`` set) where a value or the work breaks
    the bounds of docs/layout.md section 7.1.1. Every node must already pass ``check_call``."""
    _check_inputs(graph)
    batch = int(graph.input_list()[0][1][0])
    at_batch = _propagate(graph, batch)
    try:
        at_probe = _propagate(graph, batch + BATCH_PROBE)
    except OpError as exc:
        raise OpError(exc.field, f"{exc.problem}; the graph runs at the layout's batch {batch} "
                      "only, but a layout's batch dimension must stay dynamic (write the model "
                      "without a fixed batch size, e.g. x.flatten(1), not x.view(1, -1))",
                      exc.node) from None
    for k, (small, large) in enumerate(zip(at_batch.values, at_probe.values)):
        node = graph.nodes[k]
        if node.op != "call_function":
            continue  # the input (input_shape, above) and constants (held by the files)
        _check_node_values(node, k, small, large, batch)
        indexed, probed = at_batch.indexed.get(k), at_probe.indexed.get(k)
        if indexed != probed:  # (dim, size) differ, or the whole dimension at one batch only
            dim = (indexed or probed)[0]  # type: ignore[index]
            raise OpError("args", f"{node.target} takes part of dimension {dim}, whose size "
                          "follows the batch; only the whole of a batch-sized dimension may be "
                          "taken", k)
    _check_totals(at_batch, at_probe, batch)


def _check_inputs(graph: GraphInput) -> None:
    """Every input: an allowed dtype, a bounded shape, the first input's batch, sane ranges."""
    if (graph.input_shape is None) == (not graph.inputs):
        raise OpError("inputs", "give the graph's inputs or one input_shape, not both or none")
    listed = graph.input_list()
    batch = listed[0][1][0] if listed[0][1] else None
    for k, (dtype, shape) in enumerate(listed):
        field = "input_shape" if graph.input_shape is not None else f"inputs[{k}].shape"
        shape = list(shape)
        if not (1 <= len(shape) <= MAX_RANK and all(int_in(1, MAX_DIM)(d) for d in shape)):
            raise OpError(field, f"{short(shape)} must be 1..{MAX_RANK} sizes, each "
                          f"1..{MAX_DIM}")
        if math.prod(shape) > MAX_ELEMENTS:
            raise OpError(field, f"{shape} holds {math.prod(shape)} elements, more than "
                          f"{MAX_ELEMENTS} (2**26)")
        if shape[0] != batch:
            raise OpError(field, f"{shape} has batch {shape[0]}, but the first input's is "
                          f"{batch}; every input is batch first, with the same batch")
        if dtype not in INPUT_DTYPES:
            raise OpError(f"inputs[{k}].dtype", f"{dtype!r} is not one of "
                          f"{', '.join(INPUT_DTYPES)}")
    for k, record in enumerate(graph.inputs):
        _check_range(k, record)


def _check_range(k: int, record: Any) -> None:
    """An integer input has ``low < high`` within +-``MAX_INPUT_VALUE``; others have neither."""
    low, high = record.low, record.high
    if record.dtype not in ("int64", "int32"):
        if low is not None or high is not None:
            raise OpError(f"inputs[{k}].low", f"a {record.dtype} input has no value range; "
                          "low and high must be null")
        return
    if not (is_int(low) and is_int(high)):
        raise OpError(f"inputs[{k}].low", f"an integer input has its valid values low <= v < "
                      f"high; both must be integers, not {short(low)} and {short(high)}")
    if not (-MAX_INPUT_VALUE <= low < high <= MAX_INPUT_VALUE):
        raise OpError(f"inputs[{k}].high", f"[{low}, {high}) must be a non-empty range within "
                      f"+-{MAX_INPUT_VALUE} (2**31 - 1)")


def _check_node_values(node: Any, k: int, small: list[_Value], large: list[_Value],
                       batch: int) -> None:
    """The values of node ``k`` at the layout's batch (``small``) and at the probe batch
    (``large``): one dimension at most follows the batch, and each is bounded per sample."""
    span = BATCH_PROBE
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


def _check_totals(at_batch: _Propagation, at_probe: _Propagation, batch: int) -> None:
    """All values together and the work of one forward pass, bounded per sample."""
    span = BATCH_PROBE
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
    """Every node's values on the meta device at ``batch``, with the work and the elements made."""
    import torch

    meta = torch.device("meta")
    env: dict[str, Any] = {}
    values: list[list[_Value]] = []
    indexed: dict[int, tuple[int, int] | None] = {}
    work, heaviest, heaviest_work = 0.0, 0, -1.0
    made, largest, largest_made = 0.0, 0, -1.0
    from neftc.format.graph_codec import dtypes

    inputs = graph.input_list()
    placeholders = 0
    by_name = {node.name: node for node in graph.nodes}
    for k, node in enumerate(graph.nodes):
        out: Any = None
        if node.op == "placeholder":
            placeholders += 1
            if placeholders > len(inputs):
                raise OpError("op", f"placeholder {placeholders}: the layout has "
                              f"{len(inputs)} input(s), one per placeholder", k)
            dtype, shape = inputs[placeholders - 1]
            out = torch.empty((batch, *shape[1:]), dtype=dtypes()[dtype], device=meta)
        elif node.op == "get_attr":
            out = _constant_value(graph, node, k)
        elif node.op == "call_function":
            out, cost = _call_value(node, k, env, by_name, batch, indexed)
            work += cost
            if cost > heaviest_work:
                heaviest, heaviest_work = k, cost
        tensors = _tensors_of(node, k, out)
        values.append([_Value(tuple(t.shape), t.numel()) for t in tensors])
        if node.op == "call_function":
            size = float(sum(t.numel() for t in tensors))
            made += size
            if size > largest_made:
                largest, largest_made = k, size
        env[node.name] = out
    if placeholders != len(inputs):
        raise OpError("nodes", f"the graph has {placeholders} placeholder node(s) but the "
                      f"layout {len(inputs)} input(s); one placeholder takes each input")
    return _Propagation(values, indexed, work, heaviest, made, largest)


def _constant_value(graph: GraphInput, node: Any, k: int) -> Any:
    """A get_attr node's tensor (a crossbar weight or a tensor record) on the meta device."""
    import torch

    from neftc.format.graph_codec import dtypes

    meta = torch.device("meta")
    shape, dtype = ((graph.weights[node.layer], "float32") if node.layer is not None
                    else graph.tensors[node.target])
    if len(shape) > MAX_RANK or not all(int_in(0, MAX_INT)(d) for d in shape):
        raise OpError("target", f"the tensor has shape {short(list(shape))}; a tensor "
                      f"has at most {MAX_RANK} dimensions of 0..{MAX_INT}", k)
    try:
        out = torch.empty(tuple(shape), dtype=dtypes()[dtype], device=meta)
    except RuntimeError as exc:  # e.g. a shape whose element count overflows
        raise OpError("target", f"the tensor of shape {short(list(shape))} cannot "
                      f"exist: {str(exc).strip().splitlines()[0][:200]}", k) from None
    return out


def _call_value(node: Any, k: int, env: dict[str, Any], by_name: Mapping[str, Any], batch: int,
                indexed: dict[int, tuple[int, int] | None]) -> tuple[Any, float]:
    """A call_function node's value(s) on the meta device, and the work it takes; records the
    dimension a slice/select/chunk takes part of in ``indexed``."""
    import torch

    from neftc.format.graph_codec import decode_arg, resolve_op

    meta = torch.device("meta")
    spec = OPS[node.target]
    args = [decode_arg(a, env) for a in node.args]
    kwargs = {name: decode_arg(v, env) for name, v in node.kwargs.items()}
    check_refs(spec, node.args, node.kwargs, args, kwargs, by_name, k)
    if node.target in BATCH_INDEXING:
        indexed[k] = _indexed_dim(node.target, args, kwargs)
    if any(p.name == "device" for p in spec.params):
        kwargs["device"] = meta  # a factory: sizes only, never an allocation
    try:
        with torch.no_grad():
            out = resolve_op(node.target)(*args, **kwargs)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OpError("args", f"{node.target} cannot run on the values it is given at "
                      f"batch {batch}: {first[:200]}", k) from None
    return out, _work(node.target, args, out)


def _tensors_of(node: Any, k: int, out: Any) -> list[Any]:
    """The tensors among a node's value(s), each of at most ``MAX_RANK`` dimensions."""
    import torch

    tensors = [out] if isinstance(out, torch.Tensor) else [
        t for t in out if isinstance(t, torch.Tensor)] if isinstance(out, (list, tuple)) \
        else []
    for t in tensors:
        if t.dim() > MAX_RANK:
            raise OpError("args", f"{node.target} makes a value of {t.dim()} dimensions; "
                          f"values have at most {MAX_RANK}", k)
    return tensors


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
    if not is_int(dim) or not -tensor.dim() <= dim < tensor.dim():
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


