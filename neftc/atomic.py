"""Write an output directory atomically: build it beside the destination, then swap it in."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from neftc.errors import OutputError


@contextmanager
def atomic_directory(dest: Path, marker: str) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``dest``.

    ``dest`` may be absent, empty, or an earlier output (it holds ``marker``); anything else is
    refused, so a typo never deletes a user's directory. On any failure nothing is left behind.
    """
    dest = Path(dest)
    if dest.exists():
        if not dest.is_dir():
            raise OutputError(f"output '{dest}' exists and is not a directory; choose another -o")
        if any(dest.iterdir()) and not (dest / marker).exists():
            raise OutputError(f"output directory '{dest}' is not empty and is not a neftc output "
                              f"(no {marker}); choose another -o or empty it")
    parent = dest.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an output directory is not
    except OSError as exc:
        raise OutputError(f"cannot create output directory next to '{dest}': {exc}") from None
    try:
        yield tmp
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=parent))
            os.replace(dest, old / "x")
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest`` (same suffix); on success it replaces ``dest``,
    on failure it is removed. A directory at ``dest`` is refused."""
    dest = Path(dest)
    if dest.is_dir():
        raise OutputError(f"output '{dest}' is a directory; give a file name")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.stem}.tmp-", suffix=dest.suffix,
                                    dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write '{dest}': {exc}") from None
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an output file is not
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
