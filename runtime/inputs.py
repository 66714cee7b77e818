"""The inputs a layout's network takes, as the runtime is given them.

A network takes the inputs the layout records (``graph.inputs``, in placeholder order). The
runtime is given them as ``Inputs``: a tensor when the layout has one input, else a tuple of
tensors in the layout's input order (``emulator((input_ids, attention_mask))``). Float inputs are
the activations the network computes with (any float or integer tensor, converted to float32, as
before several inputs); integer inputs (token ids) and bool inputs (masks) are passed through
unquantised to the digital ops that read them (an embedding's output is what the crossbars see).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from neftc.errors import DataError
from neftc.format.schema import InputRecord

#: One tensor (a one-input layout) or a tuple of tensors in the layout's input order.
Inputs = torch.Tensor | tuple[torch.Tensor, ...]

_TORCH_DTYPES = {"float32": torch.float32, "int64": torch.int64, "int32": torch.int32,
                 "bool": torch.bool}


def as_tuple(inputs: Inputs) -> tuple[torch.Tensor, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def num_samples(inputs: Inputs) -> int:
    return int(as_tuple(inputs)[0].shape[0])


def rows(inputs: Inputs, start: int, stop: int) -> Inputs:
    """Samples ``start .. stop-1`` of every input, in the form given."""
    if isinstance(inputs, torch.Tensor):
        return inputs[start:stop]
    return tuple(t[start:stop] for t in inputs)


def repeat(inputs: tuple[torch.Tensor, ...], copies: int) -> tuple[torch.Tensor, ...]:
    """``copies`` copies of the batch, copy-major, of every input."""
    return tuple(t.repeat(copies, *[1] * (t.dim() - 1)) for t in inputs)


def prepare(records: Sequence[InputRecord], inputs: Inputs,
            device: torch.device) -> tuple[torch.Tensor, ...]:
    """The inputs checked against the layout's records (count, sample shape, dtype kind, token
    range) and converted to the recorded dtypes on ``device``; a :class:`DataError` names the
    input and the fix."""
    given = as_tuple(inputs)
    names = ", ".join(r.name for r in records)
    if len(given) != len(records):
        raise DataError(f"the layout takes {len(records)} input(s) ({names}) but "
                        f"{len(given)} were given; pass a tensor for a one-input layout, else a "
                        "tuple of tensors in that order")
    batch = int(given[0].shape[0]) if given[0].dim() else None
    return tuple(_prepare_one(record, tensor, batch, device)
                 for record, tensor in zip(records, given))


def _prepare_one(record: InputRecord, tensor: torch.Tensor, batch: int | None,
                 device: torch.device) -> torch.Tensor:
    expected = tuple(record.shape[1:])
    if tensor.dim() == 0 or tuple(tensor.shape[1:]) != expected:
        raise DataError(f"input '{record.name}' samples have shape {tuple(tensor.shape[1:])} "
                        f"but the layout was compiled for {expected}")
    if int(tensor.shape[0]) != batch:
        raise DataError(f"input '{record.name}' has {int(tensor.shape[0])} samples but the "
                        f"first input has {batch}; give every input the same samples")
    integer = not tensor.dtype.is_floating_point and not tensor.dtype.is_complex
    if record.dtype != "float32" and not integer:
        raise DataError(f"input '{record.name}' is {record.dtype} (token ids or a mask) but "
                        f"was given {str(tensor.dtype).removeprefix('torch.')} values; give "
                        f"integer values (e.g. numpy's .astype('int64'))")
    if record.low is not None and record.high is not None and tensor.numel():
        low, high = int(tensor.min()), int(tensor.max())
        if low < record.low or high >= record.high:
            raise DataError(f"input '{record.name}' holds values {low}..{high} outside its "
                            f"valid range {record.low}..{record.high - 1} (e.g. token ids "
                            "beyond the embedding's vocabulary); give ids the model knows")
    return tensor.to(device, _TORCH_DTYPES[record.dtype])


def example_inputs(records: Sequence[InputRecord], batch: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Inputs of ``batch`` samples the layout accepts, drawn from ``generator``: float inputs
    standard normal, integer inputs uniform in ``[low, high)``, bool inputs all true (a mask
    that hides nothing)."""
    out = []
    for record in records:
        shape = (batch, *record.shape[1:])
        if record.dtype == "float32":
            out.append(torch.randn(shape, generator=generator))
        elif record.dtype == "bool":
            out.append(torch.ones(shape, dtype=torch.bool))
        else:
            low = 0 if record.low is None else record.low
            high = low + 1 if record.high is None else record.high
            out.append(torch.randint(low, high, shape, generator=generator,
                                     dtype=_TORCH_DTYPES[record.dtype]))
    return tuple(out)
