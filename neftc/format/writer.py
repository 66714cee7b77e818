"""Write a layout directory: ``layout.json``, the binary sidecars and ``SHA256SUMS``, atomically."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from neftc.atomic import atomic_directory
from neftc.format.schema import CHECKSUMS_FILE, LAYOUT_FILE, LEVELS_FILE, TENSORS_FILE, LayoutDoc

ALIGN = 64  # every record of a sidecar starts at a multiple of this many bytes


@dataclass
class Sidecar:
    """An append-only binary sidecar, each record aligned to ``ALIGN`` bytes (zero padding)."""

    chunks: list[bytes] = field(default_factory=list)
    size: int = 0

    def append(self, data: bytes) -> int:
        """Append ``data``; return its byte offset."""
        pad = (-self.size) % ALIGN
        if pad:
            self.chunks.append(b"\0" * pad)
            self.size += pad
        offset = self.size
        self.chunks.append(data)
        self.size += len(data)
        return offset

    def bytes(self) -> bytes:
        return b"".join(self.chunks)


def document_bytes(doc: LayoutDoc) -> bytes:
    """``layout.json`` exactly as written: ``json.dumps(indent=1)`` and a trailing newline."""
    return json.dumps(doc.model_dump(mode="json"), indent=1).encode() + b"\n"


def checksums(files: dict[str, bytes]) -> str:
    """``SHA256SUMS`` text (GNU ``sha256sum`` format) over ``files``, in order."""
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in files.items())


def write_layout(out_dir: Path, doc: LayoutDoc, levels: bytes, tensors: bytes,
                 extras: Callable[[Path], None] | None = None) -> None:
    """Write the layout directory atomically with a ``SHA256SUMS`` over ``layout.json`` and the
    sidecars. ``extras(tmp)`` may add human-readable files (reports) that are not checksummed."""
    files = {LAYOUT_FILE: document_bytes(doc), LEVELS_FILE: levels, TENSORS_FILE: tensors}
    with atomic_directory(Path(out_dir), marker=LAYOUT_FILE) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if extras is not None:
            extras(tmp)
        (tmp / CHECKSUMS_FILE).write_text(checksums(files))
