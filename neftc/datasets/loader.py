"""Data sets for training, calibration and accuracy sign-off.

The built-in data set is scikit-learn's digits (1797 8x8 images, 10 classes), shipped inside the
package (``neftc/data/digits.npz``), so nothing is downloaded. :func:`load_dataset` also reads
user data: ``.npz`` files, MNIST IDX folders and CIFAR-10 python-version folders.

The train/test split is a property of the data, never of a command's ``--seed``: files that store
their split (``x_train``/``x_test``, MNIST's ``train-*``/``t10k-*``, CIFAR-10's batches) keep it,
and data without one (the built-in digits, a ``.npz`` with ``x``, ``y``) is split by one fixed
permutation drawn from :data:`SPLIT_SEED`. So a model trained with any seed is never tested on its
own training samples, and every command sees the same test set. :attr:`Dataset.split` says which
rule made the split.

A data file is read only if it is a regular file (never a FIFO, device or folder), and the sizes
its headers declare (IDX dimensions, the shapes in a ``.npz``'s ``.npy`` headers) are checked
against the file and against :data:`MAX_DATA_BYTES` before anything is allocated. Nothing is ever
unpickled except CIFAR-10 batches, through an unpickler that admits only empty numpy arrays and
their state. Inputs must be finite and labels integer class indices below :data:`MAX_CLASSES`.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import stat
import struct
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from neftc.errors import DataError, did_you_mean


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # float32 [N, ...] as fed to the model
    y: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    split: str  # how train and test were separated, e.g. "stored by the file (x_train/x_test)"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.test.x.shape[1:])


#: Seed of the one permutation that splits data without a stored split (the built-in digits, a
#: ``.npz`` with ``x``, ``y``) into train and test. A constant of the data format, not a user
#: option: it is used for nothing else, no command's ``--seed`` reaches it, and changing it
#: changes which samples are test samples (0 keeps the split neftc has always used by default).
SPLIT_SEED = 0
#: Fraction of such data (rounded, at least one sample) that goes to the test split.
TEST_FRACTION = 0.25
_PERMUTATION_SPLIT = (f"seeded permutation, split seed {SPLIT_SEED}, "
                      f"test fraction {TEST_FRACTION}")

#: Memory budget of one data set, bytes: the arrays a file declares, with their float32 copies,
#: must fit in it (checked from the headers, before loading). 8 GiB holds MNIST and CIFAR-10
#: many times over.
MAX_DATA_BYTES = 8 * 2**30
#: Labels are class indices 0 .. MAX_CLASSES - 1.
MAX_CLASSES = 100_000


def _split_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices of an unsplit data set of ``n`` samples: the same for every
    caller, drawn from a generator used only for this."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_test = min(max(int(round(n * TEST_FRACTION)), 1), n)
    return order[n_test:], order[:n_test]


def load_digits() -> Dataset:
    """The built-in digits: images [N, 1, 8, 8] scaled to [0, 1], split into 1348 train and
    449 test images by the fixed permutation of :data:`SPLIT_SEED`."""
    with resources.files("neftc.data").joinpath("digits.npz").open("rb") as fh:
        data = np.load(fh, allow_pickle=False)
        x, y = data["x"].astype(np.float32) / 16.0, data["y"].astype(np.int64)
    train, test = _split_indices(len(y))
    x_t = torch.from_numpy(x[:, None])
    y_t = torch.from_numpy(y)
    return Dataset("digits", Split(x_t[train], y_t[train]), Split(x_t[test], y_t[test]), 10,
                   _PERMUTATION_SPLIT)


# --------------------------------------------------------------------------------------------
# User data sets: ``load_dataset(spec)``
# --------------------------------------------------------------------------------------------

_EXPECTED = ("'digits' (the built-in data set), a .npz file with arrays x,y or "
             "x_train,y_train,x_test,y_test, a folder with MNIST IDX files "
             "(t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, optionally the train-* files; "
             ".gz allowed) or a CIFAR-10 python-version folder (test_batch, optionally "
             "data_batch_1..5, as in cifar-10-batches-py)")

#: CIFAR-10 per-channel mean and standard deviation of the [0, 1]-scaled training images.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def load_dataset(spec: str) -> Dataset:
    """Load a data set for calibration and accuracy sign-off.

    ``spec`` is one of:

    * ``"digits"``: the built-in digits (:func:`load_digits`), images [N, 1, 8, 8] in [0, 1].
    * a ``.npz`` file (read with ``allow_pickle=False``, so nothing is ever unpickled) holding
      either ``x`` and ``y``, split into train/test by the fixed permutation of
      :data:`SPLIT_SEED` with :data:`TEST_FRACTION` of the samples (at least one) in the test
      split (as :func:`load_digits` does), or
      ``x_test``, ``y_test`` and optionally ``x_train``, ``y_train``. ``x`` is fed to the model
      as it is, only converted to float32: no rescaling, no added channel dimension. ``y``
      must be 1-D integer class labels >= 0.
    * a folder with MNIST IDX files (``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``
      and optionally ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``; each may be
      gzipped (``.gz``) and ``train-images.idx3-ubyte`` spellings are accepted). Images become
      float32 [N, 1, H, W] (``[N, 1, 28, 28]`` for MNIST) scaled to [0, 1]; labels int64.
    * a CIFAR-10 "python version" folder (``test_batch`` and optionally ``data_batch_1`` ..
      ``data_batch_5``, as extracted from ``cifar-10-python.tar.gz``). The pickles are read
      with a restricted unpickler that only admits the numpy array reconstructors, so a
      tampered file cannot run code. Images become float32 [N, 3, 32, 32]: scaled to [0, 1],
      then normalised per channel with the CIFAR-10 mean ``(0.4914, 0.4822, 0.4465)`` and
      std ``(0.2470, 0.2435, 0.2616)``, i.e. ``(x / 255 - mean) / std``, the usual
      torchvision preprocessing of CIFAR-10 models.

    The split never depends on who loads the data: there is no seed to pass, and
    :attr:`Dataset.split` describes it. A missing train part gives an empty train split with the
    test split's sample shape.
    ``num_classes`` is the largest label (over train and test) plus one. Every problem with the
    data is reported as a :class:`~neftc.errors.DataError`.
    """
    spec = str(spec)
    if spec == "digits":
        return load_digits()
    if "\0" in spec:
        raise DataError(f"data {spec!r} is not a valid path (it holds a NUL byte); "
                        f"expected {_EXPECTED}")
    path = Path(spec).expanduser()
    try:
        exists, is_dir, is_file = path.exists(), path.is_dir(), path.is_file()
    except OSError as exc:
        raise DataError(f"data '{spec}' cannot be accessed ({_os_reason(exc)}); "
                        f"expected {_EXPECTED}") from None
    if not exists:
        hint = "" if spec.strip() else " (the data spec is empty)"
        raise DataError(f"data '{spec}' does not exist{hint}; expected {_EXPECTED}."
                        f"{did_you_mean(spec, ['digits'])}")
    if is_file:
        if path.suffix.lower() == ".npz":
            return _load_npz(path)
        raise DataError(f"data file '{path}' is not a .npz file{_file_hint(path)}; "
                        f"expected {_EXPECTED}")
    if is_dir:
        names = _list_dir(path)
        if any(_is_idx_name(n) for n in names):
            return _load_mnist_idx(path, names)
        if "test_batch" in names or any(_batch_number(n) is not None for n in names):
            return _load_cifar10(path, names)
        raise DataError(f"folder '{path}' holds neither MNIST IDX files nor CIFAR-10 batches"
                        f"{_folder_hint(path, names)}; expected {_EXPECTED}")
    raise DataError(f"data '{spec}' is neither a regular file nor a folder (a FIFO, socket or "
                    f"device is never read); expected {_EXPECTED}")


def check_compatible(dataset: Dataset, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Raise :class:`DataError` unless the model (sample shape ``input_shape``, without the batch
    dimension, and ``num_classes`` outputs) can be evaluated on ``dataset``."""
    input_shape = tuple(int(d) for d in input_shape)
    data_shape = dataset.input_shape
    if data_shape != input_shape:
        raise DataError(
            f"data set '{dataset.name}' has samples of shape {list(data_shape)} but the model "
            f"input shape is {list(input_shape)} (without the batch dimension); "
            f"{_shape_hint(dataset.name, input_shape)}")
    if dataset.num_classes > num_classes:
        raise DataError(
            f"data set '{dataset.name}' has {dataset.num_classes} classes (labels up to "
            f"{dataset.num_classes - 1}) but the model outputs {num_classes}; use a model "
            f"trained for this data set's classes or data whose labels are below {num_classes}")


def _shape_hint(name: str, input_shape: tuple[int, ...]) -> str:
    if name.lower().endswith(".npz"):
        return (f"x in a .npz file is fed to the model as it is (no rescaling, no added "
                f"channel dimension), so reshape it to [N, {', '.join(map(str, input_shape))}] "
                f"before saving")
    if name == "mnist-idx":
        return ("MNIST IDX images are loaded as [N, 1, H, W]; use a model with that input or "
                "convert the data to a .npz file of the model's input shape")
    if name == "cifar10":
        return ("CIFAR-10 images are loaded as [N, 3, 32, 32]; use a model with that input or "
                "convert the data to a .npz file of the model's input shape")
    if name == "digits":
        return ("the built-in digits are [N, 1, 8, 8]; use a model for 8x8 single-channel "
                "images or give your own data as a .npz file of the model's input shape")
    return "give data whose samples match the model's input shape"


# ---- helpers -------------------------------------------------------------------------------


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _list_dir(path: Path) -> set[str]:
    try:
        return {p.name for p in path.iterdir()}
    except OSError as exc:
        raise DataError(f"folder '{path}' cannot be read ({_os_reason(exc)})") from None


def _file_hint(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar", ".zip")):
        return " (it looks like an archive: extract it and pass the extracted folder)"
    if _is_idx_name(path.name):
        return " (it looks like an MNIST IDX file: pass the folder that holds the IDX files)"
    if name == "test_batch" or _batch_number(path.name) is not None:
        return " (it looks like a CIFAR-10 batch: pass the folder that holds the batches)"
    if name.endswith(".npy"):
        return " (a .npy file holds one array: save x and y together with numpy.savez)"
    return ""


def _folder_hint(path: Path, names: set[str]) -> str:
    for sub in sorted(names):
        try:
            inner = _list_dir(path / sub) if (path / sub).is_dir() else set()
        except DataError:
            continue
        if any(_is_idx_name(n) for n in inner) or "test_batch" in inner:
            return f" (its subfolder '{sub}' looks like one: pass '{path / sub}')"
    return ""


def _gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB"


def _check_budget(path: Path, need: int, what: str) -> None:
    if need > MAX_DATA_BYTES:
        raise DataError(f"'{path}' declares {what} needing about {_gib(need)} of memory, more "
                        f"than neftc's data budget of {_gib(MAX_DATA_BYTES)}; use a smaller "
                        f"data set (e.g. a subset saved with numpy.savez)")


def _open_regular(path: Path, what: str) -> BinaryIO:
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
        raise DataError(f"{what} '{path}' cannot be read ({_os_reason(exc)})") from None
    kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
    raise DataError(f"{what} '{path}' is {kind}; it must be a regular file")


def _file_size(fh: BinaryIO) -> int:
    return os.fstat(fh.fileno()).st_size


def _read_bytes(path: Path, what: str) -> bytes:
    """The whole of a regular file of at most MAX_DATA_BYTES."""
    with _open_regular(path, what) as fh:
        size = _file_size(fh)
        if size > MAX_DATA_BYTES:
            raise DataError(f"{what} '{path}' is {_gib(size)}, larger than neftc's data budget "
                            f"of {_gib(MAX_DATA_BYTES)}")
        try:
            return fh.read(size + 1)  # never a larger buffer than the file (or the budget)
        except OSError as exc:
            raise DataError(f"{what} '{path}' cannot be read ({_os_reason(exc)})") from None


def _split_from_numpy(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                 torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))


def _empty_like(test: Split) -> Split:
    return Split(torch.zeros((0, *test.x.shape[1:]), dtype=torch.float32),
                 torch.zeros((0,), dtype=torch.int64))


def _num_classes(*splits: Split) -> int:
    return max(int(s.y.max()) + 1 for s in splits if len(s))


# ---- .npz ----------------------------------------------------------------------------------


def _load_npz(path: Path) -> Dataset:
    with _open_regular(path, "data file") as fh:
        return _load_npz_file(path, fh)


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


def _load_npz_file(path: Path, fh: BinaryIO) -> Dataset:
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
            arrays = _npz_arrays(archive, members, path,
                                 [k for k in ("x_train", "y_train", "x_test", "y_test")
                                  if k in keys])
            combined = False
        elif {"x", "y"} <= keys:
            arrays = _npz_arrays(archive, members, path, ["x", "y"])
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
        train_idx, test_idx = _split_indices(len(y))
        train = _split_from_numpy(x[train_idx], y[train_idx])
        test = _split_from_numpy(x[test_idx], y[test_idx])
        split = _PERMUTATION_SPLIT
    else:
        x_test, y_test = _check_xy(path, arrays["x_test"], arrays["y_test"], "x_test", "y_test")
        if len(y_test) == 0:
            raise DataError(f"'{path}' holds no test samples (x_test and y_test are empty)")
        test = _split_from_numpy(x_test, y_test)
        if "x_train" in arrays:
            x_train, y_train = _check_xy(path, arrays["x_train"], arrays["y_train"],
                                         "x_train", "y_train")
            if x_train.shape[1:] != x_test.shape[1:]:
                raise DataError(f"'{path}': x_train samples have shape {list(x_train.shape[1:])} "
                                f"but x_test samples have shape {list(x_test.shape[1:])}; "
                                f"they must match")
            train = _split_from_numpy(x_train, y_train)
            split = "stored by the file (x_train/x_test)"
        else:
            train = _empty_like(test)
            split = "stored by the file (x_test only, no train split)"
    return Dataset(path.name, train, test, _num_classes(train, test), split)


def _keys(keys: set[str]) -> str:
    return ", ".join(f"'{k}'" for k in sorted(keys)) if keys else "no arrays"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _npz_reason(exc: BaseException) -> str:
    if "allow_pickle" in str(exc):
        return ("it is neither a zip archive of .npy arrays nor a .npy array; neftc never "
                "unpickles data files")
    return _reason(exc)


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


def _npz_arrays(archive: zipfile.ZipFile, members: dict[str, str], path: Path,
                keys: list[str]) -> dict[str, np.ndarray]:
    """The arrays ``keys``, loaded only after every declared shape is checked against the member
    sizes and, with float32 copies, against :data:`MAX_DATA_BYTES`."""
    headers = {key: _npy_header(archive, members[key], path, key) for key in keys}
    need = sum(math.prod(shape) * (dtype.itemsize + 8) for shape, dtype in headers.values())
    shapes = ", ".join(f"{key} {list(shape)}" for key, (shape, _) in headers.items())
    _check_budget(path, need, f"arrays {shapes}")
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
                        f"(float or integer)")
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
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{where}: '{xname}' contains NaN or infinite values (after conversion "
                        f"to float32)")
    return x, y.astype(np.int64)


# ---- MNIST IDX -----------------------------------------------------------------------------

_IDX_FILES = {
    "train_images": ("train-images", "idx3-ubyte"),
    "train_labels": ("train-labels", "idx1-ubyte"),
    "test_images": ("t10k-images", "idx3-ubyte"),
    "test_labels": ("t10k-labels", "idx1-ubyte"),
}


def _is_idx_name(name: str) -> bool:
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
    with _open_regular(path, "IDX file") as fh:
        size = _file_size(fh)
        if not path.name.endswith(".gz"):
            return _parse_idx(path, ndim, fh, size, compressed=False)
        try:
            with gzip.GzipFile(fileobj=fh, mode="rb") as stream:
                return _parse_idx(path, ndim, stream, size, compressed=True)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"IDX file '{path}' is not a valid gzip file ({_reason(exc)}); "
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
    _check_budget(path, expected * 9, f"{'images' if ndim == 3 else 'labels'} {list(dims)}")
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
    return _split_from_numpy(x[:, None].astype(np.float32) / 255.0, y)


def _load_mnist_idx(folder: Path, names: set[str]) -> Dataset:
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
             if found["train_images"] is not None else _empty_like(test))
    if len(train) and train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(f"MNIST folder '{folder}': train images are {list(train.x.shape[2:])} "
                        f"but test images are {list(test.x.shape[2:])}; they must match")
    split = ("stored by the files (train-*/t10k-*)" if found["train_images"] is not None
             else "stored by the files (t10k-* only, no train split)")
    return Dataset("mnist-idx", train, test, _num_classes(train, test), split)


# ---- CIFAR-10 ------------------------------------------------------------------------------


def _batch_number(name: str) -> int | None:
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

    _ALLOWED = {
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


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_bytes(path, "CIFAR-10 batch")
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _ForbiddenGlobal as exc:
        raise DataError(f"CIFAR-10 batch '{path}' references {exc}, which a CIFAR-10 batch never "
                        f"does; it was refused without being loaded (the file may be tampered "
                        f"with: use the original cifar-10-python.tar.gz)") from None
    except Exception as exc:
        raise DataError(f"CIFAR-10 batch '{path}' is corrupt or truncated ({_reason(exc)}); "
                        f"extract it again from cifar-10-python.tar.gz") from None
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
    if isinstance(labels, (list, tuple)) and not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        y = np.asarray([], dtype=object)  # nested or shared lists are never expanded
    else:
        try:
            y = np.asarray(labels)
            if y.ndim == 1 and y.size == 0:
                y = y.astype(np.int64)
        except Exception:
            y = np.asarray([], dtype=object)
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
        _check_budget(p.parent, images * 3072 * 13, f"{images} images [3, 32, 32] (with "
                      f"{p.name})")  # the uint8 data and the float32 copies while normalising
    data = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches]).astype(np.int64)
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(CIFAR10_STD, dtype=np.float32)[:, None, None]
    return _split_from_numpy((x - mean) / std, y)


def _load_cifar10(folder: Path, names: set[str]) -> Dataset:
    if "test_batch" not in names:
        raise DataError(f"CIFAR-10 folder '{folder}' has no test_batch; it is required "
                        f"(extract cifar-10-python.tar.gz completely)")
    test = _cifar_split([folder / "test_batch"])
    if len(test) == 0:
        raise DataError(f"CIFAR-10 batch '{folder / 'test_batch'}' holds no images")
    train_names = sorted((n for n in names if _batch_number(n) is not None), key=_batch_number)
    train = _cifar_split([folder / n for n in train_names]) if train_names else _empty_like(test)
    split = ("stored by the files (data_batch_*/test_batch)" if train_names
             else "stored by the files (test_batch only, no train split)")
    return Dataset("cifar10", train, test, _num_classes(train, test), split)
