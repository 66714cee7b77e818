"""Reading a model file safely: once, as a regular file within a size budget; a zip archive's
members bounded (count, total size, compression ratio) and their CRCs checked; the kind of file
recognised by content (a torch.export archive, a torch.save zip, a bare pickle), not by extension.
Also the refusal wording shared by the frontend's checks."""

from __future__ import annotations

import io
import os
import stat
import zipfile
import zlib
from pathlib import Path
from typing import Literal

from neftc.errors import ModelFileError

TRUST_FLAG = "--trust-model"


MAX_MODEL_BYTES = 2 << 30  # a model file, and the uncompressed total of an archive
MAX_ARCHIVE_MEMBERS = 10_000
MAX_COMPRESSION_RATIO = 100  # per member above 1 MiB; torch.save/export.save store uncompressed


REEXPORT = ("re-export it with torch.export.save from a trusted source, or pass "
            f"{TRUST_FLAG} if you trust this file")
RECOPY = "copy the file again or re-export it with torch.export.save"


def read_model_file(path: Path) -> bytes:
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
                             f"{exc.strerror or first_line(exc)}") from None
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
                                 f"{exc.strerror or first_line(exc)}") from None
    if len(data) > MAX_MODEL_BYTES:
        raise ModelFileError(f"model file '{path}' is larger than neftc's budget of "
                             f"{MAX_MODEL_BYTES >> 20} MiB for a model file; check that this is "
                             "the model you meant (one this large fits no target)")
    if not data:
        raise ModelFileError(f"model file '{path}' is empty (0 bytes); it may be an interrupted "
                             "save or copy: save the model again")
    return data


def zip_members(path: Path, raw: bytes) -> dict[str, bytes]:
    """Every member of the zip archive ``raw``, read and CRC-checked (name -> bytes).
    Refuses archives over the member-count or size budget, zip bombs, encrypted members,
    duplicate names and compression torch cannot read."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelFileError(f"'{path}' is a damaged zip archive ({first_line(exc)}); "
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
                      if "crc" in str(exc).lower() else f"cannot be read ({first_line(exc)})")
            raise ModelFileError(f"'{path}' is damaged: archive member '{info.filename}' "
                                 f"{reason}; {RECOPY}") from None
        except (zlib.error, EOFError, OSError, ValueError, NotImplementedError,
                RuntimeError) as exc:
            raise ModelFileError(f"'{path}' is damaged: archive member '{info.filename}' cannot "
                                 f"be read ({first_line(exc)}); {RECOPY}") from None
        members[info.filename] = data
    return members


def sniff(path: Path, raw: bytes,
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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
