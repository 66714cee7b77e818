"""Transformers and mobile CNNs: static-weight matmuls (Linear, 1x1 and depthwise convs, addmm,
matmul/bmm with a parameter operand) map to crossbars, activation x activation matmuls,
embeddings, LayerNorm, softmax, GELU and masks stay digital and ``inspect`` names them per op
kind, and tied weights are reported. Each model is exported with ``torch.export`` (batch
dynamic), compiled, replayed noise-off by the emulator (equal to the float model within the
8-bit quantisation error) and exported to ONNX (onnxruntime equal to the emulator).

The Hugging Face models are built from tiny ``transformers`` configurations (random weights,
no download); those tests skip without ``transformers``. BERT and DistilBERT take
``inputs_embeds`` here (float input); token-id inputs are the loader's and the layout's part.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_layout_ops import Masks, SharedWeights
from torch import nn

from neftc.driver.compiler import compile_model
from neftc.flow.onnx_export import export_onnx
from neftc.flow.summary import ACTIVATION_MATMUL, format_summary, summarize
from neftc.format.reader import load_layout
from neftc.runtime.emulator import Emulator
from neftc.targets import resolve_target

# relative L2 error of the noise-off emulator vs float (8-bit weights and ADCs); it grows with
# the number of crossbar layers in series: MobileNetV2 chains 53 of them (measured 0.060)
QUANT_REL = 0.05
DEEP_QUANT_REL = 0.1
ONNX_ABS = 1e-4  # onnxruntime vs the emulator (float32 rounding of the same arithmetic)


class TiedLM(nn.Module):
    """Input embeddings tied to the output layer, a bmm with a broadcast parameter, a parameter
    multiplied from the left, causal scaled-dot-product attention."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 8)
        self.proj = nn.Parameter(torch.randn(8, 8) / 3)
        self.mix = nn.Parameter(torch.randn(5, 5) / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 5, 8]
        ids = (x[:, :, 0].abs() * 3).long().clamp(0, 11)  # integer ids: digital ops only
        h = x + self.emb(ids)
        h = torch.bmm(h, self.proj.unsqueeze(0).expand(h.shape[0], 8, 8))
        h = self.mix @ h
        q = h.unsqueeze(1)
        h = F.scaled_dot_product_attention(q, q, q, is_causal=True).squeeze(1)
        return F.linear(h, self.emb.weight)


def compile_exported(model: nn.Module, example: torch.Tensor, root: Path, name: str) -> Path:
    batch = torch.export.Dim("batch", min=1, max=1024)
    archive = root / f"{name}.pt2"
    torch.export.save(torch.export.export(model.eval(), (example,),
                                          dynamic_shapes=({0: batch},)), archive)
    compile_model(archive, resolve_target("fefet_128x128"), root / name)
    return root / name


def check_replay(model: nn.Module, layout_dir: Path, shape: tuple[int, ...],
                 tmp_path: Path, bound: float = QUANT_REL, tokens: int = 0) -> None:
    """Noise-off emulator == float model within ``bound``; onnxruntime == emulator. The input
    is float, or token ids below ``tokens`` when it is given."""
    import onnxruntime

    layout = load_layout(layout_dir)
    gen = torch.Generator().manual_seed(7)
    x = torch.randint(0, tokens, (3, *shape), generator=gen) if tokens else \
        torch.randn(3, *shape, generator=gen)
    with torch.no_grad():
        ref, got = model.eval()(x), Emulator(layout, sigma=0.0, ideal_periphery=True)(x)
    rel = float((got - ref).norm() / ref.norm())
    assert rel < bound, f"emulator vs float: relative error {rel:.3g}"
    export_onnx(layout, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(out - got.numpy()).max() < ONNX_ABS


def test_static_matmuls_map_attention_stays_digital_tied_weights_reported(tmp_path) -> None:
    torch.manual_seed(0)
    model = TiedLM()
    layout_dir = compile_exported(model, torch.randn(2, 5, 8), tmp_path, "tied_lm")
    summary = summarize(load_layout(layout_dir).doc)
    assert {(r.name, r.op) for r in summary.layers} == {
        ("proj", "linear"), ("mix", "linear"), ("emb", "linear")}
    digital = {c.kind: c.count for c in summary.digital_ops}
    # q @ k^T and softmax(.) @ v: both operands are activations
    assert digital[ACTIVATION_MATMUL] == 2
    assert digital["embedding"] == 1 and digital["softmax"] == 1
    assert "bmm" not in digital and "scaled_dot_product_attention" not in digital
    (tied,) = summary.tied_weights
    assert tied.layers == ["emb"] and tied.digital == ["emb.weight"]
    text = format_summary(summary)
    assert f"2 {ACTIVATION_MATMUL}" in text and "1 embedding" in text
    assert "also stored as the digital tensor emb.weight" in text
    check_replay(model, layout_dir, (5, 8), tmp_path)


def test_linear_called_twice_is_reported_as_programmed_twice(tmp_path) -> None:
    torch.manual_seed(0)
    model = SharedWeights()
    layout_dir = compile_exported(model, torch.randn(2, 8), tmp_path, "shared")
    summary = summarize(load_layout(layout_dir).doc)
    (tied,) = summary.tied_weights
    assert tied.layers == ["fc", "fc#2"] and tied.digital == []
    assert "read by layer(s) fc, fc#2; programmed 2 time(s)" in format_summary(summary)
    check_replay(model, layout_dir, (8,), tmp_path)


def test_mask_lookup_and_padding_ops_replay_and_export(tmp_path) -> None:
    """Comparisons, where/masked_fill, casts, embedding and gather lookups, constant and
    reflect padding and tanh GELU: the emulator equals the float model, onnxruntime the
    emulator."""
    torch.manual_seed(0)
    model = Masks()
    layout_dir = compile_exported(model, torch.randn(2, 6, 8), tmp_path, "masks")
    check_replay(model, layout_dir, (6, 8), tmp_path)


# ------------------------------------------------------------------ Hugging Face models

class Logits(nn.Module):
    """A transformers model returning plain logits (from pixels or from ``inputs_embeds``)."""

    def __init__(self, model: nn.Module, embeds: bool = False) -> None:
        super().__init__()
        self.model, self.embeds = model, embeds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(inputs_embeds=x) if self.embeds else self.model(x)
        return out.logits


def _spread(model: nn.Module) -> nn.Module:
    """Kaiming weights and random BatchNorm statistics: HF's initialisation of deep CNNs gives
    logits near 1e-26, where a relative error means nothing."""
    gen = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.data = torch.randn(module.weight.shape, generator=gen) \
                * (2 / fan_in) ** 0.5
        elif isinstance(module, nn.BatchNorm2d):
            module.running_mean = torch.randn(module.num_features, generator=gen) * 0.1
            module.running_var = torch.rand(module.num_features, generator=gen) + 0.5
    return model


def _hf(name: str) -> tuple[nn.Module, tuple[int, ...], set[str]]:
    """(model, input shape without the batch, digital op kinds it must show)."""
    t = pytest.importorskip("transformers")
    attention = {ACTIVATION_MATMUL, "softmax", "layer_norm", "gelu"}
    if name == "bert":
        cfg = t.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=32, num_labels=3)
        return (Logits(t.BertForSequenceClassification(cfg), embeds=True), (8, 32),
                attention | {"embedding"})
    if name == "distilbert":
        cfg = t.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                 max_position_embeddings=32, num_labels=3)
        return (Logits(t.DistilBertForSequenceClassification(cfg), embeds=True), (8, 32),
                attention | {"embedding"})
    if name == "vit":
        cfg = t.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64, num_labels=5)
        return Logits(t.ViTForImageClassification(cfg)), (3, 16, 16), attention
    if name == "mobilenetv2":
        cfg = t.MobileNetV2Config(image_size=32, depth_multiplier=0.25, num_labels=4)
        return (_spread(Logits(t.MobileNetV2ForImageClassification(cfg))), (3, 32, 32),
                {"pad", "hardtanh", "batch_norm"})
    if name == "convnext":
        cfg = t.ConvNextConfig(image_size=32, hidden_sizes=[8, 16], depths=[1, 1],
                               num_stages=2, num_labels=4, patch_size=2)
        return Logits(t.ConvNextForImageClassification(cfg)), (3, 32, 32), {"layer_norm", "gelu"}
    cfg = t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4)
    return _spread(Logits(t.ResNetForImageClassification(cfg))), (3, 32, 32), {"add"}


MODELS: list[str] = ["bert", "distilbert", "vit", "mobilenetv2", "convnext", "resnet"]


@pytest.mark.parametrize("name", MODELS)
def test_hugging_face_model_compiles_replays_and_exports(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model, shape, kinds = _hf(name)
    layout_dir = compile_exported(model.eval(), torch.randn(2, *shape), tmp_path, name)
    summary = summarize(load_layout(layout_dir).doc)
    digital = {c.kind for c in summary.digital_ops}
    assert kinds <= digital, f"digital ops {sorted(digital)} lack {sorted(kinds - digital)}"
    convs = [r for r in summary.layers if r.op == "conv2d"]
    if name == "mobilenetv2":  # depthwise (one input channel per group) and 1x1 convs map
        assert any(r.weight_shape[1] == 1 and r.weight_shape[0] > 1 for r in convs)
        assert any(r.weight_shape[2:] == [1, 1] for r in convs)
    check_replay(model, layout_dir, shape, tmp_path,
                 DEEP_QUANT_REL if name == "mobilenetv2" else QUANT_REL)


def test_bert_token_ids_reach_only_digital_ops(tmp_path) -> None:
    """With int64 token ids as its input, BERT's ids feed the embedding lookups (digital) and
    no crossbar: the encoder's Linear layers map, the lookups stay digital."""
    t = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = t.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64,
                       max_position_embeddings=32, num_labels=3)
    model = Logits(t.BertForSequenceClassification(cfg))
    layout_dir = compile_exported(model, torch.randint(0, 100, (2, 8)), tmp_path, "bert_ids")
    doc = load_layout(layout_dir).doc
    (placeholder,) = [n for n in doc.graph.nodes if n.op == "placeholder"]
    readers = [n for n in doc.graph.nodes if n.op == "call_function" and any(
        a == {"node": placeholder.name} for a in n.args)]
    assert readers and all(n.layer is None for n in readers)
    assert "embedding" in {n.target.split(".")[1] for n in readers}
    assert len(doc.layers) == 14  # 2 x (q, k, v, out, up, down) + pooler + classifier
    check_replay(model, layout_dir, (8,), tmp_path, tokens=100)
