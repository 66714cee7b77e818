"""Token models through every command (issue 12): a model whose inputs are int64 token ids and an
attention mask is fine-tuned, compiled and verified on an ``.npz`` of token ids; ``train`` trains
the zoo's text model on token ids, refuses them for an image model, and trains image models on
integer images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from neftc.cli.main import main
from neftc.format.reader import load_layout

VOCAB, SEQ, CLASSES = 50, 8, 3


class BagOfTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return self.head(tokens.sum(1) / attention_mask.sum(1, keepdim=True))


@pytest.fixture()
def token_files(tmp_path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, SEQ))
    mask = torch.ones(2, SEQ, dtype=torch.int64)
    batch = torch.export.Dim("batch")
    program = torch.export.export(BagOfTokens().eval(), (ids, mask),
                                  dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(program, tmp_path / "tokens.pt2")
    rng = np.random.default_rng(0)
    masks = np.ones((40, SEQ), dtype=np.int64)
    masks[:, -2:] = 0
    np.savez(tmp_path / "tokens.npz", x=rng.integers(0, VOCAB, (40, SEQ)),
             attention_mask=masks, y=np.arange(40) % CLASSES)
    return tmp_path / "tokens.pt2", tmp_path / "tokens.npz"


def test_finetune_compile_verify_on_token_data(token_files, tmp_path, capsys) -> None:
    model, data = token_files
    tuned, layout = tmp_path / "tuned.pt2", tmp_path / "layout"
    assert main(["finetune", str(model), "--target", "fefet_128x128", "--neft", "nit",
                 "--data", str(data), "--neft-epochs", "1", "-o", str(tuned), "-q"]) == 0
    assert main(["compile", str(tuned), "--target", "fefet_128x128", "-o", str(layout),
                 "-q"]) == 0
    inputs = load_layout(layout).doc.graph.inputs
    assert [(i.name, i.dtype, i.low, i.high) for i in inputs] == [
        ("input_ids", "int64", 0, VOCAB), ("attention_mask", "int64", 0, 2)]
    capsys.readouterr()
    assert main(["verify", str(layout), "--data", str(data), "--mc", "2", "--no-report",
                 "--json", "-q", "--split"]) == 0  # tuned on this file: score its test part
    report = json.loads(capsys.readouterr().out)
    assert report["test_samples"] == 10  # the fixed 25 % test split of 40 samples


def test_token_ids_out_of_range_are_refused(token_files, tmp_path, capfd) -> None:
    model, data = token_files
    layout = tmp_path / "layout"
    assert main(["compile", str(model), "--target", "fefet_128x128", "-o", str(layout),
                 "-q"]) == 0
    with np.load(data) as raw:
        arrays = dict(raw)
    arrays["x"][0, 0] = VOCAB  # one id past the embedding table
    np.savez(tmp_path / "bad.npz", **arrays)
    capfd.readouterr()
    assert main(["verify", str(layout), "--data", str(tmp_path / "bad.npz"), "--mc", "1",
                 "--no-report", "-q"]) == 2
    err = capfd.readouterr().err
    assert "input_ids" in err and str(VOCAB) in err and "Traceback" not in err


def test_train_bow_on_token_data_and_image_models_on_integer_images(token_files, tmp_path,
                                                                   capfd) -> None:
    """``train bow`` (the zoo's text model) trains on token ids and compiles with an int64
    input; an image model refuses token ids with the fix; integer images train an image model."""
    _, data = token_files
    model, layout = tmp_path / "bow.pt2", tmp_path / "bow"
    assert main(["train", "bow", "--data", str(data), "--epochs", "2", "-o", str(model),
                 "-q"]) == 0
    assert main(["compile", str(model), "--target", "fefet_128x128", "-o", str(layout),
                 "-q"]) == 0
    (ids,) = load_layout(layout).doc.graph.inputs
    assert (ids.dtype, ids.shape[1:], ids.low, ids.high) == ("int64", [SEQ], 0, VOCAB)
    capfd.readouterr()
    assert main(["train", "mlp", "--data", str(data), "--epochs", "1", "-o",
                 str(tmp_path / "m.pt2"), "-q"]) == 2
    err = capfd.readouterr().err
    assert "token ids" in err and "'bow'" in err and "Traceback" not in err
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "images.npz", x=rng.integers(0, 256, (40, 1, 8, 8)).astype(np.uint8),
             y=np.arange(40) % CLASSES)
    assert main(["train", "mlp", "--data", str(tmp_path / "images.npz"), "--epochs", "1",
                 "-o", str(tmp_path / "m.pt2"), "-q"]) == 0


def test_a_module_in_memory_records_the_embedding_range(tmp_path) -> None:
    """The token range is the embedding's rows (the frontend's rule), not the example's values:
    example ids below 10 do not make ids 10..49 invalid."""
    from neftc.driver.compiler import compile_module
    from neftc.targets import resolve_target

    class Ids(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, 8)
            self.head = nn.Linear(8, CLASSES)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(ids).mean(1))

    example = torch.randint(0, 10, (2, SEQ), generator=torch.Generator().manual_seed(0))
    result = compile_module(Ids().eval(), example, resolve_target("fefet_128x128"))
    (ids,) = result.doc.graph.inputs
    assert (ids.dtype, ids.low, ids.high) == ("int64", 0, VOCAB)
