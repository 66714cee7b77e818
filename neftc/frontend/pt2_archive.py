"""A ``.pt2`` archive's members, checked against what ``torch.export.load`` does with each: it
must hold only JSON and raw tensor bytes, so pickled weights or constants, legacy ``.pt`` weight
files, opaque or torchbind constants, compiled (AOTInductor) code and symbolic shapes that are not
plain sympy expressions are refused; torch then loads a copy holding only the checked members,
without the sample inputs, and with the program's pytree specs made of builtin containers
(``treespec``: nothing is imported to read them)."""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neftc.errors import ModelFileError, UntrustedModelError
from neftc.frontend.model_file import RECOPY, REEXPORT, first_line
from neftc.frontend.pickle_guard import check_plain_tensor_pickle
from neftc.frontend.program_guard import check_sym_exprs
from neftc.frontend.treespec import plain_program

MAX_JSON_BYTES = 256 << 20  # one JSON member of a .pt2 (the program, a payload config)


# ------------------------------------------------- a .pt2 archive: only JSON and raw tensor bytes
#
# What torch 2.13's torch.export.load (torch/export/pt2_archive/_package.py, load_pt2, and
# torch/_export/serde/serialize.py) does with each member of ROOT/:
#   archive_format, archive_version, byteorder, .data/version, .data/serialization_id: compared
#       or ignored (short text);
#   models/<name>.json: the program, parsed as JSON; but every symbolic-shape "expr_str" in it
#       goes through sympy.sympify, which evaluates it as Python (checked: check_sym_exprs);
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


@dataclass(frozen=True)
class ArchiveCopy:
    """The archive torch reads (its pytree specs made builtin containers: ``treespec``) and the
    names of the program's output leaves, in order."""

    data: bytes
    outputs: tuple[str, ...]


def data_only_archive(path: Path, members: dict[str, bytes]) -> ArchiveCopy:
    """Check that every member of the ``.pt2`` is data torch reads without unpickling, importing
    or evaluating anything, and return a copy holding those members, minus the sample inputs."""
    root = _archive_root(path, members)
    raw_members: set[str] = set()
    for directory, kind, pattern in (("data/weights/", "weights", _WEIGHT_MEMBER),
                                     ("data/constants/", "constants", _CONSTANT_MEMBER)):
        raw_members |= _payload_members(path, members, root, directory, kind, pattern)
    program_name = f"{root}models/{_MODEL}.json"
    program = _json_member(path, program_name, members[program_name])
    check_sym_exprs(path, program_name, program)
    kept = _kept_members(path, members, root, raw_members)
    program, outputs = plain_program(path, program)
    kept[program_name] = json.dumps(program).encode()
    return ArchiveCopy(_zip(kept), outputs)


def plain_specs_archive(path: Path, raw: bytes, members: dict[str, bytes]) -> ArchiveCopy:
    """``--trust-model``: every member as it is (pickles included), only the program's pytree
    specs made builtin containers (no package is imported to read them either). An archive not
    laid out as torch 2.8+ writes is passed on unchanged (no output names: ``outputs`` empty)."""
    try:
        root = _archive_root(path, members)
    except ModelFileError:
        return ArchiveCopy(raw, ())
    program_name = f"{root}models/{_MODEL}.json"
    program, outputs = plain_program(path, _json_member(path, program_name,
                                                        members[program_name]))
    return ArchiveCopy(_zip({**members, program_name: json.dumps(program).encode()}), outputs)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as out:
        for name, data in members.items():
            out.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def _archive_root(path: Path, members: dict[str, bytes]) -> str:
    """The archive's one top folder (``NAME/``), after checking that it is laid out as
    ``torch.export.save`` (2.8 and later) writes: ``archive_format`` says ``pt2`` and the program
    and both payload configs are there."""
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
    return root


def _payload_members(path: Path, members: dict[str, bytes], root: str, directory: str,
                     kind: str, pattern: re.Pattern[str]) -> set[str]:
    """The members that one payload config (weights or constants) lists as raw tensor bytes;
    an entry torch would unpickle, or one that is malformed or missing, is refused."""
    config_name = f"{root}{directory}{_MODEL}_{kind}_config.json"
    config = _json_member(path, config_name, members[config_name])
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ModelFileError(f"'{path}': member '{config_name}' is not a torch.export "
                             f"payload config; {REEXPORT}")
    raw_members: set[str] = set()
    for fqn, meta in entries.items():
        stored = meta.get("path_name") if isinstance(meta, dict) else ""
        member_name = f"{root}{directory}{stored}"
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
    check_sym_exprs(path, config_name, config)
    return raw_members


def _kept_members(path: Path, members: dict[str, bytes], root: str,
                  raw_members: set[str]) -> dict[str, bytes]:
    """The members torch may read (the sample inputs emptied); any other member is refused."""
    sample_inputs = f"{root}data/sample_inputs/{_MODEL}.pt"
    json_members = {f"{root}models/{_MODEL}.json",
                    f"{root}data/weights/{_MODEL}_weights_config.json",
                    f"{root}data/constants/{_MODEL}_constants_config.json"}
    kept: dict[str, bytes] = {}
    for name, data in members.items():
        inner = name[len(root):]
        if name == sample_inputs:
            check_plain_tensor_pickle(path, name, data)
            kept[name] = b""  # never unpickled: torch then has no sample inputs
        elif inner in _ARCHIVE_METADATA:
            if len(data) > 64:
                raise ModelFileError(f"'{path}': metadata member '{name}' is {len(data)} bytes "
                                     f"long, not a torch.export.save archive; {REEXPORT}")
            kept[name] = data
        elif name in raw_members or name in json_members or inner.startswith("extra/"):
            kept[name] = data  # raw tensor bytes, checked JSON, or text torch only decodes
        else:
            raise UntrustedModelError(f"'{path}': archive member '{name}' is "
                                      f"{_member_kind(inner)}, and neftc loads only a program's "
                                      f"JSON and raw tensor bytes; {REEXPORT}")
    return kept


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
                             f"({first_line(exc)}); {RECOPY}") from None
