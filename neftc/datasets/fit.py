"""A data set fitted to a model's inputs: ``fit_inputs(data, inputs)``.

``inputs`` are the model's input records in order (anything with ``name``, ``dtype``, ``shape``,
``low``, ``high``: a layout's ``graph.inputs`` or a loaded model's input specs). The data's ``x``
feeds the first input, its extras (arrays named after the other inputs) the others, reordered to
the model's order. Integer data feeds a float input as float32 (integer pixels, as always); float
data never feeds an integer input (token ids), and token ids must lie in the input's range
``low <= v < high``. Every mismatch is a :class:`~neftc.errors.DataError` naming the input and the
fix. Datasets layer: the records are duck-typed, so this module imports no layout code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from neftc.datasets.base import Dataset, Split
from neftc.errors import DataError

_DTYPES = {"float32": torch.float32, "int64": torch.int64, "int32": torch.int32,
           "bool": torch.bool}


def fit_inputs(data: Dataset, inputs: Sequence[Any]) -> Dataset:
    """``data`` with every split's arrays checked against ``inputs`` and converted to their
    dtypes, its extras in the inputs' order (arrays the model does not take are dropped)."""
    first = inputs[0]
    expected = tuple(first.shape[1:])
    if tuple(data.test.x.shape[1:]) != expected:
        raise DataError(f"data set '{data.name}' has samples x of shape "
                        f"{list(data.test.x.shape[1:])} but the model's input '{first.name}' "
                        f"takes {list(expected)} (without the batch dimension); reshape x to "
                        f"[N, {', '.join(map(str, expected))}]")
    splits = [_fit_split(data, split, inputs, which)
              for split, which in ((data.train, "train"), (data.test, "test"))]
    return replace(data, train=splits[0], test=splits[1])


def _fit_split(data: Dataset, split: Split, inputs: Sequence[Any], which: str) -> Split:
    x = _cast(data, "x", split.x, inputs[0], which)
    extras = {}
    for record in inputs[1:]:
        tensor = split.extras.get(record.name)
        if tensor is None:
            raise DataError(
                f"data set '{data.name}' has no array '{record.name}' for the model's input "
                f"'{record.name}' ({record.dtype}, samples of shape {list(record.shape[1:])}); "
                f"save it next to x with one row per sample, e.g. numpy.savez(FILE, x=x, "
                f"{record.name}={record.name}, y=y) (with x_train/x_test: "
                f"{record.name}_train and {record.name}_test)")
        if tuple(tensor.shape[1:]) != tuple(record.shape[1:]):
            raise DataError(f"data set '{data.name}': array '{record.name}' has samples of "
                            f"shape {list(tensor.shape[1:])} but the model's input "
                            f"'{record.name}' takes {list(record.shape[1:])}; reshape it")
        extras[record.name] = _cast(data, record.name, tensor, record, which)
    return Split(x, split.y, extras)


def _cast(data: Dataset, array: str, tensor: torch.Tensor, record: Any,
          which: str) -> torch.Tensor:
    """``tensor`` in the input's dtype, its values checked (finite floats, token range)."""
    floating = tensor.dtype.is_floating_point
    where = f"data set '{data.name}' ({which} split): array '{array}'"
    if record.dtype == "float32":
        out = tensor.to(torch.float32)
        if not bool(torch.isfinite(out).all()):
            raise DataError(f"{where} holds NaN or infinite values; clean the data")
        return out
    if floating:
        raise DataError(f"{where} holds float values but the model's input '{record.name}' "
                        f"takes {record.dtype} (token ids or a mask); save it as integers, "
                        f"e.g. {array}.astype(numpy.int64)")
    low, high = record.low, record.high
    if low is not None and high is not None and tensor.numel():
        least, most = int(tensor.min()), int(tensor.max())
        if least < low or most >= high:
            raise DataError(f"{where} holds values {least}..{most}, outside the range "
                            f"{low}..{high - 1} of the model's input '{record.name}' (token "
                            "ids beyond the embedding's vocabulary); tokenize with the model's "
                            "own vocabulary")
    return tensor.to(_DTYPES[record.dtype])


def to_float(data: Dataset) -> Dataset:
    """``data`` with integer samples ``x`` as float32, values unchanged (integer images, e.g.
    0..255 in an .npz, for a model whose input is float)."""
    def cast(split: Split) -> Split:
        return replace(split, x=split.x.to(torch.float32))
    return replace(data, train=cast(data.train), test=cast(data.test))
