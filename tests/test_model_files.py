"""A model file is data unless trusted: hostile .pt2 archives, damaged zips and non-finite weights.

Every hostile archive is real torch.export.save output rewritten with zipfile. Payloads only ever
create a marker file in tmp_path (pickle ``__reduce__`` returning ``(open, (marker, 'w'))``), so a
test that fails runs nothing worse. Each one must end in exit 2 with one ``neftc compile: error:``
line, no traceback, no marker and no output directory; and, where torch itself would run the
payload, a --trust-model run shows that the archive is live (the marker appears).
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from neftc.cli.main import main
from neftc.frontend.trace import export_dynamic_batch
from neftc.frontend.zoo import build

REFUSED = "re-export it with torch.export.save from a trusted source, or pass --trust-model"


class Payload:
    """Unpickling this creates ``marker`` (and nothing else)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


class Harmless:
    """Unpickles to an empty ``collections.Counter``: a dict, so torch accepts it as sample
    inputs, but not a plain tensor pickle (and not loadable with weights_only=True)."""

    def __reduce__(self) -> tuple:
        return (collections.Counter, ())


def torch_saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def compile_cli(capfd, path: Path, out: Path, *extra: str) -> tuple[int, str]:
    code = main(["compile", str(path), "--target", "fefet_128x128", "-o", str(out), *extra])
    captured = capfd.readouterr()
    return code, captured.err


def assert_refused(code: int, err: str, marker: Path, out: Path, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("neftc compile: error: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert not marker.exists(), "the payload ran"
    assert not out.exists(), "output written for a refused model"


@pytest.fixture(scope="module")
def lenet_pt2(tmp_path_factory) -> Path:
    """torch.export.save of a zoo LeNet with a static batch of 1."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lenet") / "lenet.pt2"
    model = build("lenet", (1, 28, 28), 10).eval()
    torch.export.save(torch.export.export(model, (torch.randn(1, 1, 28, 28),)), path)
    return path


@pytest.fixture(scope="module")
def lenet_dynamic_pt2(tmp_path_factory) -> Path:
    """The same with a dynamic batch, as neftc train/finetune save: symbolic shapes in the JSON."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lenet_dyn") / "lenet_dyn.pt2"
    model = build("lenet", (1, 28, 28), 10).eval()
    torch.export.save(export_dynamic_batch(model, torch.randn(1, 1, 28, 28)), path)
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload-ran"


def rewrite(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None] = lambda n, d: d,
            add: dict[str, bytes] | None = None) -> Path:
    """Copy the archive ``src`` to ``dst`` member by member; ``edit(relative_name, data)`` returns
    the new bytes or None to drop the member; ``add`` adds members (names relative to the root)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for name in zin.namelist():
            data = edit(name.split("/", 1)[1], zin.read(name))
            if data is not None:
                zout.writestr(name, data)
        for name, data in (add or {}).items():
            zout.writestr(f"{root}/{name}", data)
    return dst


def edit_json(target: str, change: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    def edit(name: str, data: bytes) -> bytes:
        if name != target:
            return data
        doc = json.loads(data)
        change(doc)
        return json.dumps(doc).encode()
    return edit


WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"


def flag_first_weight_pickled(marker: Path) -> Callable[[str, bytes], bytes]:
    """The config says weight_0 is pickled (use_pickle) and weight_0 holds the payload."""
    config_edit = edit_json(WEIGHTS_CONFIG, lambda doc: next(iter(doc["config"].values()))
                            .update(use_pickle=True))

    def edit(name: str, data: bytes) -> bytes:
        if name == "data/weights/weight_0":
            return torch_saved(Payload(marker))
        return config_edit(name, data)
    return edit


# a float32 vector's tensor_meta: with it, torch reads a member as raw bytes first (their length a
# multiple of 4), then still pickle.loads an opaque_obj_ member
FLOAT_META = {"dtype": 7, "sizes": [{"as_int": 1}], "requires_grad": False,
              "device": {"type": "cpu", "index": None}, "strides": [{"as_int": 1}],
              "storage_offset": {"as_int": 0}, "layout": 7}


def padded(data: bytes) -> bytes:
    return data + b"." * (-len(data) % 4)  # pickle.loads ignores bytes after STOP


def add_constant(entry: dict, member: str, data: bytes) -> tuple[Callable, dict[str, bytes]]:
    return (edit_json(CONSTANTS_CONFIG, lambda doc: doc["config"].update(evil=entry)),
            {f"data/constants/{member}": data})


# name -> (source fixture, builder(marker) -> (edit, add), expected text,
#          torch runs it when trusted)
HOSTILE: dict[str, tuple[str, Callable[[Path], tuple[Callable, dict]], str, bool]] = {
    "pickled-sample-inputs": (
        "lenet_pt2",
        lambda m: (lambda n, d: torch_saved(Payload(m)) if n == "data/sample_inputs/model.pt"
                   else d, {}),
        "data/sample_inputs/model.pt", True),
    "weights-use-pickle": (
        "lenet_pt2", lambda m: (flag_first_weight_pickled(m), {}), "weight_0", True),
    "legacy-weights-model-pt": (
        "lenet_pt2", lambda m: (lambda n, d: d, {"data/weights/model.pt": torch_saved(Payload(m))}),
        "data/weights/model.pt", True),
    "pickled-tensor-constant": (
        "lenet_pt2", lambda m: add_constant(
            {"path_name": "tensor_0", "is_param": False, "use_pickle": True, "tensor_meta": None},
            "tensor_0", torch_saved(Payload(m))), "pickled tensor", True),
    "opaque-constant": (
        "lenet_pt2", lambda m: add_constant(
            {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
             "tensor_meta": None}, "opaque_obj_0", pickle.dumps(Payload(m))),
        "opaque or torchbind", True),
    "opaque-constant-not-flagged": (  # torch picks pickle.loads by the member name alone
        "lenet_pt2", lambda m: add_constant(
            {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": False,
             "tensor_meta": FLOAT_META}, "opaque_obj_0", padded(pickle.dumps(Payload(m)))),
        "opaque or torchbind", True),
    "sympy-expression": (  # torch parses symbolic shapes with sympy.sympify, i.e. eval
        "lenet_dynamic_pt2",
        lambda m: (lambda n, d: d.replace(
            b"Symbol('s77', positive=True, integer=True)",
            f"(open({str(m)!r}, 'w').close() or Symbol('s77', positive=True, integer=True))"
            .encode(), 1) if n == "models/model.json" else d, {}),
        "not a plain sympy expression", True),
    "aotinductor-library": (
        "lenet_pt2", lambda m: (lambda n, d: d, {"data/aotinductor/model/model.so": b"\x7fELF"}),
        "AOTInductor", False),
    "second-program": (
        "lenet_pt2", lambda m: (lambda n, d: d, {"models/other.json": b"{}"}),
        "models/other.json", False),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_refused(case, request, capfd, tmp_path, marker) -> None:
    source, builder, needle, live = HOSTILE[case]
    edit, add = builder(marker)
    path = rewrite(request.getfixturevalue(source), tmp_path / f"{case}.pt2", edit, add)
    out = tmp_path / "out"
    code, err = compile_cli(capfd, path, out)
    assert_refused(code, err, marker, out, f"{case}.pt2", needle, "--trust-model")
    if live:  # the archive is not a dud: torch runs the payload once the user trusts the file
        compile_cli(capfd, path, tmp_path / "trusted", "--trust-model")
        assert marker.exists()


def test_pre_28_format_refused(capfd, tmp_path, marker) -> None:
    """The old torch.export.save layout (serialized_*.pt at the top) is unpickled whole."""
    path = tmp_path / "old.pt2"
    with zipfile.ZipFile(path, "w") as zout:
        zout.writestr("serialized_exported_program.json", b"{}")
        zout.writestr("serialized_state_dict.pt", torch_saved(Payload(marker)))
        zout.writestr("serialized_constants.pt", torch_saved({}))
        zout.writestr("serialized_example_inputs.pt", torch_saved(((), {})))
        zout.writestr("version", b"8.20")
    out = tmp_path / "out"
    assert_refused(*compile_cli(capfd, path, out), marker, out, "old.pt2",
                   "serialized_state_dict.pt", "unpickles", "--trust-model")


def test_file_access_op_refused(capfd, tmp_path, marker) -> None:
    """aten.from_file in the graph (maps a file into a tensor) is refused before anything runs."""
    class AddOnes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + torch.ones(4)

    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(16))
    source = tmp_path / "ones.pt2"
    torch.export.save(torch.export.export(AddOnes().eval(), (torch.randn(1, 4),)), source)

    def to_from_file(doc: dict) -> None:
        node = next(n for n in doc["graph_module"]["graph"]["nodes"]
                    if n["target"] == "torch.ops.aten.ones.default")
        node["target"] = "torch.ops.aten.from_file.default"
        node["inputs"] = [{"name": "filename", "arg": {"as_string": str(secret)}, "kind": 1},
                          {"name": "shared", "arg": {"as_bool": False}, "kind": 1},
                          {"name": "size", "arg": {"as_int": 4}, "kind": 1},
                          {"name": "dtype", "arg": {"as_scalar_type": 7}, "kind": 2}]

    path = rewrite(source, tmp_path / "from_file.pt2", edit_json("models/model.json", to_from_file))
    out = tmp_path / "out"
    assert_refused(*compile_cli(capfd, path, out), marker, out, "from_file", "--trust-model")


# ---------------------------------------------------------------- damaged and oversized files


def flip_weight_byte(src: Path, dst: Path) -> Path:
    """Flip one byte inside a stored weight member, leaving the zip structure intact."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data/weights/weight_2"))
        payload = archive.read(name)
    start = data.find(payload)
    assert start > 0
    data[start + len(payload) // 2] ^= 0x40
    dst.write_bytes(bytes(data))
    return dst


def declare_huge(src: Path, dst: Path) -> Path:
    """A deflated member whose central-directory entry declares 3 GiB uncompressed."""
    rewrite(src, dst, add={"extra/notes.txt": b"x" * 1000})
    data = bytearray(dst.read_bytes())
    entry = data.rfind(b"PK\x01\x02")  # the last central-directory entry: the added member
    data[entry + 24:entry + 28] = struct.pack("<I", 3 << 30)
    dst.write_bytes(bytes(data))
    return dst


def deflate_bomb(src: Path, dst: Path) -> Path:
    """A real bomb: 64 MiB of zeros deflated to about 64 KiB."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
        zout.writestr(f"{root}/extra/zeros.txt", bytes(64 << 20), zipfile.ZIP_DEFLATED)
    return dst


DAMAGED: dict[str, tuple[Callable[[Path, Path], Path], tuple[str, ...]]] = {
    "flipped-weight-byte": (flip_weight_byte, ("damaged", "weight_2", "CRC")),
    "truncated": (lambda s, d: (d.write_bytes(s.read_bytes()[: s.stat().st_size * 2 // 3]), d)[1],
                  ("damaged or truncated",)),
    "declared-3-GiB": (declare_huge, ("budget",)),
    "deflate-bomb": (deflate_bomb, ("zip bomb", "zeros.txt")),
    "not-a-zip": (lambda s, d: (d.write_bytes(b"definitely not a model\n" * 50), d)[1],
                  ("not a PyTorch model file",)),
    "directory": (lambda s, d: (d.mkdir(), d)[1], ("is a directory",)),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_or_oversized_file_refused(case, capfd, tmp_path, marker, lenet_pt2) -> None:
    make, needles = DAMAGED[case]
    path = make(lenet_pt2, tmp_path / f"{case}.pt2")
    out = tmp_path / "out"
    assert_refused(*compile_cli(capfd, path, out), marker, out, f"{case}.pt2", *needles)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_refused_without_blocking(capfd, tmp_path, marker) -> None:
    path = tmp_path / "fifo.pt2"
    os.mkfifo(path)
    out = tmp_path / "out"
    assert_refused(*compile_cli(capfd, path, out), marker, out, "not a regular file")


# ---------------------------------------------------------------- non-finite weights


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_name_the_layer(bad, capfd, tmp_path, marker) -> None:
    model = build("lenet", (1, 28, 28), 10).eval()
    with torch.no_grad():
        model.features[3].weight[0, 0, 0, 0] = bad
    exported = tmp_path / "bad.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 1, 28, 28),)), exported)
    out = tmp_path / "out"
    assert_refused(*compile_cli(capfd, exported, out), marker, out,
                   "'features.3.weight'", "layer 'features.3'", "non-finite")
    state = tmp_path / "bad.pt"
    torch.save(model.state_dict(), state)
    assert_refused(*compile_cli(capfd, state, out, "--arch", "lenet", "--input-shape", "1,28,28"),
                   marker, out, "'features.3.weight'", "non-finite")


def test_non_finite_buffer_named(capfd, tmp_path, marker) -> None:
    model = build("vgg8", (3, 32, 32), 10).eval()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    bn.running_var[1] = float("inf")
    name = next(n for n, b in model.named_buffers() if b is bn.running_var)
    path = tmp_path / "bn.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 32, 32),)), path)
    out = tmp_path / "out"
    assert_refused(*compile_cli(capfd, path, out), marker, out, f"'{name}'", "non-finite")


# ---------------------------------------------------------------- controls


def test_plain_archives_compile_without_trust(capfd, tmp_path, lenet_pt2,
                                              lenet_dynamic_pt2) -> None:
    for source in (lenet_pt2, lenet_dynamic_pt2):
        out = tmp_path / source.stem
        code, err = compile_cli(capfd, source, out)
        assert code == 0, err
        assert "Traceback" not in err
        assert (out / "layout.json").exists()


def test_harmless_pickled_sample_inputs_need_trust(capfd, tmp_path, marker, lenet_pt2) -> None:
    path = rewrite(lenet_pt2, tmp_path / "harmless.pt2",
                   lambda n, d: torch_saved(Harmless()) if n == "data/sample_inputs/model.pt"
                   else d)
    out = tmp_path / "out"
    assert_refused(*compile_cli(capfd, path, out), marker, out, "sample inputs",
                   "collections.Counter", REFUSED)
    code, err = compile_cli(capfd, path, out, "--trust-model")
    assert code == 0, err
    assert "Traceback" not in err and err.count("error:") == 0, err
    assert (out / "layout.json").exists()


def test_trust_model_still_checks_the_zip(capfd, tmp_path, marker, lenet_pt2) -> None:
    """--trust-model allows pickles, not damage: CRCs and budgets are checked all the same."""
    path = flip_weight_byte(lenet_pt2, tmp_path / "flipped.pt2")
    out = tmp_path / "out"
    assert_refused(*compile_cli(capfd, path, out, "--trust-model"), marker, out, "CRC")


def test_trusted_archive_loads_the_same_program(tmp_path, lenet_pt2) -> None:
    """The data-only copy torch reads without --trust-model gives the same graph and weights."""
    from neftc.frontend.loader import load_model

    plain = load_model(lenet_pt2)
    trusted = load_model(lenet_pt2, trust_model=True)
    assert str(plain.gm.graph) == str(trusted.gm.graph)
    assert plain.sha256 == trusted.sha256
    for (name, a), (_, b) in zip(plain.gm.state_dict().items(), trusted.gm.state_dict().items()):
        assert torch.equal(a, b), name  # bit-identical: the same raw bytes


def test_pytree_spec_imports_nothing(capfd, tmp_path, marker, lenet_pt2, monkeypatch) -> None:
    """An out_spec whose dict key is an Enum makes torch import the module it names; neftc
    rewrites the spec as builtin containers first, so the module is never imported."""
    (tmp_path / "evil_spec_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    enum_key = {"__enum__": True, "fqn": "evil_spec_module:E", "name": "A"}
    leaf = {"type": None, "context": None, "children_spec": []}

    def enum_out_spec(doc: dict) -> None:
        signature = doc["graph_module"]["module_call_graph"][0]["signature"]
        signature["out_spec"] = json.dumps([1, {"type": "builtins.dict",
                                                "context": json.dumps([enum_key]),
                                                "children_spec": [leaf]}])

    path = rewrite(lenet_pt2, tmp_path / "enum.pt2", edit_json("models/model.json", enum_out_spec))
    for extra in ((), ("--trust-model",)):
        out = tmp_path / f"out{len(extra)}"
        code, err = compile_cli(capfd, path, out, *extra)
        assert code == 0, err
        assert not marker.exists(), "the module named in the pytree spec was imported"
        assert (out / "layout.json").exists()
