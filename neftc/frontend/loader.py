"""Load a model file and give the pipeline an fx.GraphModule with its inputs and examples.

Accepted files, recognised by content (not by extension):

- a ``torch.export.save`` archive (``.pt2``): the safe, preferred form; its graph is used as is
  (``exported``: its recorded inputs, its one output, made batch-agnostic);
- a ``torch.save`` state_dict (``.pt``) with ``arch`` naming a zoo model or
  ``package.module:Class``; the module is traced with ``torch.fx.symbolic_trace``;
- a ``torch.save`` pickled ``nn.Module``: refused unless ``trust_model`` is set, because unpickling
  it runs code from the file.

A model file is data unless trusted (docs/security.md). Every file is read once, as a regular file
within a size budget; a zip archive's members are bounded (count, total size, compression ratio) and
their CRCs checked. A ``.pt2`` is inspected before ``torch.export.load``: it must hold only JSON and
raw tensor bytes, so pickled sample inputs, weights and constants, legacy ``.pt`` weight files,
opaque or torchbind constants, compiled (AOTInductor) code and symbolic shapes that are not plain
sympy expressions are refused unless ``trust_model`` is set; torch then loads a copy holding only
the members that were checked, without the sample inputs (a pickle, never needed here), and with
its pytree specs made builtin containers (nothing is imported). Loaded weights and buffers must be
finite.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.fx
from torch import nn

from neftc.errors import ModelFileError, UntrustedModelError
from neftc.frontend.arch import build_arch, state_dict_of
from neftc.frontend.exported import check_finite_weights, load_exported
from neftc.frontend.inputs import InputSpec, float_inputs
from neftc.frontend.model_file import TRUST_FLAG, first_line, read_model_file, sniff, zip_members
from neftc.frontend.trace import quiet_torch, trace_module
from neftc.frontend.zoo import InputShape, zoo

ModelKind = Literal["exported-program", "state-dict", "pickled-module"]


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model: ``gm(*example_inputs)`` computes its one output. ``inputs`` describes
    each input (name, dtype, example shape, token-id range); ``notes`` says what loading decided
    (which output leaf, a batch made dynamic), for the compile log."""

    gm: torch.fx.GraphModule
    example_inputs: tuple[torch.Tensor, ...]
    source: str
    sha256: str
    kind: ModelKind
    arch: str | None
    inputs: tuple[InputSpec, ...] = ()  # empty: float inputs described by example_inputs
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        examples = self.example_inputs
        if isinstance(examples, torch.Tensor):  # one traced module's example, as before
            object.__setattr__(self, "example_inputs", (examples,))
        if not self.inputs:
            object.__setattr__(self, "inputs", float_inputs(self.example_inputs, tuple(
                n.name for n in self.gm.graph.nodes if n.op == "placeholder")))

    @property
    def example_input(self) -> torch.Tensor:
        """The first input's example (callers taking one input)."""
        return self.example_inputs[0]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_input_shape(text: str) -> InputShape:
    """'1,28,28' -> (1, 28, 28): the shape of one sample, without the batch dimension."""
    try:
        parts = text.split(",") if "," in text else text.split("x")
        shape = tuple(int(part) for part in parts)
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise ModelFileError(f"bad input shape '{text}': write one sample's shape as positive "
                             "integers, e.g. --input-shape 1,28,28 (C,H,W) or 784")
    return shape


def example_input(shape: InputShape, batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *shape), generator=generator)


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    input_shape: InputShape | None = None,
    trust_model: bool = False,
    seed: int = 0,
) -> LoadedModel:
    """Load ``path`` into an fx graph (see the module docstring for what is accepted)."""
    path = Path(path)
    raw = read_model_file(path)
    is_zip = zipfile.is_zipfile(io.BytesIO(raw))
    members = zip_members(path, raw) if is_zip else None
    kind = sniff(path, raw, members)
    sha = hashlib.sha256(raw).hexdigest()
    if kind == "export-archive":
        if arch is not None:
            raise ModelFileError(f"'{path}' is a torch.export program, which carries its own "
                                 "graph; drop --arch")
        assert members is not None
        loaded = load_exported(path, raw, members, input_shape, seed, trust_model)
        return LoadedModel(loaded.gm, loaded.example_inputs, str(path), sha, "exported-program",
                           None, loaded.inputs, loaded.notes)
    del members
    obj = _torch_load(path, raw, trust_model)
    if isinstance(obj, nn.Module):
        if input_shape is None:
            raise ModelFileError(f"'{path}' holds a pickled module; pass --input-shape C,H,W "
                                 "(one sample, no batch dimension)")
        example = example_input(input_shape, seed=seed)
        gm = trace_module(obj.eval(), example)
        check_finite_weights(gm, path)
        return LoadedModel(gm, (example,), str(path), sha, "pickled-module", type(obj).__name__)
    state = state_dict_of(obj, path)
    if arch is None:
        raise ModelFileError(f"'{path}' holds a state_dict (weights only); name its architecture "
                             f"with --arch ({', '.join(zoo())} or package.module:Class)")
    if input_shape is None:
        raise ModelFileError(f"'{path}' holds a state_dict; pass --input-shape C,H,W (one sample, "
                             "no batch dimension), e.g. --input-shape 1,28,28")
    module = build_arch(arch, input_shape, state, path)
    example = example_input(input_shape, seed=seed)
    gm = trace_module(module, example)
    check_finite_weights(gm, path)
    return LoadedModel(gm, (example,), str(path), sha, "state-dict", arch)


def _torch_load(path: Path, raw: bytes, trust_model: bool) -> object:
    try:
        with quiet_torch():
            return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=not trust_model)
    except pickle.UnpicklingError as exc:
        if not trust_model and "weights_only" in str(exc).lower().replace(" ", "_"):
            raise UntrustedModelError(
                f"'{path}' holds a pickled Python object (a whole nn.Module), not just weights. "
                f"Loading it runs code from the file. If you trust its source, pass {TRUST_FLAG}; "
                "better, save the model with torch.export.save (.pt2) or save its state_dict and "
                "pass --arch"
            ) from None
        raise ModelFileError(f"'{path}' is a corrupt torch.save file: {first_line(exc)}") from None
    except Exception as exc:
        raise ModelFileError(f"'{path}' cannot be read as a torch.save file: "
                             f"{first_line(exc)}") from None
