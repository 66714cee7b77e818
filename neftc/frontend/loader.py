"""Load a model file and give the pipeline an fx.GraphModule with its example input.

Accepted files, recognised by content (not by extension):

- a ``torch.export.save`` archive (``.pt2``): the safe, preferred form; its graph is used as is;
- a ``torch.save`` state_dict (``.pt``) with ``arch`` naming a zoo model or ``package.module:Class``;
  the module is traced with ``torch.fx.symbolic_trace``;
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
import importlib
import io
import json
import logging
import math
import operator
import os
import pickle
import pickletools
import re
import stat
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.fx
from torch import nn

from neftc.errors import ModelFileError, TraceError, UntrustedModelError
from neftc.frontend.zoo import InputShape, build, zoo

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


# ------------------------------------------------------------------ reading a model file safely

MAX_MODEL_BYTES = 2 << 30  # a model file, and the uncompressed total of an archive
MAX_ARCHIVE_MEMBERS = 10_000
MAX_COMPRESSION_RATIO = 100  # per member above 1 MiB; torch.save/export.save store uncompressed
MAX_JSON_BYTES = 256 << 20  # one JSON member of a .pt2 (the program, a payload config)
MAX_EXPR_CHARS = 10_000  # one symbolic-shape expression in a .pt2 program
REEXPORT = ("re-export it with torch.export.save from a trusted source, or pass "
            f"{TRUST_FLAG} if you trust this file")
RECOPY = "copy the file again or re-export it with torch.export.save"


def _read_model_file(path: Path) -> bytes:
    """The file's bytes, read once: a regular file (no directory, FIFO or device) within the
    budget. Everything after this works on these bytes, so the file cannot change under us."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ModelFileError(f"model file '{path}' does not exist") from None
    except IsADirectoryError:
        raise ModelFileError(f"'{path}' is a directory; pass a model file (.pt2 or .pt)") from None
    except OSError as exc:
        raise ModelFileError(f"model file '{path}' cannot be opened: "
                             f"{exc.strerror or _first_line(exc)}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise ModelFileError(f"'{path}' is a directory; pass a model file (.pt2 or .pt)")
        raise ModelFileError(f"'{path}' is not a regular file (a device, FIFO or socket); "
                             "pass a model file (.pt2 or .pt)")
    with os.fdopen(fd, "rb") as fh:
        try:
            # A buffer no larger than the file (fstat), capped by the budget: read(n) allocates n.
            data = fh.read(min(os.fstat(fh.fileno()).st_size, MAX_MODEL_BYTES) + 1)
        except OSError as exc:
            raise ModelFileError(f"model file '{path}' cannot be read: "
                                 f"{exc.strerror or _first_line(exc)}") from None
    if len(data) > MAX_MODEL_BYTES:
        raise ModelFileError(f"model file '{path}' is larger than neftc's budget of "
                             f"{MAX_MODEL_BYTES >> 20} MiB for a model file; check that this is "
                             "the model you meant (one this large fits no target)")
    return data


def _zip_members(path: Path, raw: bytes) -> dict[str, bytes]:
    """Every member of the zip archive ``raw``, read and CRC-checked (name -> bytes).
    Refuses archives over the member-count or size budget, zip bombs, encrypted members,
    duplicate names and compression torch cannot read."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelFileError(f"'{path}' is a damaged zip archive ({_first_line(exc)}); "
                             f"{RECOPY}") from None
    if len(infos) > MAX_ARCHIVE_MEMBERS:
        raise ModelFileError(f"'{path}' has {len(infos)} archive members, more than neftc's "
                             f"limit of {MAX_ARCHIVE_MEMBERS}; it is not a model file torch wrote")
    if sum(info.file_size for info in infos) > MAX_MODEL_BYTES:
        raise ModelFileError(f"'{path}' declares more than {MAX_MODEL_BYTES >> 20} MiB of "
                             "uncompressed members, over neftc's budget for a model file; check "
                             "that this is the model you meant (one this large fits no target)")
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        if name in seen:
            raise ModelFileError(f"'{path}' lists archive member '{name}' twice; {RECOPY}")
        seen.add(name)
        if info.flag_bits & 0x1:
            raise ModelFileError(f"'{path}': archive member '{name}' is encrypted; "
                                 "torch.save and torch.export.save never encrypt")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelFileError(f"'{path}': archive member '{name}' uses zip compression "
                                 f"method {info.compress_type}, which torch cannot read")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise ModelFileError(f"'{path}' is damaged: archive member '{name}' declares "
                                 f"{info.file_size} bytes but stores {info.compress_size}; "
                                 f"{RECOPY}")
        if info.file_size > (1 << 20) and \
                info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise ModelFileError(f"'{path}': archive member '{name}' expands "
                                 f"{info.compress_size} bytes to {info.file_size} (more than "
                                 f"{MAX_COMPRESSION_RATIO}:1, a zip bomb?), so neftc does not "
                                 "read it; save the model with torch.export.save, which stores "
                                 "members uncompressed")
    members: dict[str, bytes] = {}
    for info in infos:
        try:
            data = archive.read(info)
        except zipfile.BadZipFile as exc:
            reason = ("fails its CRC-32 check (changed or truncated after saving)"
                      if "crc" in str(exc).lower() else f"cannot be read ({_first_line(exc)})")
            raise ModelFileError(f"'{path}' is damaged: archive member '{info.filename}' "
                                 f"{reason}; {RECOPY}") from None
        except (zlib.error, EOFError, OSError, ValueError, NotImplementedError,
                RuntimeError) as exc:
            raise ModelFileError(f"'{path}' is damaged: archive member '{info.filename}' cannot "
                                 f"be read ({_first_line(exc)}); {RECOPY}") from None
        members[info.filename] = data
    return members


def _sniff(path: Path, raw: bytes,
           members: dict[str, bytes] | None) -> Literal["export-archive", "torch-zip", "pickle"]:
    if members is not None:
        names = list(members)
        if any(name.endswith("/archive_format") or name == "archive_format"
               or name.rsplit("/", 1)[-1] == "serialized_exported_program.json" for name in names):
            return "export-archive"
        if any(name.endswith("data.pkl") for name in names):
            return "torch-zip"
        raise ModelFileError(f"'{path}' is a zip archive but neither a torch.export.save (.pt2) "
                             "nor a torch.save (.pt) file")
    if raw[:1] == b"\x80":  # legacy (non-zip) torch.save: a bare pickle stream
        return "pickle"
    if raw[:4] == b"PK\x03\x04":
        raise ModelFileError(f"'{path}' is a damaged or truncated zip archive (its end record "
                             f"is missing); {RECOPY}")
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
    raw = _read_model_file(path)
    is_zip = zipfile.is_zipfile(io.BytesIO(raw))
    members = _zip_members(path, raw) if is_zip else None
    kind = _sniff(path, raw, members)
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
    state = _state_dict_of(obj, path)
    if arch is None:
        raise ModelFileError(f"'{path}' holds a state_dict (weights only); name its architecture "
                             f"with --arch ({', '.join(zoo())} or package.module:Class)")
    if input_shape is None:
        raise ModelFileError(f"'{path}' holds a state_dict; pass --input-shape C,H,W (one sample, "
                             "no batch dimension), e.g. --input-shape 1,28,28")
    module = _build_arch(arch, input_shape, state, path)
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
        raise ModelFileError(f"'{path}' is a corrupt torch.save file: {_first_line(exc)}") from None
    except Exception as exc:
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
    except Exception as exc:
        raise ModelFileError(f"architecture '{spec}' could not be built with no arguments: "
                             f"{_first_line(exc)}") from None
    if not isinstance(module, nn.Module):
        raise ModelFileError(f"architecture '{spec}' is not an nn.Module")
    return module


def _load_exported(path: Path, raw: bytes, members: dict[str, bytes],
                   input_shape: InputShape | None, seed: int,
                   trust_model: bool) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    # Untrusted: torch reads a copy that holds only the members checked to be data.
    archive = raw if trust_model else _data_only_archive(path, members)
    records: list[logging.LogRecord] = []
    try:
        with _quiet_torch(records):
            program = torch.export.load(io.BytesIO(archive))
    except Exception as exc:
        cause = next((r.exc_info[1] for r in records if r.exc_info and r.exc_info[1]), exc)
        raise ModelFileError(f"'{path}' is a damaged torch.export archive: "
                             f"{_first_line(cause)}") from None
    if not trust_model:
        _check_graph_ops(path, program)
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
                             f"{_first_line(exc)}") from None
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


# ------------------------------------------------- a .pt2 archive: only JSON and raw tensor bytes
#
# What torch 2.13's torch.export.load (torch/export/pt2_archive/_package.py, load_pt2, and
# torch/_export/serde/serialize.py) does with each member of ROOT/:
#   archive_format, archive_version, byteorder, .data/version, .data/serialization_id: compared
#       or ignored (short text);
#   models/<name>.json: the program, parsed as JSON; but every symbolic-shape "expr_str" in it
#       goes through sympy.sympify, which evaluates it as Python (checked: _check_sym_exprs);
#   data/weights/<name>_weights_config.json, data/constants/<name>_constants_config.json: JSON
#       saying, per tensor, which member holds it and how: use_pickle=false is raw bytes (read as
#       a storage), use_pickle=true is torch.load(weights_only=False), i.e. unpickled; a constant
#       whose member is custom_obj_N is torch._C._pickle_load_obj (torchbind), opaque_obj_N is
#       pickle.loads;
#   data/weights/<name>.pt, data/constants/<name>.pt (legacy): torch.load, falling back to
#       weights_only=False;
#   data/sample_inputs/<name>.pt: torch.load(weights_only=True), falling back to
#       weights_only=False on failure; always written by torch.export.save. Never needed here:
#       the input shape is in the program. It is dropped from the copy torch reads (and, without
#       sample inputs, ExportedProgram.module() builds no guard function from guards_code strings,
#       which it would exec);
#   data/aotinductor/...: compiled code, loaded as a shared library;
#   extra/...: read as text;
#   anything else under ROOT: not read by load_pt2 (executorch, mtia, xl weights), but refused
#       here: it is not a plain exported program.
# A zip without archive_format (the pre-2.8 format, serialized_*.pt) is unpickled whole.

_ARCHIVE_METADATA = {"archive_format", "archive_version", "byteorder", ".data/version",
                     ".data/serialization_id"}
_MODEL = "model"  # torch.export.save names its one program "model"; torch.export.load returns it
_WEIGHT_MEMBER = re.compile(r"weight_[0-9]{1,9}")
_CONSTANT_MEMBER = re.compile(r"tensor_[0-9]{1,9}")
# the globals a torch.save of plain tensors in tuples, lists and dicts refers to
_PLAIN_TENSOR_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
                         ("collections", "OrderedDict")} | {
    ("torch", f"{kind}Storage") for kind in ("Float", "Double", "Half", "BFloat16", "Long", "Int",
                                             "Short", "Char", "Byte", "Bool", "ComplexFloat",
                                             "ComplexDouble")}
_PLAIN_PICKLE_OPS = {
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "INT", "BININT", "BININT1",
    "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "NONE", "NEWTRUE", "NEWFALSE",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
    "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "EMPTY_LIST", "APPEND", "APPENDS",
    "LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_DICT", "DICT", "SETITEM",
    "SETITEMS", "GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE",
    "GLOBAL", "REDUCE", "BINPERSID",
}


def _data_only_archive(path: Path, members: dict[str, bytes]) -> bytes:
    """Check that every member of the ``.pt2`` is data torch reads without unpickling or
    evaluating anything, and return a copy holding those members, minus the sample inputs."""
    names = list(members)
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        legacy = next((n for n in sorted(names, key=lambda n: not n.endswith(".pt"))
                       if n.rsplit("/", 1)[-1].startswith("serialized_")), None)
        if legacy is not None:
            raise UntrustedModelError(f"'{path}' is a torch.export archive in the old (before "
                                      f"torch 2.8) format, whose member '{legacy}' torch "
                                      f"unpickles; {REEXPORT}")
        raise ModelFileError(f"'{path}' is not laid out as torch.export.save writes (one top "
                             f"folder); {REEXPORT}")
    root = roots.pop() + "/"
    rel = {name[len(root):]: name for name in names}
    if members.get(root + "archive_format", b"").strip() != b"pt2":
        raise ModelFileError(f"'{path}' has no 'archive_format' member saying 'pt2'; {REEXPORT}")
    for required in (f"models/{_MODEL}.json", f"data/weights/{_MODEL}_weights_config.json",
                     f"data/constants/{_MODEL}_constants_config.json"):
        if required not in rel:
            raise ModelFileError(f"'{path}' has no member '{root}{required}': it is not a "
                                 f"complete torch.export.save archive; {REEXPORT}")
    raw_members: set[str] = set()
    for directory, kind, pattern in (("data/weights/", "weights", _WEIGHT_MEMBER),
                                     ("data/constants/", "constants", _CONSTANT_MEMBER)):
        config_name = f"{root}{directory}{_MODEL}_{kind}_config.json"
        config = _json_member(path, config_name, members[config_name])
        entries = config.get("config") if isinstance(config, dict) else None
        if not isinstance(entries, dict):
            raise ModelFileError(f"'{path}': member '{config_name}' is not a torch.export "
                                 f"payload config; {REEXPORT}")
        for fqn, meta in entries.items():
            member_name = f"{root}{directory}{meta.get('path_name') if isinstance(meta, dict) else ''}"
            if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
                raise ModelFileError(f"'{path}': member '{config_name}' has a malformed entry "
                                     f"for '{fqn}'; {REEXPORT}")
            pickled = meta.get("use_pickle") is not False
            if not pattern.fullmatch(meta["path_name"]) or pickled:
                what = ("an opaque or torchbind object" if meta["path_name"].startswith(
                    ("custom_obj_", "opaque_obj_")) else "a pickled tensor" if pickled
                    else "an unexpected kind of member")
                raise UntrustedModelError(
                    f"'{path}': {kind[:-1]} '{fqn}' (member '{member_name}') is {what}, which "
                    f"torch unpickles when loading, running code from the file; {REEXPORT}")
            if member_name not in members:
                raise ModelFileError(f"'{path}': {kind[:-1]} '{fqn}' names member "
                                     f"'{member_name}', which the archive lacks; {RECOPY}")
            if not isinstance(meta.get("tensor_meta"), dict):
                raise ModelFileError(f"'{path}': {kind[:-1]} '{fqn}' has no tensor_meta; "
                                     f"{REEXPORT}")
            raw_members.add(member_name)
        _check_sym_exprs(path, config_name, config)
    program_name = f"{root}models/{_MODEL}.json"
    _check_sym_exprs(path, program_name, _json_member(path, program_name, members[program_name]))
    sample_inputs = f"{root}data/sample_inputs/{_MODEL}.pt"
    json_members = {program_name, f"{root}data/weights/{_MODEL}_weights_config.json",
                    f"{root}data/constants/{_MODEL}_constants_config.json"}
    kept: dict[str, bytes] = {}
    for name, data in members.items():
        inner = name[len(root):]
        if name == sample_inputs:
            _check_plain_tensor_pickle(path, name, data)
            kept[name] = b""  # never unpickled: torch then has no sample inputs
        elif inner in _ARCHIVE_METADATA:
            if len(data) > 64:
                raise ModelFileError(f"'{path}': metadata member '{name}' is {len(data)} bytes "
                                     f"long, not a torch.export.save archive; {REEXPORT}")
            kept[name] = data
        elif name in raw_members or name in json_members or inner.startswith("extra/"):
            kept[name] = data  # raw tensor bytes, checked JSON, or text torch only decodes
        else:
            raise UntrustedModelError(f"'{path}': archive member '{name}' is {_member_kind(inner)}"
                                      f", and neftc loads only a program's JSON and raw tensor "
                                      f"bytes; {REEXPORT}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as out:
        for name, data in kept.items():
            out.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def _member_kind(inner: str) -> str:
    if inner.startswith("data/aotinductor/"):
        return "AOTInductor compiled code (a shared library torch would load)"
    if inner.startswith(("data/weights/", "data/constants/")) and inner.endswith(".pt"):
        return "a legacy pickled weights file, which torch unpickles"
    if inner.startswith(("data/weights/weight_", "data/constants/tensor_")):
        return "a tensor member no payload config lists as raw bytes"
    if inner.startswith("data/constants/"):
        return "a constant torch would unpickle (an opaque or torchbind object)"
    if inner.startswith(("models/", "data/sample_inputs/")):
        return f"a second program (neftc reads the one named '{_MODEL}')"
    return "not part of a plain exported program"


def _json_member(path: Path, name: str, data: bytes) -> Any:
    if len(data) > MAX_JSON_BYTES:
        raise ModelFileError(f"'{path}': member '{name}' is {len(data) >> 20} MiB of JSON, over "
                             f"neftc's limit of {MAX_JSON_BYTES >> 20} MiB")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(f"'{path}': member '{name}' is not valid JSON "
                             f"({_first_line(exc)}); {RECOPY}") from None


# The names a symbolic-shape expression may use: sympy's srepr constructors and torch's shape
# functions (torch/_export/serde/serialize.py, sympy_functions), without powers, shifts or
# arbitrary-precision floats (which can run for hours on a small input).
_SYM_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Add", "Mul", "Max", "Min", "Mod", "Abs", "floor", "ceiling",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "true", "false", "True", "False",
    "None", "oo", "nan", "Piecewise", "ExprCondPair", "FloorDiv", "ModularIndexing", "Where",
    "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "IntTrueDiv", "FloatTrueDiv",
    "Identity", "ToFloat", "TruncToFloat", "TruncToInt", "RoundToInt",
    "IsNonOverlappingAndDenseIndicator",
})
_SYM_STRING = re.compile(r"'[A-Za-z_][A-Za-z0-9_]{0,63}'")


def _check_sym_exprs(path: Path, name: str, obj: Any) -> None:
    """torch parses every "expr_str" with sympy.sympify, which evaluates it as Python: allow only
    calls of sympy/torch shape functions on integer and symbol-name literals."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "expr_str" and not _plain_sym_expr(value):
                    shown = value if isinstance(value, str) and len(value) <= 80 else \
                        f"{str(value)[:77]}..."
                    raise UntrustedModelError(
                        f"'{path}': member '{name}' has a symbolic shape {shown!r} that is not a "
                        f"plain sympy expression (torch would evaluate it as Python code); "
                        f"{REEXPORT}")
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _plain_sym_expr(text: object) -> bool:
    if not isinstance(text, str) or len(text) > MAX_EXPR_CHARS:
        return False
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, ValueError):
        return False
    for i, token in enumerate(tokens):
        kind, string = token.type, token.string
        if kind in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER):
            continue
        if kind == tokenize.NAME:
            follows = tokens[i + 1].string if i + 1 < len(tokens) else ""
            if string not in _SYM_NAMES and not (follows == "=" and string.isidentifier()
                                                 and not string.startswith("_")):
                return False
        elif kind == tokenize.NUMBER:
            if not string.isdigit() or len(string) > 40:
                return False
        elif kind == tokenize.STRING:
            if not _SYM_STRING.fullmatch(string):
                return False
        elif kind == tokenize.OP:
            if string not in ("(", ")", ",", "=", "-", "+"):
                return False
        else:
            return False
    return True


def _check_plain_tensor_pickle(path: Path, name: str, data: bytes) -> None:
    """Read (never run) the pickle of a torch.save file: refuse it unless it only rebuilds
    tensors in tuples, lists and dicts, as torch.export.save writes the sample inputs."""
    if not data:
        return

    def refuse(why: str) -> UntrustedModelError:
        return UntrustedModelError(
            f"'{path}': member '{name}' (the sample inputs) {why}, and torch would unpickle it, "
            f"running code from the file; {REEXPORT}")

    try:
        inner = zipfile.ZipFile(io.BytesIO(data))
        pickles = [n for n in inner.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise refuse("is not a torch.save file holding one pickle")
        stream = inner.read(pickles[0])
    except zipfile.BadZipFile:
        raise refuse("is a bare pickle stream, not the torch.save archive torch writes") from None
    except (OSError, ValueError, EOFError, zlib.error, RuntimeError) as exc:
        raise ModelFileError(f"'{path}' is damaged: member '{name}' cannot be read "
                             f"({_first_line(exc)}); {RECOPY}") from None
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            if opcode.name not in _PLAIN_PICKLE_OPS:
                raise refuse(f"uses pickle opcode {opcode.name}, which builds arbitrary objects")
            if opcode.name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                if (module, attr) not in _PLAIN_TENSOR_GLOBALS:
                    raise refuse(f"calls {module}.{attr}, not a tensor constructor")
    except UntrustedModelError:
        raise
    except Exception as exc:
        raise refuse(f"is not a well-formed pickle ({_first_line(exc)})") from None


# Python-level functions an exported graph may call besides ATen/prims ops: symbolic-size
# arithmetic (torch/_export/serde/serialize.py, _SYM_OPS) and getitem. No power or shift.
_PURE_FUNCTIONS = frozenset({
    operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv,
    operator.truediv, operator.mod, operator.neg, operator.pos, operator.abs, operator.eq,
    operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.and_, operator.or_,
    operator.not_, math.ceil, math.floor, math.trunc, torch.sym_max, torch.sym_min, torch.sym_not,
    torch.sym_float, torch.sym_int, torch.sym_ite, torch.sym_sum,
})
_IO_OPS = frozenset({"from_file", "save", "_print", "warn"})  # aten ops that touch files or stdout


def _check_graph_ops(path: Path, program: torch.export.ExportedProgram) -> None:
    """An untrusted program may call only ATen/prims ops and size arithmetic: no file access
    (aten.from_file maps any file into a tensor, which a later in-place op writes back), no
    custom-namespace or higher-order op, no subgraph."""
    for node in program.graph.nodes:
        if node.op in ("call_module", "call_method"):
            raise UntrustedModelError(f"'{path}': node '{node.name}' is a {node.op}, which an "
                                      f"exported program does not contain; {REEXPORT}")
        if node.op != "call_function":
            continue
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            op_name = target._schema.name.split("::", 1)[-1]
            if target.namespace in ("aten", "prims") and op_name not in _IO_OPS:
                continue
            why = ("reads or writes files" if op_name in _IO_OPS
                   else f"is not an ATen op (namespace '{target.namespace}')")
        elif target in _PURE_FUNCTIONS:
            continue
        else:
            why = "is not an ATen op"
        raise UntrustedModelError(f"'{path}': node '{node.name}' calls {target}, which {why}; "
                                  f"neftc runs only ATen ops without file access from an "
                                  f"untrusted model file. Pass {TRUST_FLAG} if you trust this file")


def export_dynamic_batch(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export with the batch dimension dynamic (a batch of 2 avoids export's
    specialisation of size-1 dimensions); a model that needs a static batch keeps the example's."""
    batch2 = example[:1].expand(2, *example.shape[1:]).contiguous()
    try:
        return torch.export.export(module, (batch2,),
                                   dynamic_shapes=({0: torch.export.Dim.AUTO},))
    except Exception:
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
    except Exception as exc:
        raise TraceError(
            f"{type(module).__name__} cannot be traced by torch.fx: {_first_line(exc)}. "
            "This usually means Python control flow on tensor values or shapes. Export it "
            "instead: torch.export.save(torch.export.export(model.eval(), (example,)), "
            "'model.pt2'), then compile the .pt2"
        ) from None
    try:
        with torch.no_grad():
            gm(example)
    except Exception as exc:
        raise TraceError(f"the traced {type(module).__name__} fails on an input of shape "
                         f"{tuple(example.shape)}: {_first_line(exc)}. Check --input-shape") from None
    return gm
