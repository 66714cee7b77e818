"""Read a layout directory back: validate schema and checksums, reconstruct the weights.

``load_layout`` reads ``layout.json`` within its size limit and parses it within bounds
(``layout_json``), checks the sidecars against ``SHA256SUMS``, then runs every semantic check of
docs/layout.md section 10, in order: ``consistency`` (sidecar files, tensor records, names),
``layer_checks`` and ``tile_checks`` for each crossbar layer, ``graph_checks`` for the digital
graph (which uses the op allow-list and value bounds of ``ops``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neftc.errors import LayoutError
from neftc.format import encoding
from neftc.format.consistency import (
    FIX,
    Consistency,
    check_files,
    check_periphery,
    check_tensors,
    index_names,
    sha256_hex,
)
from neftc.format.graph_checks import check_graph
from neftc.format.layer_checks import check_layer
from neftc.format.layout_json import parse_layout
from neftc.format.schema import (
    CHECKSUMS_FILE,
    LAYOUT_FILE,
    LEVELS_FILE,
    TENSORS_FILE,
    DacRecord,
    LayerRecord,
    LayoutDoc,
    TensorRecord,
    TileRecord,
)
from neftc.format.tile_checks import check_tiles


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


def _read(root: Path, name: str, limit: int | None = None) -> bytes:
    path = root / name
    if not path.is_file():
        raise LayoutError(f"layout '{root}' is missing {name}; {FIX}")
    if limit is None:
        return path.read_bytes()
    with path.open("rb") as fh:  # read at most limit + 1 bytes: the file may grow meanwhile
        # read(n) allocates n bytes: ask for no more than the file holds (+1 to see growth).
        data = fh.read(min(os.fstat(fh.fileno()).st_size, limit) + 1)
    if len(data) > limit:
        raise LayoutError(f"'{path}' is larger than {limit} bytes ({limit // 2**20} MiB), the "
                          f"most a layout's {name} may hold; it is not a layout neftc wrote; "
                          f"{FIX}")
    return data


MAX_CHECKSUMS_BYTES = 2**20  # SHA256SUMS: three lines of about 80 bytes
MAX_LAYOUT_BYTES = 256 * 2**20  # layout.json; neftc's own are a few MiB for a ResNet-18


def _check_sums(root: Path, files: dict[str, bytes]) -> None:
    text = _read(root, CHECKSUMS_FILE, MAX_CHECKSUMS_BYTES).decode(errors="replace")
    expected: dict[str, str] = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise LayoutError(f"'{root / CHECKSUMS_FILE}' is damaged (bad line {line!r}); {FIX}")
        expected[name] = digest
    for name, data in files.items():
        if name not in expected:
            raise LayoutError(f"'{root / CHECKSUMS_FILE}' has no checksum for {name}; {FIX}")
        if sha256_hex(data) != expected[name]:
            raise LayoutError(f"'{root / name}' was modified or truncated after compile (SHA-256 "
                              f"mismatch with {CHECKSUMS_FILE}); {FIX}")


def _check_consistency(root: Path, doc: LayoutDoc, levels: bytes, tensors: bytes, *,
                       values: bool = True) -> None:
    """The semantic checks of docs/layout.md section 10 on a schema-valid document, in order;
    without ``values``, all but the graph's value bounds (the only check that needs torch)."""
    ctx = Consistency(root, doc, levels, tensors)
    check_files(ctx)
    check_periphery(ctx)
    check_tensors(ctx)
    index_names(ctx)
    all_levels = np.frombuffer(levels, dtype=np.uint8)
    for i, layer in enumerate(doc.layers):
        check_layer(ctx, i, layer)
        check_tiles(ctx, i, layer, all_levels)
    check_graph(ctx, value_bounds=values)


def _read_checked(directory: str | Path, *, values: bool) -> tuple[Path, LayoutDoc, bytes, bytes]:
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise LayoutError(f"'{root}' is a file, not a layout directory; pass the directory "
                          "'neftc compile ... -o DIR' wrote (the one holding layout.json)")
    if not root.is_dir():
        raise LayoutError(f"layout directory '{root}' does not exist; compile one with "
                          "'neftc compile MODEL --target TAG -o DIR'")
    raw = _read(root, LAYOUT_FILE, MAX_LAYOUT_BYTES)
    doc = parse_layout(root, raw)
    if set(doc.files) != {"levels", "tensors"}:
        raise LayoutError(f"'{root / LAYOUT_FILE}' must list exactly the 'levels' and 'tensors' "
                          f"sidecars under \"files\"; {FIX}")
    for record in doc.files.values():
        if record.path not in (LEVELS_FILE, TENSORS_FILE):
            raise LayoutError(f"'{root / LAYOUT_FILE}' names an unexpected sidecar "
                              f"'{record.path}'; {FIX}")
    levels = _read(root, doc.files["levels"].path)
    tensors = _read(root, doc.files["tensors"].path)
    _check_sums(root, {LAYOUT_FILE: raw, doc.files["levels"].path: levels,
                       doc.files["tensors"].path: tensors})
    _check_consistency(root, doc, levels, tensors, values=values)
    return root, doc, levels, tensors


def load_layout(directory: str | Path) -> Layout:
    """Open a layout directory, verifying its schema, its checksums and its internal consistency."""
    return Layout(*_read_checked(directory, values=True))


def read_layout_doc(directory: str | Path) -> LayoutDoc:
    """A layout's document, for readers that only summarise it (``neftc inspect``): every check
    of ``load_layout`` except the graph's value bounds, which propagate shapes with torch and
    guard running the graph. It returns no ``Layout``, so nothing can run what it read."""
    return _read_checked(directory, values=False)[1]


__all__ = ["CellOrigin", "Layout", "TensorRecord", "load_layout", "read_layout_doc"]
