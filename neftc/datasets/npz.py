"""``.npz`` data files: read with ``allow_pickle=False`` (nothing is ever unpickled), every
``.npy`` header's shape checked against its member and the memory budget before an array is
loaded; ``x``/``y`` split by the fixed permutation, ``x_train``/``x_test`` kept as stored.

Float ``x`` becomes float32; integer ``x`` (token ids, [N, T]) stays integer (int64). Every other
numeric or bool array with one row per sample is a further model input named after the array
(``attention_mask`` next to ``x``; ``attention_mask_train``/``attention_mask_test`` next to
``x_train``/``x_test``), split like ``x``; other arrays are ignored. Which inputs a model needs,
and their dtypes and ranges, is checked against the model by ``neftc.datasets.fit``."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from neftc.datasets.base import (
    MAX_CLASSES,
    PERMUTATION_SPLIT,
    Dataset,
    count_classes,
    empty_like,
    split_from_numpy,
    split_indices,
)
from neftc.datasets.files import check_budget, exc_reason, open_regular
from neftc.errors import DataError

#: How an ``x``,``y`` file is used when it is not split: all of it is the test set.
WHOLE_AS_TEST = "none: x,y is the test set, all of it (no training split)"


def load_npz(path: Path, split: bool = True) -> Dataset:
    """The data of a .npz file. ``split=False``: an ``x``,``y`` file is the test set, all of it
    (no training split); ``True``: split by the fixed permutation. A file with ``x_test`` keeps
    its own split either way."""
    with open_regular(path, "data file") as fh:
        return _load_npz_file(path, fh, split)


def _open_zip(path: Path, fh: BinaryIO) -> zipfile.ZipFile:
    """The zip archive of a .npz file; a .npy, a pickle or anything else is refused unread."""
    try:
        magic = fh.read(6)
        fh.seek(0)
        if magic.startswith(b"\x93NUMPY"):
            raise DataError(f"'{path}' holds a single array, not a .npz archive; save x and y "
                            f"together with numpy.savez('{path.name}', x=x, y=y)")
        if not magic.startswith(b"PK"):
            raise DataError(f"'{path}' is not a readable .npz file (it is not a zip archive of "
                            f".npy arrays; neftc never unpickles data files); write it with "
                            f"numpy.savez or numpy.savez_compressed")
        return zipfile.ZipFile(fh)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"'{path}' is not a readable .npz file ({_npz_reason(exc)}); write it "
                        f"with numpy.savez or numpy.savez_compressed") from None


def _load_npz_file(path: Path, fh: BinaryIO, split_xy: bool) -> Dataset:
    archive = _open_zip(path, fh)
    try:
        members = {name.removesuffix(".npy"): name for name in archive.namelist()}
        keys = set(members)
        if {"x_test", "y_test"} <= keys:
            if ("x_train" in keys) != ("y_train" in keys):
                have, miss = (("x_train", "y_train") if "x_train" in keys
                              else ("y_train", "x_train"))
                raise DataError(f"'{path}' has '{have}' but no '{miss}'; save both or "
                                f"neither (arrays in the file: {_keys(keys)})")
            main = [k for k in ("x_train", "y_train", "x_test", "y_test") if k in keys]
            extra = _extra_keys(keys, main)
            arrays = _npz_arrays(archive, members, path, main, extra)
            combined = False
        elif {"x", "y"} <= keys:
            arrays = _npz_arrays(archive, members, path, ["x", "y"], _extra_keys(keys, ["x", "y"]))
            combined = True
        else:
            raise DataError(
                f"'{path}' must hold arrays 'x' and 'y' (split into train/test by neftc) or "
                f"'x_test' and 'y_test' (plus optionally 'x_train' and 'y_train'); "
                f"it has {_keys(keys)}")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"'{path}' is a damaged .npz file ({_npz_reason(exc)}); write it "
                        f"again with numpy.savez or numpy.savez_compressed") from None
    finally:
        archive.close()
    if combined:
        x, y = _check_xy(path, arrays["x"], arrays["y"], "x", "y")
        if len(y) == 0:
            raise DataError(f"'{path}' holds no samples (x and y are empty)")
        extras = _extras(arrays, "", ())
        if not split_xy:
            test = split_from_numpy(x, y, extras)
            return Dataset(path.name, empty_like(test), test, count_classes(test), WHOLE_AS_TEST)
        train_idx, test_idx = split_indices(len(y))
        train = split_from_numpy(x[train_idx], y[train_idx],
                                 {name: a[train_idx] for name, a in extras.items()})
        test = split_from_numpy(x[test_idx], y[test_idx],
                                {name: a[test_idx] for name, a in extras.items()})
        split = PERMUTATION_SPLIT
    else:
        x_test, y_test = _check_xy(path, arrays["x_test"], arrays["y_test"], "x_test", "y_test")
        if len(y_test) == 0:
            raise DataError(f"'{path}' holds no test samples (x_test and y_test are empty)")
        both = ("_train",) if "x_train" in arrays else ()
        test = split_from_numpy(x_test, y_test, _extras(arrays, "_test", both))
        if "x_train" in arrays:
            x_train, y_train = _check_xy(path, arrays["x_train"], arrays["y_train"],
                                         "x_train", "y_train")
            if x_train.shape[1:] != x_test.shape[1:]:
                raise DataError(f"'{path}': x_train samples have shape {list(x_train.shape[1:])} "
                                f"but x_test samples have shape {list(x_test.shape[1:])}; "
                                f"they must match")
            train = split_from_numpy(x_train, y_train, _extras(arrays, "_train", ("_test",)))
            split = "stored by the file (x_train/x_test)"
        else:
            train = empty_like(test)
            split = "stored by the file (x_test only, no train split)"
    return Dataset(path.name, train, test, count_classes(train, test), split)


def _keys(keys: set[str]) -> str:
    return ", ".join(f"'{k}'" for k in sorted(keys)) if keys else "no arrays"


def _npz_reason(exc: BaseException) -> str:
    if "allow_pickle" in str(exc):
        return ("it is neither a zip archive of .npy arrays nor a .npy array; neftc never "
                "unpickles data files")
    return exc_reason(exc)


def _npy_header(archive: zipfile.ZipFile, name: str, path: Path,
                key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the .npy header of member ``name``, checked against the member's
    size; nothing but the header is read."""
    info = archive.getinfo(name)
    with archive.open(info) as member:
        if member.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
            raise DataError(f"member '{key}' of '{path}' is not a .npy array; write the file "
                            f"with numpy.savez")
        member.seek(0)
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise DataError(f"array '{key}' in '{path}' uses .npy format version "
                            f"{version[0]}.{version[1]}; save numeric arrays with numpy.savez")
        header = member.tell()
    if dtype.hasobject:
        raise DataError(f"array '{key}' in '{path}' holds Python objects, which neftc does "
                        f"not unpickle; save it as a numeric array")
    declared = math.prod(shape) * dtype.itemsize
    if info.file_size - header != declared:
        raise DataError(f"'{path}' is a damaged .npz file: array '{key}' declares shape "
                        f"{list(shape)} of {dtype} ({declared} bytes) but holds "
                        f"{info.file_size - header} bytes; write it again with numpy.savez")
    return tuple(shape), dtype


def _extra_keys(keys: set[str], main: list[str]) -> list[str]:
    """The members that may be further model inputs: in a file of ``x``/``y`` every other one,
    in a split file those ending in ``_train`` or ``_test``."""
    split = "x" not in main
    return sorted(k for k in keys - set(main)
                  if not split or k.endswith(("_train", "_test")))


def _extras(arrays: dict[str, np.ndarray], suffix: str,
            partners: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The further inputs of one split: the loaded arrays ending in ``suffix`` (all loaded
    extras for ``""``) whose name also exists with every suffix of ``partners``."""
    main = {"x", "y", "x_train", "y_train", "x_test", "y_test"}
    found = {}
    for key, array in arrays.items():
        if key in main or not key.endswith(suffix):
            continue
        name = key.removesuffix(suffix) if suffix else key
        if all(f"{name}{p}" in arrays for p in partners):
            found[name] = array
    return found


def _npz_arrays(archive: zipfile.ZipFile, members: dict[str, str], path: Path,
                keys: list[str], extra: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The arrays ``keys`` and those of ``extra`` that are numeric or bool with one row per
    sample (others are left unread), loaded only after every declared shape is checked against
    the member sizes and, with float32 copies, against :data:`MAX_DATA_BYTES`."""
    headers = {key: _npy_header(archive, members[key], path, key) for key in keys}
    for key in extra:
        try:
            shape, dtype = _npy_header(archive, members[key], path, key)
        except DataError:
            continue  # not an array neftc could feed: not an input
        rows = headers.get("x" if "x" in headers else f"x{key[key.rfind('_'):]}")
        if dtype.kind in "biuf" and shape and rows is not None and rows[0][:1] == shape[:1]:
            headers[key] = (shape, dtype)
    keys = list(headers)
    need = sum(math.prod(shape) * (dtype.itemsize + 8) for shape, dtype in headers.values())
    shapes = ", ".join(f"{key} {list(shape)}" for key, (shape, _) in headers.items())
    check_budget(path, need, f"arrays {shapes}")
    arrays = {}
    for key in keys:
        with archive.open(members[key]) as member:
            arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
    return arrays


def _check_xy(path: Path, x: np.ndarray, y: np.ndarray, xname: str,
              yname: str) -> tuple[np.ndarray, np.ndarray]:
    where = f"'{path}'"
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: '{xname}' has dtype {x.dtype}; it must be numeric "
                        f"(float, or integer token ids)")
    if x.ndim < 2:
        raise DataError(f"{where}: '{xname}' has shape {list(x.shape)}; it must be "
                        f"[N, ...] with one sample per row (at least 2-D)")
    if y.ndim != 1:
        raise DataError(f"{where}: '{yname}' has shape {list(y.shape)}; it must be 1-D "
                        f"class labels [N]")
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: '{yname}' has dtype {y.dtype}; labels must be integer class "
                        f"indices (e.g. save {yname}.astype(numpy.int64))")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{where}: '{xname}' has {x.shape[0]} samples but '{yname}' has "
                        f"{y.shape[0]} labels; they must have the same length")
    if len(y):
        if y.min() < 0:
            raise DataError(f"{where}: '{yname}' has negative labels (min {int(y.min())}); "
                            f"labels must be class indices 0, 1, 2, ...")
        if y.max() >= MAX_CLASSES:
            raise DataError(f"{where}: '{yname}' has labels up to {int(y.max())}; labels must be "
                            f"class indices 0, 1, 2, ... below {MAX_CLASSES}")
    if x.dtype.kind in "biu":  # token ids (or integer pixels): kept, checked against the model
        if x.dtype.kind == "u" and x.size and int(x.max()) > np.iinfo(np.int64).max:
            raise DataError(f"{where}: '{xname}' holds integers beyond int64; save token ids "
                            "as int64")
        return x, y.astype(np.int64)
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{where}: '{xname}' contains NaN or infinite values (after conversion "
                        f"to float32)")
    return x, y.astype(np.int64)
