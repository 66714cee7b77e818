"""A layout's inputs (layout version 3, ``graph.inputs``): a version 2 layout written by the
previous neftc replays bit-identically, the reader checks the input records, and the emulator,
``verify``, calibration and the ONNX export take several and integer inputs in the layout's
order; token data sets are checked against them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from layout_reference import LayoutReference
from test_layout_reader import resign
from torch import nn

from neftc.datasets.spec import load_dataset
from neftc.driver.compiler import compile_module
from neftc.errors import DataError, LayoutError
from neftc.flow.calibration import calibrate_doc
from neftc.flow.onnx_export import layout_to_onnx
from neftc.flow.verify import VerifySettings, verify_layout
from neftc.format.reader import load_layout
from neftc.runtime.emulator import Emulator
from neftc.targets import resolve_target

V2 = Path(__file__).resolve().parent / "fixtures" / "layout_v2"
TARGET = "fefet_128x128"


# ------------------------------------------------------------------------- version 2 layouts

def test_version2_layout_is_converted_and_replays_the_same_outputs() -> None:
    """tests/fixtures/layout_v2 was written by neftc at commit 18674ec (make_v2.py) with the
    outputs its emulator gave; today's reader converts it and replays the same outputs, to
    float32 rounding: bit for bit on the machine that wrote them, within 1e-6 of the largest
    output on another CPU, whose convolution kernels may sum in another order (measured 1.5e-7
    on a second machine)."""
    raw = json.loads((V2 / "layout" / "layout.json").read_text())
    assert raw["version"] == 2 and raw["graph"]["input_shape"] == [1, 1, 4, 4]
    layout = load_layout(V2 / "layout")
    assert layout.doc.version == 4
    [record] = layout.doc.graph.inputs
    first = next(n.name for n in layout.doc.graph.nodes if n.op == "placeholder")
    assert (record.name, record.dtype, record.shape, record.low, record.high) == (
        first, "float32", [1, 1, 4, 4], None, None)
    expected = np.load(V2 / "expected.npz")
    x = torch.from_numpy(expected["x"])
    def same(got: torch.Tensor, key: str) -> None:
        want = expected[key]
        assert np.allclose(got.numpy(), want, rtol=0, atol=1e-6 * np.abs(want).max()), key

    same(Emulator(layout, sigma=0.0, ideal_periphery=True)(x), "ideal")
    noisy = Emulator(layout, sigma=0.1, seed=3, ideal_periphery=True)
    noisy.program_chip(2)
    same(noisy(x), "chip2")
    adc = Emulator(layout, sigma=0.1, seed=3, ideal_periphery=False)
    adc.calibrate(x)
    adc.program_chip(1)
    same(adc(x), "adc_chip1")
    # The independent reader of docs/layout.md reads the same one input.
    assert LayoutReference(V2 / "layout").inputs() == [record.model_dump()]


def test_other_versions_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "v1"
    shutil.copytree(V2 / "layout", root)
    doc = json.loads((root / "layout.json").read_text())
    doc["version"] = 1
    (root / "layout.json").write_text(json.dumps(doc, indent=1) + "\n")
    resign(root)
    with pytest.raises(LayoutError, match=r"version 1; this neftc reads versions 2, 3, 4"):
        load_layout(root)


# ------------------------------------------------------------------------- a two-input layout

@pytest.fixture(scope="module")
def masked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, nn.Module]:
    """A linear model's layout (one input ``x``), and the same layout given a second float input
    ``mask`` multiplied into ``x`` before the crossbar (graph edited, re-signed)."""
    root = tmp_path_factory.mktemp("masked")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    compile_module(model, torch.randn(1, 6), resolve_target(TARGET), root / "one")
    shutil.copytree(root / "one", root / "two")
    doc = json.loads((root / "two" / "layout.json").read_text())
    nodes = doc["graph"]["nodes"]
    x = next(k for k, n in enumerate(nodes) if n["op"] == "placeholder")
    name = nodes[x]["name"]
    first = next(n for n in nodes if n["layer"] is not None and n["op"] == "call_function")
    assert first["args"][0] == {"node": name}
    first["args"][0] = {"node": "masked"}
    nodes[x + 1:x + 1] = [
        {"name": "mask", "op": "placeholder", "target": "mask", "args": [], "kwargs": {},
         "layer": None},
        {"name": "masked", "op": "call_function", "target": "aten.mul.Tensor",
         "args": [{"node": name}, {"node": "mask"}], "kwargs": {}, "layer": None}]
    doc["graph"]["inputs"].append({"name": "mask", "dtype": "float32", "shape": [1, 6],
                                   "low": None, "high": None})
    (root / "two" / "layout.json").write_text(json.dumps(doc, indent=1) + "\n")
    resign(root / "two")
    return root / "one", root / "two", model


def _edited(src: Path, dst: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    shutil.copytree(src, dst)
    doc = json.loads((dst / "layout.json").read_text())
    edit(doc)
    (dst / "layout.json").write_text(json.dumps(doc, indent=1) + "\n")
    resign(dst)
    return dst


def _inputs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["graph"]["inputs"]


BAD_INPUTS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "one record missing": (lambda d: _inputs(d).pop(),
                           r"graph\.inputs: 1 input\(s\) for 2 placeholder"),
    "wrong order": (lambda d: _inputs(d).reverse(), r"graph\.inputs\[0\]\.name: 'mask'"),
    "unknown dtype": (lambda d: _inputs(d)[1].update(dtype="float64"),
                      r"graph\.inputs\[1\]\.dtype: Input should be .float32."),
    "other batch": (lambda d: _inputs(d)[1].update(shape=[2, 6]), r"same batch"),
    "huge shape": (lambda d: _inputs(d)[1].update(shape=[1, 2**40]), r"inputs\[1\]\.shape"),
    "float with a range": (lambda d: _inputs(d)[1].update(low=0, high=3),
                           r"float32 input has no value range"),
    "int without a range": (lambda d: _inputs(d)[1].update(dtype="int64"),
                            r"both must be integers"),
    "empty range": (lambda d: _inputs(d)[1].update(dtype="int64", low=5, high=5),
                    r"non-empty range"),
    "no inputs": (lambda d: d["graph"].update(inputs=[]), r"graph\.inputs: List should have"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_reader_refuses_bad_input_records(masked, tmp_path: Path, case: str) -> None:
    edit, needle = BAD_INPUTS[case]
    root = _edited(masked[1], tmp_path / "bad", edit)
    with pytest.raises(LayoutError, match=needle) as info:
        load_layout(root)
    assert "\n" not in str(info.value) and "layout.json" in str(info.value)


def test_emulator_takes_the_inputs_as_a_tuple_in_layout_order(masked) -> None:
    one, two, _ = masked
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(1))
    mask = (torch.rand(7, 6, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    # Noise-free and noisy alike: mask * x through the two-input layout is x * mask through
    # the one-input layout, bit for bit (the same cells, the same chip draws).
    for sigma in (0.0, 0.1):
        a = Emulator(two, sigma=sigma, seed=4, ideal_periphery=True)
        b = Emulator(one, sigma=sigma, seed=4, ideal_periphery=True)
        a.program_chip(1)
        b.program_chip(1)
        assert torch.equal(a((x, mask)), b(x * mask))
    emu = Emulator(two, sigma=0.0, ideal_periphery=True)
    with pytest.raises(DataError, match=r"takes 2 input\(s\) \(input_1, mask\) but 1 were given"):
        emu(x)
    with pytest.raises(DataError, match=r"input 'mask' has 3 samples but the first input has 7"):
        emu((x, mask[:3]))


def _save(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_verify_and_calibrate_feed_the_named_arrays(masked, tmp_path: Path) -> None:
    one, two, _ = masked
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    mask = (rng.random((40, 6)) > 0.3).astype(np.float32)
    y = rng.integers(0, 3, 40)
    both = _save(tmp_path / "both.npz", x=x, mask=mask, y=y)
    product = _save(tmp_path / "product.npz", x=x * mask, y=y)
    settings = VerifySettings(trials=3, sigmas=(0.1,), calib_samples=16)
    got, want = verify_layout(two, both, settings), verify_layout(one, product, settings)
    assert got.results[0].mc == want.results[0].mc
    assert got.periphery.dac_layers == want.periphery.dac_layers  # type: ignore[union-attr]
    doc_two, _, _ = calibrate_doc(load_layout(two), load_dataset(both), both, 16)
    doc_one, _, _ = calibrate_doc(load_layout(one), load_dataset(product), product, 16)
    assert [la.dac for la in doc_two.layers] == [la.dac for la in doc_one.layers]
    missing = _save(tmp_path / "missing.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"no array 'mask' for the model's input 'mask'.*mask=mask"):
        verify_layout(two, missing, settings)


def test_onnx_declares_every_input_and_matches_the_emulator(masked) -> None:
    _, two, _ = masked
    layout = load_layout(two)
    model = layout_to_onnx(layout)
    assert [i.name for i in model.graph.input] == ["input_1", "mask"]
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(3))
    mask = torch.rand(5, 6, generator=torch.Generator().manual_seed(4))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    [out] = session.run(None, {"input_1": x.numpy(), "mask": mask.numpy()})
    expected = Emulator(layout, sigma=0.0, ideal_periphery=True)((x, mask)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5 * max(1.0, float(abs(expected).max())))


# ------------------------------------------------------------------------- token ids

class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids).mean(1))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    root = tmp_path_factory.mktemp("tokens") / "layout"
    torch.manual_seed(0)
    model = _Tokens().eval()
    ids = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(0))
    compile_module(model, ids, resolve_target(TARGET), root)
    return root, model


def test_token_layout_takes_int64_ids_unquantised(tokens) -> None:
    root, model = tokens
    layout = load_layout(root)
    [record] = layout.doc.graph.inputs
    assert (record.dtype, record.shape, record.low, record.high) == ("int64", [2, 6], 0, 20)
    ids = torch.randint(0, 20, (9, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(ids)
    got = Emulator(layout, sigma=0.0, ideal_periphery=True)(ids)
    # The embedding runs digitally on the exact ids; only the Linear's 8-bit weights differ.
    assert float((got - expected).abs().max()) < 0.02 * float(expected.abs().max())
    with pytest.raises(DataError, match=r"input 'ids' holds values 0\.\.20 outside its valid "
                                        r"range 0\.\.19"):
        Emulator(layout, sigma=0.0, ideal_periphery=True)(torch.cat([ids, torch.full((1, 6), 20)]))
    with pytest.raises(DataError, match=r"'ids' is int64 .* was given float32 values"):
        Emulator(layout, sigma=0.0, ideal_periphery=True)(ids.float())
    model_onnx = layout_to_onnx(layout)
    assert model_onnx.graph.input[0].type.tensor_type.elem_type == 7  # INT64
    session = ort.InferenceSession(model_onnx.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    [out] = session.run(None, {"ids": ids.numpy()})
    np.testing.assert_allclose(out, got.numpy(), atol=1e-5)


def test_token_datasets_load_as_ints_and_are_checked(tokens, tmp_path: Path) -> None:
    root, _ = tokens
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 20, (30, 6))
    good = _save(tmp_path / "tokens.npz", x=ids, y=rng.integers(0, 3, 30))
    data = load_dataset(good)
    assert data.test.x.dtype == torch.int64 and data.train.x.dtype == torch.int64
    record = verify_layout(root, good, VerifySettings(trials=2, sigmas=(0.05,), calib_samples=8))
    assert record.test_samples == 30 and record.periphery != "ideal"  # an x,y file is a test set
    split = verify_layout(root, good, VerifySettings(trials=2, sigmas=(0.05,), calib_samples=8,
                                                     split=True))
    assert split.test_samples == 8  # --split: the shared permutation's quarter
    floats = _save(tmp_path / "floats.npz", x=ids.astype(np.float32), y=rng.integers(0, 3, 30))
    with pytest.raises(DataError, match=r"array 'x' holds float values but the model's input "
                                        r"'ids' takes int64.*astype\(numpy\.int64\)"):
        verify_layout(root, floats, VerifySettings(trials=1))
    beyond = _save(tmp_path / "beyond.npz", x=ids + 15, y=rng.integers(0, 3, 30))
    with pytest.raises(DataError, match=r"outside the range 0\.\.19 of the model's input 'ids'"):
        verify_layout(root, beyond, VerifySettings(trials=1))


def test_npz_extras_are_split_like_x(tmp_path: Path) -> None:
    x = np.arange(40).reshape(20, 2)
    mask = x % 3 == 0
    path = _save(tmp_path / "e.npz", x=x, attention_mask=mask, y=np.arange(20) % 2,
                 names=np.array([1.0, 2.0]))  # not one row per sample: not an input
    data = load_dataset(path)
    for split in (data.train, data.test):
        assert list(split.extras) == ["attention_mask"]
        assert split.extras["attention_mask"].dtype == torch.bool
        assert torch.equal(split.extras["attention_mask"], split.x % 3 == 0)
    stored = _save(tmp_path / "s.npz", x_train=x[:15], y_train=np.zeros(15, int),
                   x_test=x[15:], y_test=np.zeros(5, int), attention_mask_train=mask[:15],
                   attention_mask_test=mask[15:])
    data = load_dataset(stored)
    assert torch.equal(data.test.extras["attention_mask"], torch.from_numpy(mask[15:]))
    assert torch.equal(data.train.extras["attention_mask"], torch.from_numpy(mask[:15]))
