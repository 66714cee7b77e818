"""MNIST IDX folders (``t10k-*`` and optionally ``train-*``, each possibly gzipped): every
header's dimensions are checked against the file's size (for ``.gz``, the most its compressed
size can hold) and the memory budget before the data is read."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from neftc.datasets.base import Dataset, Split, count_classes, empty_like, split_from_numpy
from neftc.datasets.files import check_budget, exc_reason, file_size, open_regular
from neftc.errors import DataError

_IDX_FILES = {
    "train_images": ("train-images", "idx3-ubyte"),
    "train_labels": ("train-labels", "idx1-ubyte"),
    "test_images": ("t10k-images", "idx3-ubyte"),
    "test_labels": ("t10k-labels", "idx1-ubyte"),
}


def is_idx_name(name: str) -> bool:
    name = name[:-3] if name.endswith(".gz") else name
    return any(name in (f"{stem}-{kind}", f"{stem}.{kind}") for stem, kind in _IDX_FILES.values())


def _find_idx(folder: Path, names: set[str], key: str) -> Path | None:
    stem, kind = _IDX_FILES[key]
    for base in (f"{stem}-{kind}", f"{stem}.{kind}"):
        for name in (base, base + ".gz"):
            if name in names:
                return folder / name
    return None


#: Most bytes one byte of a deflate stream can expand to (zlib's documented maximum is 1032:1).
_DEFLATE_MAX_RATIO = 1032


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array; the header's dimensions are checked against the file's size
    (for ``.gz``, the most its compressed size can hold) and the memory budget before the data
    is read."""
    with open_regular(path, "IDX file") as fh:
        size = file_size(fh)
        if not path.name.endswith(".gz"):
            return _parse_idx(path, ndim, fh, size, compressed=False)
        try:
            with gzip.GzipFile(fileobj=fh, mode="rb") as stream:
                return _parse_idx(path, ndim, stream, size, compressed=True)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"IDX file '{path}' is not a valid gzip file ({exc_reason(exc)}); "
                            f"download it again") from None


def _parse_idx(path: Path, ndim: int, stream: BinaryIO, size: int,
               compressed: bool) -> np.ndarray:
    header = 4 + 4 * ndim
    head = stream.read(header)
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise DataError(f"'{path}' is not an IDX file (bad magic number "
                        f"{head[:4].hex() or 'none: the file is empty'}); download it again")
    if head[2] != 0x08:
        raise DataError(f"IDX file '{path}' has element type 0x{head[2]:02x}; neftc reads only "
                        f"unsigned-byte (0x08) IDX files such as MNIST's")
    if head[3] != ndim:
        raise DataError(f"IDX file '{path}' has {head[3]} dimensions; expected {ndim} "
                        f"({'images [N, H, W]' if ndim == 3 else 'labels [N]'})")
    if len(head) < header:
        raise DataError(f"IDX file '{path}' is truncated (the header is incomplete); "
                        f"download it again")
    dims = struct.unpack(f">{ndim}i", head[4:header])
    if any(d < 0 for d in dims):
        raise DataError(f"IDX file '{path}' is corrupt (negative size in the header {dims})")
    if ndim == 3 and dims[0] and min(dims[1:]) == 0:
        raise DataError(f"IDX file '{path}' is corrupt (images of size {dims[1]}x{dims[2]} in "
                        f"the header)")
    expected = math.prod(dims)
    if not compressed and size - header != expected:
        state = "truncated" if size - header < expected else "corrupt"
        raise DataError(f"IDX file '{path}' is {state}: its header says {list(dims)} = "
                        f"{expected} bytes of data but it has {size - header}; "
                        f"download it again")
    if compressed and expected > size * _DEFLATE_MAX_RATIO:
        raise DataError(f"IDX file '{path}' is corrupt: its header says {list(dims)} = "
                        f"{expected} bytes of data, more than a gzip file of {size} bytes can "
                        f"hold; download it again")
    # the uint8 data and the float32 copies made while scaling it
    check_budget(path, expected * 9, f"{'images' if ndim == 3 else 'labels'} {list(dims)}")
    body = stream.read(expected + 1)
    if len(body) != expected:
        state = "truncated" if len(body) < expected else "corrupt"
        found = len(body) if len(body) < expected else "more"
        raise DataError(f"IDX file '{path}' is {state}: its header says {list(dims)} = "
                        f"{expected} bytes of data but it has {found}; download it again")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _idx_split(images: Path, labels: Path) -> Split:
    x, y = _read_idx(images, 3), _read_idx(labels, 1)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"'{images}' has {x.shape[0]} images but '{labels}' has {y.shape[0]} "
                        f"labels; they must match (are they from the same release?)")
    return split_from_numpy(x[:, None].astype(np.float32) / 255.0, y)


def load_mnist_idx(folder: Path, names: set[str]) -> Dataset:
    found = {key: _find_idx(folder, names, key) for key in _IDX_FILES}
    for key in ("test_images", "test_labels"):
        if found[key] is None:
            stem, kind = _IDX_FILES[key]
            raise DataError(f"MNIST folder '{folder}' has no {stem}-{kind} (or "
                            f"{stem}-{kind}.gz); the test files are required")
    if (found["train_images"] is None) != (found["train_labels"] is None):
        have = "train_images" if found["train_images"] is not None else "train_labels"
        miss = "train_labels" if have == "train_images" else "train_images"
        stem, kind = _IDX_FILES[miss]
        raise DataError(f"MNIST folder '{folder}' has '{found[have].name}' but no {stem}-{kind} "
                        f"(or .gz); give both train files or neither")
    test = _idx_split(found["test_images"], found["test_labels"])
    if len(test) == 0:
        raise DataError(f"MNIST folder '{folder}': the test files hold no samples")
    train = (_idx_split(found["train_images"], found["train_labels"])
             if found["train_images"] is not None else empty_like(test))
    if len(train) and train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(f"MNIST folder '{folder}': train images are {list(train.x.shape[2:])} "
                        f"but test images are {list(test.x.shape[2:])}; they must match")
    split = ("stored by the files (train-*/t10k-*)" if found["train_images"] is not None
             else "stored by the files (t10k-* only, no train split)")
    return Dataset("mnist-idx", train, test, count_classes(train, test), split)
