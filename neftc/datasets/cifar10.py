"""CIFAR-10 "python version" folders (``test_batch``, ``data_batch_1..5``): the pickled batches
are read through an unpickler that admits only empty numpy arrays and their state, so a tampered
file cannot run code; images are normalised with the CIFAR-10 mean and std."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np

from neftc.datasets.base import Dataset, Split, count_classes, empty_like, split_from_numpy
from neftc.datasets.files import check_budget, exc_reason, read_bytes
from neftc.errors import DataError

#: CIFAR-10 per-channel mean and standard deviation of the [0, 1]-scaled training images.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def batch_number(name: str) -> int | None:
    if name.startswith("data_batch_") and name[len("data_batch_"):].isdigit():
        return int(name[len("data_batch_"):])
    return None


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 1.26 without the numpy._core alias
        from numpy.core.multiarray import _reconstruct

    def empty_array(subtype, shape, dtype):
        """numpy pickles an array as an empty one plus its state (the data, with a shape numpy
        checks against it); any other shape would allocate memory the file does not hold."""
        if subtype is not np.ndarray or shape not in ((0,), [0], 0):
            raise _ForbiddenGlobal(f"an array of shape {shape!r} built without data")
        return _reconstruct(subtype, shape, dtype)

    return empty_array


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR-10 batch holds: dicts, lists, bytes, ints and numpy arrays."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise _ForbiddenGlobal(f"{module}.{name}")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return np.ndarray if name == "ndarray" else np.dtype

    def persistent_load(self, pid):
        raise _ForbiddenGlobal("a persistent object id")


class _ForbiddenGlobal(Exception):
    pass


def _unpickle_batch(path: Path) -> object:
    """The object a CIFAR-10 batch file pickles, through :class:`_RestrictedUnpickler`."""
    raw = read_bytes(path, "CIFAR-10 batch")
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _ForbiddenGlobal as exc:
        raise DataError(f"CIFAR-10 batch '{path}' references {exc}, which a CIFAR-10 batch never "
                        f"does; it was refused without being loaded (the file may be tampered "
                        f"with: use the original cifar-10-python.tar.gz)") from None
    except Exception as exc:
        raise DataError(f"CIFAR-10 batch '{path}' is corrupt or truncated ({exc_reason(exc)}); "
                        f"extract it again from cifar-10-python.tar.gz") from None


def _label_array(labels: object) -> np.ndarray:
    """A batch's labels as an array; an object array (refused by the caller) when they are not a
    flat list of integers (nested or shared lists are never expanded)."""
    if isinstance(labels, (list, tuple)) and not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        return np.asarray([], dtype=object)
    try:
        y = np.asarray(labels)
        if y.ndim == 1 and y.size == 0:
            y = y.astype(np.int64)
    except Exception:
        y = np.asarray([], dtype=object)
    return y


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = _unpickle_batch(path)
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-10 batch '{path}' holds a {type(obj).__name__}, not the "
                        f"expected dict with b'data' and b'labels'")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if labels is None and (b"fine_labels" in obj or "fine_labels" in obj):
        raise DataError(f"'{path}' looks like a CIFAR-100 batch (it has fine_labels); only "
                        f"CIFAR-10 folders are read directly: convert it to a .npz file")
    if data is None or labels is None:
        keys = ", ".join(repr(k) for k in obj) or "nothing"
        raise DataError(f"CIFAR-10 batch '{path}' must hold b'data' and b'labels'; it has {keys}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        desc = (f"a {data.dtype} array of shape {list(data.shape)}"
                if isinstance(data, np.ndarray) else f"a {type(data).__name__}")
        raise DataError(f"CIFAR-10 batch '{path}': b'data' is {desc}; expected a uint8 array "
                        f"[N, 3072]")
    y = _label_array(labels)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"CIFAR-10 batch '{path}': b'labels' must be a list of integer class "
                        f"labels")
    if len(y) != data.shape[0]:
        raise DataError(f"CIFAR-10 batch '{path}' has {data.shape[0]} images but {len(y)} "
                        f"labels; it is corrupt")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"CIFAR-10 batch '{path}' has labels outside 0..9 "
                        f"(min {int(y.min())}, max {int(y.max())}); it is corrupt")
    return data, y


def _cifar_split(paths: list[Path]) -> Split:
    batches = []
    for p in paths:
        batches.append(_read_cifar_batch(p))
        images = sum(b[0].shape[0] for b in batches)
        check_budget(p.parent, images * 3072 * 13, f"{images} images [3, 32, 32] (with "
                     f"{p.name})")  # the uint8 data and the float32 copies while normalising
    data = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches]).astype(np.int64)
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(CIFAR10_STD, dtype=np.float32)[:, None, None]
    return split_from_numpy((x - mean) / std, y)


def load_cifar10(folder: Path, names: set[str]) -> Dataset:
    if "test_batch" not in names:
        raise DataError(f"CIFAR-10 folder '{folder}' has no test_batch; it is required "
                        f"(extract cifar-10-python.tar.gz completely)")
    test = _cifar_split([folder / "test_batch"])
    if len(test) == 0:
        raise DataError(f"CIFAR-10 batch '{folder / 'test_batch'}' holds no images")
    train_names = sorted((n for n in names if batch_number(n) is not None), key=batch_number)
    train = _cifar_split([folder / n for n in train_names]) if train_names else empty_like(test)
    split = ("stored by the files (data_batch_*/test_batch)" if train_names
             else "stored by the files (test_batch only, no train split)")
    return Dataset("cifar10", train, test, count_classes(train, test), split)
