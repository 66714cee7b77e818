"""Load a model file and give the pipeline an fx.GraphModule with its example input.

Accepted files, recognised by content (not by extension):

- a ``torch.export.save`` archive (``.pt2``): the safe, preferred form; its graph is used as is;
- a ``torch.save`` state_dict (``.pt``) with ``arch`` naming a zoo model or ``package.module:Class``;
  the module is traced with ``torch.fx.symbolic_trace``;
- a ``torch.save`` pickled ``nn.Module``: refused unless ``trust_model`` is set, because unpickling
  it runs code from the file.
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.fx
from torch import nn

from neftc.errors import ModelFileError, TraceError, UntrustedModelError
from neftc.zoo import InputShape, build, zoo

ModelKind = Literal["exported-program", "state-dict", "pickled-module"]

TRUST_FLAG = "--trust-model"


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


def _sniff(path: Path) -> Literal["export-archive", "torch-zip", "pickle"]:
    if not path.exists():
        raise ModelFileError(f"model file '{path}' does not exist")
    if path.is_dir():
        raise ModelFileError(f"'{path}' is a directory; pass a model file (.pt2 or .pt)")
    if zipfile.is_zipfile(path):
        try:
            names = zipfile.ZipFile(path).namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelFileError(f"model file '{path}' is a damaged zip archive ({exc})") from None
        if any(name.endswith("/archive_format") or name == "archive_format" for name in names):
            return "export-archive"
        if any(name.endswith("data.pkl") for name in names):
            return "torch-zip"
        raise ModelFileError(f"'{path}' is a zip archive but neither a torch.export.save (.pt2) "
                             "nor a torch.save (.pt) file")
    with path.open("rb") as fh:
        head = fh.read(2)
    if head[:1] == b"\x80":  # legacy (non-zip) torch.save: a bare pickle stream
        return "pickle"
    kind = "an ONNX model" if path.suffix == ".onnx" else "not a PyTorch model file"
    raise ModelFileError(
        f"'{path}' is {kind}: neftc reads a torch.export.save archive (.pt2, preferred) or a "
        "torch.save state_dict (.pt with --arch). Save it with torch.export.save(torch.export."
        "export(model, (example,)), 'model.pt2')"
    )


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
    kind = _sniff(path)
    sha = file_sha256(path)
    if kind == "export-archive":
        if arch is not None:
            raise ModelFileError(f"'{path}' is a torch.export program, which carries its own "
                                 "graph; drop --arch")
        gm, example = _load_exported(path, input_shape, seed)
        return LoadedModel(gm, example, str(path), sha, "exported-program", None)
    obj = _torch_load(path, trust_model)
    if isinstance(obj, nn.Module):
        if input_shape is None:
            raise ModelFileError(f"'{path}' holds a pickled module; pass --input-shape C,H,W "
                                 "(one sample, no batch dimension)")
        example = example_input(input_shape, seed=seed)
        return LoadedModel(trace_module(obj.eval(), example), example, str(path), sha,
                           "pickled-module", type(obj).__name__)
    state = _state_dict_of(obj, path)
    if arch is None:
        raise ModelFileError(f"'{path}' holds a state_dict (weights only); name its architecture "
                             f"with --arch ({', '.join(zoo())} or package.module:Class)")
    if input_shape is None:
        raise ModelFileError(f"'{path}' holds a state_dict; pass --input-shape C,H,W (one sample, "
                             "no batch dimension), e.g. --input-shape 1,28,28")
    module = _build_arch(arch, input_shape, state, path)
    example = example_input(input_shape, seed=seed)
    return LoadedModel(trace_module(module, example), example, str(path), sha, "state-dict", arch)


def _torch_load(path: Path, trust_model: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_model)
    except pickle.UnpicklingError as exc:
        if not trust_model and "weights_only" in str(exc).lower().replace(" ", "_"):
            raise UntrustedModelError(
                f"'{path}' holds a pickled Python object (a whole nn.Module), not just weights. "
                f"Loading it runs code from the file. If you trust its source, pass {TRUST_FLAG}; "
                "better, save the model with torch.export.save (.pt2) or save its state_dict and "
                "pass --arch"
            ) from None
        raise ModelFileError(f"'{path}' is a corrupt torch.save file: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for damaged files
        raise ModelFileError(f"'{path}' cannot be read as a torch.save file: "
                             f"{_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _state_dict_of(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    raise ModelFileError(f"'{path}' holds a {type(obj).__name__}, not a state_dict of tensors "
                         "nor a checkpoint with a 'state_dict' entry")


def _build_arch(arch: str, input_shape: InputShape, state: dict[str, torch.Tensor],
                path: Path) -> nn.Module:
    if ":" in arch:
        module = _import_class(arch)
    else:
        entry = zoo().get(arch)
        head = state.get(entry.head_key) if entry is not None else None
        num_classes = int(head.shape[0]) if head is not None and head.dim() == 2 else 10
        module = build(arch, input_shape, num_classes)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        mismatches = [line.strip().rstrip(".") for line in str(exc).splitlines() if "size mismatch" in line]
        raise ModelFileError(f"'{path}' does not match architecture '{arch}': "
                             + "; ".join(mismatches[:3])
                             + (f" and {len(mismatches) - 3} more" if len(mismatches) > 3 else "")
                             + ". Check --arch and --input-shape") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {_some(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected {_some(result.unexpected_keys)}")
    if problems:
        raise ModelFileError(f"'{path}' does not match architecture '{arch}': "
                             + "; ".join(problems) + ". Check --arch and --input-shape")
    return module.eval()


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:4])
    return shown + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def _import_class(spec: str) -> nn.Module:
    module_name, _, class_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ModelFileError(f"cannot import architecture '{spec}': {_first_line(exc)}") from None
    try:
        module = cls()
    except Exception as exc:  # noqa: BLE001 - user code
        raise ModelFileError(f"architecture '{spec}' could not be built with no arguments: "
                             f"{_first_line(exc)}") from None
    if not isinstance(module, nn.Module):
        raise ModelFileError(f"architecture '{spec}' is not an nn.Module")
    return module


def _load_exported(path: Path, input_shape: InputShape | None,
                   seed: int) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    try:
        program = torch.export.load(path)
    except Exception as exc:  # noqa: BLE001 - damaged archives raise many types
        raise ModelFileError(f"'{path}' is a damaged torch.export archive: "
                             f"{_first_line(exc)}") from None
    user_inputs = program.graph_signature.user_inputs
    if len(user_inputs) != 1:
        raise ModelFileError(f"'{path}' takes {len(user_inputs)} inputs; neftc compiles models "
                             "with exactly one tensor input")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0])
    val = node.meta.get("val")
    shape = tuple(int(d) for d in val.shape) if val is not None else None
    if input_shape is not None:
        shape = (shape[0] if shape else 1, *input_shape)
    if shape is None:
        raise ModelFileError(f"'{path}' does not record its input shape; pass --input-shape")
    example = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return unexported(program.module()), example


def export_dynamic_batch(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export with the batch dimension dynamic (a batch of 2 avoids export's
    specialisation of size-1 dimensions); a model that needs a static batch keeps the example's."""
    batch2 = example[:1].expand(2, *example.shape[1:]).contiguous()
    try:
        return torch.export.export(module, (batch2,),
                                   dynamic_shapes=({0: torch.export.Dim.AUTO},))
    except Exception:  # noqa: BLE001 - export raises many types; the static form may still work
        return torch.export.export(module, (example,))


def unexported(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A plain GraphModule from ``ExportedProgram.module()``: without export's input-guard call
    (not part of the model's computation) and with ordinary ``train()``/``eval()`` (which the
    exported module refuses)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    plain = torch.fx.GraphModule(gm, gm.graph)
    plain.meta.update(gm.meta)
    return plain


def trace_module(module: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Trace an unmodified module with torch.fx; name the failing op when it cannot be traced."""
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as exc:  # noqa: BLE001 - fx raises TraceError, TypeError, NotImplementedError...
        raise TraceError(
            f"{type(module).__name__} cannot be traced by torch.fx: {_first_line(exc)}. "
            "This usually means Python control flow on tensor values or shapes. Export it "
            "instead: torch.export.save(torch.export.export(model.eval(), (example,)), "
            "'model.pt2'), then compile the .pt2"
        ) from None
    try:
        with torch.no_grad():
            gm(example)
    except Exception as exc:  # noqa: BLE001 - user model code
        raise TraceError(f"the traced {type(module).__name__} fails on an input of shape "
                         f"{tuple(example.shape)}: {_first_line(exc)}. Check --input-shape") from None
    return gm
