"""load_dataset / check_compatible on small synthetic .npz, MNIST IDX and CIFAR-10 files."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from neftc.datasets.base import SPLIT_SEED, Dataset, Split, check_compatible
from neftc.datasets.cifar10 import CIFAR10_MEAN, CIFAR10_STD
from neftc.datasets.spec import load_dataset
from neftc.errors import DataError

# ---- writers -------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    return (bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
            + arr.astype(np.uint8).tobytes())


def write_file(path: Path, data: bytes, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    x[0, 0, 0], x[0, 0, 1] = 0, 255
    y = (np.arange(n) % 10).astype(np.uint8)
    return x, y


def write_mnist(folder: Path, n_train: int = 6, n_test: int = 4, *, gz: bool = False,
                dot: bool = False, train: bool = True) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    sep = "." if dot else "-"
    x_tr, y_tr = mnist_arrays(n_train, 1)
    x_te, y_te = mnist_arrays(n_test, 2)
    write_file(folder / f"t10k-images{sep}idx3-ubyte", idx_bytes(x_te), gz)
    write_file(folder / f"t10k-labels{sep}idx1-ubyte", idx_bytes(y_te), gz)
    if train:
        write_file(folder / f"train-images{sep}idx3-ubyte", idx_bytes(x_tr), gz)
        write_file(folder / f"train-labels{sep}idx1-ubyte", idx_bytes(y_tr), gz)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


def cifar_arrays(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[0, :3] = (0, 255, 128)
    return data, [int(v) for v in rng.integers(0, 10, size=n)]


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    # Protocol 4: below 3, Python 3 pickles bytes through _codecs.encode, which the loader
    # (rightly) refuses; the real files are Python 2 pickles, see py2_cifar_pickle below.
    batch = {b"batch_label": b"synthetic", b"labels": labels, b"data": data,
             b"filenames": [b"img%d.png" % i for i in range(len(labels))]}
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=4)


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """The byte layout of the real cifar-10-batches-py files: a Python 2 protocol-2 pickle with
    str (decoded as bytes) keys and numpy.core.multiarray._reconstruct for the array."""

    def s(b: bytes) -> bytes:
        if len(b) < 256:
            return b"U" + bytes([len(b)]) + b
        return b"T" + struct.pack("<i", len(b)) + b

    def i(v: int) -> bytes:
        return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v)

    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0) + b"\x85"
             + s(b"b") + b"\x87R"
             + b"(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86"
             + b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
             + b"(" + i(3) + s(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + i(0) + b"tb"
             + b"\x89" + s(data.tobytes()) + b"tb")
    label_list = b"](" + b"".join(i(v) for v in labels) + b"e"
    return (b"\x80\x02}(" + s(b"data") + array + s(b"labels") + label_list
            + s(b"batch_label") + s(b"testing batch 1 of 1") + b"u.")


def write_cifar(folder: Path, n_batches: int = 2, n: int = 3, n_test: int = 4) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {"train": [], "test": cifar_arrays(n_test, 99)}
    for b in range(1, n_batches + 1):
        data, labels = cifar_arrays(n, b)
        write_cifar_batch(folder / f"data_batch_{b}", data, labels)
        out["train"].append((data, labels))
    write_cifar_batch(folder / "test_batch", *out["test"])
    return out


def cifar_expected(data: np.ndarray) -> np.ndarray:
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    mean = np.asarray(CIFAR10_MEAN, np.float32)[:, None, None]
    std = np.asarray(CIFAR10_STD, np.float32)[:, None, None]
    return (x - mean) / std


def expect_error(spec: Path | str, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(str(spec))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ---- digits and generic spec errors --------------------------------------------------------


def test_digits_spec():
    data = load_dataset("digits")
    assert data.name == "digits" and data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert len(data.train) + len(data.test) == 1797
    assert len(data.test) == 449 and data.split == (f"seeded permutation, split seed "
                                                    f"{SPLIT_SEED}, test fraction 0.25")


def test_missing_path(tmp_path):
    message = expect_error(tmp_path / "nope.npz", "does not exist", ".npz", "MNIST", "CIFAR-10")
    assert "nope.npz" in message
    expect_error("digit", "does not exist", "Did you mean 'digits'")


def test_unrecognised_file_and_folder(tmp_path):
    (tmp_path / "data.csv").write_text("1,2,3\n")
    expect_error(tmp_path / "data.csv", "not a .npz file", "MNIST", "CIFAR-10")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b junk")
    expect_error(tmp_path / "cifar-10-python.tar.gz", "archive", "extract")
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error(empty, "neither MNIST IDX files nor CIFAR-10 batches", ".npz")
    outer = tmp_path / "outer"
    write_cifar(outer / "cifar-10-batches-py", n_batches=0)
    expect_error(outer, "subfolder 'cifar-10-batches-py'")
    write_mnist(tmp_path / "mnist")
    expect_error(tmp_path / "mnist" / "t10k-images-idx3-ubyte", "pass the folder")


def test_split_cannot_be_moved_by_a_caller():
    # The split is the data's: neither a seed nor a test fraction can be passed.
    for kwargs in ({"seed": 3}, {"test_fraction": 0.5}):
        with pytest.raises(TypeError):
            load_dataset("digits", **kwargs)


# ---- .npz ----------------------------------------------------------------------------------


def test_npz_combined_split_is_deterministic(tmp_path):
    x = np.arange(20 * 3 * 4, dtype=np.int16).reshape(20, 3, 4)
    y = np.arange(20, dtype=np.uint8) % 5
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    data = load_dataset(str(tmp_path / "mine.npz"))
    assert data.name == "mine.npz" and data.num_classes == 5 and data.input_shape == (3, 4)
    assert len(data.test) == 5 and len(data.train) == 15
    # integer x is kept as integers (token ids); a float model gets it as float32 (fit_inputs)
    assert data.test.x.dtype == torch.int64 and data.test.y.dtype == torch.int64
    assert data.split == f"seeded permutation, split seed {SPLIT_SEED}, test fraction 0.25"
    order = np.random.default_rng(SPLIT_SEED).permutation(20)
    # fed as-is: no rescaling, no channel dimension
    np.testing.assert_array_equal(data.test.x.numpy(), x[order[:5]].astype(np.int64))
    np.testing.assert_array_equal(data.train.y.numpy(), y[order[5:]])
    again = load_dataset(str(tmp_path / "mine.npz"))
    assert torch.equal(again.test.x, data.test.x) and torch.equal(again.train.y, data.train.y)


def test_npz_small_combined_keeps_one_test_sample(tmp_path):
    np.savez(tmp_path / "one.npz", x=np.arange(2 * 3).reshape(2, 3), y=np.array([0, 1]))
    data = load_dataset(str(tmp_path / "one.npz"))  # round(2 * 0.25) = 0, raised to 1
    assert len(data.test) == 1 and len(data.train) == 1


def test_npz_explicit_and_test_only(tmp_path):
    rng = np.random.default_rng(0)
    x_tr, x_te = rng.normal(size=(6, 7)), rng.normal(size=(4, 7))
    np.savez_compressed(tmp_path / "s.npz", x_train=x_tr, y_train=np.array([0, 1, 2, 0, 1, 2]),
                        x_test=x_te, y_test=np.array([3, 0, 1, 2]))
    data = load_dataset(str(tmp_path / "s.npz"))
    assert len(data.train) == 6 and len(data.test) == 4 and data.num_classes == 4
    assert data.split == "stored by the file (x_train/x_test)"
    np.testing.assert_allclose(data.test.x.numpy(), x_te.astype(np.float32))
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    np.savez(tmp_path / "t.npz", x_test=np.ones((3, 2, 5), np.float32), y_test=np.array([0, 1, 7]))
    data = load_dataset(str(tmp_path / "t.npz"))
    assert len(data.train) == 0 and tuple(data.train.x.shape) == (0, 2, 5)
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    assert data.num_classes == 8 and data.input_shape == (2, 5)
    assert data.split == "stored by the file (x_test only, no train split)"


def test_npz_missing_arrays_lists_what_it_has(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 3)), labels=np.zeros(2, int))
    expect_error(tmp_path / "a.npz", "'x' and 'y'", "'x_test'", "'images'", "'labels'")
    np.savez(tmp_path / "b.npz", x_test=np.zeros((2, 3)), y_test=np.zeros(2, int),
             x_train=np.zeros((2, 3)))
    expect_error(tmp_path / "b.npz", "'x_train' but no 'y_train'")


@pytest.mark.parametrize("arrays, fragments", [
    ({"x": np.zeros((5, 3)), "y": np.zeros(4, int)}, ("5 samples", "4 labels")),
    ({"x": np.zeros((3, 3)), "y": np.array([0.0, 1.5, 2.0])}, ("'y' has dtype float64", "integer")),
    ({"x": np.zeros((3, 3)), "y": np.array([0, -1, 2])}, ("negative labels",)),
    ({"x": np.zeros((3, 3)), "y": np.zeros((3, 1), int)}, ("must be 1-D",)),
    ({"x": np.zeros((0, 3)), "y": np.zeros(0, int)}, ("no samples",)),
    ({"x": np.zeros(3), "y": np.zeros(3, int)}, ("at least 2-D",)),
    ({"x": np.array([[np.nan, 1.0]]), "y": np.zeros(1, int)}, ("NaN",)),
    ({"x": np.array([["a", "b"]]), "y": np.zeros(1, int)}, ("numeric",)),
    ({"x_test": np.zeros((0, 3)), "y_test": np.zeros(0, int)}, ("no test samples",)),
    ({"x_test": np.zeros((2, 3)), "y_test": np.zeros(2, int), "x_train": np.zeros((2, 4)),
      "y_train": np.zeros(2, int)}, ("x_train samples have shape [4]",)),
])
def test_npz_bad_contents(tmp_path, arrays, fragments):
    np.savez(tmp_path / "bad.npz", **arrays)
    expect_error(tmp_path / "bad.npz", "bad.npz", *fragments)


def test_npz_garbage_object_and_single_array(tmp_path):
    (tmp_path / "g.npz").write_bytes(b"this is not a numpy file at all" * 10)
    expect_error(tmp_path / "g.npz", "not a readable .npz file", "numpy.savez")
    # a pickle with a .npz name must not be unpickled
    marker = tmp_path / "pwned"
    (tmp_path / "p.npz").write_bytes(pickle.dumps(_Evil(marker)))
    expect_error(tmp_path / "p.npz", "not a readable .npz file")
    assert not marker.exists()
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2, int))
    expect_error(tmp_path / "o.npz", "holds Python objects")
    with open(tmp_path / "one.npz", "wb") as fh:
        np.save(fh, np.zeros((2, 3)))
    expect_error(tmp_path / "one.npz", "single array")
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((4, 3)), y=np.zeros(4, int))
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:150])
    expect_error(tmp_path / "cut.npz", "cut.npz", ".npz")


# ---- MNIST IDX -----------------------------------------------------------------------------


@pytest.mark.parametrize("gz, dot", [(False, False), (True, False), (False, True)])
def test_mnist_idx(tmp_path, gz, dot):
    arrays = write_mnist(tmp_path, gz=gz, dot=dot)
    data = load_dataset(str(tmp_path))
    assert data.name == "mnist-idx" and data.num_classes == 6 and data.input_shape == (1, 28, 28)
    assert tuple(data.train.x.shape) == (6, 1, 28, 28)
    assert tuple(data.test.x.shape) == (4, 1, 28, 28)
    assert data.test.x.dtype == torch.float32 and data.test.y.dtype == torch.int64
    assert float(data.test.x.min()) == 0.0 and float(data.test.x.max()) == 1.0
    np.testing.assert_allclose(data.test.x.numpy()[:, 0], arrays["x_test"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.train.y.numpy(), arrays["y_train"])
    np.testing.assert_array_equal(data.test.y.numpy(), [0, 1, 2, 3])
    assert data.split == "stored by the files (train-*/t10k-*)"


def test_mnist_test_only(tmp_path):
    write_mnist(tmp_path, train=False, gz=True)
    data = load_dataset(str(tmp_path))
    assert len(data.train) == 0 and tuple(data.train.x.shape) == (0, 1, 28, 28)
    assert len(data.test) == 4 and data.num_classes == 4
    assert data.split == "stored by the files (t10k-* only, no train split)"


def test_mnist_missing_test_files(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    expect_error(tmp_path, "t10k-labels-idx1-ubyte", "required")
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    expect_error(tmp_path, "train-labels-idx1-ubyte", "both train files or neither")


def _corrupt_test_images(folder: Path, data: bytes, gz: bool = False) -> None:
    write_mnist(folder, train=False)
    (folder / "t10k-images-idx3-ubyte").unlink()
    write_file(folder / "t10k-images-idx3-ubyte", data, gz=False)
    if gz:
        (folder / "t10k-images-idx3-ubyte").rename(folder / "t10k-images-idx3-ubyte.gz")


def test_mnist_corrupt_files(tmp_path):
    good = idx_bytes(mnist_arrays(4, 2)[0])
    cases = {
        "magic": (b"\x01\x02" + good[2:], ("not an IDX file", "bad magic")),
        "empty": (b"", ("not an IDX file",)),
        "dtype": (good[:2] + b"\x0d" + good[3:], ("element type 0x0d",)),
        "ndim": (good[:3] + b"\x02" + good[4:], ("2 dimensions", "expected 3")),
        "header": (good[:10], ("truncated", "header")),
        "short": (good[:-5], ("truncated", "download it again")),
        "long": (good + b"\x00", ("corrupt", "header says [4, 28, 28]")),
    }
    for name, (data, fragments) in cases.items():
        folder = tmp_path / name
        _corrupt_test_images(folder, data)
        expect_error(folder, "t10k-images-idx3-ubyte", *fragments)
    folder = tmp_path / "gzip"
    _corrupt_test_images(folder, gzip.compress(good)[:-20], gz=True)
    expect_error(folder, "not a valid gzip file")


def test_mnist_count_mismatch(tmp_path):
    write_mnist(tmp_path, train=False)
    write_file(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(3, np.uint8)))
    expect_error(tmp_path, "4 images", "3 labels")


# ---- CIFAR-10 ------------------------------------------------------------------------------


def test_cifar10(tmp_path):
    arrays = write_cifar(tmp_path)
    data = load_dataset(str(tmp_path))
    assert data.name == "cifar10" and data.input_shape == (3, 32, 32)
    assert tuple(data.train.x.shape) == (6, 3, 32, 32)
    assert tuple(data.test.x.shape) == (4, 3, 32, 32)
    assert data.test.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    train_data = np.concatenate([d for d, _ in arrays["train"]])
    np.testing.assert_allclose(data.train.x.numpy(), cifar_expected(train_data), rtol=1e-5)
    np.testing.assert_allclose(data.test.x.numpy(), cifar_expected(arrays["test"][0]), rtol=1e-5)
    # the first bytes of a row are the red plane, row-major: pixels (0, 0) = 0 and (0, 1) = 255
    assert data.test.x[0, 0, 0, 0].item() == pytest.approx((0 - CIFAR10_MEAN[0]) / CIFAR10_STD[0])
    assert data.test.x[0, 0, 0, 1].item() == pytest.approx((1 - CIFAR10_MEAN[0]) / CIFAR10_STD[0])
    labels = [v for _, ls in arrays["train"] for v in ls]
    assert data.train.y.tolist() == labels and data.test.y.tolist() == arrays["test"][1]
    assert data.num_classes == max(labels + arrays["test"][1]) + 1
    assert data.split == "stored by the files (data_batch_*/test_batch)"


def test_cifar10_test_only_and_python2_pickle(tmp_path):
    data_arr, labels = cifar_arrays(3, 5)
    (tmp_path / "test_batch").write_bytes(py2_cifar_pickle(data_arr, labels))
    data = load_dataset(str(tmp_path))
    assert len(data.train) == 0 and tuple(data.train.x.shape) == (0, 3, 32, 32)
    np.testing.assert_allclose(data.test.x.numpy(), cifar_expected(data_arr), rtol=1e-5)
    assert data.test.y.tolist() == labels
    assert data.split == "stored by the files (test_batch only, no train split)"


class _Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _NumpyButNotAllowed:
    def __reduce__(self):
        return (np.frombuffer, (b"\x00" * 3072, np.uint8))


def test_cifar10_forbidden_global_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, fh, protocol=4)
    expect_error(tmp_path, "test_batch", "system", "refused")
    assert not marker.exists()
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": _NumpyButNotAllowed(), b"labels": [0]}, fh, protocol=4)
    expect_error(tmp_path, "numpy.frombuffer", "refused")
    # a protocol-2 pickle written by Python 3 encodes bytes through _codecs.encode: refused too
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"labels": [0]}, fh, protocol=2)
    expect_error(tmp_path, "_codecs.encode", "refused")


def test_cifar10_corrupt(tmp_path):
    write_cifar(tmp_path, n_batches=1)
    good = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(good[: len(good) // 2])
    expect_error(tmp_path, "test_batch", "corrupt or truncated")
    (tmp_path / "test_batch").write_bytes(b"\x00garbage that is no pickle")
    expect_error(tmp_path, "corrupt or truncated")
    (tmp_path / "test_batch").write_bytes(good)
    (tmp_path / "data_batch_1").write_bytes(b"")
    expect_error(tmp_path, "data_batch_1", "corrupt or truncated")


@pytest.mark.parametrize("batch, fragments", [
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, ("[2, 100]", "[N, 3072]")),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, ("float32",)),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, ("2 images but 1 labels",)),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, ("outside 0..9",)),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, b"x"]}, ("integer class labels",)),
    ({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]}, ("CIFAR-100",)),
    ({b"pixels": np.zeros((2, 3072), np.uint8)}, ("b'data' and b'labels'", "b'pixels'")),
    ([1, 2, 3], ("holds a list",)),
    ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, ("holds no images",)),
])
def test_cifar10_bad_contents(tmp_path, batch, fragments):
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump(batch, fh, protocol=4)
    expect_error(tmp_path, "test_batch", *fragments)


def test_cifar10_requires_test_batch(tmp_path):
    write_cifar(tmp_path, n_batches=1)
    (tmp_path / "test_batch").unlink()
    expect_error(tmp_path, "no test_batch", "required")


# ---- check_compatible ----------------------------------------------------------------------


def _dataset(name: str, shape: tuple[int, ...], labels: list[int]) -> Dataset:
    test = Split(torch.zeros((len(labels), *shape)), torch.tensor(labels))
    empty = Split(torch.zeros((0, *shape)), torch.zeros(0, dtype=torch.int64))
    return Dataset(name, empty, test, max(labels) + 1, "stored by the file (x_test only)")


def test_check_compatible():
    data = _dataset("mine.npz", (1, 28, 28), [0, 9])
    check_compatible(data, (1, 28, 28), 10)
    check_compatible(data, [1, 28, 28], 12)  # more outputs than classes is fine
    with pytest.raises(DataError) as info:
        check_compatible(data, (3, 32, 32), 10)
    message = str(info.value)
    assert "[1, 28, 28]" in message and "[3, 32, 32]" in message and "as it is" in message
    assert "reshape it to [N, 3, 32, 32]" in message
    with pytest.raises(DataError, match=r"10 classes .* model outputs 5"):
        check_compatible(data, (1, 28, 28), 5)
    with pytest.raises(DataError, match=r"\[N, 3, 32, 32\]"):
        check_compatible(_dataset("cifar10", (3, 32, 32), [0]), (1, 28, 28), 10)
    with pytest.raises(DataError, match=r"\[N, 1, H, W\]"):
        check_compatible(_dataset("mnist-idx", (1, 28, 28), [0]), (784,), 10)
