"""docs/layout.md and docs/layout.schema.json describe the layout neftc writes.

The reader below is written from docs/layout.md alone, with json, hashlib and numpy: it must
rebuild exactly what ``neftc.load_layout`` reads, so a hardware engineer following the document
gets the same cells and weights as neftc.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neftc.driver.compiler import CompileSettings, compile_module
from neftc.format.reader import load_layout
from neftc.format.schema import LayoutDoc
from neftc.targets import resolve_target

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCHEMA_FILE = DOCS / "layout.schema.json"
LAYOUT_DOC = DOCS / "layout.md"
REGENERATE = (
    "python -c \"import json; from neftc.format.schema import LayoutDoc; "
    "open('docs/layout.schema.json', 'w').write("
    "json.dumps(LayoutDoc.model_json_schema(), indent=2) + '\\n')\""
)


# --------------------------------------------------------------------------------------------
# The independent reader: docs/layout.md, followed literally (json, hashlib, numpy only).
# --------------------------------------------------------------------------------------------

def read_layout_by_the_docs(root: Path) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]],
                                                 dict[str, np.ndarray]]:
    """(layout.json document, {layer: {"q", "w", "scales"}}, {tensor name: array})."""
    # Section 8: SHA256SUMS, one "<sha256>  <name>" line per file.
    sums: dict[str, str] = {}
    for line in (root / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        sums[name] = digest
    assert set(sums) == {"layout.json", "levels.bin", "tensors.bin"}
    for name, digest in sums.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name

    # Section 2: format identification.
    doc = json.loads((root / "layout.json").read_text(encoding="utf-8"))
    assert doc["format"] == "neftc-layout" and doc["version"] == 4

    # Section 3.5: the binary sidecars, with their recorded size and SHA-256.
    blobs: dict[str, bytes] = {}
    for key in ("levels", "tensors"):
        record = doc["files"][key]
        data = (root / record["path"]).read_bytes()
        assert len(data) == record["nbytes"]
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        blobs[key] = data

    array_rows, array_cols = doc["target"]["array"]["rows"], doc["target"]["array"]["cols"]
    used_arrays: set[tuple[int, int]] = set()
    layers: dict[str, dict[str, np.ndarray]] = {}
    for layer in doc["layers"]:
        quant, slicing = layer["quant"], layer["slicing"]
        P, S = slicing["polarities"], slicing["slices"]
        L = 2 ** slicing["cell_bits"]
        # Sections 3.6 and 4.3: the encodings.
        if slicing["encoding"] == "differential":
            assert P == 2 and slicing["offset"] == 0
            assert quant["qmax"] == 2 ** quant["bits"] - 1
        else:
            assert P == 1 and slicing["offset"] == 2 ** (quant["bits"] - 1)
            assert quant["qmax"] == 2 ** (quant["bits"] - 1) - 1
        assert -(-quant["bits"] // slicing["cell_bits"]) == S
        rows, cols = layer["matrix_rows"], layer["matrix_cols"]

        # Sections 5 and 9: every cell of every tile adds +-L**slice * level to its weight.
        q = np.zeros((rows, cols), dtype=np.int64)
        hits = np.zeros((rows, cols * P * S), dtype=np.int64)
        n_col_tiles = -(-(cols * P * S) // array_cols)
        for t in layer["tiles"]:
            assert t["index"] == t["row_tile"] * n_col_tiles + t["col_tile"]
            assert t["row_start"] == t["row_tile"] * array_rows
            assert t["col_start"] == t["col_tile"] * array_cols
            assert t["row_count"] <= array_rows and t["col_count"] <= array_cols
            assert (t["core"], t["array"]) not in used_arrays
            used_arrays.add((t["core"], t["array"]))
            assert t["levels_offset"] % 64 == 0
            block = np.frombuffer(blobs["levels"], dtype=np.uint8,
                                  count=t["row_count"] * t["col_count"],
                                  offset=t["levels_offset"]).reshape(t["row_count"], t["col_count"])
            assert int(block.max()) < L
            matrix_row = t["row_start"] + np.arange(t["row_count"])
            pc = t["col_start"] + np.arange(t["col_count"])
            weight_col = pc // (P * S)
            polarity = (pc // S) % P
            slice_ = pc % S
            cell_value = L ** slice_ * np.where(polarity == 0, 1, -1)
            np.add.at(q, (matrix_row[:, None], weight_col[None, :]),
                      block.astype(np.int64) * cell_value[None, :])
            hits[matrix_row[:, None], pc[None, :]] += 1
        assert (hits == 1).all(), f"the tiles of {layer['name']} do not partition its matrix"
        q -= slicing["offset"]  # offset encoding; 0 for differential
        assert np.abs(q).max() <= quant["qmax"]

        # Sections 4.1 and 4.2: matrix -> PyTorch weight shape, and w = q * scale[col].
        scales = np.asarray(quant["scales"], dtype=np.float32)
        assert scales.shape == (cols,)
        w = q.astype(np.float32) * scales[None, :]
        shape = layer["weight_shape"]
        assert rows * cols == int(np.prod(shape))
        layers[layer["name"]] = {"q": q.T.reshape(shape), "w": w.T.reshape(shape),
                                 "scales": scales}

    # Section 6: tensors.bin, little-endian, C order.
    tensors: dict[str, np.ndarray] = {}
    for record in doc["tensors"]:
        dtype = np.dtype(record["dtype"]).newbyteorder("<")
        count = int(np.prod(record["shape"]))
        assert record["nbytes"] == count * dtype.itemsize
        assert record["offset"] % 64 == 0
        tensors[record["name"]] = np.frombuffer(blobs["tensors"], dtype=dtype, count=count,
                                                offset=record["offset"]).reshape(record["shape"])
    return doc, layers, tensors


def cell_origin_by_the_docs(doc: dict[str, Any], core: int, array: int, row: int,
                            col: int) -> tuple[str, int, int, int, int]:
    """Section 9: (core, array, row, col) -> (layer, matrix row, weight col, polarity, slice)."""
    for layer in doc["layers"]:
        for t in layer["tiles"]:
            if (t["core"], t["array"]) == (core, array):
                assert 0 <= row < t["row_count"] and 0 <= col < t["col_count"]
                P, S = layer["slicing"]["polarities"], layer["slicing"]["slices"]
                pc = t["col_start"] + col
                return layer["name"], t["row_start"] + row, pc // (P * S), (pc // S) % P, pc % S
    raise KeyError((core, array))


# --------------------------------------------------------------------------------------------
# A small CNN: conv with bias, BatchNorm, a residual add, a linear layer.
# --------------------------------------------------------------------------------------------

class SmallResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)  # with bias
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)  # 144 rows: two row tiles
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 40)  # 256 rows, 40 columns: several column tiles

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(x)))
        x = F.max_pool2d(x, 2)
        return self.fc(torch.flatten(x, 1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = SmallResidualCNN()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.copy_(torch.randn(16, generator=generator) * 0.1)
            bn.running_var.copy_(torch.rand(16, generator=generator) + 0.5)
            bn.weight.copy_(torch.rand(16, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(16, generator=generator) * 0.1)
    return model.eval()


def _compile(out: Path, overrides: list[str], per_channel: bool = False) -> nn.Module:
    model = _model()
    target = resolve_target("fefet_128x128", overrides)
    example = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    settings = CompileSettings.with_options(per_channel=per_channel)
    compile_module(model, example, target, out, settings=settings)
    return model


@pytest.fixture(scope="module")
def differential_layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    out = tmp_path_factory.mktemp("differential") / "layout"
    return out, _compile(out, [])


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------

def test_schema_file_matches_the_pydantic_models() -> None:
    current = json.dumps(LayoutDoc.model_json_schema(), indent=2) + "\n"
    assert SCHEMA_FILE.is_file(), f"{SCHEMA_FILE} is missing; regenerate it with:\n{REGENERATE}"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == current, (
        f"{SCHEMA_FILE} is stale: neftc/format/schema.py changed. Regenerate it from the "
        f"repository root with:\n{REGENERATE}\nand update docs/layout.md (and the layout "
        "version if the change is incompatible)."
    )


def _check_against_neftc(root: Path, model: nn.Module, encoding: str, per_channel: bool) -> None:
    doc, layers, tensors = read_layout_by_the_docs(root)
    layout = load_layout(root)

    assert set(layers) == {"conv1", "conv2", "fc"}
    assert [layer["name"] for layer in doc["layers"]] == ["conv1", "conv2", "fc"]
    params = dict(model.named_parameters())
    for name, got in layers.items():
        record = layout.layer(name)
        assert record.slicing.encoding == encoding
        assert record.quant.per_channel == per_channel
        # Exactly what neftc reads: integer weights bit for bit, dequantised weights to 0 ulp.
        expected_q = layout.integer_weights(name)
        assert got["q"].shape == expected_q.shape and np.array_equal(got["q"], expected_q), name
        expected_w = layout.weights(name)
        assert got["w"].dtype == expected_w.dtype == np.float32
        np.testing.assert_array_equal(got["w"], expected_w, err_msg=name)
        # And within half a quantisation step of the model's own weights (max-abs calibration).
        original = params[f"{name}.weight"].detach().numpy()
        half_step = got["scales"].reshape((-1,) + (1,) * (original.ndim - 1)) / 2
        error = np.abs(original - got["w"])
        assert (error <= half_step + 1e-6).all(), (name, float((error - half_step).max()))
        if not per_channel:  # max-abs: the largest weight lands on qmax
            assert np.abs(got["q"]).max() == record.quant.qmax
        assert len(np.unique(got["scales"])) == (1 if not per_channel else len(got["scales"]))

    # The digital tensors: biases and BatchNorm parameters and statistics.
    state = model.state_dict()
    assert {"conv1.bias", "bn1.running_mean", "bn2.running_var", "fc.bias"} <= set(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(value, layout.tensor(name), err_msg=name)
        np.testing.assert_array_equal(value, state[name].numpy(), err_msg=name)

    # Section 9: physical addresses, against Layout.cell_origin.
    rng = np.random.default_rng(0)
    for layer in doc["layers"]:
        for t in layer["tiles"]:
            for row, col in zip(rng.integers(0, t["row_count"], 40),
                                rng.integers(0, t["col_count"], 40)):
                origin = layout.cell_origin(t["core"], t["array"], int(row), int(col))
                assert cell_origin_by_the_docs(doc, t["core"], t["array"], int(row), int(col)) == (
                    origin.layer, origin.matrix_row, origin.weight_col, origin.polarity,
                    origin.slice)

    # Section 7: the graph and its crossbar nodes.
    nodes = {}
    for node in doc["graph"]["nodes"]:
        refs = json.dumps(node["args"]) + json.dumps(node["kwargs"])
        for other in nodes:
            refs = refs.replace(json.dumps({"node": other}), "")
        assert '{"node":' not in refs, f"{node['name']} refers to a later or unknown node"
        nodes[node["name"]] = node
    targets = {node["target"] for node in nodes.values()}
    assert {"aten.add.Tensor", "aten.batch_norm.default", "aten.conv2d.default",
            "aten.linear.default"} <= targets
    for layer in doc["layers"]:
        node = nodes[layer["node"]]
        assert node["op"] == "call_function" and node["layer"] == layer["name"]
        assert node["target"] == f"aten.{layer['op']}.default" and node["kwargs"] == {}
        weight = nodes[node["args"][1]["node"]]
        assert weight["op"] == "get_attr" and weight["target"] == f"{layer['name']}.weight"
        assert weight["layer"] == layer["name"] and weight["target"] not in tensors
        if layer["bias"] is None:
            assert node["args"][2] is None
        else:
            assert nodes[node["args"][2]["node"]]["target"] == layer["bias"]
        if layer["op"] == "conv2d":
            conv = layer["conv"]
            assert node["args"][3:] == [conv["stride"], conv["padding"], conv["dilation"],
                                        conv["groups"]]
    assert nodes["output"]["op"] == "output"
    # Section 7: one input record per placeholder, in order, by name; this model's one input is
    # float32 (no value range) of the compiled example's shape.
    placeholders = [node["name"] for node in doc["graph"]["nodes"] if node["op"] == "placeholder"]
    inputs = doc["graph"]["inputs"]
    assert [record["name"] for record in inputs] == placeholders and len(inputs) == 1
    assert inputs[0]["dtype"] == "float32" and inputs[0]["low"] is None is inputs[0]["high"]
    assert inputs[0]["shape"] == list(layout.doc.graph.inputs[0].shape)

    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=root, capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_reader_from_the_docs_differential(differential_layout: tuple[Path, nn.Module]) -> None:
    root, model = differential_layout
    _check_against_neftc(root, model, "differential", per_channel=False)
    tiles = {layer["name"]: layer["tiles"] for layer in json.loads(
        (root / "layout.json").read_text())["layers"]}
    assert len(tiles["conv2"]) == 2 and len(tiles["fc"]) == 6  # several row and column tiles


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-layer", "per-channel"])
def test_reader_from_the_docs_offset(tmp_path: Path, per_channel: bool) -> None:
    root = tmp_path / "layout"
    model = _compile(root, ["weight.sign_encoding=offset"], per_channel=per_channel)
    _check_against_neftc(root, model, "offset", per_channel=per_channel)


def test_example_in_the_docs_runs(differential_layout: tuple[Path, nn.Module]) -> None:
    """The json+numpy example of docs/layout.md section 11 rebuilds the integer weights."""
    text = LAYOUT_DOC.read_text(encoding="utf-8")
    example = text.split("## 11.", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    tree = ast.parse(example)
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert {alias.name for n in imports for alias in n.names} <= {"hashlib", "json", "Path",
                                                                   "numpy"}
    definitions = ast.Module(body=[n for n in tree.body if isinstance(
        n, (ast.Import, ast.ImportFrom, ast.FunctionDef))], type_ignores=[])
    namespace: dict[str, Any] = {}
    exec(compile(definitions, str(LAYOUT_DOC), "exec"), namespace)
    root, _ = differential_layout
    layout = load_layout(root)
    for name in layout.layer_names:
        q, w = namespace["read_integer_weights"](root, name)
        np.testing.assert_array_equal(q, layout.integer_weights(name))
        np.testing.assert_array_equal(w, layout.weights(name))
