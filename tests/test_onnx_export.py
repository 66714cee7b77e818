"""ONNX export: standard, checked ONNX whose onnxruntime outputs equal the emulator's."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neftc.cli.main import main
from neftc.driver.compiler import compile_module
from neftc.errors import LayoutError
from neftc.format.reader import load_layout
from neftc.runtime.emulator import Emulator


class EncoderBlock(nn.Module):
    """A pre-norm transformer encoder block: static Linear weights map to crossbars, attention's
    dynamic matmuls, softmax, LayerNorm and GELU stay digital."""

    def __init__(self, dim: int = 16, heads: int = 2, classes: int = 5) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff1, self.ff2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        attention = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(b, t, d))
        x = x + self.ff2(nn.functional.gelu(self.ff1(self.ln2(x))))
        return self.head(x.mean(dim=1))


def onnx_vs_emulator(layout_dir, x: torch.Tensor) -> float:
    layout = load_layout(layout_dir)
    path = layout_dir.parent / f"{layout_dir.name}.onnx"
    assert main(["export-onnx", str(layout_dir), "-o", str(path)]) == 0
    onnx.checker.check_model(onnx.load(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    emulator = Emulator(layout, sigma=0.0, ideal_periphery=True)  # noise-free, ideal periphery
    expected = emulator(x).numpy()
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


def test_residual_cnn_onnx_matches_emulator(tmp_path, residual_cnn, cnn_input, fefet, capsys):
    compile_module(residual_cnn, cnn_input[:1], fefet, tmp_path / "cnn")
    # Same float32 weights, different kernels (onnxruntime vs ATen): 1e-5 relative to the
    # largest output covers accumulation-order rounding.
    assert onnx_vs_emulator(tmp_path / "cnn", torch.randn(5, 3, 8, 8)) < 1e-5


def test_transformer_block_onnx_matches_emulator(tmp_path, fefet, capsys) -> None:
    torch.manual_seed(0)
    model = EncoderBlock().eval()
    result = compile_module(model, torch.randn(1, 6, 16), fefet, tmp_path / "enc")
    mapped = [layer.name for layer in result.doc.layers]
    assert mapped == ["qkv", "proj", "ff1", "ff2", "head"]  # attention matmuls stay digital
    # A batch of 3 although the layout was compiled with a batch of 1: the batch stays dynamic.
    assert onnx_vs_emulator(tmp_path / "enc", torch.randn(3, 6, 16)) < 1e-5


class Activations(nn.Module):
    """The activations, reductions and scans of neftc/flow/onnx_math_ops.py."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        h = self.fc(x)
        h = F.silu(h) + F.hardswish(h) + F.hardsigmoid(h) + F.leaky_relu(h, 0.2)
        h = h + F.elu(h, 0.7) + F.log_softmax(h, dim=-1)
        h = h + h.sum(dim=-1, keepdim=True) + h.amax(dim=1, keepdim=True)
        h = h + h.argmax(dim=-1, keepdim=True).to(torch.float32)
        first, second = h.split(3, dim=-1)  # becomes two slices (GPT-2's qkv split)
        return torch.cumsum(torch.cat([second, first], dim=-1), dim=-1)


def test_activations_reductions_and_scans_export(tmp_path, fefet) -> None:
    torch.manual_seed(0)
    compile_module(Activations().eval(), torch.randn(2, 6), fefet, tmp_path / "act")
    assert onnx_vs_emulator(tmp_path / "act", torch.randn(3, 6)) < 1e-5


def test_unsupported_op_is_named(tmp_path, fefet, monkeypatch) -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.cumsum(self.fc(x), dim=1)

    compile_module(Odd().eval(), torch.randn(1, 4), fefet, tmp_path / "odd")
    from neftc.flow import onnx_ops
    from neftc.flow.onnx_export import export_onnx

    # an allowed op without an ONNX handler (none is left among the test models' ops)
    monkeypatch.delitem(onnx_ops.HANDLERS, "aten.cumsum.default")

    with pytest.raises(LayoutError, match=r"aten\.cumsum\.default"):
        export_onnx(load_layout(tmp_path / "odd"), tmp_path / "odd.onnx")
    assert not (tmp_path / "odd.onnx").exists()


def test_size_arithmetic_exports(tmp_path, fefet) -> None:
    """A reshape by the dynamic batch times a constant (the layout's sym_mul) runs in
    onnxruntime at a batch the layout was not compiled with."""
    class TwoRowsPerSample(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(x).reshape(x.shape[0] * 2, -1, 6).reshape(x.shape[0], -1)

    torch.manual_seed(0)
    compile_module(TwoRowsPerSample().eval(), torch.randn(2, 4, 6), fefet, tmp_path / "rows")
    targets = {n.target for n in load_layout(tmp_path / "rows").doc.graph.nodes}
    assert "sym_mul" in targets
    assert onnx_vs_emulator(tmp_path / "rows", torch.randn(3, 4, 6)) < 1e-5
