"""Models from the ecosystem compile as they are (issue 12): tiny Hugging Face `transformers` models
built from configurations (random weights, nothing downloaded), saved with `torch.export` exactly
as a user would (their ModelOutput returned as is), then, for each family:

export -> `neftc compile` -> the noise-off emulator equals the float model within the quantisation
error -> `neftc export-onnx` equals the emulator in onnxruntime -> `neftc verify` runs on a small
synthetic dataset.

`transformers` is a test extra (pyproject `[dev]`); without it the module is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from neftc.cli.main import main  # noqa: E402
from neftc.format.reader import load_layout  # noqa: E402
from neftc.runtime import Emulator  # noqa: E402

VOCAB, SEQ, BATCH = 100, 8, 2


@dataclass(frozen=True)
class Family:
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[torch.Generator, int], dict[str, torch.Tensor]]  # name -> tensor, batch n


def _trained_scale(model: torch.nn.Module) -> torch.nn.Module:
    """Weights of a trained network's scale (He init, BatchNorm statistics of unit activations):
    transformers' own init (std 0.02 everywhere) makes a deep CNN's logits ~1e-27, where a
    relative error means nothing."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = module.weight[0].numel()
            with torch.no_grad():
                module.weight.normal_(0, (2 / fan_in) ** 0.5, generator=generator)
    return model


def _tokens(generator: torch.Generator, n: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones(n, SEQ, dtype=torch.int64)}


def _images(size: int) -> Callable[[torch.Generator, int], dict[str, torch.Tensor]]:
    def draw(generator: torch.Generator, n: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.randn(n, 3, size, size, generator=generator)}
    return draw


FAMILIES: dict[str, Family] = {
    "encoder-transformer (BERT)": Family(
        lambda: transformers.BertForSequenceClassification(transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=32, num_labels=3)),
        _tokens),
    "vision-transformer (ViT)": Family(
        lambda: transformers.ViTForImageClassification(transformers.ViTConfig(
            image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, num_labels=5)),
        _images(16)),
    "mobile-cnn (MobileNetV2)": Family(
        lambda: _trained_scale(transformers.MobileNetV2ForImageClassification(
            transformers.MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.25,
                                           num_labels=4))),
        _images(32)),
    "residual-cnn (ResNet)": Family(
        lambda: _trained_scale(transformers.ResNetForImageClassification(transformers.ResNetConfig(
            num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
            layer_type="basic", num_labels=4))),
        _images(32)),
}

# Bound of the noise-off emulator (ideal periphery) against the float model: relative L2 error of
# the logits, from 8-bit weights (per-layer max-abs scales) through every crossbar layer. Measured
# (fefet_128x128, batch 3, two padded tokens): BERT 0.004, ViT 0.007, ResNet 0.003, MobileNetV2
# 0.068 (53 crossbar layers, 1x1 and depthwise convs with few weights per scale); the bounds leave
# a margin of at least 1.7x.
BOUND = {"encoder-transformer (BERT)": 0.02, "vision-transformer (ViT)": 0.02,
         "mobile-cnn (MobileNetV2)": 0.12, "residual-cnn (ResNet)": 0.02}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def compiled(request, tmp_path_factory) -> tuple[str, torch.nn.Module, Path]:
    """The family's model, exported as a user would (batch 2, the ModelOutput as is, no
    dynamic shapes) and compiled with the CLI."""
    name = request.param
    family = FAMILIES[name]
    torch.manual_seed(0)  # transformers initialises weights from the global generator
    model = family.build().eval()
    example = family.inputs(torch.Generator().manual_seed(1), BATCH)
    names = list(example)
    program = torch.export.export(model, (example[names[0]],),
                                  {k: example[k] for k in names[1:]})
    root = tmp_path_factory.mktemp("hf")
    torch.export.save(program, root / "model.pt2")
    assert main(["compile", str(root / "model.pt2"), "--target", "fefet_128x128",
                 "-o", str(root / "layout"), "-q"]) == 0
    return name, model, root


def _float_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    names = list(inputs)
    with torch.no_grad():
        return model(inputs[names[0]], **{k: inputs[k] for k in names[1:]}).logits


def test_layout_records_the_model_inputs(compiled) -> None:
    name, _, root = compiled
    layout = load_layout(root / "layout")
    example = FAMILIES[name].inputs(torch.Generator().manual_seed(1), BATCH)
    assert [i.name for i in layout.doc.graph.inputs] == list(example)
    for record, tensor in zip(layout.doc.graph.inputs, example.values()):
        assert record.dtype == str(tensor.dtype).removeprefix("torch.")
        assert record.shape[1:] == list(tensor.shape[1:])
    if name.startswith("encoder"):  # token ids: the range of the embedding table
        assert (layout.doc.graph.inputs[0].low, layout.doc.graph.inputs[0].high) == (0, VOCAB)


def test_noise_off_emulator_equals_the_float_model(compiled) -> None:
    """At a batch the export never saw (3), within the quantisation bound."""
    name, model, root = compiled
    inputs = FAMILIES[name].inputs(torch.Generator().manual_seed(2), 3)
    if "attention_mask" in inputs:  # padding: the last two tokens of every sequence masked
        inputs["attention_mask"][:, -2:] = 0
    emulator = Emulator(load_layout(root / "layout"), sigma=0.0, ideal_periphery=True)
    out = emulator(tuple(inputs.values()))
    ref = _float_logits(model, inputs)
    error = float((out - ref).norm() / ref.norm())
    assert error < BOUND[name], f"{name}: relative error {error:.4f}"


def test_onnx_export_equals_the_emulator(compiled) -> None:
    ort = pytest.importorskip("onnxruntime")
    name, _, root = compiled
    assert main(["export-onnx", str(root / "layout"), "-o", str(root / "model.onnx")]) == 0
    inputs = FAMILIES[name].inputs(torch.Generator().manual_seed(3), 3)
    emulator = Emulator(load_layout(root / "layout"), sigma=0.0, ideal_periphery=True)
    expected = emulator(tuple(inputs.values())).detach().numpy()
    session = ort.InferenceSession(str(root / "model.onnx"))
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs.values())}
    (got,) = session.run(None, feed)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * scale)


def test_verify_runs_on_a_small_synthetic_dataset(compiled, tmp_path, capsys) -> None:
    name, _, root = compiled
    inputs = FAMILIES[name].inputs(torch.Generator().manual_seed(4), 16)
    # a stored test split (x_test, y_test, and each further input as NAME_test): all 16 are tested
    arrays = {f"{'x' if k == 0 else key}_test": value.numpy()
              for k, (key, value) in enumerate(inputs.items())}
    arrays.update({key.replace("_test", "_train"): value for key, value in arrays.items()})
    classes = load_layout(root / "layout").doc.layers[-1].matrix_cols
    arrays["y_test"] = arrays["y_train"] = np.arange(16) % classes
    np.savez(tmp_path / "data.npz", **arrays)
    capsys.readouterr()
    assert main(["verify", str(root / "layout"), "--data", str(tmp_path / "data.npz"),
                 "--mc", "2", "--ideal-periphery", "--no-report", "--json", "-q"]) == 0
    report = __import__("json").loads(capsys.readouterr().out)
    assert report["test_samples"] == 16
