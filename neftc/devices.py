"""Where tensors run: ``cpu`` (always) or ``cuda[:N]`` where a CUDA device is present."""

from __future__ import annotations

import torch

from neftc.errors import NeftcError


def resolve_device(name: str | torch.device) -> torch.device:
    """``name`` as a torch.device, or a NeftcError that says what is available."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise NeftcError(f"unknown device '{name}'; use cpu or cuda[:N]") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise NeftcError(f"device '{name}' is not supported; use cpu or cuda[:N]")
    if not torch.cuda.is_available():
        raise NeftcError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise NeftcError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s), cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device
