"""The quantisation arithmetic: the one definition of a crossbar matrix's scales and integer
weights, shared by the quantize pass (``neftc.passes.quantize``) and NeFT's training noise
(``neftc.neft.modules.DeviceNoise``), so training sees the noise of the chip the pass produces
(DESIGN.md section 4)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from neftc.errors import NeftcError

Calibration = Literal["max-abs", "percentile"]
DEFAULT_PERCENTILE = 99.99


def weight_scales(matrix: torch.Tensor, qmax: int, *, per_channel: bool = False,
                  calibration: Calibration = "max-abs",
                  percentile: float = DEFAULT_PERCENTILE) -> torch.Tensor:
    """The quantisation scales of a crossbar matrix ``[rows, C_out]`` (``weight_matrix``):
    ``[1, C_out]`` (per channel) or ``[1, 1]`` (per layer), float64 holding float32 values, on
    ``matrix``'s device. The bound is ``max|W|`` or the ``percentile`` of ``|W|``, per layer or
    per output channel; an all-zero range gets scale ``1/qmax``."""
    magnitude = matrix.detach().abs().to(torch.float64)
    if calibration == "max-abs":
        bound = magnitude.amax(dim=0) if per_channel else magnitude.max().reshape(1)
    elif calibration == "percentile":
        # numpy: torch.quantile refuses inputs above 16 M elements
        values = np.percentile(magnitude.cpu().numpy(), percentile,
                               axis=0 if per_channel else None)
        bound = torch.as_tensor(values, dtype=torch.float64).reshape(-1).to(matrix.device)
    else:
        raise NeftcError(f"unknown calibration '{calibration}'; use max-abs or percentile")
    bound = torch.where(bound > 0, bound, torch.ones_like(bound))
    # Round the scale to float32 first so that q * scale is reproducible from the layout.
    return (bound / qmax).to(torch.float32).to(torch.float64).reshape(1, -1)


def scale_gradient(matrix: torch.Tensor, *, per_channel: bool = False,
                   calibration: Calibration = "max-abs",
                   percentile: float = DEFAULT_PERCENTILE) -> torch.Tensor:
    """The gradient of the quantisation scale, carried by a factor that equals 1: ``[1, C_out]``
    or ``[1, 1]``, ``bound / bound.detach()`` with ``bound`` the differentiable form of the
    ``weight_scales`` bound (max of ``|W|``, or the ``percentile`` of ``|W|`` interpolated
    linearly between order statistics as numpy does), per layer or per output channel, of a
    crossbar matrix ``[rows, C_out]`` that is *not* detached. Multiplying a noise std computed
    from the detached scales by it leaves every value unchanged and lets the gradient see that
    the chip's noise grows with the scale (``neftc.neft.modules.WeightNoise``)."""
    magnitude = matrix.abs()
    if calibration == "max-abs":
        bound = magnitude.amax(dim=0) if per_channel else magnitude.amax().reshape(1)
    elif calibration == "percentile":
        ordered = torch.sort(magnitude if per_channel else magnitude.reshape(-1, 1),
                             dim=0).values
        position = percentile / 100 * (ordered.shape[0] - 1)
        low = int(position)
        high = min(low + 1, ordered.shape[0] - 1)
        bound = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    else:
        raise NeftcError(f"unknown calibration '{calibration}'; use max-abs or percentile")
    bound = torch.where(bound > 0, bound, torch.ones_like(bound))
    return (bound / bound.detach()).reshape(1, -1)


def quantize_matrix(matrix: torch.Tensor, qmax: int, *, per_channel: bool = False,
                    calibration: Calibration = "max-abs",
                    percentile: float = DEFAULT_PERCENTILE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scales)`` of a crossbar matrix ``[rows, C_out]``: ``q = clamp(round(W / scale),
    -qmax, qmax)`` (float64, integer values) and ``weight_scales``."""
    scales = weight_scales(matrix, qmax, per_channel=per_channel, calibration=calibration,
                           percentile=percentile)
    q = torch.clamp(torch.round(matrix.detach().to(torch.float64) / scales), -qmax, qmax)
    return q, scales
