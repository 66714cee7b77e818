"""The built-in data set: scikit-learn's digits (1797 8x8 images, 10 classes), shipped inside the
package (``neftc/data/digits.npz``), so nothing is downloaded."""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from neftc.datasets.base import PERMUTATION_SPLIT, Dataset, Split, split_indices


def load_digits() -> Dataset:
    """The built-in digits: images [N, 1, 8, 8] scaled to [0, 1], split into 1348 train and
    449 test images by the fixed permutation of :data:`SPLIT_SEED`."""
    with resources.files("neftc.data").joinpath("digits.npz").open("rb") as fh:
        data = np.load(fh, allow_pickle=False)
        x, y = data["x"].astype(np.float32) / 16.0, data["y"].astype(np.int64)
    train, test = split_indices(len(y))
    x_t = torch.from_numpy(x[:, None])
    y_t = torch.from_numpy(y)
    return Dataset("digits", Split(x_t[train], y_t[train]), Split(x_t[test], y_t[test]), 10,
                   PERMUTATION_SPLIT)
