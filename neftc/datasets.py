"""Data sets for training, calibration and accuracy sign-off.

The built-in data set is scikit-learn's digits (1797 8x8 images, 10 classes), shipped inside the
package (``neftc/data/digits.npz``), so nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch


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

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.test.x.shape[1:])


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """The built-in digits: images [N, 1, 8, 8] scaled to [0, 1], a fixed seeded split."""
    with resources.files("neftc.data").joinpath("digits.npz").open("rb") as fh:
        data = np.load(fh)
        x, y = data["x"].astype(np.float32) / 16.0, data["y"].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    x_t = torch.from_numpy(x[:, None])
    y_t = torch.from_numpy(y)
    return Dataset("digits", Split(x_t[train], y_t[train]), Split(x_t[test], y_t[test]), 10)
