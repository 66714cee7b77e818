"""Load a model file and give the pipeline an fx.GraphModule with its example input.

Accepted files, recognised by content (not by extension):

- a ``torch.export.save`` archive (``.pt2``): the safe, preferred form; its graph is used as is;
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
the members that were checked, without the sample inputs (a pickle, never needed here). Loaded
weights and buffers must be finite.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import pickle
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.fx
from torch import nn

from neftc.errors import ModelFileError, UntrustedModelError
from neftc.frontend.arch import build_arch, state_dict_of
from neftc.frontend.model_file import TRUST_FLAG, first_line, read_model_file, sniff, zip_members
from neftc.frontend.program_guard import check_graph_ops
from neftc.frontend.pt2_archive import data_only_archive
from neftc.frontend.trace import trace_module, unexported
from neftc.frontend.zoo import InputShape, zoo

ModelKind = Literal["exported-program", "state-dict", "pickled-module"]


@dataclass(frozen=True)
class LoadedModel:
    gm: torch.fx.GraphModule
    example_input: torch.Tensor
    source: str
    sha256: str
    kind: ModelKind
    arch: str | None


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
        gm, example = _load_exported(path, raw, members, input_shape, seed, trust_model)
        check_finite_weights(gm, path)
        return LoadedModel(gm, example, str(path), sha, "exported-program", None)
    del members
    obj = _torch_load(path, raw, trust_model)
    if isinstance(obj, nn.Module):
        if input_shape is None:
            raise ModelFileError(f"'{path}' holds a pickled module; pass --input-shape C,H,W "
                                 "(one sample, no batch dimension)")
        example = example_input(input_shape, seed=seed)
        gm = trace_module(obj.eval(), example)
        check_finite_weights(gm, path)
        return LoadedModel(gm, example, str(path), sha, "pickled-module", type(obj).__name__)
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
    return LoadedModel(gm, example, str(path), sha, "state-dict", arch)


def check_finite_weights(gm: torch.fx.GraphModule, source: str | Path) -> None:
    """Refuse NaN or inf in any parameter, buffer or tensor constant of ``gm`` (crossbar weights
    and digital tensors alike): quantising them would silently give garbage levels."""
    tensors: dict[str, torch.Tensor] = dict(gm.named_parameters())
    tensors.update(gm.named_buffers())
    for node in gm.graph.nodes:
        if node.op == "get_attr" and str(node.target) not in tensors:
            value: Any = gm
            for part in str(node.target).split("."):
                value = getattr(value, part, None)
            if isinstance(value, torch.Tensor):
                tensors[str(node.target)] = value
    for name, tensor in tensors.items():
        if tensor.device.type == "meta" or not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        finite = torch.isfinite(tensor.detach())
        if bool(finite.all()):
            continue
        bad = int(finite.numel() - int(finite.sum()))
        layer = name.rsplit(".", 1)[0] if "." in name else name
        raise ModelFileError(f"'{source}': tensor '{name}' of layer '{layer}' holds {bad} "
                             f"non-finite value(s) (NaN or inf) out of {tensor.numel()}; neftc "
                             "cannot quantise it. Retrain or restore the weights and save the "
                             "model again")


def _torch_load(path: Path, raw: bytes, trust_model: bool) -> object:
    try:
        with _quiet_torch():
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


def _load_exported(path: Path, raw: bytes, members: dict[str, bytes],
                   input_shape: InputShape | None, seed: int,
                   trust_model: bool) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    # Untrusted: torch reads a copy that holds only the members checked to be data.
    archive = raw if trust_model else data_only_archive(path, members)
    records: list[logging.LogRecord] = []
    try:
        with _quiet_torch(records):
            program = torch.export.load(io.BytesIO(archive))
    except Exception as exc:
        cause = next((r.exc_info[1] for r in records if r.exc_info and r.exc_info[1]), exc)
        raise ModelFileError(f"'{path}' is a damaged torch.export archive: "
                             f"{first_line(cause)}") from None
    if not trust_model:
        check_graph_ops(path, program)
    user_inputs = program.graph_signature.user_inputs
    if len(user_inputs) != 1:
        raise ModelFileError(f"'{path}' takes {len(user_inputs)} inputs; neftc compiles models "
                             "with exactly one tensor input")
    node = next((n for n in program.graph.nodes
                 if n.op == "placeholder" and n.name == user_inputs[0]), None)
    val = node.meta.get("val") if node is not None else None
    try:
        shape = tuple(int(d) for d in val.shape) if val is not None else None
    except Exception:
        shape = None
    if input_shape is not None:
        shape = (shape[0] if shape else 1, *input_shape)
    if shape is None:
        raise ModelFileError(f"'{path}' does not record its input shape; pass --input-shape")
    example = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    try:
        with _quiet_torch(records):
            module = program.module()
    except Exception as exc:
        raise ModelFileError(f"'{path}' is a damaged torch.export archive: "
                             f"{first_line(exc)}") from None
    return unexported(module), example


@contextlib.contextmanager
def _quiet_torch(records: list[logging.LogRecord] | None = None) -> Iterator[None]:
    """Keep torch's loader warnings (some with tracebacks) off stderr while a model file loads;
    the records are kept so that an error can name the cause. Python warnings are dropped."""
    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if records is not None:
                records.append(record)

    handler = _Keep(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export",
                                                    "torch.serialization")]
    # torch's own logging setup may attach handlers to these loggers directly: replace them all
    # while loading (and stop propagation), then put them back.
    saved = [(logger.propagate, logger.handlers) for logger in loggers]
    for logger in loggers:
        logger.handlers = [handler]
        logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, (propagate, handlers) in zip(loggers, saved):
            logger.handlers = handlers
            logger.propagate = propagate
