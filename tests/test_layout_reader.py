"""The layout reader refuses every semantic inconsistency of docs/layout.md section 10.

Each case copies one compiled layout, applies ONE corruption to ``layout.json`` (or
``levels.bin``) and then re-signs the copy (``files.*`` and ``SHA256SUMS`` recomputed exactly as
the writer computes them, docs/layout.md section 8), so that the checksums pass and only the
semantic check can refuse it. ``neftc.load_layout`` must raise a one-line ``LayoutError`` naming
``layout.json`` and the field, and ``neftc inspect`` must print that same line and exit 2.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import neftc
from neftc.cli.main import main
from neftc.errors import LayoutError
from neftc.format.schema import TileRecord
from neftc.format.tile_checks import find_overlap
from neftc.targets import resolve_target

SIGNED = ("layout.json", "levels.bin", "tensors.bin")


def resign(root: Path) -> None:
    """Recompute ``files.levels/tensors`` and ``SHA256SUMS`` the way the writer does (json and
    hashlib only): ``json.dumps(indent=1)`` plus a newline, then one ``sha256sum`` line per file."""
    doc = json.loads((root / "layout.json").read_text())
    for key in ("levels", "tensors"):
        data = (root / doc["files"][key]["path"]).read_bytes()
        doc["files"][key]["nbytes"] = len(data)
        doc["files"][key]["sha256"] = hashlib.sha256(data).hexdigest()
    (root / "layout.json").write_bytes(json.dumps(doc, indent=1).encode() + b"\n")
    (root / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256((root / name).read_bytes()).hexdigest()}  {name}\n" for name in SIGNED))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A conv (with 99 pipeline replicas of its one tile) and a Linear(300, 20) with a bias (3 row
    tiles x 2 column tiles on 128x128 arrays: 300 rows, 20 * 2 * 4 = 160 physical columns)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(300, 20))
    out = tmp_path_factory.mktemp("reader") / "layout"
    neftc.compile_module(model, torch.randn(1, 3, 12, 12), resolve_target("fefet_128x128"), out)
    doc = json.loads((out / "layout.json").read_text())
    # The cases below address layers, tiles and nodes by position: pin the structure they assume.
    assert [layer["name"] for layer in doc["layers"]] == ["0", "3"]
    assert len(doc["layers"][0]["tiles"]) == 1 and len(doc["layers"][0]["tiles"][0]["replicas"]) > 5
    assert [(t["row_tile"], t["col_tile"]) for t in doc["layers"][1]["tiles"]] == [
        (0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert [n["name"] for n in doc["graph"]["nodes"]] == [
        "_0_weight", "_0_bias", "_3_weight", "_3_bias", "input_1", "conv2d", "relu", "flatten",
        "linear", "output"]
    assert [t["name"] for t in doc["tensors"]] == ["0.bias", "3.bias"]
    assert doc["target"]["chip"]["cores"] == 168 and doc["target"]["chip"]["arrays_per_core"] == 96
    assert doc["layers"][1]["quant"]["per_channel"] is False
    return out


def copy_of(compiled: Path, tmp_path: Path) -> Path:
    root = tmp_path / "layout"
    shutil.copytree(compiled, root)
    return root


# ------------------------------------------------------------------------------ the corruptions

Doc = dict[str, Any]


def tile(doc: Doc, layer: int, index: int) -> Doc:
    return doc["layers"][layer]["tiles"][index]


def node(doc: Doc, index: int) -> Doc:
    return doc["graph"]["nodes"][index]


def setter(path: str, value: Any) -> Callable[[Doc], None]:
    """Set the field at a dotted path with [i] indices, e.g. 'layers[1].tiles[3].core'."""
    def apply(doc: Doc) -> None:
        keys: list[Any] = []
        for part in path.split("."):
            name, *indices = part.replace("]", "").split("[")
            keys += [name, *(int(i) for i in indices)]
        obj = doc
        for key in keys[:-1]:
            obj = obj[key]
        obj[keys[-1]] = value(doc) if callable(value) else value
    return apply


def same_array_as(layer: int, index: int) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        source = tile(doc, layer, index)
        tile(doc, 1, 2)["core"], tile(doc, 1, 2)["array"] = source["core"], source["array"]
    return apply


def array_of_first_replica(doc: Doc) -> None:
    core, array = tile(doc, 0, 0)["replicas"][0]
    tile(doc, 1, 0)["core"], tile(doc, 1, 0)["array"] = core, array


def drop_replica(doc: Doc) -> None:
    tile(doc, 0, 0)["replicas"].pop()


def swap_tiles(doc: Doc) -> None:
    tiles = doc["layers"][1]["tiles"]
    tiles[1], tiles[2] = tiles[2], tiles[1]


def scale(index: int, value: float) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        doc["layers"][1]["quant"]["scales"][index] = value
    return apply


def scales_pop(doc: Doc) -> None:
    doc["layers"][1]["quant"]["scales"].pop()


def scales_append(doc: Doc) -> None:
    scales = doc["layers"][1]["quant"]["scales"]
    scales.append(scales[0])


def double_scale(doc: Doc) -> None:
    doc["layers"][1]["quant"]["scales"][7] *= 2


def append_arg(index: int, value: Any) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        node(doc, index)["args"].append(value)
    return apply


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def drop_output(doc: Doc) -> None:
    doc["graph"]["nodes"].pop()


def level(value: int) -> Callable[[Path], None]:
    """Write ``value`` into a cell of layers[1].tiles[3] (row 0, column 5) in levels.bin."""
    def apply(root: Path) -> None:
        doc = json.loads((root / "layout.json").read_text())
        data = bytearray((root / "levels.bin").read_bytes())
        data[tile(doc, 1, 3)["levels_offset"] + 5] = value
        (root / "levels.bin").write_bytes(bytes(data))
    return apply


L1 = "layers[1]"
T = "layers[1].tiles"
CASES: list[tuple[str, Callable[[Doc], None] | None, Callable[[Path], None] | None,
                  tuple[str, ...]]] = [
    # (id, edit of layout.json, edit of the directory, needles of the error message)
    # -- tiles: overlap, cover, grid numbering
    ("tiles-overlap-columns", setter(f"{T}[1].col_start", 120), None,
     (f"{T}[1]", f"overlaps {T}[0]", "physical columns 120..127")),
    ("tiles-overlap-rows", setter(f"{T}[2].row_start", 100), None,
     (f"{T}[2]", f"overlaps {T}[0]", "rows 100..127")),
    ("tiles-leave-a-gap", setter(f"{T}[5].row_count", 43), None,
     (f"{T}:", "exactly once", "cover 47968 of its 48000")),
    ("tile-index", setter(f"{T}[3].index", 4), None, (f"{T}[3].index",)),
    ("tile-row-tile", setter(f"{T}[3].row_tile", 0), None, (f"{T}[3].row_tile",)),
    ("tile-col-tile", setter(f"{T}[3].col_tile", 0), None, (f"{T}[3].col_tile",)),
    ("tiles-out-of-order", swap_tiles, None, (f"{T}[1].index", "listed at position 1")),
    # -- arrays: used twice, off the chip
    ("array-used-twice", same_array_as(1, 0), None,
     (f"{T}[2].array", "used twice", f"{T}[0] already holds it")),
    ("array-used-by-a-replica", array_of_first_replica, None,
     (f"{T}[0].array", "layers[0].tiles[0].replicas[0] already holds it")),
    ("core-off-chip", setter(f"{T}[3].core", 168), None, (f"{T}[3].core", "cores 0..167")),
    ("array-off-chip", setter(f"{T}[3].array", 96), None, (f"{T}[3].array", "arrays 0..95")),
    ("replica-off-chip", setter("layers[0].tiles[0].replicas[4]", [168, 0]), None,
     ("layers[0].tiles[0].replicas[4]", "core 168")),
    # -- tiles past the array, the matrix or levels.bin (bounded before any slicing)
    ("rows-past-array", setter(f"{T}[0].row_count", 129), None, (f"{T}[0].row_count",)),
    ("cols-past-array", setter(f"{T}[0].col_count", 129), None, (f"{T}[0].col_count",)),
    ("huge-tile", setter(f"{T}[0].row_count", 10**12), None, (f"{T}[0].row_count",)),
    ("rows-past-matrix", setter(f"{T}[5].row_start", 257), None, (f"{T}[5].row_start",)),
    ("cols-past-matrix", setter(f"{T}[5].col_start", 129), None, (f"{T}[5].col_start",)),
    ("levels-past-end", setter(f"{T}[5].levels_offset", lambda d: d["files"]["levels"]["nbytes"]
                               - 10), None, (f"{T}[5].levels_offset", "levels.bin")),
    ("levels-offset-huge", setter(f"{T}[5].levels_offset", 2**70), None,
     (f"{T}[5].levels_offset",)),
    # -- levels above the cell's range (2-bit cells: 0..3)
    ("level-4", None, level(4), (f"{T}[3]:", "levels.bin", "holds level 4", "column 5")),
    ("level-255", None, level(255), (f"{T}[3]:", "holds level 255")),
    # -- the periphery repeats the target's (its bounds are the target spec's)
    ("periphery-adc-bits", setter("periphery.adc_bits", 1000), None,
     ("periphery.adc_bits", "target.periphery.adc_bits (8)")),
    ("periphery-input-bits", setter("periphery.input_bits", 4), None,
     ("periphery.input_bits",)),
    # -- scales
    ("scales-too-few", scales_pop, None, (f"{L1}.quant.scales:", "19 scales for 20")),
    ("scales-too-many", scales_append, None, (f"{L1}.quant.scales:", "21 scales for 20")),
    ("scale-negative", scale(5, -0.25), None, (f"{L1}.quant.scales[5]", "-0.25")),
    ("scale-zero", scale(5, 0.0), None, (f"{L1}.quant.scales[5]",)),
    ("scale-nan", scale(5, math.nan), None, (f"{L1}.quant.scales[5]", "nan")),
    ("scale-inf", scale(5, math.inf), None, (f"{L1}.quant.scales[5]", "inf")),
    ("scale-minus-inf", scale(5, -math.inf), None, (f"{L1}.quant.scales[5]", "-inf")),
    ("per-layer-scales-differ", double_scale, None, (f"{L1}.quant.scales[7]", "per_channel")),
    # -- quantisation and slicing against the target
    ("quant-bits", setter(f"{L1}.quant.bits", 7), None, (f"{L1}.quant.bits",)),
    ("quant-qmax", setter(f"{L1}.quant.qmax", 127), None, (f"{L1}.quant.qmax", "255")),
    ("cell-bits", setter(f"{L1}.slicing.cell_bits", 1), None, (f"{L1}.slicing.cell_bits",)),
    ("slices", setter(f"{L1}.slicing.slices", 5), None, (f"{L1}.slicing.slices", "4 slices")),
    ("polarities", setter(f"{L1}.slicing.polarities", 1), None, (f"{L1}.slicing.polarities",)),
    ("encoding", setter(f"{L1}.slicing.encoding", "offset"), None, (f"{L1}.slicing.encoding",)),
    ("offset", setter(f"{L1}.slicing.offset", 128), None, (f"{L1}.slicing.offset",)),
    # -- layer geometry
    ("weight-shape-rows", setter(f"{L1}.weight_shape", [20, 299]), None,
     (f"{L1}.weight_shape", "matrix_rows")),
    ("weight-shape-cols", setter(f"{L1}.weight_shape", [21, 300]), None,
     (f"{L1}.weight_shape", "matrix_cols")),
    ("weight-shape-rank", setter("layers[0].weight_shape", [3, 27]), None,
     ("layers[0].weight_shape", "conv2d")),
    ("matrix-rows-huge", setter(f"{L1}.matrix_rows", 10**15), None, (f"{L1}.weight_shape",)),
    ("conv-on-linear", setter(f"{L1}.conv", lambda d: d["layers"][0]["conv"]), None,
     (f"{L1}.conv",)),
    ("conv-kernel", setter("layers[0].conv.kernel", [3, 1]), None, ("layers[0].conv.kernel",)),
    ("conv-stride", setter("layers[0].conv.stride", [0, 1]), None, ("layers[0].conv.stride",)),
    ("conv-groups", setter("layers[0].conv.groups", 2), None, ("layers[0].conv.groups",)),
    ("layer-name-twice", setter(f"{L1}.name", "0"), None, (f"{L1}.name",)),
    ("positions-below-replication", setter("layers[0].positions", 99), None,
     ("layers[0].positions",)),
    ("replication", setter("layers[0].replication", 50), None, ("layers[0].replication",)),
    ("replica-missing", drop_replica, None, ("layers[0].replication", "98 replica(s)")),
    # -- layer <-> graph <-> tensors
    ("layer-node-unknown", setter(f"{L1}.node", "nope"), None, (f"{L1}.node", "no node")),
    ("layer-node-digital", setter(f"{L1}.node", "relu"), None, (f"{L1}.node", "graph.nodes[6]")),
    ("bias-unknown", setter(f"{L1}.bias", "nope"), None, (f"{L1}.bias", "'nope'")),
    ("bias-wrong-shape", setter(f"{L1}.bias", "0.bias"), None, (f"{L1}.bias", "[20]")),
    ("tensor-name-twice", setter("tensors[1].name", "0.bias"), None, ("tensors[1].name",)),
    ("tensor-negative-shape", setter("tensors[0].shape", [-1, -3]), None, ("tensors[0].shape",)),
    ("tensor-nbytes", setter("tensors[1].nbytes", 84), None, ("tensors[1].nbytes",)),
    ("tensor-huge-shape", setter("tensors[1].shape", [10**12]), None, ("tensors[1].nbytes",)),
    ("tensor-past-end", setter("tensors[1].offset", 128), None,
     ("tensors[1].offset", "tensors.bin")),
    # -- the graph
    ("node-refers-forward", setter("graph.nodes[6].args[0]", {"node": "linear"}), None,
     ("graph.nodes[6].args", "'linear'", "comes later")),
    ("node-refers-to-unknown", setter("graph.nodes[6].args[0]", {"node": "nope"}), None,
     ("graph.nodes[6].args", "'nope'")),
    ("kwarg-refers-forward", setter("graph.nodes[6].kwargs", {"x": {"node": "output"}}), None,
     ("graph.nodes[6].kwargs", "'output'")),
    ("unknown-aten-op", setter("graph.nodes[6].target", "aten.no_such_op.default"), None,
     ("graph.nodes[6].target", "aten.no_such_op.default")),
    ("not-an-aten-op", setter("graph.nodes[6].target", "os.system"), None,
     ("graph.nodes[6].target", "os.system")),
    ("not-an-overload", setter("graph.nodes[6].target", "aten.relu.__call__"), None,
     ("graph.nodes[6].target", "aten.relu.__call__")),
    ("node-name-twice", setter("graph.nodes[7].name", "relu"), None, ("graph.nodes[7].name",)),
    ("get-attr-unknown-tensor", setter("graph.nodes[1].target", "nope"), None,
     ("graph.nodes[1].target", "'nope'")),
    ("weight-of-unknown-layer", setter("graph.nodes[0].layer", "nope"), None,
     ("graph.nodes[0].layer",)),
    ("digital-node-claims-layer", setter("graph.nodes[6].layer", "3"), None,
     ("graph.nodes[6].layer", "layers[1].node is 'linear'")),
    ("crossbar-node-op", setter("graph.nodes[8].target", "aten.conv2d.default"), None,
     ("graph.nodes[8].target", "aten.linear.default")),
    ("crossbar-node-arity", append_arg(8, 1), None, ("graph.nodes[8].args:",)),
    ("crossbar-input", setter("graph.nodes[8].args[0]", 1.5), None, ("graph.nodes[8].args[0]",)),
    ("crossbar-weight", setter("graph.nodes[8].args[1]", {"node": "_3_bias"}), None,
     ("graph.nodes[8].args[1]",)),
    ("crossbar-bias-null", setter("graph.nodes[8].args[2]", None), None,
     ("graph.nodes[8].args[2]", "'3.bias'")),
    ("crossbar-conv-stride", setter("graph.nodes[5].args[3]", [2, 2]), None,
     ("graph.nodes[5].args[3]", "layers[0].conv.stride")),
    ("argument-unknown-dtype", setter("graph.nodes[7].args[1]", {"dtype": "complex128"}), None,
     ("graph.nodes[7].args[1]", "complex128")),
    ("argument-unknown-tag", setter("graph.nodes[7].args[1]", {"eval": "1"}), None,
     ("graph.nodes[7].args[1]", "exactly one of the tags")),
    ("argument-nested-too-deep", setter("graph.nodes[7].args[1]", nested(40)), None,
     ("graph.nodes[7].args[1]", "more than 32 deep")),
    ("argument-bare-nan", setter("graph.nodes[7].args[1]", math.nan), None,
     ("graph.nodes[7].args[1]", '{"float": "nan"}')),
    ("output-not-last", setter("graph.nodes[6].op", "output"), None, ("graph.nodes[6].op",)),
    ("output-arity", append_arg(9, None), None, ("graph.nodes[9].args",)),
    ("no-output", drop_output, None, ("graph.nodes:", "no output node")),
]


def corrupt(root: Path, edit_doc: Callable[[Doc], None] | None,
            edit_dir: Callable[[Path], None] | None) -> None:
    if edit_doc is not None:
        doc = json.loads((root / "layout.json").read_text())
        edit_doc(doc)
        (root / "layout.json").write_text(json.dumps(doc, indent=1) + "\n")
    if edit_dir is not None:
        edit_dir(root)
    resign(root)


def test_resigned_copy_is_byte_identical_and_loads(compiled, tmp_path, capsys) -> None:
    """The control: re-signing an untouched copy reproduces the writer's bytes, and the copy
    loads and inspects cleanly, so each refusal below is caused by its corruption alone."""
    root = copy_of(compiled, tmp_path)
    corrupt(root, None, None)
    for name in (*SIGNED, "SHA256SUMS"):
        assert (root / name).read_bytes() == (compiled / name).read_bytes(), name
    # A no-op edit through the same path as the cases (parse, dump, re-sign) is also identical.
    corrupt(root, lambda doc: None, None)
    assert (root / "layout.json").read_bytes() == (compiled / "layout.json").read_bytes()
    assert neftc.load_layout(root).layer_names == ["0", "3"]
    assert main(["inspect", str(root)]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("edit_doc", "edit_dir", "needles"),
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_semantic_corruption_is_refused(compiled, tmp_path, capsys, edit_doc, edit_dir,
                                        needles) -> None:
    root = copy_of(compiled, tmp_path)
    corrupt(root, edit_doc, edit_dir)
    with pytest.raises(LayoutError) as info:
        neftc.load_layout(root)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert f"'{root / 'layout.json'}' is inconsistent at " in message, message
    assert "re-run 'neftc compile'" in message, message  # the fix
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert main(["inspect", str(root)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert err == f"neftc inspect: error: {message}\n"


def test_find_overlap_matches_brute_force() -> None:
    """The sweep finds an overlap exactly when some pair of rectangles shares a cell."""
    rng = random.Random(0)

    def rect(r0: int, rc: int, c0: int, cc: int) -> TileRecord:
        return TileRecord(index=0, row_tile=0, col_tile=0, row_start=r0, row_count=rc,
                          col_start=c0, col_count=cc, core=0, array=0, levels_offset=0)

    def share(a: TileRecord, b: TileRecord) -> bool:
        return (a.row_start < b.row_start + b.row_count and b.row_start < a.row_start + a.row_count
                and a.col_start < b.col_start + b.col_count
                and b.col_start < a.col_start + a.col_count)

    found = 0
    for _ in range(400):
        tiles = [rect(rng.randrange(20), rng.randrange(1, 6), rng.randrange(20),
                      rng.randrange(1, 6)) for _ in range(rng.randrange(1, 8))]
        pair = find_overlap(tiles)
        expected = any(share(a, b) for i, a in enumerate(tiles) for b in tiles[i + 1:])
        assert (pair is not None) == expected
        if pair is not None:
            found += 1
            assert pair[0] < pair[1] and share(tiles[pair[0]], tiles[pair[1]])
    assert 50 < found < 350  # both outcomes are exercised
    grid = [rect(r, 4, c, 3) for r in range(0, 40, 4) for c in range(0, 30, 3)]
    assert find_overlap(grid) is None
