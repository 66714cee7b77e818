"""Third-party Hugging Face architectures beyond the conformance suite (issue 12's check): each is
built tiny from its `transformers` configuration (random weights rescaled to a trained network's
He-init scale, nothing downloaded), exported as a user would (batch 2, its ModelOutput as is),
compiled for fefet_128x128, replayed noise-off against the float model at batch 3 (relative L2
error of the logits) and exported to ONNX, which onnxruntime runs against the emulator (max error
relative to the largest logit). Needs `transformers` and `onnxruntime` (the `[dev]` extras).

    python scripts/hf_architectures.py [NAME ...]      # default: all; results in docs/models.md
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import transformers as T

from neftc.cli.main import main
from neftc.format.reader import load_layout
from neftc.runtime import Emulator

VOCAB = 100
TEXT = {"vocab_size": VOCAB, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 40, "num_labels": 3}
Inputs = Callable[[int, torch.Generator], dict[str, torch.Tensor]]


def tokens(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, VOCAB, (n, 8), generator=generator),
            "attention_mask": torch.ones(n, 8, dtype=torch.long)}


def images(size: int) -> Inputs:
    return lambda n, generator: {"pixel_values": torch.randn(n, 3, size, size,
                                                             generator=generator)}


MODELS: dict[str, tuple[Callable[[], torch.nn.Module], Inputs]] = {
    "roberta": (lambda: T.RobertaForSequenceClassification(T.RobertaConfig(
        hidden_size=32, **TEXT)), tokens),
    "albert": (lambda: T.AlbertForSequenceClassification(T.AlbertConfig(
        embedding_size=16, hidden_size=32, **TEXT)), tokens),
    "electra": (lambda: T.ElectraForSequenceClassification(T.ElectraConfig(
        embedding_size=16, hidden_size=32, **TEXT)), tokens),
    "gpt2": (lambda: T.GPT2ForSequenceClassification(T.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32, num_labels=3,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, use_cache=False)), tokens),
    "deit": (lambda: T.DeiTForImageClassification(T.DeiTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=5)), images(16)),
    "regnet": (lambda: T.RegNetForImageClassification(T.RegNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8,
        num_labels=4)), images(32)),
    "mobilevit": (lambda: T.MobileViTForImageClassification(T.MobileViTConfig(
        image_size=32, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 16, 16, 16, 16, 32],
        num_attention_heads=2, num_labels=4)), images(32)),
}


def he_scale(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            with torch.no_grad():
                module.weight.normal_(0, (2 / module.weight[0].numel()) ** 0.5)
    return model


def quiet(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        return main(argv), err.getvalue().strip()


def check(name: str) -> str:
    build, inputs = MODELS[name]
    torch.manual_seed(0)
    model = he_scale(build()).eval()
    example = inputs(2, torch.Generator().manual_seed(1))
    keys = list(example)
    root = Path(tempfile.mkdtemp())
    program = torch.export.export(model, (example[keys[0]],), {k: example[k] for k in keys[1:]})
    torch.export.save(program, root / "model.pt2")
    rc, err = quiet(["compile", str(root / "model.pt2"), "--target", "fefet_128x128",
                     "-o", str(root / "layout"), "-q"])
    if rc:
        return f"{name}: refused: {err.splitlines()[-1]}"
    batch = inputs(3, torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(batch[keys[0]], **{k: batch[k] for k in keys[1:]}).logits
        emulator = Emulator(load_layout(root / "layout"), sigma=0.0, ideal_periphery=True)
        out = emulator(tuple(batch.values()))
    error = float((out - ref).norm() / ref.norm())
    rc, err = quiet(["export-onnx", str(root / "layout"), "-o", str(root / "model.onnx")])
    if rc:
        return f"{name}: noise-off error {error:.4f}; ONNX refused: {err.splitlines()[-1]}"
    session = ort.InferenceSession(str(root / "model.onnx"))
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), batch.values())}
    got = session.run(None, feed)[0]
    onnx_error = np.abs(got - out.numpy()).max() / np.abs(out.numpy()).max()
    return f"{name}: noise-off error {error:.4f}; ONNX vs emulator {onnx_error:.1e}"


if __name__ == "__main__":
    for name in sys.argv[1:] or list(MODELS):
        print(check(name), flush=True)
