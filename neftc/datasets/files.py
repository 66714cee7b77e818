"""Reading data files safely, shared by every file format.

A data file is read only if it is a regular file (never a FIFO, device or folder), and the sizes
its headers declare (IDX dimensions, the shapes in a ``.npz``'s ``.npy`` headers) are checked
against the file and against :data:`MAX_DATA_BYTES` before anything is allocated.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from neftc.errors import DataError

#: Memory budget of one data set, bytes: the arrays a file declares, with their float32 copies,
#: must fit in it (checked from the headers, before loading). 8 GiB holds MNIST and CIFAR-10
#: many times over.
MAX_DATA_BYTES = 8 * 2**30


def os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB"


def check_budget(path: Path, need: int, what: str) -> None:
    if need > MAX_DATA_BYTES:
        raise DataError(f"'{path}' declares {what} needing about {gib(need)} of memory, more "
                        f"than neftc's data budget of {gib(MAX_DATA_BYTES)}; use a smaller "
                        f"data set (e.g. a subset saved with numpy.savez)")


def open_regular(path: Path, what: str) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file: a FIFO, device, socket or folder
    is refused before it is opened for reading, so it can never block or stream forever."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            fh = os.fdopen(fd, "rb")
            mode = os.fstat(fd).st_mode  # the file opened, not the name stat'ed before
            if stat.S_ISREG(mode):
                return fh
            fh.close()
    except OSError as exc:
        raise DataError(f"{what} '{path}' cannot be read ({os_reason(exc)})") from None
    kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
    raise DataError(f"{what} '{path}' is {kind}; it must be a regular file")


def file_size(fh: BinaryIO) -> int:
    return os.fstat(fh.fileno()).st_size


def read_bytes(path: Path, what: str) -> bytes:
    """The whole of a regular file of at most MAX_DATA_BYTES."""
    with open_regular(path, what) as fh:
        size = file_size(fh)
        if size > MAX_DATA_BYTES:
            raise DataError(f"{what} '{path}' is {gib(size)}, larger than neftc's data budget "
                            f"of {gib(MAX_DATA_BYTES)}")
        try:
            return fh.read(size + 1)  # never a larger buffer than the file (or the budget)
        except OSError as exc:
            raise DataError(f"{what} '{path}' cannot be read ({os_reason(exc)})") from None


def exc_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
