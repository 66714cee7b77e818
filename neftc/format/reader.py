"""Read a layout directory back: validate schema and checksums, reconstruct the weights."""

from __future__ import annotations

import bisect
import hashlib
import heapq
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from neftc.errors import LayoutError
from neftc.format import encoding, ops
from neftc.format.graph_codec import DTYPES, MEMORY_FORMATS, node_refs
from neftc.format.schema import (
    CHECKSUMS_FILE,
    LAYOUT_FILE,
    LAYOUT_FORMAT,
    LAYOUT_VERSION,
    LEVELS_FILE,
    TENSORS_FILE,
    DacRecord,
    GraphNode,
    LayerRecord,
    LayoutDoc,
    TensorRecord,
    TileRecord,
)

_FIX = "re-run 'neftc compile' to write a fresh layout"


@dataclass(frozen=True)
class CellOrigin:
    """Where a programmed cell comes from."""

    layer: str
    matrix_row: int  # wordline input index (unrolled)
    weight_col: int  # output channel
    polarity: int  # 0 = positive (or offset column), 1 = negative
    slice: int  # 0 = least significant cell


class Layout:
    """A validated layout directory. Build it with ``load_layout``."""

    def __init__(self, root: Path, doc: LayoutDoc, levels: bytes, tensors: bytes) -> None:
        self.root = root
        self.doc = doc
        self._levels = levels
        self._tensors = tensors
        self._layers = {layer.name: layer for layer in doc.layers}
        self._tensor_records = {t.name: t for t in doc.tensors}
        self._arrays = {(core, array): (layer, t) for layer in doc.layers for t in layer.tiles
                        for core, array in [(t.core, t.array), *t.replicas]}

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.doc.layers]

    def layer(self, name: str) -> LayerRecord:
        if name not in self._layers:
            raise KeyError(f"no layer '{name}' in this layout; layers: {', '.join(self._layers)}")
        return self._layers[name]

    def tile_levels(self, layer: LayerRecord, tile: TileRecord) -> np.ndarray:
        """The programmed levels of one array, uint8 [row_count, col_count]."""
        count = tile.row_count * tile.col_count
        return np.frombuffer(self._levels, dtype=np.uint8, count=count,
                             offset=tile.levels_offset).reshape(tile.row_count, tile.col_count)

    def levels(self, name: str) -> np.ndarray:
        """A layer's levels gathered from its tiles: uint8 [P, S, matrix_rows, matrix_cols]."""
        layer = self.layer(name)
        n_pol, n_slices = layer.slicing.polarities, layer.slicing.slices
        phys = np.zeros((layer.matrix_rows, layer.matrix_cols * n_pol * n_slices), dtype=np.uint8)
        for tile in layer.tiles:
            phys[tile.row_start:tile.row_start + tile.row_count,
                 tile.col_start:tile.col_start + tile.col_count] = self.tile_levels(layer, tile)
        return encoding.from_physical(phys, n_pol, n_slices)

    def integer_matrix(self, name: str) -> np.ndarray:
        """The integer weight matrix, int64 [matrix_rows, matrix_cols] (rows = wordlines)."""
        layer = self.layer(name)
        return encoding.fold(self.levels(name), layer.slicing.cell_bits, layer.slicing.offset)

    def integer_weights(self, name: str) -> np.ndarray:
        """The integer weights in the layer's weight shape (e.g. [C_out, C_in, kh, kw])."""
        layer = self.layer(name)
        return self.integer_matrix(name).T.reshape(layer.weight_shape)

    def scales(self, name: str) -> np.ndarray:
        """Per output channel scales, float32 [C_out]."""
        return np.asarray(self.layer(name).quant.scales, dtype=np.float32)

    def dac(self, name: str) -> DacRecord | None:
        """The layer's input DAC setting (scale, signed, bits) stored by ``neftc calibrate``, or
        None when the layout carries no DAC calibration (``doc.dac_calibration`` says where the
        settings come from)."""
        return self.layer(name).dac

    def weights(self, name: str) -> np.ndarray:
        """The dequantised float32 weights ``q * scale`` in the layer's weight shape."""
        layer = self.layer(name)
        q = self.integer_matrix(name).astype(np.float32)
        return (q * self.scales(name)[None, :]).T.reshape(layer.weight_shape)

    def tensor(self, name: str) -> np.ndarray:
        """A digital tensor (bias, BatchNorm statistics, ...) from tensors.bin."""
        record = self._tensor_records[name]
        count = int(np.prod(record.shape)) if record.shape else 1
        return np.frombuffer(self._tensors, dtype=np.dtype(record.dtype).newbyteorder("<"),
                             count=count, offset=record.offset).reshape(record.shape)

    def cell_origin(self, core: int, array: int, row: int, col: int) -> CellOrigin:
        """Which layer, weight, slice and polarity the cell at (core, array, row, col) holds."""
        if (core, array) not in self._arrays:
            raise KeyError(f"array ({core}, {array}) is not programmed in this layout")
        layer, tile = self._arrays[(core, array)]
        if not (0 <= row < tile.row_count and 0 <= col < tile.col_count):
            raise KeyError(f"cell ({row}, {col}) is outside the programmed "
                           f"{tile.row_count}x{tile.col_count} block of array ({core}, {array})")
        weight_col, polarity, slice_ = encoding.column_origin(
            tile.col_start + col, layer.slicing.polarities, layer.slicing.slices)
        return CellOrigin(layer.name, tile.row_start + row, weight_col, polarity, slice_)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(root: Path, name: str, limit: int | None = None) -> bytes:
    path = root / name
    if not path.is_file():
        raise LayoutError(f"layout '{root}' is missing {name}; {_FIX}")
    if limit is None:
        return path.read_bytes()
    with path.open("rb") as fh:  # read at most limit + 1 bytes: the file may grow meanwhile
        # read(n) allocates n bytes: ask for no more than the file holds (+1 to see growth).
        data = fh.read(min(os.fstat(fh.fileno()).st_size, limit) + 1)
    if len(data) > limit:
        raise LayoutError(f"'{path}' is larger than {limit} bytes ({limit // 2**20} MiB), the "
                          f"most a layout's {name} may hold; it is not a layout neftc wrote; "
                          f"{_FIX}")
    return data


MAX_CHECKSUMS_BYTES = 2**20  # SHA256SUMS: three lines of about 80 bytes
MAX_LAYOUT_BYTES = 256 * 2**20  # layout.json; neftc's own are a few MiB for a ResNet-18
MAX_JSON_DEPTH = 64  # arrays/objects inside each other: a layout nests about 6 + 32 (arguments)
MAX_INT_DIGITS = 24  # digits of a JSON integer: layout integers fit in 64 bits (20 digits);
# a little more is parsed so that a field's own check names a merely too-large value

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


class _JsonLimit(ValueError):
    """layout.json breaks a limit checked before or while parsing."""


def _json_depth(raw: bytes, limit: int) -> int:
    """How deep arrays and objects nest in ``raw`` (strings skipped), counted up to just past
    ``limit``: a linear scan of the bytes, before the parser recurses into them."""
    brackets = np.frombuffer(_JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKET),
                             dtype=np.uint8)
    depth = deepest = 0
    step = 1 << 22
    for start in range(0, len(brackets), step):
        chunk = brackets[start:start + step]
        opens = (chunk == ord("[")) | (chunk == ord("{"))
        levels = depth + np.cumsum(np.where(opens, 1, -1), dtype=np.int64)
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
        if deepest > limit:
            break
    return deepest


def _json_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise _JsonLimit(f"holds the integer {text[:12]}... of {digits} digits; a layout's "
                         f"integers have at most {MAX_INT_DIGITS} digits")
    return int(text)


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _JsonLimit(f"holds the number {text[:24]}, too large for a float")
    return value


def _check_sums(root: Path, files: dict[str, bytes]) -> None:
    text = _read(root, CHECKSUMS_FILE, MAX_CHECKSUMS_BYTES).decode(errors="replace")
    expected: dict[str, str] = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise LayoutError(f"'{root / CHECKSUMS_FILE}' is damaged (bad line {line!r}); {_FIX}")
        expected[name] = digest
    for name, data in files.items():
        if name not in expected:
            raise LayoutError(f"'{root / CHECKSUMS_FILE}' has no checksum for {name}; {_FIX}")
        if _sha256(data) != expected[name]:
            raise LayoutError(f"'{root / name}' was modified or truncated after compile (SHA-256 "
                              f"mismatch with {CHECKSUMS_FILE}); {_FIX}")


def _parse(root: Path, raw: bytes) -> LayoutDoc:
    depth = _json_depth(raw, MAX_JSON_DEPTH)
    if depth > MAX_JSON_DEPTH:
        raise LayoutError(f"'{root / LAYOUT_FILE}' nests arrays and objects more than "
                          f"{MAX_JSON_DEPTH} deep; a layout nests at most {MAX_JSON_DEPTH} deep "
                          f"(docs/layout.md section 10); it is not a layout neftc wrote; {_FIX}")
    try:
        data = json.loads(raw, parse_int=_json_int, parse_float=_json_float)
    except _JsonLimit as exc:
        raise LayoutError(f"'{root / LAYOUT_FILE}' {exc} (docs/layout.md section 10); it is not "
                          f"a layout neftc wrote; {_FIX}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise LayoutError(f"'{root / LAYOUT_FILE}' is not valid JSON ({exc}); it may be "
                          f"truncated; {_FIX}") from None
    if not isinstance(data, dict) or data.get("format") != LAYOUT_FORMAT:
        raise LayoutError(f"'{root / LAYOUT_FILE}' is not a neftc layout (no "
                          f"\"format\": \"{LAYOUT_FORMAT}\")")
    if data.get("version") != LAYOUT_VERSION:
        raise LayoutError(f"'{root / LAYOUT_FILE}' has layout version {data.get('version')!r}; "
                          f"this neftc reads version {LAYOUT_VERSION}; {_FIX}")
    try:
        return LayoutDoc.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else p if str(p).startswith("[")
                        else f".{p}" for p in err["loc"])
        raise LayoutError(_one_line(
            f"'{root / LAYOUT_FILE}' does not match the layout schema at {where.lstrip('.')}: "
            f"{err['msg']} ({exc.error_count()} problem(s)); {_FIX}")) from None


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _is_grid(tiles: list[TileRecord], rows: int, cols: int) -> bool:
    """True when the tiles partition a rows x cols matrix into a grid (rows, then columns)."""
    by_rows: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for tile in tiles:
        by_rows.setdefault((tile.row_start, tile.row_count), []).append(
            (tile.col_start, tile.col_count))

    def partitions(intervals: list[tuple[int, int]], length: int) -> bool:
        position = 0
        for start, count in sorted(intervals):
            if start != position:
                return False
            position += count
        return position == length

    return partitions(list(by_rows), rows) and all(
        partitions(spans, cols) for spans in by_rows.values())


def _find_overlap(tiles: list[TileRecord]) -> tuple[int, int] | None:
    """Positions ``(a, b)``, ``a < b``, of two tiles that share a cell, or None.

    A sweep over the rows: the tiles that span the current row have pairwise disjoint column
    ranges (any overlap among them was reported when the later one arrived), so a new tile can
    only overlap its neighbours in column order. O(n log n) for a grid."""
    order = sorted(range(len(tiles)), key=lambda j: (tiles[j].row_start, tiles[j].col_start))
    starts: list[int] = []  # column starts of the active tiles, sorted (unique: disjoint ranges)
    active: list[int] = []  # tile positions, parallel to ``starts``
    ends: list[tuple[int, int, int]] = []  # heap of (row end, column start, position)
    for j in order:
        tile = tiles[j]
        while ends and ends[0][0] <= tile.row_start:
            _, col_start, _ = heapq.heappop(ends)
            where = bisect.bisect_left(starts, col_start)
            del starts[where], active[where]
        where = bisect.bisect_left(starts, tile.col_start)
        for k in (where - 1, where):
            if 0 <= k < len(active):
                other = tiles[active[k]]
                if other.col_start < tile.col_start + tile.col_count and \
                        tile.col_start < other.col_start + other.col_count:
                    return min(j, active[k]), max(j, active[k])
        starts.insert(where, tile.col_start)
        active.insert(where, j)
        heapq.heappush(ends, (tile.row_start + tile.row_count, tile.col_start, j))
    return None


_ARG_TAGS = {
    "node": None,  # any node name; checked against the graph separately
    "dtype": set(DTYPES),
    "device": {"cpu"},
    "float": {"inf", "-inf", "nan"},
    "memory_format": set(MEMORY_FORMATS),
    "layout": {"strided"},
}


_MAX_ARG_DEPTH = 32  # list nesting of one argument; ATen arguments nest two or three deep


def _bad_argument(value: Any, path: str, depth: int = 0) -> tuple[str, str] | None:
    """``(field, problem)`` for the first argument value that is none of the forms of
    docs/layout.md section 7.2 (or nests deeper than ``_MAX_ARG_DEPTH``), or None."""
    if isinstance(value, list):
        if depth > _MAX_ARG_DEPTH:
            return path, f"nests lists more than {_MAX_ARG_DEPTH} deep"
        for k, item in enumerate(value):
            bad = _bad_argument(item, f"{path}[{k}]", depth + 1)
            if bad is not None:
                return bad
        return None
    if isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in _ARG_TAGS:
            return path, (f"is an object with the keys {sorted(value)}; an object argument has "
                          f"exactly one of the tags {', '.join(_ARG_TAGS)} (docs/layout.md "
                          "section 7.2)")
        tag, tagged = next(iter(value.items()))
        allowed = _ARG_TAGS[tag]
        if not isinstance(tagged, str) or (allowed is not None and tagged not in allowed):
            choices = ("a node name (a string)" if allowed is None else
                       f"one of: {', '.join(sorted(allowed))}")
            return path, f"is {{{tag!r}: {tagged!r}}}; the {tag} must be {choices}"
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, float) and not math.isfinite(value):
            return path, (f"is the bare number {value}; write a non-finite float as "
                          f"{{\"float\": \"{'nan' if math.isnan(value) else repr(value)}\"}}")
        return None
    return path, f"has the unexpected type {type(value).__name__}"


_CONV_ARGS = ("stride", "padding", "dilation", "groups")
_WEIGHT_DIMS = {"linear": 2, "conv1d": 3, "conv2d": 4}


class _Consistency:
    """The semantic checks of docs/layout.md section 10, run on a schema-valid document.

    Every refusal is one line that names ``layout.json``, the field (``layers[1].tiles[3].core``)
    and the fix. Sizes are checked before anything is sliced or allocated."""

    def __init__(self, root: Path, doc: LayoutDoc, levels: bytes, tensors: bytes) -> None:
        self.root = root
        self.doc = doc
        self.levels = levels
        self.tensors = tensors
        self.tensor_records: dict[str, TensorRecord] = {}
        self.layer_index: dict[str, int] = {}
        self.node_index: dict[str, int] = {}
        self.arrays: dict[tuple[int, int], str] = {}  # (core, array) -> the field that holds it

    def fail(self, field: str, problem: str) -> LayoutError:
        return LayoutError(_one_line(f"'{self.root / LAYOUT_FILE}' is inconsistent at {field}: "
                                     f"{problem}; {_FIX}"))

    def run(self) -> None:
        self.check_files()
        self.check_tensors()
        for k, node in enumerate(self.doc.graph.nodes):
            self.node_index.setdefault(node.name, k)
        for i, layer in enumerate(self.doc.layers):
            if layer.name in self.layer_index:
                raise self.fail(f"layers[{i}].name", f"layer name '{layer.name}' is also the name "
                                f"of layers[{self.layer_index[layer.name]}]; names must be unique")
            self.layer_index[layer.name] = i
        all_levels = np.frombuffer(self.levels, dtype=np.uint8)
        for i, layer in enumerate(self.doc.layers):
            self.check_layer(i, layer)
            self.check_tiles(i, layer, all_levels)
        self.check_graph()

    def check_files(self) -> None:
        for key, data in ((("levels", self.levels), ("tensors", self.tensors))):
            record = self.doc.files[key]
            if record.nbytes != len(data):
                raise self.fail(f"files.{key}.nbytes", f"{record.path} has {len(data)} bytes, "
                                f"not the recorded {record.nbytes}")
            if record.sha256 != _sha256(data):
                raise self.fail(f"files.{key}.sha256", f"{record.path} does not match its "
                                "recorded SHA-256")

    def check_tensors(self) -> None:
        for k, record in enumerate(self.doc.tensors):
            field = f"tensors[{k}]"
            if record.name in self.tensor_records:
                raise self.fail(f"{field}.name", f"tensor name '{record.name}' is used twice; "
                                "names must be unique")
            if any(n < 0 for n in record.shape):
                raise self.fail(f"{field}.shape", f"shape {record.shape} of tensor "
                                f"'{record.name}' has a negative dimension")
            expected = math.prod(record.shape) * np.dtype(record.dtype).itemsize
            if expected != record.nbytes:
                raise self.fail(f"{field}.nbytes", f"tensor '{record.name}' has nbytes "
                                f"{record.nbytes}, but shape {record.shape} of {record.dtype} "
                                f"takes {expected}")
            if record.offset + record.nbytes > len(self.tensors):
                raise self.fail(f"{field}.offset", f"tensor '{record.name}' (bytes "
                                f"{record.offset}..{record.offset + record.nbytes - 1}) lies past "
                                f"the end of tensors.bin ({len(self.tensors)} bytes)")
            self.tensor_records[record.name] = record

    def check_layer(self, i: int, layer: LayerRecord) -> None:
        field = f"layers[{i}]"
        target = self.doc.target
        shape = layer.weight_shape
        if (layer.conv is None) != (layer.op == "linear"):
            raise self.fail(f"{field}.conv", f"a {layer.op} layer must "
                            f"{'not ' if layer.op == 'linear' else ''}have a conv record")
        if len(shape) != _WEIGHT_DIMS[layer.op] or min(shape) < 1:
            raise self.fail(f"{field}.weight_shape", f"{shape} is not the weight shape of a "
                            f"{layer.op} ({_WEIGHT_DIMS[layer.op]} dimensions, each >= 1)")
        if shape[0] != layer.matrix_cols:
            raise self.fail(f"{field}.weight_shape", f"{shape} has {shape[0]} output channels, "
                            f"but {field}.matrix_cols is {layer.matrix_cols}")
        if math.prod(shape[1:]) != layer.matrix_rows:
            raise self.fail(f"{field}.weight_shape", f"{shape} unrolls to "
                            f"{math.prod(shape[1:])} rows, but {field}.matrix_rows is "
                            f"{layer.matrix_rows}")
        if layer.conv is not None:
            conv, spatial = layer.conv, len(shape) - 2
            for name in ("kernel", "stride", "padding", "dilation"):
                values = getattr(conv, name)
                low = 0 if name == "padding" else 1
                if len(values) != spatial or min(values) < low:
                    raise self.fail(f"{field}.conv.{name}", f"{values} must have {spatial} "
                                    f"value(s), each >= {low}")
            if conv.kernel != shape[2:]:
                raise self.fail(f"{field}.conv.kernel", f"{conv.kernel} differs from the kernel "
                                f"{shape[2:]} of {field}.weight_shape")
            if layer.matrix_cols % conv.groups:
                raise self.fail(f"{field}.conv.groups", f"{conv.groups} groups do not divide "
                                f"the {layer.matrix_cols} output channels")
        if layer.bias is not None:
            record = self.tensor_records.get(layer.bias)
            if record is None:
                raise self.fail(f"{field}.bias", f"names the tensor '{layer.bias}', which is not "
                                "in tensors")
            if record.shape != [layer.matrix_cols]:
                raise self.fail(f"{field}.bias", f"the tensor '{layer.bias}' has shape "
                                f"{record.shape}, not [{layer.matrix_cols}] (one per output "
                                "channel)")
        quant, slicing = layer.quant, layer.slicing
        if quant.bits != target.weight.bits:
            raise self.fail(f"{field}.quant.bits", f"{quant.bits}, but target.weight.bits is "
                            f"{target.weight.bits}")
        if slicing.encoding != target.weight.sign_encoding:
            raise self.fail(f"{field}.slicing.encoding", f"'{slicing.encoding}', but "
                            f"target.weight.sign_encoding is '{target.weight.sign_encoding}'")
        if quant.qmax != target.qmax:
            raise self.fail(f"{field}.quant.qmax", f"{quant.qmax}, but {quant.bits}-bit "
                            f"{slicing.encoding} weights have qmax {target.qmax}")
        if len(quant.scales) != layer.matrix_cols:
            raise self.fail(f"{field}.quant.scales", f"{len(quant.scales)} scales for "
                            f"{layer.matrix_cols} weight columns; there must be one per column")
        for k, scale in enumerate(quant.scales):
            if not (math.isfinite(scale) and scale > 0):
                raise self.fail(f"{field}.quant.scales[{k}]", f"the scale is {scale}; scales "
                                "must be finite and > 0")
        if not quant.per_channel and any(s != quant.scales[0] for s in quant.scales):
            k = next(k for k, s in enumerate(quant.scales) if s != quant.scales[0])
            raise self.fail(f"{field}.quant.scales[{k}]", f"{quant.scales[k]} differs from "
                            f"scales[0] = {quant.scales[0]}, but quant.per_channel is false "
                            "(one scale per layer)")
        if slicing.cell_bits != target.cell.bits:
            raise self.fail(f"{field}.slicing.cell_bits", f"{slicing.cell_bits}, but "
                            f"target.cell.bits is {target.cell.bits}")
        slices = encoding.n_slices(quant.bits, slicing.cell_bits)
        if slicing.slices != slices:
            raise self.fail(f"{field}.slicing.slices", f"{slicing.slices}, but {quant.bits}-bit "
                            f"weights on {slicing.cell_bits}-bit cells take {slices} slices")
        polarities = encoding.n_polarities(slicing.encoding)
        if slicing.polarities != polarities:
            raise self.fail(f"{field}.slicing.polarities", f"{slicing.polarities}, but "
                            f"{slicing.encoding} encoding has {polarities}")
        offset = encoding.sign_offset(quant.bits, slicing.encoding)
        if slicing.offset != offset:
            raise self.fail(f"{field}.slicing.offset", f"{slicing.offset}, but "
                            f"{quant.bits}-bit {slicing.encoding} encoding has offset {offset}")
        if layer.replication > layer.positions:
            raise self.fail(f"{field}.positions", f"{layer.positions} output position(s) per "
                            f"sample, fewer than the layer's {layer.replication} pipeline copies "
                            f"({field}.replication)")
        k = self.node_index.get(layer.node)
        node = self.doc.graph.nodes[k] if k is not None else None
        if node is None or node.op != "call_function" or node.layer != layer.name:
            what = ("no node of graph.nodes has that name" if node is None else
                    f"graph.nodes[{k}] is a {node.op} node with layer {node.layer!r}")
            raise self.fail(f"{field}.node", f"'{layer.node}' must name the call_function node "
                            f"whose layer is '{layer.name}', but {what}")

    def check_tiles(self, i: int, layer: LayerRecord, all_levels: np.ndarray) -> None:
        field = f"layers[{i}]"
        target = self.doc.target
        chip = target.chip
        n_cols = layer.matrix_cols * layer.slicing.polarities * layer.slicing.slices
        top = encoding.n_levels(layer.slicing.cell_bits) - 1
        for j, tile in enumerate(layer.tiles):
            tfield = f"{field}.tiles[{j}]"
            if tile.row_count > target.array.rows:
                raise self.fail(f"{tfield}.row_count", f"{tile.row_count} rows do not fit the "
                                f"{target.array.rows} rows of an array")
            if tile.col_count > target.array.cols:
                raise self.fail(f"{tfield}.col_count", f"{tile.col_count} columns do not fit the "
                                f"{target.array.cols} columns of an array")
            if tile.row_start + tile.row_count > layer.matrix_rows:
                raise self.fail(f"{tfield}.row_start", f"rows {tile.row_start}.."
                                f"{tile.row_start + tile.row_count - 1} lie outside the layer's "
                                f"matrix rows 0..{layer.matrix_rows - 1}")
            if tile.col_start + tile.col_count > n_cols:
                raise self.fail(f"{tfield}.col_start", f"physical columns {tile.col_start}.."
                                f"{tile.col_start + tile.col_count - 1} lie outside the layer's "
                                f"physical columns 0..{n_cols - 1}")
            cells = tile.row_count * tile.col_count
            if tile.levels_offset + cells > len(self.levels):
                raise self.fail(f"{tfield}.levels_offset", f"the tile's {cells} levels at byte "
                                f"{tile.levels_offset} lie past the end of levels.bin "
                                f"({len(self.levels)} bytes)")
            places = [(tile.core, tile.array, f"{tfield}.core", f"{tfield}.array", tfield)] + [
                (int(c), int(a), f"{tfield}.replicas[{k}]", f"{tfield}.replicas[{k}]",
                 f"{tfield}.replicas[{k}]") for k, (c, a) in enumerate(tile.replicas)]
            for core, array, core_field, array_field, holder in places:
                if not (0 <= core < chip.cores):
                    raise self.fail(core_field, f"core {core} is not on the target chip (cores "
                                    f"0..{chip.cores - 1})")
                if not (0 <= array < chip.arrays_per_core):
                    raise self.fail(array_field, f"array {array} is not on the target chip "
                                    f"(arrays 0..{chip.arrays_per_core - 1} per core)")
                if (core, array) in self.arrays:
                    raise self.fail(array_field, f"array ({core}, {array}) is used twice: "
                                    f"{self.arrays[(core, array)]} already holds it; no array "
                                    "holds two tiles (tiles and replicas together)")
                self.arrays[(core, array)] = holder
            if layer.replication != 1 + len(tile.replicas):
                raise self.fail(f"{field}.replication", f"{layer.replication} copies, but "
                                f"{tfield} has {len(tile.replicas)} replica(s) "
                                f"(replication must be 1 + len(replicas) for every tile)")
            block = all_levels[tile.levels_offset:tile.levels_offset + cells]
            if int(block.max()) > top:
                at = int(np.argmax(block > top))
                raise self.fail(tfield, f"levels.bin byte {tile.levels_offset + at} (row "
                                f"{at // tile.col_count}, column {at % tile.col_count} of the "
                                f"tile) holds level {int(block[at])}, above the top level {top} "
                                f"of {layer.slicing.cell_bits}-bit cells")
        overlap = _find_overlap(layer.tiles)
        if overlap is not None:
            a, b = (layer.tiles[j] for j in overlap)
            rows = (max(a.row_start, b.row_start),
                    min(a.row_start + a.row_count, b.row_start + b.row_count) - 1)
            cols = (max(a.col_start, b.col_start),
                    min(a.col_start + a.col_count, b.col_start + b.col_count) - 1)
            raise self.fail(f"{field}.tiles[{overlap[1]}]", f"the tile overlaps "
                            f"{field}.tiles[{overlap[0]}] (both hold rows {rows[0]}..{rows[1]}, "
                            f"physical columns {cols[0]}..{cols[1]}); every cell of the physical "
                            "matrix lies in exactly one tile")
        covered = sum(t.row_count * t.col_count for t in layer.tiles)
        if covered != layer.matrix_rows * n_cols or not _is_grid(layer.tiles, layer.matrix_rows,
                                                                 n_cols):
            how = (f"cover {covered} of its {layer.matrix_rows * n_cols} cells"
                   if covered != layer.matrix_rows * n_cols else "are not a grid of row bands")
            raise self.fail(f"{field}.tiles", f"the tiles do not cover the layer's "
                            f"{layer.matrix_rows}x{n_cols} physical matrix exactly once as a grid "
                            f"(they {how})")
        band_cols: dict[int, list[int]] = {}  # row start of a row band -> its column starts
        for tile in layer.tiles:
            band_cols.setdefault(tile.row_start, []).append(tile.col_start)
        row_rank = {start: rank for rank, start in enumerate(sorted(band_cols))}
        col_rank: dict[tuple[int, int], int] = {}
        first_index: dict[int, int] = {}  # row start -> index of the band's first tile
        before = 0
        for start in sorted(band_cols):
            first_index[start] = before
            before += len(band_cols[start])
            for rank, col_start in enumerate(sorted(band_cols[start])):
                col_rank[(start, col_start)] = rank
        for j, tile in enumerate(layer.tiles):
            tfield = f"{field}.tiles[{j}]"
            row_tile = row_rank[tile.row_start]
            col_tile = col_rank[(tile.row_start, tile.col_start)]
            index = first_index[tile.row_start] + col_tile
            if tile.row_tile != row_tile:
                raise self.fail(f"{tfield}.row_tile", f"{tile.row_tile}, but the tile starts at "
                                f"row {tile.row_start}, in row tile {row_tile}")
            if tile.col_tile != col_tile:
                raise self.fail(f"{tfield}.col_tile", f"{tile.col_tile}, but the tile starts at "
                                f"physical column {tile.col_start}, column tile {col_tile} of "
                                "its row band")
            if tile.index != index or index != j:
                raise self.fail(f"{tfield}.index", f"{tile.index}, but the tile (row tile "
                                f"{row_tile}, column tile {col_tile}) has row-major index {index}"
                                f"{'' if index == j else f' and is listed at position {j}'}; "
                                "tiles are listed in index order")

    def check_graph(self) -> None:
        nodes = self.doc.graph.nodes
        seen: set[str] = set()
        for k, node in enumerate(nodes):
            field = f"graph.nodes[{k}]"
            if node.name in seen:
                raise self.fail(f"{field}.name", f"node name '{node.name}' is also the name of "
                                f"graph.nodes[{self.node_index[node.name]}]; names must be unique")
            bad = _bad_argument(node.args, f"{field}.args") or next(
                (b for name, v in node.kwargs.items()
                 if (b := _bad_argument(v, f"{field}.kwargs.{name}")) is not None), None)
            if bad is not None:
                raise self.fail(*bad)
            for key, values in (("args", node.args), ("kwargs", list(node.kwargs.values()))):
                for ref in node_refs(values):
                    if ref not in self.node_index:
                        raise self.fail(f"{field}.{key}", f"refers to the node '{ref}', which "
                                        "no node of the graph has")
                    if ref not in seen:
                        raise self.fail(f"{field}.{key}", f"refers to the node '{ref}' "
                                        f"(graph.nodes[{self.node_index[ref]}]), which comes "
                                        "later; a node may only use nodes listed before it")
            if node.op == "get_attr":
                self.check_get_attr(field, node)
            elif node.op == "call_function":
                self.check_call(field, node)
            elif node.op == "output":
                if k != len(nodes) - 1:
                    raise self.fail(f"{field}.op", "an output node must be the last node of the "
                                    "graph (and there is exactly one)")
                if len(node.args) != 1:
                    raise self.fail(f"{field}.args", f"the output node has {len(node.args)} "
                                    "arguments; it must have exactly one (the returned value)")
            seen.add(node.name)
        if not nodes or nodes[-1].op != "output":
            raise self.fail("graph.nodes", "the graph has no output node; its last node must "
                            "be the output node")
        self.check_values()

    def check_values(self) -> None:
        """Shape propagation (sizes only) through the checked graph: every value and the work
        of a forward pass are bounded, at the layout's batch and per sample (docs/layout.md
        section 7.1.1)."""
        graph = ops.GraphInput(
            input_shape=self.doc.graph.input_shape, nodes=self.doc.graph.nodes,
            tensors={name: (r.shape, r.dtype) for name, r in self.tensor_records.items()},
            weights={layer.name: layer.weight_shape for layer in self.doc.layers})
        try:
            ops.check_values(graph)
        except ops.OpError as exc:
            where = "graph" if exc.node is None else f"graph.nodes[{exc.node}]"
            raise self.fail(f"{where}.{exc.field}", exc.problem) from None

    def check_get_attr(self, field: str, node: GraphNode) -> None:
        if node.layer is None:
            if node.target not in self.tensor_records:
                raise self.fail(f"{field}.target", f"the get_attr node '{node.name}' reads the "
                                f"tensor '{node.target}', which is not in tensors")
        elif node.layer not in self.layer_index:
            raise self.fail(f"{field}.layer", f"the get_attr node '{node.name}' is the weight of "
                            f"layer '{node.layer}', which is not in layers")

    def check_call(self, field: str, node: GraphNode) -> None:
        try:  # the allow-list and each op's argument schema (docs/layout.md section 7.1.1)
            ops.check_call(node.target, node.args, node.kwargs)
        except ops.OpError as exc:
            raise self.fail(f"{field}.{exc.field}", exc.problem) from None
        if node.layer is None:
            return
        i = self.layer_index.get(node.layer)
        if i is None or self.doc.layers[i].node != node.name:
            what = ("no layer has that name" if i is None else
                    f"layers[{i}].node is '{self.doc.layers[i].node}'")
            raise self.fail(f"{field}.layer", f"the crossbar node '{node.name}' names layer "
                            f"'{node.layer}', but {what}")
        layer = self.doc.layers[i]
        if node.target != f"aten.{layer.op}.default":
            raise self.fail(f"{field}.target", f"'{node.target}', but layers[{i}] is a "
                            f"{layer.op}: its node calls aten.{layer.op}.default")
        n_args = 3 if layer.conv is None else 3 + len(_CONV_ARGS)
        if len(node.args) != n_args or node.kwargs:
            raise self.fail(f"{field}.args", f"a crossbar {layer.op} node has exactly {n_args} "
                            "positional arguments and no kwargs (canonical form, "
                            "docs/layout.md section 7.1)")
        if not (isinstance(node.args[0], dict) and "node" in node.args[0]):
            raise self.fail(f"{field}.args[0]", "the input of a crossbar node must be a node "
                            "reference")
        weight = self.referenced(node.args[1])
        if weight is None or weight.op != "get_attr" or weight.layer is None:
            raise self.fail(f"{field}.args[1]", "the weight of a crossbar node must refer to a "
                            "get_attr node of a crossbar weight (one whose layer is set)")
        bias = node.args[2]
        bias_node = self.referenced(bias)
        if layer.bias is None:
            if bias is not None:
                raise self.fail(f"{field}.args[2]", f"layers[{i}].bias is null, so the bias "
                                "argument must be null")
        elif bias_node is None or bias_node.op != "get_attr" or bias_node.target != layer.bias:
            raise self.fail(f"{field}.args[2]", f"layers[{i}].bias is '{layer.bias}', so the "
                            f"bias argument must refer to the get_attr node of '{layer.bias}'")
        if layer.conv is not None:
            for k, name in enumerate(_CONV_ARGS):
                if node.args[3 + k] != getattr(layer.conv, name):
                    raise self.fail(f"{field}.args[{3 + k}]", f"{node.args[3 + k]!r}, but "
                                    f"layers[{i}].conv.{name} is {getattr(layer.conv, name)!r}")

    def referenced(self, value: Any) -> GraphNode | None:
        """The node a ``{"node": NAME}`` argument refers to, else None."""
        if isinstance(value, dict) and isinstance(value.get("node"), str) and \
                value["node"] in self.node_index:
            return self.doc.graph.nodes[self.node_index[value["node"]]]
        return None


def _check_consistency(root: Path, doc: LayoutDoc, levels: bytes, tensors: bytes) -> None:
    _Consistency(root, doc, levels, tensors).run()


def load_layout(directory: str | Path) -> Layout:
    """Open a layout directory, verifying its schema, its checksums and its internal consistency."""
    root = Path(directory)
    if not root.is_dir():
        raise LayoutError(f"layout directory '{root}' does not exist; compile one with "
                          "'neftc compile MODEL --target TAG -o DIR'")
    raw = _read(root, LAYOUT_FILE, MAX_LAYOUT_BYTES)
    doc = _parse(root, raw)
    if set(doc.files) != {"levels", "tensors"}:
        raise LayoutError(f"'{root / LAYOUT_FILE}' must list exactly the 'levels' and 'tensors' "
                          f"sidecars under \"files\"; {_FIX}")
    for record in doc.files.values():
        if record.path not in (LEVELS_FILE, TENSORS_FILE):
            raise LayoutError(f"'{root / LAYOUT_FILE}' names an unexpected sidecar "
                              f"'{record.path}'; {_FIX}")
    levels = _read(root, doc.files["levels"].path)
    tensors = _read(root, doc.files["tensors"].path)
    _check_sums(root, {LAYOUT_FILE: raw, doc.files["levels"].path: levels,
                       doc.files["tensors"].path: tensors})
    _check_consistency(root, doc, levels, tensors)
    return Layout(root, doc, levels, tensors)


__all__ = ["CellOrigin", "Layout", "TensorRecord", "load_layout"]
