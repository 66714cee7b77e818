"""What the semantic checks of docs/layout.md section 10 share: the layout under check and the
indexes built while checking it (:class:`Consistency`), their one-line refusal (``fail``), and
the first checks, of the sidecar files and the tensor records.

Every refusal is one line that names ``layout.json``, the field (``layers[1].tiles[3].core``) and
the fix. Sizes are checked before anything is sliced or allocated."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from neftc.errors import LayoutError
from neftc.format.schema import LAYOUT_FILE, LayoutDoc, TensorRecord

FIX = "re-run 'neftc compile' to write a fresh layout"


def one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Consistency:
    """A schema-valid layout under check, and what the checks learn of it as they go."""

    root: Path
    doc: LayoutDoc
    levels: bytes
    tensors: bytes
    tensor_records: dict[str, TensorRecord] = dataclasses.field(default_factory=dict)
    layer_index: dict[str, int] = dataclasses.field(default_factory=dict)
    node_index: dict[str, int] = dataclasses.field(default_factory=dict)
    # (core, array) -> the field that holds it
    arrays: dict[tuple[int, int], str] = dataclasses.field(default_factory=dict)

    def fail(self, field: str, problem: str) -> LayoutError:
        return LayoutError(one_line(f"'{self.root / LAYOUT_FILE}' is inconsistent at {field}: "
                                    f"{problem}; {FIX}"))


def check_files(ctx: Consistency) -> None:
    """The sidecars have the sizes and SHA-256 digests ``files`` records."""
    pairs: tuple[tuple[Literal["levels", "tensors"], bytes], ...] = (
        ("levels", ctx.levels), ("tensors", ctx.tensors))
    for key, data in pairs:
        record = ctx.doc.files[key]
        if record.nbytes != len(data):
            raise ctx.fail(f"files.{key}.nbytes", f"{record.path} has {len(data)} bytes, "
                           f"not the recorded {record.nbytes}")
        if record.sha256 != sha256_hex(data):
            raise ctx.fail(f"files.{key}.sha256", f"{record.path} does not match its "
                           "recorded SHA-256")


def check_periphery(ctx: Consistency) -> None:
    """``periphery`` repeats the target's converters (the emitter copies them): every field equals
    ``target.periphery``'s, whose bounds the target spec checks."""
    target = ctx.doc.target.periphery.model_dump()
    for key, value in ctx.doc.periphery.model_dump().items():
        if value != target[key]:
            raise ctx.fail(f"periphery.{key}", f"{value} differs from target.periphery.{key} "
                           f"({target[key]}); the layout's periphery is the target's")


def check_tensors(ctx: Consistency) -> None:
    """Tensor records: unique names, sizes that match shape and dtype, bytes inside tensors.bin."""
    for k, record in enumerate(ctx.doc.tensors):
        field = f"tensors[{k}]"
        if record.name in ctx.tensor_records:
            raise ctx.fail(f"{field}.name", f"tensor name '{record.name}' is used twice; "
                           "names must be unique")
        if any(n < 0 for n in record.shape):
            raise ctx.fail(f"{field}.shape", f"shape {record.shape} of tensor "
                           f"'{record.name}' has a negative dimension")
        expected = math.prod(record.shape) * np.dtype(record.dtype).itemsize
        if expected != record.nbytes:
            raise ctx.fail(f"{field}.nbytes", f"tensor '{record.name}' has nbytes "
                           f"{record.nbytes}, but shape {record.shape} of {record.dtype} "
                           f"takes {expected}")
        if record.offset + record.nbytes > len(ctx.tensors):
            raise ctx.fail(f"{field}.offset", f"tensor '{record.name}' (bytes "
                           f"{record.offset}..{record.offset + record.nbytes - 1}) lies past "
                           f"the end of tensors.bin ({len(ctx.tensors)} bytes)")
        ctx.tensor_records[record.name] = record


def index_names(ctx: Consistency) -> None:
    """The node and layer indexes by name; a layer name used twice is refused."""
    for k, node in enumerate(ctx.doc.graph.nodes):
        ctx.node_index.setdefault(node.name, k)
    for i, layer in enumerate(ctx.doc.layers):
        if layer.name in ctx.layer_index:
            raise ctx.fail(f"layers[{i}].name", f"layer name '{layer.name}' is also the name "
                           f"of layers[{ctx.layer_index[layer.name]}]; names must be unique")
        ctx.layer_index[layer.name] = i
