"""A layout is data: its graph may call only the allow-listed ops of docs/layout.md section 7.1.1,
with arguments of their kinds and every value bounded, checked before anything runs.

Two halves. The allow-list is not too tight: every zoo architecture and every test model compiles,
loads and replays, and together they emit every op of the list. It is tight enough: hostile graphs
(re-signed with ``test_layout_reader.resign``, so only the graph checks can refuse them) that
would write or read files, allocate or compute without bound, or slip in a name, a type or a
number the format does not allow are refused by ``load_layout`` and by ``neftc verify`` with one
line naming ``layout.json`` and the field, and nothing they name is ever created.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import ResidualCNN, randomize_bn
from test_layout_reader import SIGNED, resign
from test_onnx_export import EncoderBlock
from test_passes import ComputedBias, MatmulModel
from torch import nn

import neftc
from neftc.cli.main import main
from neftc.driver.compiler import CompileSettings, compile_model, compile_module
from neftc.errors import LayoutError, PassError
from neftc.format import arg_kinds, ops, reader
from neftc.format.graph_codec import DTYPES, resolve_op
from neftc.format.writer import checksums
from neftc.frontend.trace import export_dynamic_batch
from neftc.frontend.zoo import VGG8, ResNet18, build
from neftc.runtime.emulator import Emulator
from neftc.targets import resolve_target

DOCS = Path(__file__).resolve().parents[1] / "docs" / "layout.md"


# ------------------------------------------------------------------ models the compiler supports

class SharedWeights(nn.Module):
    """One Linear used twice: two crossbar layers (fc, fc#2) read the same weight."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.fc(x)))


class Cumulative(nn.Module):
    """A digital op the ONNX exporter lacks (tests/test_onnx_export.py): cumsum."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(self.fc(x), dim=1)


class Periphery(nn.Module):
    """The common digital ops no other test model uses: activations, pools, reductions, joins."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 + 4 * 4 + 4, 5)
        self.act = nn.Sequential(nn.Sigmoid(), nn.SiLU(), nn.ReLU6(), nn.LeakyReLU(0.1),
                                 nn.Hardswish(), nn.Hardsigmoid(), nn.ELU())
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 2, 8, 8]
        a = F.avg_pool2d(self.act(self.c2(x)), 2)  # [B, 4, 4, 4]
        a = a - a.amax(dim=(2, 3), keepdim=True)
        a = (torch.exp(a) * (-a)).sum(dim=(2,))  # [B, 4, 4]
        s = self.c1(x.flatten(2)[:, :, :16])  # [B, 4, 16]
        s = self.bn(F.adaptive_avg_pool1d(F.avg_pool1d(F.max_pool1d(s, 2), 2), 4))
        p = s.permute(0, 2, 1).unsqueeze(1).squeeze(1)  # [B, 4, 4]
        first = x.mean(dim=(2, 3)).select(1, 0).unsqueeze(1).expand(-1, 4).t().t()  # [B, 4]
        z = torch.clamp(torch.cat([a.flatten(1), p.flatten(1), first], dim=1), -3.0, 3.0)
        return F.log_softmax(self.fc(z), dim=-1)


class Factories(nn.Module):
    """New tensors inside forward: kept as graph ops when the model comes as a torch.export
    archive (compile_module's fx tracing folds them into constants)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 6]
        y = self.fc(x)
        pos = (torch.arange(6, dtype=torch.float32) + torch.arange(1, 7) * 0.5
               + torch.arange(0, 12, 2))
        y = y + pos + torch.ones(6) + torch.full((6,), 0.25) + torch.zeros(x.shape[0], 6)
        return y * torch.ones_like(y) + torch.zeros_like(y) + torch.full_like(y, 1.0)


class SizeArithmetic(nn.Module):
    """A reshape whose size is the dynamic batch times a constant (two rows per sample, as
    MobileViT's patch folding): the layout's ``sym_mul``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 4, 6]
        b = x.shape[0]
        return self.fc(x).reshape(b * 2, -1, 6).reshape(b, -1)


class Masks(nn.Module):
    """The digital ops of transformers' embeddings and attention masks, mobile CNNs' padding
    and the elementwise math of normalisations: lookups by integer ids, comparisons, selections
    by a mask, dtype casts."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 8)
        self.register_buffer("pick", torch.tensor([0, 2, 3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 6, 8]
        ids = (x[:, :, 0].abs() * 3).to(torch.int64).clamp(0, 9)  # [B, 6] token ids
        h = self.fc(x) + self.emb(ids)
        h = h + torch.gather(h, 2, ids.clamp(0, 7).unsqueeze(-1).expand(-1, -1, 8)).float()
        keep = (ids >= 1) & (ids != 5) & ~(ids > 8) & torch.logical_not(ids < 0)
        keep = keep & (ids <= 9) & (ids == ids) & (ids.le(ids)) & ids.ge(ids) & ~ids.gt(ids)
        keep = keep & ~ids.lt(ids) & ~ids.ne(ids) | (ids > 100)
        h = torch.where(keep.unsqueeze(-1), h, -1e4)
        h = torch.where(keep.unsqueeze(-1), h, torch.zeros_like(h))
        h = torch.where(~keep.unsqueeze(-1), 0.5, h)
        h = h.masked_fill(ids.unsqueeze(-1) == 3, 0.0).masked_fill(h > 1e3, torch.tensor(1.0))
        h = torch.sqrt(h.abs() + 1) + torch.rsqrt(h * h + 1) + torch.erf(h) + h.pow(2)
        h = (1 - torch.reciprocal(h.abs() + 1)) * keep.unsqueeze(-1).to(torch.float32)
        h = F.pad(F.gelu(h, approximate="tanh"), (1, 1)) + F.pad(h, (1, 1), mode="reflect")
        h = torch.constant_pad_nd(h, [0, 0, 0, 1], 0.5)
        # advanced indexing of the leading dimensions (transformers' mask[batch_idx, kv_idx])
        rows = torch.arange(h.shape[0]).view(-1, 1)
        cols = (h.shape[1] - 1 - torch.arange(h.shape[1])).view(1, -1)
        h = h[rows, cols]
        h = h + h.argmax(dim=-1, keepdim=True).to(torch.float32)  # GPT-2's last-token pick
        return h.index_select(2, self.pick)


def _conv1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(6, 8, 3, stride=2, padding=1, dilation=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 6, 3))


SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
# name -> (model factory, example input shape without the batch, compile settings)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], CompileSettings]] = {
    **{f"{arch}-{'x'.join(map(str, shape))}": (
        (lambda arch=arch, shape=shape: build(arch, shape, 10)), shape, CompileSettings())
       for arch in ("mlp", "lenet") for shape in SHAPES},
    # VGG-8 and ResNet-18 narrowed (same topology and ops, faster to compile)
    **{f"vgg8-{'x'.join(map(str, shape))}": (
        (lambda shape=shape: VGG8(shape, 10, width=8)), shape, CompileSettings())
       for shape in SHAPES},
    **{f"resnet18-{'x'.join(map(str, shape))}": (
        (lambda shape=shape: ResNet18(shape, 10, width=4)), shape, CompileSettings())
       for shape in SHAPES},
    "residual-cnn": (lambda: randomize_bn(ResidualCNN()), (3, 8, 8), CompileSettings()),
    "residual-cnn-fold-bn": (lambda: randomize_bn(ResidualCNN()), (3, 8, 8),
                             CompileSettings.with_options(fold_bn=True)),
    "encoder-block": (EncoderBlock, (6, 16), CompileSettings()),
    "matmul-with-parameter": (MatmulModel, (4, 12), CompileSettings()),
    "computed-bias": (ComputedBias, (4, 5, 5), CompileSettings()),
    "conv1d": (_conv1d, (6, 13), CompileSettings()),
    "shared-weights": (SharedWeights, (8,), CompileSettings()),
    "cumsum": (Cumulative, (4,), CompileSettings()),
    "periphery": (Periphery, (2, 8, 8), CompileSettings()),
    "size-arithmetic": (SizeArithmetic, (4, 6), CompileSettings()),
}
# compiled from a .pt2 archive
EXPORTED = {"factories": (Factories, (6,)), "masks": (Masks, (6, 8))}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """Every model compiled once: name -> (layout directory, the compiled graph module)."""
    root = tmp_path_factory.mktemp("ops")
    target = resolve_target("fefet_128x128")
    out: dict[str, tuple[Path, Any]] = {}
    for name, (factory, shape, settings) in MODELS.items():
        torch.manual_seed(0)
        example = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))
        result = compile_module(factory().eval(), example, target, root / name,
                                settings=settings)
        out[name] = (root / name, result.gm)
    for name, (factory, shape) in EXPORTED.items():
        torch.manual_seed(0)
        archive = root / f"{name}.pt2"
        torch.export.save(export_dynamic_batch(factory().eval(), torch.randn(1, *shape)), archive)
        out[name] = (root / name, compile_model(archive, target, root / name).gm)
    return out


def emitted_ops(layout_dir: Path) -> set[str]:
    doc = json.loads((layout_dir / "layout.json").read_text())
    return {n["target"] for n in doc["graph"]["nodes"] if n["op"] == "call_function"}


def test_every_allowed_op_is_emitted_by_a_compiled_model(compiled) -> None:
    """The allow-list is exactly what the supported models need: no op in it that no model
    emits (it would be an untested door), none emitted outside it (compile would refuse)."""
    emitted: dict[str, list[str]] = {}
    for name, (layout_dir, _) in compiled.items():
        for op in emitted_ops(layout_dir):
            emitted.setdefault(op, []).append(name)
    assert set(emitted) == set(ops.OPS), (
        f"allowed but never emitted: {sorted(set(ops.OPS) - set(emitted))}; "
        f"emitted but not allowed: {sorted(set(emitted) - set(ops.OPS))}")


@pytest.mark.parametrize("name", [*MODELS, *EXPORTED])
def test_compiled_layouts_load_and_replay(compiled, name) -> None:
    """The graph checks accept every supported model, and its layout replays on a batch other
    than the compiled one (the batch stays dynamic)."""
    layout_dir, gm = compiled[name]
    layout = neftc.load_layout(layout_dir)
    x = torch.randn(3, *layout.doc.graph.input_shape[1:],
                    generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = gm(x)
        got = Emulator(layout, sigma=0.0, ideal_periphery=True)(x)
    # Noise-free, ideal periphery: the same float32 weights and ATen ops as the compiled graph;
    # the crossbar path accumulates in another order, a few float32 ulps of the largest output.
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= 1e-5 * max(scale, 1.0)


def test_docs_list_the_allowed_ops() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert ops.op_table() in text, "docs/layout.md 7.1.1: paste neftc.format.ops.op_table()"
    assert ops.kind_table() in text, "docs/layout.md 7.1.1: paste neftc.format.ops.kind_table()"


def test_resolve_op_resolves_only_the_allow_list() -> None:
    assert resolve_op("aten.relu.default") is torch.ops.aten.relu.default
    assert all(callable(resolve_op(name)) for name in ops.OPS)
    assert set(arg_kinds.DTYPE_NAMES) == set(DTYPES)  # the dtype kind accepts the encoding's dtypes
    for name in ("aten.from_file.default", "aten.copy_.default", "aten.relu_.default",
                 "prims.add.default", "aten.relu.__call__", "aten.__class__.__base__",
                 "aten.relu", "__import__", "torch.ops.aten.relu.default", ""):
        with pytest.raises(LayoutError, match="not supported by the layout format"):
            resolve_op(name)


# ------------------------------------------------------------------ hostile layouts

@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits-sized layout (input [1, 1, 8, 8]) whose graph the payloads extend."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("hostile") / "layout"
    compile_module(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval(), torch.randn(1, 1, 8, 8),
                   resolve_target("fefet_128x128"), out)
    doc = json.loads((out / "layout.json").read_text())
    # The payloads refer to these nodes by name and expect to start at position 5.
    assert [(n["name"], n["op"]) for n in doc["graph"]["nodes"]] == [
        ("_1_weight", "get_attr"), ("_1_bias", "get_attr"), ("input_1", "placeholder"),
        ("flatten", "call_function"), ("linear", "call_function"), ("output", "output")]
    return out


FIRST = 5  # position of the first injected node
Doc = dict[str, Any]
X, BIAS = {"node": "flatten"}, {"node": "_1_bias"}  # a [B, 64] value and a [10] tensor


def call(name: str, target: str, *args: Any, **kwargs: Any) -> Doc:
    return {"name": name, "op": "call_function", "target": target, "args": list(args),
            "kwargs": kwargs, "layer": None}


def inject(*nodes: Doc) -> Callable[[Doc, Path], None]:
    """Insert ``nodes`` before the output node, which then returns the last of them."""
    def apply(doc: Doc, _: Path) -> None:
        graph = doc["graph"]["nodes"]
        graph[-1:-1] = list(nodes)
        graph[-1]["args"] = [[{"node": nodes[-1]["name"]}]]
    return apply


def from_file(doc: Doc, tmp: Path) -> None:
    path = str(tmp / "written-by-layout")
    inject(call("f", "aten.from_file.default", path, True, 64, dtype={"dtype": "uint8"}),
           call("c", "aten.copy_.default", {"node": "f"}, X))(doc, tmp)


def node_field(k: int, rest: str) -> str:
    return f"graph.nodes[{k}].{rest}"


T = node_field(FIRST, "target")
A = node_field(FIRST, "args")
HUGE = [12000, 12000]
select0 = call("s", "aten.select.int", BIAS, 0, 0)  # a 0-d tensor
square = call("v", "aten.view.default", {"node": "s"}, [1, 1])

CASES: list[tuple[str, Callable[[Doc, Path], None], tuple[str, ...]]] = [
    # side effects, files, allocations of a size of their own, ops outside the list
    ("from-file-and-copy", from_file, (T, "aten.from_file.default")),
    ("copy-in-place", inject(call("c", "aten.copy_.default", X, X)), (T, "aten.copy_.default")),
    ("relu-in-place", inject(call("r", "aten.relu_.default", X)), (T, "aten.relu_.default")),
    ("mm-of-ones", inject(call("o", "aten.ones.default", HUGE), call("m", "aten.mm.default",
                                                                     {"node": "o"}, {"node": "o"})),
     (node_field(FIRST + 1, "target"), "aten.mm.default")),
    ("mm", inject(call("m", "aten.mm.default", X, X)), (T, "aten.mm.default")),
    ("rand", inject(call("r", "aten.rand.default", [4])), (T, "aten.rand.default")),
    ("prims", inject(call("p", "prims.add.default", X, X)), (T, "prims.add.default")),
    ("dunder-call", inject(call("d", "aten.relu.__call__", X)), (T, "aten.relu.__call__")),
    ("dunder-class", inject(call("d", "aten.__class__.__base__", X)), (T, "__class__")),
    ("dunder-import", inject(call("d", "__import__", "os")), (T, "__import__")),
    ("two-part-name", inject(call("d", "aten.relu", X)), (T, "aten.relu")),
    # allowed ops, unbounded values or work
    ("ones-huge", inject(call("o", "aten.ones.default", HUGE, dtype={"dtype": "float32"})),
     (A, "aten.ones.default", "144000000 elements", "2**26")),
    ("matmul-of-ones", inject(call("o", "aten.ones.default", [8192, 8192]),
                              *(call(f"m{i}", "aten.matmul.default",
                                     {"node": f"m{i - 1}" if i else "o"}, {"node": "o"})
                                for i in range(2))),
     (node_field(FIRST + 1, "args"), "element operations", "2**32")),
    ("arange-huge", inject(call("a", "aten.arange.start", 0, 10**12)),
     (A, "aten.arange.start", "2**26")),
    ("zeros-batch-squared", inject(call("n", "aten.sym_size.int", X, 0),
                                   call("z", "aten.zeros.default", [{"node": "n"}, {"node": "n"}])),
     (node_field(FIRST + 1, "args"), "more than one dimension follows the batch")),
    ("full-pinned", inject(call("f", "aten.full.default", [4], 1.0, pin_memory=True)),
     (node_field(FIRST, "kwargs.pin_memory"),)),
    ("arange-of-tensor", inject(call("a", "aten.arange.default", X)),
     (node_field(FIRST, "args[0]"), "aten.sym_size.int")),
    ("expand-huge", inject(call("v", "aten.view.default", BIAS, [10, 1]),
                           call("e", "aten.expand.default", {"node": "v"}, [10, 10**7])),
     (node_field(FIRST + 1, "args"), "aten.expand.default", "2**26")),
    ("matmul-of-huge", inject(select0, square,
                              call("e", "aten.expand.default", {"node": "v"}, [4096, 4096]),
                              call("m", "aten.matmul.default", {"node": "e"}, {"node": "e"})),
     (node_field(FIRST + 3, "args"), "element operations", "2**32")),
    ("many-large-values", inject(select0, square,
                                 call("e", "aten.expand.default", {"node": "v"}, [2**13, 2**13]),
                                 *(call(f"r{i}", "aten.relu.default", {"node": f"r{i - 1}" if i
                                                                      else "e"})
                                   for i in range(5))),
     (node_field(FIRST + 2, "args"), "2**28")),
    ("outer-product-over-batch", inject(call("t", "aten.transpose.int", X, 0, 1),
                                        call("m", "aten.matmul.default", X, {"node": "t"})),
     (node_field(FIRST + 1, "args"), "more than one dimension follows the batch")),
    ("slice-of-batch", inject(call("s", "aten.slice.Tensor", X, 0, 0, 1)),
     (A, "aten.slice.Tensor", "follows the batch")),
    ("view-wrong-count", inject(call("v", "aten.view.default", X, [-1, 7])),
     (A, "aten.view.default", "cannot run")),
    ("view-fixed-batch", inject(call("v", "aten.view.default", X, [1, 64])),
     (A, "aten.view.default", "batch dimension must stay dynamic")),
    # wrong argument counts, kinds and references
    ("too-many-args", inject(call("r", "aten.relu.default", X, X)), (A, "at most 1 positional")),
    ("missing-arg", inject(call("s", "aten.softmax.int", X)), (A, "needs the argument(s) dim")),
    ("unknown-kwarg", inject(call("r", "aten.relu.default", X, inplace=True)),
     (node_field(FIRST, "kwargs.inplace"), "no argument 'inplace'")),
    ("string-operand", inject(call("a", "aten.add.Tensor", X, "1")),
     (node_field(FIRST, "args[1]"), "'other' of aten.add.Tensor")),
    ("dim-out-of-range", inject(call("s", "aten.softmax.int", X, 99)),
     (node_field(FIRST, "args[1]"), "a dimension")),
    ("batch-norm-training", inject(call("b", "aten.batch_norm.default", X, None, None, BIAS, BIAS,
                                        True, 0.1, 1e-5, False)),
     (node_field(FIRST, "args[5]"), "'training'")),
    ("gelu-unknown-mode", inject(call("g", "aten.gelu.default", X, approximate="exact")),
     (node_field(FIRST, "kwargs.approximate"),)),
    ("device-argument", inject(call("r", "aten.relu.default", X, device={"device": "cpu"})),
     (node_field(FIRST, "kwargs.device"),)),
    ("view-size-from-tensor", inject(call("v", "aten.view.default", X, [X])),
     (node_field(FIRST, "args[1][0]"), "aten.sym_size.int")),
    ("int-as-tensor", inject(call("n", "aten.sym_size.int", X, 0),
                             call("r", "aten.relu.default", {"node": "n"})),
     (node_field(FIRST + 1, "args[0]"), "not a tensor")),
    ("getitem-of-tensor", inject(call("g", "getitem", X, 0)),
     (node_field(FIRST, "args[0]"), "single value")),
    ("kernel-too-large", inject(call("v", "aten.view.default", X, [-1, 1, 64]),
                                call("p", "aten.max_pool1d.default", {"node": "v"}, [4096])),
     (node_field(FIRST + 1, "args[1]"), "1..1024")),
    # non-finite numbers in a float field
    ("nan-tagged", inject(call("l", "aten.leaky_relu.default", X, {"float": "nan"})),
     (node_field(FIRST, "args[1]"), "finite")),
    ("nan-bare", inject(call("l", "aten.leaky_relu.default", X, math.nan)),
     (node_field(FIRST, "args[1]"), '{"float": "nan"}')),
    ("inf-tagged", inject(call("h", "aten.hardtanh.default", X, {"float": "-inf"}, 1.0)),
     (node_field(FIRST, "args[1]"), "finite")),
]


def hostile_copy(base: Path, tmp_path: Path, edit: Callable[[Doc, Path], None]) -> Path:
    root = tmp_path / "layout"
    shutil.copytree(base, root)
    doc = json.loads((root / "layout.json").read_text())
    edit(doc, tmp_path)
    (root / "layout.json").write_text(json.dumps(doc, indent=1) + "\n")
    resign(root)
    return root


def assert_refused(root: Path, capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    """load_layout raises one line naming layout.json, the field and the fix; verify exits 2 with
    exactly that line; the emulator never builds."""
    with pytest.raises(LayoutError) as info:
        neftc.load_layout(root)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert f"'{root / 'layout.json'}'" in message and "re-run 'neftc compile'" in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    with pytest.raises(LayoutError):
        Emulator(root, sigma=0.0, ideal_periphery=True)
    capsys.readouterr()
    assert main(["verify", str(root), "--data", "digits", "--mc", "1"]) == 2
    out, err = capsys.readouterr()
    assert err == f"neftc verify: error: {message}\n", err
    assert "Traceback" not in out


def test_untouched_copy_loads(base, tmp_path) -> None:
    """The control: the re-signed base with an allowed node added loads and runs."""
    root = hostile_copy(base, tmp_path, inject(call("r", "aten.relu.default", {"node": "linear"})))
    emulator = Emulator(neftc.load_layout(root), sigma=0.0, ideal_periphery=True)
    assert emulator(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(("edit", "needles"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_hostile_graph_is_refused(base, tmp_path, capsys, edit, needles) -> None:
    root = hostile_copy(base, tmp_path, edit)
    assert_refused(root, capsys, *needles)
    assert not (tmp_path / "written-by-layout").exists()


@pytest.mark.parametrize("case", ["ones-huge", "view-fixed-batch"])
def test_inspect_checks_value_bounds_only_with_full(base, tmp_path, capsys, case) -> None:
    """``read_layout_doc`` (``neftc inspect``) runs every check but the value bounds, which need
    torch; ``inspect --full`` and every loader of a runnable ``Layout`` refuse the graph."""
    edit = next(c[1] for c in CASES if c[0] == case)
    root = hostile_copy(base, tmp_path, edit)
    with pytest.raises(LayoutError):
        neftc.load_layout(root)
    doc = reader.read_layout_doc(root)
    assert any(node.name == "o" or node.name == "v" for node in doc.graph.nodes)
    capsys.readouterr()
    assert main(["inspect", str(root)]) == 0
    out, _ = capsys.readouterr()
    assert "value bounds are checked by the commands that run it, or here with --full" in out
    assert main(["inspect", "--full", str(root)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("neftc inspect: error: ") and err.count("\n") == 1, err


def test_from_file_payload_writes_nothing(base, tmp_path, capsys) -> None:
    """The issue's payload: nothing is created by loading, verifying or emulating it."""
    root = hostile_copy(base, tmp_path, from_file)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_refused(root, capsys, T)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "written-by-layout").exists()


# ------------------------------------------------------------------ JSON limits, before parsing

def raw_payload(base: Path, tmp_path: Path, payload: str) -> Path:
    """A copy whose relu node's argument is ``payload``, spliced into the JSON text (the json
    module cannot write it), with SHA256SUMS recomputed by the writer's own function."""
    root = hostile_copy(base, tmp_path, inject(call("r", "aten.relu.default", "@PAYLOAD@")))
    text = (root / "layout.json").read_text().replace('"@PAYLOAD@"', payload)
    (root / "layout.json").write_text(text)
    (root / "SHA256SUMS").write_text(checksums({n: (root / n).read_bytes() for n in SIGNED}))
    return root


@pytest.mark.parametrize(("payload", "needles"), [
    pytest.param("[" * 100_000 + "]" * 100_000, ("more than 64 deep",), id="nested-100000"),
    pytest.param('{"node": ' * 5000 + '"x"' + "}" * 5000, ("more than 64 deep",),
                 id="objects-nested-5000"),
    pytest.param("7" * 5000, ("5000 digits", "at most 24 digits"), id="int-5000-digits"),
    pytest.param("-" + "1" * 30, ("30 digits",), id="int-30-digits"),
    pytest.param("1e999", ("too large for a float",), id="float-overflow"),
])
def test_json_limits_are_checked_before_parsing(base, tmp_path, capsys, payload, needles) -> None:
    assert_refused(raw_payload(base, tmp_path, payload), capsys, *needles)


def test_brackets_inside_strings_do_not_count(base, tmp_path) -> None:
    """Depth is counted outside strings: a name full of brackets is just a name."""
    root = hostile_copy(base, tmp_path, lambda doc, _: None)
    doc = json.loads((root / "layout.json").read_text())
    doc["source"]["path"] = '[{\\"' * 200
    (root / "layout.json").write_text(json.dumps(doc, indent=1) + "\n")
    resign(root)
    assert neftc.load_layout(root).doc.source.path == '[{\\"' * 200


def test_oversized_layout_json_is_refused_unread(base, tmp_path, capsys, monkeypatch) -> None:
    root = hostile_copy(base, tmp_path, lambda doc, _: None)
    size = (root / "layout.json").stat().st_size
    monkeypatch.setattr(reader, "MAX_LAYOUT_BYTES", size - 1)
    assert_refused(root, capsys, f"larger than {size - 1} bytes")
    monkeypatch.setattr(reader, "MAX_LAYOUT_BYTES", size)
    neftc.load_layout(root)


# ------------------------------------------------------------------ the compiler refuses first

class Flipped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flip(self.fc(x), [1])


class FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(1, -1))  # runs at batch 1 only


class BatchOuter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y @ y.transpose(0, 1)  # [B, B]: compares samples with each other


@pytest.mark.parametrize(("model", "needles"), [
    pytest.param(Flipped, ("node 'flip' calls aten.flip.default",
                           "not supported by the layout format", "section 7.1.1"),
                 id="op-outside-the-list"),
    pytest.param(BatchOuter, ("aten.matmul.default", "not supported by the layout format",
                              "more than one dimension follows the batch"), id="unbounded"),
    pytest.param(FixedBatch, ("aten.linear.default", "not supported by the layout format",
                              "batch dimension must stay dynamic"), id="fixed-batch"),
])
def test_compile_refuses_a_graph_the_format_cannot_hold(tmp_path, model, needles) -> None:
    with pytest.raises(PassError) as info:
        compile_module(model().eval(), torch.randn(1, 4), resolve_target("fefet_128x128"),
                       tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert not (tmp_path / "out").exists()


def test_large_weights_and_constants_are_not_values(tmp_path) -> None:
    """The bounds are on what the graph computes: a crossbar weight of more than 2**26 elements
    (held by levels.bin, like VGG-16's first classifier layer) is not refused for its size."""
    big = [2**13, 2**13 + 1]  # 2**26 + 2**13 elements
    graph = ops.GraphInput(
        input_shape=[1, big[1]],
        nodes=[SimpleNamespace(name="w", op="get_attr", target="fc_weight", args=[], kwargs={},
                               layer="fc"),
               SimpleNamespace(name="x", op="placeholder", target="x", args=[], kwargs={},
                               layer=None),
               SimpleNamespace(**call("fc", "aten.linear.default", {"node": "x"}, {"node": "w"},
                                      None) | {"layer": "fc"}),
               SimpleNamespace(name="output", op="output", target="output",
                               args=[[{"node": "fc"}]], kwargs={}, layer=None)],
        tensors={}, weights={"fc": big})
    ops.check_values(graph)
    # The work is bounded, though: 2**16 x (2**16 + 1) multiply-accumulates per sample.
    huge = [2**16, 2**16 + 1]
    heavy = ops.GraphInput(**{**graph.__dict__, "input_shape": [1, huge[1]],
                              "weights": {"fc": huge}})
    with pytest.raises(ops.OpError, match="element operations") as info:
        ops.check_values(heavy)
    assert info.value.node == 2  # the linear node
