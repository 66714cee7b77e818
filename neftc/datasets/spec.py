"""``load_dataset(spec)``: the built-in digits by name, or a user data file or folder, recognised
by its kind (a ``.npz`` file, an MNIST IDX folder, a CIFAR-10 folder) and handed to the module of
that file format."""

from __future__ import annotations

from pathlib import Path

from neftc.datasets.base import Dataset
from neftc.datasets.cifar10 import batch_number, load_cifar10
from neftc.datasets.digits import load_digits
from neftc.datasets.files import os_reason
from neftc.datasets.idx import is_idx_name, load_mnist_idx
from neftc.datasets.npz import load_npz
from neftc.errors import DataError, did_you_mean

_EXPECTED = ("'digits' (the built-in data set), a .npz file with arrays x,y or "
             "x_train,y_train,x_test,y_test, a folder with MNIST IDX files "
             "(t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, optionally the train-* files; "
             ".gz allowed) or a CIFAR-10 python-version folder (test_batch, optionally "
             "data_batch_1..5, as in cifar-10-batches-py)")


def load_dataset(spec: str, *, split: bool = True) -> Dataset:
    """Load a data set for calibration and accuracy sign-off.

    ``spec`` is one of:

    * ``"digits"``: the built-in digits (:func:`load_digits`), images [N, 1, 8, 8] in [0, 1].
    * a ``.npz`` file (read with ``allow_pickle=False``, so nothing is ever unpickled) holding
      either ``x`` and ``y``, split into train/test by the fixed permutation of
      :data:`SPLIT_SEED` with :data:`TEST_FRACTION` of the samples (at least one) in the test
      split (as :func:`load_digits` does), or with ``split=False`` used whole as the test set
      (``neftc verify`` without ``--split``), or
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
    return _load_path(spec, Path(spec).expanduser(), split)


def _load_path(spec: str, path: Path, split: bool) -> Dataset:
    """The data set at ``path`` (``spec`` expanded), by the kind of file or folder it is."""
    try:
        exists, is_dir, is_file = path.exists(), path.is_dir(), path.is_file()
    except OSError as exc:
        raise DataError(f"data '{spec}' cannot be accessed ({os_reason(exc)}); "
                        f"expected {_EXPECTED}") from None
    if not exists:
        hint = "" if spec.strip() else " (the data spec is empty)"
        raise DataError(f"data '{spec}' does not exist{hint}; expected {_EXPECTED}."
                        f"{did_you_mean(spec, ['digits'])}")
    if is_file:
        if path.suffix.lower() == ".npz":
            return load_npz(path, split)
        raise DataError(f"data file '{path}' is not a .npz file{_file_hint(path)}; "
                        f"expected {_EXPECTED}")
    if is_dir:
        names = _list_dir(path)
        if any(is_idx_name(n) for n in names):
            return load_mnist_idx(path, names)
        if "test_batch" in names or any(batch_number(n) is not None for n in names):
            return load_cifar10(path, names)
        raise DataError(f"folder '{path}' holds neither MNIST IDX files nor CIFAR-10 batches"
                        f"{_folder_hint(path, names)}; expected {_EXPECTED}")
    raise DataError(f"data '{spec}' is neither a regular file nor a folder (a FIFO, socket or "
                    f"device is never read); expected {_EXPECTED}")


def _list_dir(path: Path) -> set[str]:
    try:
        return {p.name for p in path.iterdir()}
    except OSError as exc:
        raise DataError(f"folder '{path}' cannot be read ({os_reason(exc)})") from None


def _file_hint(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar", ".zip")):
        return " (it looks like an archive: extract it and pass the extracted folder)"
    if is_idx_name(path.name):
        return " (it looks like an MNIST IDX file: pass the folder that holds the IDX files)"
    if name == "test_batch" or batch_number(path.name) is not None:
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
        if any(is_idx_name(n) for n in inner) or "test_batch" in inner:
            return f" (its subfolder '{sub}' looks like one: pass '{path / sub}')"
    return ""
