"""The data set every file format loads into (a :class:`Dataset` of two :class:`Split`), the
label bound and :func:`check_compatible` (can a model be evaluated on a data set).

The train/test split is a property of the data, never of a command's ``--seed``: files that store
their split (``x_train``/``x_test``, MNIST's ``train-*``/``t10k-*``, CIFAR-10's batches) keep it,
and data without one (the built-in digits, a ``.npz`` with ``x``, ``y``) is split by one fixed
permutation drawn from :data:`SPLIT_SEED`. So a model trained with any seed is never tested on its
own training samples, and every command sees the same test set. :attr:`Dataset.split` says which
rule made the split. Inputs must be finite and labels integer class indices below
:data:`MAX_CLASSES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from neftc.errors import DataError


@dataclass(frozen=True)
class Split:
    """Samples and labels. ``x`` is the model's first input: float32 [N, ...] (images, features)
    or int64 [N, T] (token ids); ``extras`` the model's other inputs by name (e.g.
    ``attention_mask``), each [N, ...] (int64, float32 or bool), in the model's input order once
    fitted to it (``neftc.datasets.fit``)."""

    x: torch.Tensor
    y: torch.Tensor  # int64 [N]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def inputs(self) -> tuple[torch.Tensor, ...]:
        """``x`` and the extras, in order: what the model is fed."""
        return (self.x, *self.extras.values())

    def take(self, index: torch.Tensor | slice) -> Split:
        """The samples ``index`` (a slice or an index tensor) of every array."""
        return Split(self.x[index], self.y[index],
                     {name: t[index] for name, t in self.extras.items()})


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
PERMUTATION_SPLIT = (f"seeded permutation, split seed {SPLIT_SEED}, "
                     f"test fraction {TEST_FRACTION}")

#: Labels are class indices 0 .. MAX_CLASSES - 1.
MAX_CLASSES = 100_000


def split_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices of an unsplit data set of ``n`` samples: the same for every
    caller, drawn from a generator used only for this."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_test = min(max(round(n * TEST_FRACTION), 1), n)
    return order[n_test:], order[:n_test]


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


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A data array as a tensor: bool stays bool, integers become int64 (token ids, masks),
    anything else float32."""
    dtype = (np.bool_ if array.dtype == np.bool_ else np.int64 if array.dtype.kind in "iu"
             else np.float32)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))


def split_from_numpy(x: np.ndarray, y: np.ndarray,
                     extras: dict[str, np.ndarray] | None = None) -> Split:
    """A split of float ``x`` (float32) or integer ``x`` (int64, kept), int64 labels and the
    ``extras`` arrays (``as_tensor``)."""
    return Split(as_tensor(x), torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
                 {name: as_tensor(a) for name, a in (extras or {}).items()})


def empty_like(test: Split) -> Split:
    return Split(torch.zeros((0, *test.x.shape[1:]), dtype=test.x.dtype),
                 torch.zeros((0,), dtype=torch.int64),
                 {name: torch.zeros((0, *t.shape[1:]), dtype=t.dtype)
                  for name, t in test.extras.items()})


def count_classes(*splits: Split) -> int:
    return max(int(s.y.max()) + 1 for s in splits if len(s))


def raw_pixel_warning(split: Split, name: str) -> str | None:
    """A warning when ``split``'s ``x`` looks like raw 8-bit pixels (integers in 0..255, some
    above 1) about to feed a float input as they are; None otherwise."""
    x = split.x
    if x.is_floating_point() or x.dtype == torch.bool or not len(split):
        return None
    low, high = int(x.min()), int(x.max())
    if low < 0 or high <= 1 or high > 255:
        return None
    return (f"warning: data {name} holds integer inputs in {low}..{high} (raw pixels?), fed to "
            f"the model as they are; a model trained on inputs in [0, 1] sees them 255x too "
            f"large. Save x / 255 as float32 (numpy: (x / 255).astype('float32')), or ignore "
            f"this if the model was trained on 0..255")
