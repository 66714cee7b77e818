"""Read a layout directory back: validate schema and checksums, reconstruct the weights."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from neftc.errors import LayoutError
from neftc.format import encoding
from neftc.format.graph_codec import node_refs, resolve_op
from neftc.format.schema import (
    CHECKSUMS_FILE, LAYOUT_FILE, LAYOUT_FORMAT, LAYOUT_VERSION, LEVELS_FILE, TENSORS_FILE,
    LayerRecord, LayoutDoc,
    TensorRecord, TileRecord,
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

    def dac(self, name: str) -> "DacRecord | None":  # noqa: F821 (neftc.format.schema)
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


def _read(root: Path, name: str) -> bytes:
    path = root / name
    if not path.is_file():
        raise LayoutError(f"layout '{root}' is missing {name}; {_FIX}")
    return path.read_bytes()


def _check_sums(root: Path, files: dict[str, bytes]) -> None:
    text = _read(root, CHECKSUMS_FILE).decode(errors="replace")
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
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
        where = ".".join(str(p) for p in err["loc"])
        raise LayoutError(f"'{root / LAYOUT_FILE}' does not match the layout schema at '{where}': "
                          f"{err['msg']} ({exc.error_count()} problem(s)); {_FIX}") from None


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


def _check_consistency(root: Path, doc: LayoutDoc, levels: bytes, tensors: bytes) -> None:
    def fail(message: str) -> LayoutError:
        return LayoutError(f"'{root / LAYOUT_FILE}' is inconsistent: {message}; {_FIX}")

    for key, data in (("levels", levels), ("tensors", tensors)):
        record = doc.files[key]
        if record.nbytes != len(data) or record.sha256 != _sha256(data):
            raise fail(f"{record.path} does not match its recorded size and SHA-256")
    seen_arrays: set[tuple[int, int]] = set()
    all_levels = np.frombuffer(levels, dtype=np.uint8)
    for layer in doc.layers:
        n_cols = layer.matrix_cols * layer.slicing.polarities * layer.slicing.slices
        if not _is_grid(layer.tiles, layer.matrix_rows, n_cols):
            raise fail(f"the tiles of layer '{layer.name}' do not cover its {layer.matrix_rows}x"
                       f"{n_cols} physical matrix exactly once")
        for tile in layer.tiles:
            if tile.row_start + tile.row_count > layer.matrix_rows or \
                    tile.col_start + tile.col_count > n_cols:
                raise fail(f"tile {tile.index} of layer '{layer.name}' lies outside its matrix")
            if tile.row_count > doc.target.array.rows or tile.col_count > doc.target.array.cols:
                raise fail(f"tile {tile.index} of layer '{layer.name}' is larger than an array")
            if tile.levels_offset + tile.row_count * tile.col_count > len(levels):
                raise fail(f"tile {tile.index} of layer '{layer.name}' lies past the end of "
                           "levels.bin")
            for core, array in [(tile.core, tile.array), *tile.replicas]:
                if (core, array) in seen_arrays:
                    raise fail(f"array ({core}, {array}) holds two tiles")
                if core >= doc.target.chip.cores or array >= doc.target.chip.arrays_per_core:
                    raise fail(f"array ({core}, {array}) is not on the target chip")
                seen_arrays.add((core, array))
            block = all_levels[tile.levels_offset:tile.levels_offset
                               + tile.row_count * tile.col_count]
            if block.size and int(block.max()) >= 2**layer.slicing.cell_bits:
                raise fail(f"tile {tile.index} of layer '{layer.name}' holds level "
                           f"{int(block.max())}, above the {2**layer.slicing.cell_bits} levels "
                           "of its cells")
        if len(layer.quant.scales) != layer.matrix_cols:
            raise fail(f"layer '{layer.name}' has {len(layer.quant.scales)} scales for "
                       f"{layer.matrix_cols} columns")
    for record in doc.tensors:
        if record.offset + record.nbytes > len(tensors):
            raise fail(f"tensor '{record.name}' lies past the end of tensors.bin")
        expected = int(np.prod(record.shape)) * np.dtype(record.dtype).itemsize
        if expected != record.nbytes:
            raise fail(f"tensor '{record.name}' has {record.nbytes} bytes for shape {record.shape}")
    names: set[str] = set()
    for node in doc.graph.nodes:
        for ref in node_refs(node.args) + node_refs(list(node.kwargs.values())):
            if ref not in names:
                raise fail(f"node '{node.name}' uses '{ref}' before it is defined")
        names.add(node.name)


def load_layout(directory: str | Path) -> Layout:
    """Open a layout directory, verifying its schema, its checksums and its internal consistency."""
    root = Path(directory)
    if not root.is_dir():
        raise LayoutError(f"layout directory '{root}' does not exist; compile one with "
                          "'neftc compile MODEL --target TAG -o DIR'")
    raw = _read(root, LAYOUT_FILE)
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
