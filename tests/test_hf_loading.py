"""Loading what torch.export saved: Hugging Face ModelOutputs, dataclass and namedtuple outputs,
several recorded inputs with their dtypes, and programs exported with a fixed batch.

The Hugging Face models are tiny, built from configurations (random weights, no download).
Every error path ends in one ``neftc compile: error:`` line, no traceback and no torch log line.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from neftc.cli.main import main
from neftc.frontend.loader import load_model

transformers = pytest.importorskip("transformers")

TOL = 1e-4  # the loaded graph against the eager model: float summation order only


def compile_err(capfd, path: Path, out: Path) -> tuple[int, str]:
    code = main(["compile", str(path), "--target", "fefet_128x128", "-o", str(out)])
    return code, capfd.readouterr().err


def assert_one_error_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("neftc compile: error: "), err
    for banned in ("Traceback", "tlparse", "WARNING", "W1", "W0"):
        assert banned not in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def bert(**config: object) -> nn.Module:
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=32, num_labels=3, **config)
    return transformers.BertForSequenceClassification(cfg).eval()


def vit() -> nn.Module:
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                                 num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, num_labels=5)
    return transformers.ViTForImageClassification(cfg).eval()


def mobilenet() -> nn.Module:
    cfg = transformers.MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.25,
                                         num_labels=4)
    return transformers.MobileNetV2ForImageClassification(cfg).eval()


def token_inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (batch, 8), generator=generator)
    return ids, torch.ones(batch, 8, dtype=torch.long)


@pytest.fixture(scope="module")
def hf_archives(tmp_path_factory) -> dict[str, tuple[nn.Module, Path]]:
    """Each model exported as users do (batch 2, static shapes) and saved: ModelOutputs."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    archives = {}
    ids, mask = token_inputs(2)
    for name, model, args, kwargs in (
            ("bert", bert(), (ids,), {"attention_mask": mask}),
            ("vit", vit(), (torch.randn(2, 3, 16, 16),), {}),
            ("mobilenet", mobilenet(), (torch.randn(2, 3, 32, 32),), {})):
        path = root / f"{name}.pt2"
        torch.export.save(torch.export.export(model, args, kwargs), path)
        archives[name] = (model, path)
    return archives


def eager_logits(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        if len(inputs) == 2:
            return model(inputs[0], attention_mask=inputs[1]).logits
        return model(*inputs).logits


@pytest.mark.parametrize("name", ["bert", "vit", "mobilenet"])
def test_model_output_archive_loads_at_any_batch(name, hf_archives) -> None:
    """The archive returns a ModelOutput; the loaded graph computes its logits, at the exported
    batch (2), at batch 1 and at batch 5."""
    model, path = hf_archives[name]
    loaded = load_model(path)
    assert any("fixed batch of 2" in note for note in loaded.notes), loaded.notes
    for batch in (2, 1, 5):
        inputs = tuple(torch.cat([t] * 5)[:batch] for t in loaded.example_inputs)
        if name == "bert":
            inputs = token_inputs(batch, seed=batch)
        with torch.no_grad():
            got = loaded.gm(*inputs)
        want = eager_logits(model, inputs)
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=TOL, atol=TOL), (got - want).abs().max()


def test_recorded_inputs_and_token_examples(hf_archives) -> None:
    loaded = load_model(hf_archives["bert"][1], seed=3)
    ids_spec, mask_spec = loaded.inputs
    assert (ids_spec.name, ids_spec.dtype, ids_spec.shape) == ("input_ids", "int64", (2, 8))
    assert (ids_spec.low, ids_spec.high) == (0, 100)  # the word embedding's num_embeddings
    assert (mask_spec.name, mask_spec.dtype, mask_spec.low, mask_spec.high) == \
        ("attention_mask", "int64", 0, 2)
    ids, mask = loaded.example_inputs
    assert ids.dtype == torch.int64 and ids.shape == (2, 8)
    assert int(ids.min()) >= 0 and int(ids.max()) < 100 and len(ids.unique()) > 1
    assert mask.dtype == torch.int64 and bool((mask == 1).all())
    again = load_model(hf_archives["bert"][1], seed=3).example_inputs[0]
    assert torch.equal(ids, again)  # drawn from the seed's generator
    image = load_model(hf_archives["vit"][1]).inputs[0]
    assert (image.name, image.dtype, image.shape) == ("pixel_values", "float32", (2, 3, 16, 16))


def test_loading_imports_nothing_from_the_archive(hf_archives) -> None:
    """A fresh process loads the ModelOutput archive without importing transformers."""
    script = ("import sys; from neftc.frontend.loader import load_model; "
              f"m = load_model({str(hf_archives['bert'][1])!r}); "
              "assert m.gm(*m.example_inputs).shape == (2, 3); "
              "print(sorted(k for k in sys.modules if k.split('.')[0] == 'transformers'))")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_several_outputs_choose_logits(tmp_path) -> None:
    torch.manual_seed(0)
    model = bert(output_hidden_states=True)
    ids, mask = token_inputs(2)
    path = tmp_path / "hidden.pt2"
    torch.export.save(torch.export.export(model, (ids,), {"attention_mask": mask}), path)
    loaded = load_model(path)
    note = next(n for n in loaded.notes if n.startswith("output:"))
    assert "'logits'" in note and "hidden_states[0]" in note, note
    with torch.no_grad():
        assert torch.allclose(loaded.gm(ids, mask), eager_logits(model, (ids, mask)),
                              rtol=TOL, atol=TOL)


@dataclasses.dataclass
class Scores:
    scores: torch.Tensor
    features: torch.Tensor


Pair = collections.namedtuple("Pair", ["logits", "features"])


class TwoOutputs(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.kind = kind

    def forward(self, x: torch.Tensor) -> object:
        y = self.fc(x)
        return Scores(y, x * 2) if self.kind == "dataclass" else Pair(y, x * 2)


def test_dataclass_and_namedtuple_outputs(capfd, tmp_path) -> None:
    """A registered dataclass without a 'logits' field is refused naming its leaves; a
    registered namedtuple with one loads and returns it."""
    torch.export.register_dataclass(Scores, serialized_type_name="some_package.Scores")
    torch.utils._pytree._register_namedtuple(Pair, serialized_type_name="some_package.Pair")
    paths, models = {}, {}
    for kind in ("dataclass", "namedtuple"):
        paths[kind] = tmp_path / f"{kind}.pt2"
        models[kind] = TwoOutputs(kind).eval()
        program = torch.export.export(models[kind], (torch.randn(2, 6),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, paths[kind])
    code, err = compile_err(capfd, paths["dataclass"], tmp_path / "out")
    assert_one_error_line(code, err, "2 tensors", "scores", "features", "'logits'")
    loaded = load_model(paths["namedtuple"])
    x = torch.randn(4, 6)
    assert loaded.notes and "'logits'" in loaded.notes[0]
    with torch.no_grad():
        assert torch.allclose(loaded.gm(x), models["namedtuple"].fc(x), rtol=TOL, atol=TOL)


def flip_in_program(src: Path, dst: Path, old: bytes, new: bytes) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("models/model.json"):
                assert old in data
                data = data.replace(old, new, 1)
            zout.writestr(name, data)
    return dst


def test_damaged_model_output_archives_say_damaged(capfd, tmp_path, hf_archives) -> None:
    source = hf_archives["bert"][1]
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    assert_one_error_line(*compile_err(capfd, truncated, tmp_path / "out"), "damaged")
    unknown_op = flip_in_program(source, tmp_path / "op.pt2", b"torch.ops.aten.gelu.default",
                                 b"torch.ops.aten.no_such_op.default")
    assert_one_error_line(*compile_err(capfd, unknown_op, tmp_path / "out"),
                          "damaged torch.export archive")
    bad_spec = flip_in_program(source, tmp_path / "spec.pt2", b'"out_spec": "[1, {',
                               b'"out_spec": "[1, {{')
    assert_one_error_line(*compile_err(capfd, bad_spec, tmp_path / "out"), "malformed")
    assert not (tmp_path / "out").exists()


class Flatten(nn.Module):
    """The README's kind of model: ``x.reshape(x.shape[0], -1)`` before the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.fc(x.reshape(x.shape[0], -1))


class BatchMixer(Flatten):
    """Not per-sample: subtracts the batch mean, so no other batch size is equivalent."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.fc((x - x.mean(0, keepdim=True)).reshape(x.shape[0], -1))


def test_batch_one_export_made_batch_agnostic(capfd, tmp_path) -> None:
    torch.manual_seed(0)
    model = Flatten().eval()
    path = tmp_path / "one.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 8, 8),)), path)
    loaded = load_model(path)
    assert loaded.inputs[0].shape == (1, 3, 8, 8)
    assert any("fixed batch of 1" in note for note in loaded.notes), loaded.notes
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.gm(x), model(x), rtol=TOL, atol=TOL)
    out = tmp_path / "out"
    code, err = compile_err(capfd, path, out)
    assert code == 0, err
    assert (out / "layout.json").exists()


def test_batch_dependent_export_refused_with_the_fix(capfd, tmp_path) -> None:
    path = tmp_path / "mixer.pt2"
    torch.export.save(torch.export.export(BatchMixer().eval(), (torch.randn(2, 3, 8, 8),)), path)
    code, err = compile_err(capfd, path, tmp_path / "out")
    assert_one_error_line(code, err, "fixed to 2", "dynamic_shapes=", "Dim('batch')")
    assert not (tmp_path / "out").exists()


def test_readme_export_example_is_dynamic(tmp_path) -> None:
    """The README's export line (a batch of 2, the batch dimension dynamic) needs no rewrite."""
    model = Flatten().eval()
    path = tmp_path / "readme.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 3, 8, 8),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},)), path)
    loaded = load_model(path)
    assert loaded.notes == ()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.gm(x), model(x), rtol=TOL, atol=TOL)
