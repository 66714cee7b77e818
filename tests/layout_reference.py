"""An exact integer reference of one crossbar layer, written from docs/layout.md alone.

This module imports only ``json``, ``hashlib``, ``pathlib`` and ``numpy`` (a test checks it), so
it shares no code, and no misreading, with neftc. From a layout directory it

- verifies ``SHA256SUMS`` and ``files.*`` (sections 3.5 and 8) and reads ``layout.json``;
- rebuilds a layer's cells tile by tile from ``levels.bin`` (sections 3.7, 4.4, 5 and 9), taking
  every tile's row and column range from its record, never recomputing it;
- computes the layer's output for INTEGER inputs the way the crossbar does, in int64: per tile,
  per physical column, the bitline sum ``sum_r level[r, col] * x[input row of r]`` over the tile's
  rows, accumulated over row tiles; then per weight column ``sum_p sign_p sum_s L**s * sum``,
  minus ``offset * sum(inputs)`` for offset encoding;
- computes the same thing a second way, ``x_int @ q`` per conv group with ``q`` rebuilt as in
  section 5.1, and the fake-quantised float output ``conv(x, q * scale) + bias`` in float64;
- computes the same layer through the DAC/ADC path of section 4.5 (``crossbar_adc_output``):
  bit-serial inputs, each tile's bitline sums rounded by an ADC whose full scale is set by the
  tile's own row count, then accumulation, shift-and-add, polarity and offset, in float64.

Input rows (docs/layout.md 4.1). A linear layer's input row ``r`` is input feature ``r``. A conv's
*unrolled input* at one output position holds ``C_in * prod(kernel)`` rows in C order
``(channel, ky, kx)`` (im2col with the layer's stride, zero padding and dilation, computed here in
numpy). The matrix has ``matrix_rows = C_in/groups * prod(kernel)`` rows shared by all groups:
matrix row ``r`` of weight column ``c`` reads unrolled input row ``g * matrix_rows + r`` with
``g = c // (matrix_cols / groups)``.

Output layout (both the integer and the float functions): channels last,
``[N, *spatial_out, C_out]`` for a conv (``[N, W_out, C_out]`` conv1d, ``[N, H_out, W_out,
C_out]`` conv2d) and ``[*leading, C_out]`` for a linear layer. ``to_torch_layout`` moves the
channel axis of a conv result to axis 1, PyTorch's layout.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

CHECKSUMMED = ("layout.json", "levels.bin", "tensors.bin")


# ------------------------------------------------------------------------------------- reading

class LayoutReference:
    """A layout directory read with json, hashlib and numpy (docs/layout.md)."""

    def __init__(self, layout_dir: str | Path) -> None:
        root = Path(layout_dir)
        # Section 8: SHA256SUMS, "<64 hex>  <name>" per line, layout.json, levels.bin, tensors.bin.
        sums = {}
        for line in (root / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
            digest, name = line.split("  ", 1)
            sums[name] = digest
        if tuple(sums) != CHECKSUMMED:
            raise ValueError(f"SHA256SUMS lists {list(sums)}, expected {list(CHECKSUMMED)}")
        for name, digest in sums.items():
            actual = hashlib.sha256((root / name).read_bytes()).hexdigest()
            if actual != digest:
                raise ValueError(f"{name}: SHA-256 {actual} does not match SHA256SUMS {digest}")
        # Section 2: format identification.
        doc = json.loads((root / "layout.json").read_text(encoding="utf-8"))
        if doc.get("format") != "neftc-layout" or doc.get("version") not in (2, 3, 4):
            raise ValueError(f"not a version 2, 3 or 4 neftc layout: {doc.get('format')!r} "
                             f"version {doc.get('version')!r}")
        # Section 3.5: the binary files, with their recorded size and SHA-256.
        blobs = {}
        for key in ("levels", "tensors"):
            record = doc["files"][key]
            data = (root / record["path"]).read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if len(data) != record["nbytes"] or digest != record["sha256"]:
                raise ValueError(f"{record['path']} does not match files.{key} of layout.json")
            blobs[key] = data
        self.doc = doc
        self.levels_bin = blobs["levels"]
        self.tensors_bin = blobs["tensors"]

    # ---------------------------------------------------------------------------- records

    def inputs(self) -> list[dict]:
        """Section 7: the network's inputs in placeholder order (name, dtype, shape, low, high);
        a version 2 layout has one float32 input, ``graph.input_shape``, taken by the first
        placeholder."""
        graph = self.doc["graph"]
        if self.doc["version"] >= 3:
            return list(graph["inputs"])
        first = next(n["name"] for n in graph["nodes"] if n["op"] == "placeholder")
        return [{"name": first, "dtype": "float32", "shape": graph["input_shape"], "low": None,
                 "high": None}]

    def layer(self, name: str | None = None) -> dict:
        """The layer record called ``name`` (None: the only layer of the layout)."""
        layers = self.doc["layers"]
        if name is None:
            if len(layers) != 1:
                raise ValueError(f"the layout has {len(layers)} layers; name one")
            return layers[0]
        for record in layers:
            if record["name"] == name:
                return record
        raise KeyError(name)

    def tensor(self, name: str) -> np.ndarray:
        """Section 6: a tensor of tensors.bin (little-endian, C order)."""
        for record in self.doc["tensors"]:
            if record["name"] == name:
                dtype = np.dtype(record["dtype"]).newbyteorder("<")
                count = int(np.prod(record["shape"], dtype=np.int64))
                return np.frombuffer(self.tensors_bin, dtype=dtype, count=count,
                                     offset=record["offset"]).reshape(record["shape"])
        raise KeyError(name)

    def bias(self, layer: dict) -> np.ndarray | None:
        return None if layer["bias"] is None else self.tensor(layer["bias"])

    def tile_block(self, tile: dict) -> np.ndarray:
        """Section 5: the tile's uint8 [row_count, col_count] block of levels."""
        return np.frombuffer(self.levels_bin, dtype=np.uint8,
                             count=tile["row_count"] * tile["col_count"],
                             offset=tile["levels_offset"]).reshape(tile["row_count"],
                                                                   tile["col_count"])

    # ---------------------------------------------------------------------------- weights

    def physical_matrix(self, layer: dict) -> np.ndarray:
        """Sections 4.4 and 5.1: the layer's uint8 [matrix_rows, matrix_cols * P * S] levels,
        checking that the tiles partition it and that every level is below ``2**cell_bits``."""
        P, S, L = geometry(layer)
        rows, n_phys = layer["matrix_rows"], layer["matrix_cols"] * P * S
        phys = np.zeros((rows, n_phys), dtype=np.uint8)
        hits = np.zeros((rows, n_phys), dtype=np.int64)
        for tile in layer["tiles"]:
            r0, rc, c0, cc = tile_ranges(tile)
            if r0 < 0 or c0 < 0 or r0 + rc > rows or c0 + cc > n_phys:
                raise ValueError(f"tile {tile['index']} of {layer['name']} lies outside the "
                                 f"physical matrix [{rows}, {n_phys}]")
            block = self.tile_block(tile)
            if block.size and int(block.max()) >= L:
                raise ValueError(f"tile {tile['index']} of {layer['name']} holds a level >= {L}")
            phys[r0:r0 + rc, c0:c0 + cc] = block
            hits[r0:r0 + rc, c0:c0 + cc] += 1
        if not (hits == 1).all():
            raise ValueError(f"the tiles of {layer['name']} do not partition its physical matrix")
        return phys

    def integer_matrix(self, layer: dict) -> np.ndarray:
        """Section 5.1: the integer weights q, int64 [matrix_rows, matrix_cols]."""
        P, S, L = geometry(layer)
        rows, cols = layer["matrix_rows"], layer["matrix_cols"]
        lv = self.physical_matrix(layer).reshape(rows, cols, P, S).astype(np.int64)
        m = (lv * L ** np.arange(S, dtype=np.int64)).sum(axis=-1)  # [rows, cols, P]
        if P == 2:
            return m[:, :, 0] - m[:, :, 1]
        return m[:, :, 0] - layer["slicing"]["offset"]

    def integer_weights(self, layer: dict) -> np.ndarray:
        """q in the PyTorch weight shape."""
        return self.integer_matrix(layer).T.reshape(layer["weight_shape"])

    def dequantised_matrix(self, layer: dict) -> np.ndarray:
        """Section 5.1 step 6: ``float32(q) * float32(scale)``, float32 [rows, cols]."""
        scales = np.asarray(layer["quant"]["scales"], dtype=np.float32)
        return self.integer_matrix(layer).astype(np.float32) * scales[None, :]

    # ---------------------------------------------------------------------------- outputs

    def crossbar_integer_output(self, layer: dict, x_int: np.ndarray) -> np.ndarray:
        """The layer's integer output for integer inputs, computed as the crossbar computes it.

        ``x_int``: integers, the layer's input in PyTorch layout (``[*leading, in]`` linear,
        ``[N, C_in, W]`` conv1d, ``[N, C_in, H, W]`` conv2d). Returns int64, channels last
        (module docstring). Tile by tile: the tile's rows ``[row_start, row_start + row_count)``
        and physical columns ``[col_start, col_start + col_count)`` from its record; per physical
        column the bitline sum of ``level * input`` over the tile's rows (the input rows of that
        column's group), accumulated over row tiles; then per weight column
        ``sum_p sign_p * L**s * sum`` minus ``offset * sum(inputs)``.
        """
        unrolled, prefix = unroll(layer, exact_integers(x_int))  # int64 [M, groups * R]
        P, S, _ = geometry(layer)
        rows, cols = layer["matrix_rows"], layer["matrix_cols"]
        groups = layer_groups(layer)
        per_group = cols // groups
        bitline = np.zeros((unrolled.shape[0], cols * P * S), dtype=np.int64)
        for tile in layer["tiles"]:
            r0, rc, c0, cc = tile_ranges(tile)
            block = self.tile_block(tile).astype(np.int64)  # [rc, cc]
            pc = c0 + np.arange(cc)
            group_of_column = (pc // (P * S)) // per_group
            for g in np.unique(group_of_column):
                sel = np.flatnonzero(group_of_column == g)
                first = int(g) * rows + r0  # unrolled input row of this tile's first wordline
                bitline[:, c0 + sel] += unrolled[:, first:first + rc] @ block[:, sel]
        return combine_columns(layer, bitline, unrolled).reshape(*prefix, cols)

    def crossbar_adc_output(self, layer: dict, x_int: np.ndarray, *,
                            signed: bool | None = None,
                            adc_bits: int | None = None) -> np.ndarray:
        """The layer's output in integer units through the DAC/ADC path of section 4.5.

        ``x_int``: the DAC's integers (already quantised), PyTorch layout as for
        ``crossbar_integer_output``; ``signed``: whether the DAC is signed (None: signed when
        some input is negative; the result is the same either way, the extra cycles and the
        negative phase of an unsigned input being zero). ``adc_bits`` replaces
        ``periphery.adc_bits`` (None: the layout's). Returns float64, channels last: ``acc``
        of section 4.5, so that ``out = acc * dac.scale * scale[c] + bias[c]``.

        Inputs are fed ``periphery.dac_bits_per_cycle`` bits per cycle (cycle ``k`` carries
        bits ``k*dac .. k*dac + dac - 1`` of the magnitude), signed inputs in two phases (the
        positive part, then the negative part). Per tile (its rows and columns from its record;
        each column reads the input rows of its own group), per phase and cycle, each physical
        column's bitline sum over the tile's rows goes through the ADC: ``step = max(1, FS /
        (2**adc_bits - 1))`` with ``FS = row_count * (2**dac - 1) * (L - 1)`` (``adc_step``),
        ``code = clip(round_half_even(sum / step), 0, 2**adc_bits - 1)``, value ``code *
        step``. The tiles of one column range are accumulated, then shift-and-add over cycles
        (``2**(k*dac)``) and slices (``L**s``), minus the negative phase and the negative
        polarity (offset encoding: minus ``offset * sum(x_int of the column's group)``).
        """
        unrolled, prefix = unroll(layer, exact_integers(x_int))  # int64 [M, groups * R]
        periphery = self.doc["periphery"]
        input_bits = periphery["input_bits"]
        dac = periphery["dac_bits_per_cycle"]
        bits = periphery["adc_bits"] if adc_bits is None else adc_bits
        if signed is None:
            signed = bool((unrolled < 0).any())
        magnitude_bits = input_bits - 1 if signed else input_bits
        low = -(2**magnitude_bits - 1) if signed else 0
        if unrolled.size and (unrolled.min() < low or unrolled.max() > 2**magnitude_bits - 1):
            raise ValueError(f"inputs outside the {'signed' if signed else 'unsigned'} "
                             f"{input_bits}-bit DAC range")
        cycles = -(-magnitude_bits // dac)
        phases = [np.maximum(unrolled, 0), np.maximum(-unrolled, 0)] if signed else [unrolled]
        mask = 2**dac - 1
        codes = 2**bits - 1
        P, S, L = geometry(layer)
        rows, cols = layer["matrix_rows"], layer["matrix_cols"]
        groups = layer_groups(layer)
        per_group = cols // groups
        # acc[phase, cycle]: ADC values of every tile, accumulated over the tiles of a column.
        acc = np.zeros((len(phases), cycles, unrolled.shape[0], cols * P * S), dtype=np.float64)
        for tile in layer["tiles"]:
            r0, rc, c0, cc = tile_ranges(tile)
            block = self.tile_block(tile).astype(np.int64)  # [rc, cc]
            step = float(adc_step(rc, dac, bits, L))
            pc = c0 + np.arange(cc)
            group_of_column = (pc // (P * S)) // per_group
            for g in np.unique(group_of_column):
                sel = np.flatnonzero(group_of_column == g)
                first = int(g) * rows + r0  # unrolled input row of this tile's first wordline
                for ph, phase in enumerate(phases):
                    x_tile = phase[:, first:first + rc]
                    for k in range(cycles):
                        plane = (x_tile >> (k * dac)) & mask
                        sums = plane @ block[:, sel]  # int64 bitline sums
                        code = np.clip(np.rint(sums / step), 0, codes)  # rint: half to even
                        acc[ph, k][:, c0 + sel] += code * step
        shifted = (acc * (2.0 ** (dac * np.arange(cycles)))[None, :, None, None]).sum(axis=1)
        bitline = shifted[0] - shifted[1] if signed else shifted[0]
        return combine_columns(layer, bitline, unrolled).reshape(*prefix, cols)

    def matmul_integer_output(self, layer: dict, x_int: np.ndarray) -> np.ndarray:
        """The same integer output as ``x_int @ q`` per group (q from section 5.1)."""
        unrolled, prefix = unroll(layer, exact_integers(x_int))
        q = self.integer_matrix(layer)
        return grouped_matmul(layer, unrolled, q).reshape(*prefix, layer["matrix_cols"])

    def ideal_output(self, layer: dict, x: np.ndarray) -> np.ndarray:
        """The fake-quantised output ``conv(x, q * scale) + bias`` in float64 (weights are the
        float32 dequantised weights of section 5.1), channels last."""
        unrolled, prefix = unroll(layer, np.asarray(x, dtype=np.float64))
        w = self.dequantised_matrix(layer).astype(np.float64)
        out = grouped_matmul(layer, unrolled, w)
        bias = self.bias(layer)
        if bias is not None:
            out = out + bias.astype(np.float64)[None, :]
        return out.reshape(*prefix, layer["matrix_cols"])


# ------------------------------------------------------------------------------------- helpers

def geometry(layer: dict) -> tuple[int, int, int]:
    """(P, S, L) of a layer (section 3.6 ``slicing``)."""
    sl = layer["slicing"]
    return sl["polarities"], sl["slices"], 2 ** sl["cell_bits"]


def combine_columns(layer: dict, bitline: np.ndarray, unrolled: np.ndarray) -> np.ndarray:
    """Per weight column, ``sum_s L**s`` of its polarity-0 bitlines minus those of polarity 1,
    minus ``offset * sum(inputs of its group)`` (offset encoding): [M, matrix_cols] from the
    physical bitline values [M, cols * P * S] (section 4.4 column order)."""
    P, S, L = geometry(layer)
    rows, cols = layer["matrix_rows"], layer["matrix_cols"]
    groups = layer_groups(layer)
    sums = bitline.reshape(-1, cols, P, S)
    place = (L ** np.arange(S, dtype=np.int64)).astype(bitline.dtype)
    out = (sums[:, :, 0, :] * place).sum(axis=-1)
    if P == 2:
        out = out - (sums[:, :, 1, :] * place).sum(axis=-1)
    offset = layer["slicing"]["offset"]
    if offset:
        group_sums = unrolled.reshape(-1, groups, rows).sum(axis=-1)  # [M, groups]
        out = out - offset * np.repeat(group_sums, cols // groups, axis=1)
    return out


def adc_step(row_count: int, dac_bits_per_cycle: int, adc_bits: int, n_levels: int) -> float:
    """Section 4.5: level units per ADC code of a tile of ``row_count`` rows, ``max(1, FS /
    (2**adc_bits - 1))`` with ``FS = row_count * (2**dac_bits_per_cycle - 1) * (L - 1)``."""
    full_scale = row_count * (2**dac_bits_per_cycle - 1) * (n_levels - 1)
    return max(1.0, full_scale / (2**adc_bits - 1))


def tile_ranges(tile: dict) -> tuple[int, int, int, int]:
    return tile["row_start"], tile["row_count"], tile["col_start"], tile["col_count"]


def layer_groups(layer: dict) -> int:
    return 1 if layer["conv"] is None else layer["conv"]["groups"]


def exact_integers(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    as_int = np.rint(x).astype(np.int64) if x.dtype.kind == "f" else x.astype(np.int64)
    if x.dtype.kind == "f" and not (as_int == x).all():
        raise ValueError("crossbar_integer_output takes integer inputs")
    return as_int


def grouped_matmul(layer: dict, unrolled: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``unrolled[:, g*R:(g+1)*R] @ matrix[:, g*C/G:(g+1)*C/G]`` for every group g."""
    rows, cols = layer["matrix_rows"], layer["matrix_cols"]
    groups = layer_groups(layer)
    per_group = cols // groups
    return np.concatenate([unrolled[:, g * rows:(g + 1) * rows]
                           @ matrix[:, g * per_group:(g + 1) * per_group]
                           for g in range(groups)], axis=1)


def unroll(layer: dict, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """The crossbar's input vectors ``[M, groups * matrix_rows]`` and the output prefix shape.

    Linear: the input features. Conv: the im2col rows of every output position, C order
    ``(channel, ky, kx)``, zero padding, with the layer's stride and dilation.
    """
    if layer["op"] == "linear":
        if x.shape[-1] != layer["matrix_rows"]:
            raise ValueError(f"linear input has {x.shape[-1]} features, expected "
                             f"{layer['matrix_rows']}")
        return x.reshape(-1, x.shape[-1]), tuple(x.shape[:-1])
    conv = layer["conv"]
    kernel, stride = conv["kernel"], conv["stride"]
    padding, dilation = conv["padding"], conv["dilation"]
    nd = len(kernel)
    if x.ndim != nd + 2:
        raise ValueError(f"{layer['op']} input must have {nd + 2} dimensions, got {x.shape}")
    n, channels = x.shape[0], x.shape[1]
    if channels * int(np.prod(kernel)) != conv["groups"] * layer["matrix_rows"]:
        raise ValueError(f"{layer['op']} input has {channels} channels, which does not match "
                         f"matrix_rows {layer['matrix_rows']} x groups {conv['groups']}")
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    out_size = [(x.shape[2 + d] + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1)
                // stride[d] + 1 for d in range(nd)]
    if min(out_size) < 1:
        raise ValueError(f"input {x.shape} is too small for the kernel")
    cols = np.zeros((n, channels, *kernel, *out_size), dtype=x.dtype)
    for k in np.ndindex(*kernel):
        index = tuple(slice(k[d] * dilation[d],
                            k[d] * dilation[d] + stride[d] * (out_size[d] - 1) + 1, stride[d])
                      for d in range(nd))
        cols[(slice(None), slice(None), *k)] = xp[(slice(None), slice(None), *index)]
    # [N, C, *kernel, *out] -> [N, *out, C, *kernel] -> [N * positions, C * prod(kernel)]
    order = (0, *range(2 + nd, 2 + 2 * nd), 1, *range(2, 2 + nd))
    rows = cols.transpose(order).reshape(n * int(np.prod(out_size)), -1)
    return rows, (n, *out_size)


def to_torch_layout(layer: dict, out: np.ndarray) -> np.ndarray:
    """A channels-last result in PyTorch's layout (channels at axis 1 for a conv)."""
    return out if layer["op"] == "linear" else np.moveaxis(out, -1, 1)


def write_retiled(src: Path, dst: Path, cuts) -> None:
    """Write layout ``src`` to ``dst`` as another tool would tile it: for each layer,
    ``cuts(layer, rows, physical_cols, array)`` returns its row bands as ``[(r0, r1,
    [c0, c1, ..., physical_cols]), ...]`` (band rows and the column boundaries inside the band).
    The tiles take arrays in order, blocks 64-byte aligned in a new levels.bin, and the directory
    is re-signed (docs/layout.md sections 3.7, 5 and 8). Replicas are dropped."""
    doc = json.loads((Path(src) / "layout.json").read_text())
    old = (Path(src) / "levels.bin").read_bytes()
    per_core = doc["target"]["chip"]["arrays_per_core"]
    blob = bytearray()
    used = 0
    for layer in doc["layers"]:
        sl = layer["slicing"]
        rows, cols = layer["matrix_rows"], layer["matrix_cols"] * sl["polarities"] * sl["slices"]
        phys = np.zeros((rows, cols), dtype=np.uint8)
        for t in layer["tiles"]:
            r0, rc, c0, cc = tile_ranges(t)
            phys[r0:r0 + rc, c0:c0 + cc] = np.frombuffer(old, np.uint8, rc * cc,
                                                         t["levels_offset"]).reshape(rc, cc)
        tiles = []
        for rt, (r0, r1, bounds) in enumerate(cuts(layer, rows, cols, doc["target"]["array"])):
            for ct in range(len(bounds) - 1):
                c0, c1 = bounds[ct], bounds[ct + 1]
                offset = -(-len(blob) // 64) * 64
                blob += bytes(offset - len(blob)) + phys[r0:r1, c0:c1].tobytes()
                tiles.append({"index": len(tiles), "row_tile": rt, "col_tile": ct,
                              "row_start": r0, "row_count": r1 - r0, "col_start": c0,
                              "col_count": c1 - c0, "core": used // per_core,
                              "array": used % per_core, "levels_offset": offset,
                              "replicas": []})
                used += 1
        layer["tiles"], layer["replication"] = tiles, 1
    levels = bytes(blob)
    doc["files"]["levels"].update(nbytes=len(levels), sha256=hashlib.sha256(levels).hexdigest())
    Path(dst).mkdir()
    files = {"layout.json": json.dumps(doc, indent=1).encode() + b"\n", "levels.bin": levels,
             "tensors.bin": (Path(src) / "tensors.bin").read_bytes()}
    for name, data in files.items():
        (Path(dst) / name).write_bytes(data)
    (Path(dst) / "SHA256SUMS").write_text("".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n"
                                                  for n, d in files.items()))
