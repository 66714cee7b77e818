"""Training-only modules that the NeFT passes insert into a graph (and strip before mapping).

- ``WeightNoise`` sits between a crossbar weight and its op. In training mode it adds, per weight,
  the exact Gaussian equivalent of the target's cell-level programming noise at ``sigma``
  (``cell_weight_std``) on the integer weights and scales the ``quantize`` pass gives it (same
  per-layer/per-channel and calibration options, ``neftc.passes.quantize.quantize_matrix``),
  or the NeFT reference formula (``mode="paper"``), with
  fresh draws every forward from an explicit ``torch.Generator``. In eval mode it is the identity.
  When the target's programming-time cell effects are on (write-verify, clip, drift at the
  deployment time ``DeviceNoise.t_inference_s``) it adds their per-weight mean shift and std
  instead (``cell_weight_moments``, from the same device model as the emulator's cells).
- ``FeedbackHead`` (IRS) passes its input through unchanged and, in training mode, computes
  snapshot logits ``AdaptiveAvgPool -> flatten -> Linear(., hidden) -> ReLU -> Linear(hidden, K)``
  with noisy weights, kept in ``self.logits`` for the negative-feedback loss (unless
  ``active`` is off: ``ovf+irs`` switches the heads off during its extra OVF forwards).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from neftc.errors import NeftcError
from neftc.format import encoding as cell_encoding
from neftc.ir.quantization import (
    DEFAULT_PERCENTILE,
    Calibration,
    quantize_matrix,
    scale_gradient,
)
from neftc.ir.weights import weight_matrix
from neftc.targets.device_model import (
    cell_effect_moments,
    paper_weight_std,
    weight_effect_moments,
    weight_std_levels,
)
from neftc.targets.physics import EffectsSpec
from neftc.targets.spec import CellSpec, TargetSpec

TrainNoiseMode = Literal["cell", "paper"]


@dataclass(frozen=True)
class DeviceNoise:
    """The target's quantities a training-noise module needs, and the quantisation options of the
    chip it trains for (the ``quantize`` pass's ``per_channel``, ``calibration`` and
    ``percentile``): the noise is computed from the same integer weights and scales as the
    chip's."""

    bits: int
    cell_bits: int
    encoding: str
    qmax: int
    state_ratio: float
    per_channel: bool = False
    mode: TrainNoiseMode = "cell"
    calibration: Calibration = "max-abs"
    percentile: float = DEFAULT_PERCENTILE
    # The target's programming-time cell effects (write-verify, clip, drift with its
    # compensation) and the time after programming training stands for (None: the drift's
    # reference time t0, no drift); ``cell``: the target's cell (tolerance, conductance range).
    effects: EffectsSpec = field(default_factory=EffectsSpec)
    t_inference_s: float | None = None
    cell: CellSpec | None = None

    @classmethod
    def of(cls, target: TargetSpec, per_channel: bool = False,
           mode: TrainNoiseMode = "cell", *, calibration: Calibration = "max-abs",
           percentile: float = DEFAULT_PERCENTILE,
           t_inference_s: float | None = None) -> DeviceNoise:
        noise = cls(target.weight.bits, target.cell.bits, target.weight.sign_encoding,
                    target.qmax, target.noise.state_ratio, per_channel, mode, calibration,
                    percentile, target.effects, t_inference_s, target.cell)
        if mode == "paper" and noise.cell_effects:
            raise NeftcError("the paper's training noise is weight-level: it cannot include the "
                             "target's cell effects (write-verify, clip, drift); train with "
                             "--train-noise cell, or switch them off with --set "
                             "effects.write_verify.max_pulses=0, effects.clip=false, "
                             "effects.drift.nu=0, effects.drift.nu_std=0")
        return noise

    @property
    def time_s(self) -> float:
        """Seconds after programming the training noise stands for."""
        return self.effects.drift.t0_s if self.t_inference_s is None else self.t_inference_s

    @property
    def cell_effects(self) -> bool:
        """True when a cell effect with a per-weight equivalent is on (write-verify, clip,
        drift after ``t0``; ``EffectsSpec.per_weight_at``); IR drop has none."""
        return self.effects.per_weight_at(self.t_inference_s)

    def quantize(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q, scales)`` of a weight [C_out, ...] as the ``quantize`` pass computes them:
        crossbar view ``[rows, C_out]``, float64."""
        return quantize_matrix(weight_matrix(weight), self.qmax, per_channel=self.per_channel,
                               calibration=self.calibration, percentile=self.percentile)

    def weight_std(self, weight: torch.Tensor, sigma: float) -> torch.Tensor:
        """Per-weight noise std for a weight tensor [C_out, ...] (detached, ``weight``'s dtype)."""
        w = weight.detach()
        if self.mode == "paper":
            matrix = w.reshape(w.shape[0], -1)
            return paper_weight_std(matrix, self.qmax, 2**self.cell_bits,
                                    -(-self.bits // self.cell_bits), sigma,
                                    self.state_ratio).reshape(w.shape)
        if self.cell_effects:
            return self.weight_noise(weight, sigma)[1]
        q, scales = self.quantize(w)
        std = cell_weight_std(q, bits=self.bits, cell_bits=self.cell_bits,
                              encoding=self.encoding,  # type: ignore[arg-type]
                              sigma=sigma, state_ratio=self.state_ratio)
        return (std * scales).t().reshape(w.shape).to(w.dtype)

    def weight_noise(self, weight: torch.Tensor,
                     sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per weight of a weight tensor [C_out, ...] (detached, ``weight``'s dtype): the mean
        shift and the std of the chip's effective weight at ``sigma``. With the target's cell
        effects on (``cell_effects``) they are the moments of the cells after write-verify,
        clip and drift at ``time_s`` (``cell_weight_moments``); otherwise the shift is 0 and the
        std is ``weight_std``."""
        if not self.cell_effects:
            std = self.weight_std(weight, sigma)
            return torch.zeros_like(std), std
        assert self.cell is not None, "DeviceNoise.of sets the cell with the effects"
        w = weight.detach()
        q, scales = self.quantize(w)
        shift, std = cell_weight_moments(
            q, bits=self.bits, cell_bits=self.cell_bits,
            encoding=self.encoding,  # type: ignore[arg-type]
            sigma=sigma, state_ratio=self.state_ratio, cell=self.cell, effects=self.effects,
            time_s=self.time_s)
        return ((shift * scales).t().reshape(w.shape).to(w.dtype),
                (std * scales).t().reshape(w.shape).to(w.dtype))

    def scale_factor(self, weight: torch.Tensor) -> torch.Tensor:
        """A factor equal to 1, broadcastable to ``weight`` [C_out, ...], that carries the
        gradient of the chip's quantisation scale with respect to ``weight``
        (``neftc.ir.quantization.scale_gradient``; the paper formula's scale is the layer's
        max |W|). ``weight_std(w, sigma) * scale_factor(w)`` has the values of ``weight_std``
        and the chip's dependence of the noise on the scale."""
        matrix = weight.reshape(weight.shape[0], -1).t()
        if self.mode == "paper":
            factor = scale_gradient(matrix)
        else:
            factor = scale_gradient(matrix, per_channel=self.per_channel,
                                    calibration=self.calibration, percentile=self.percentile)
        return factor.reshape((-1,) + (1,) * (weight.dim() - 1))


def cell_weight_std(q: torch.Tensor, *, bits: int, cell_bits: int,
                    encoding: cell_encoding.SignEncoding, sigma: float,
                    state_ratio: float) -> torch.Tensor:
    """Per-weight std, in integer-weight units, of the exact Gaussian equivalent of the cell-level
    noise of integer weights ``q`` (any shape): the weight's own cells
    (``neftc.format.encoding``) through the device model (``neftc.targets.device_model``), the
    same two definitions the emulator uses."""
    levels = cell_encoding.slice_levels(q.round().to(torch.int64), bits, cell_bits, encoding)
    coefficients = cell_encoding.fold_coefficients(levels.shape[0], levels.shape[1], cell_bits)
    return weight_std_levels(levels, coefficients, 2**cell_bits, sigma, state_ratio)


def cell_weight_moments(q: torch.Tensor, *, bits: int, cell_bits: int,
                        encoding: cell_encoding.SignEncoding, sigma: float, state_ratio: float,
                        cell: CellSpec, effects: EffectsSpec,
                        time_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per weight, in integer-weight units: the mean shift and std of the effective weight of
    integer weights ``q`` whose cells are programmed at ``sigma`` and then write-verified,
    clipped and drifted to ``time_s`` as the target's ``effects`` state (the per-level moments
    of ``neftc.targets.device_model.cell_effect_moments``, folded over the weight's own cells;
    float64)."""
    levels = cell_encoding.slice_levels(q.round().to(torch.int64), bits, cell_bits, encoding)
    coefficients = cell_encoding.fold_coefficients(levels.shape[0], levels.shape[1], cell_bits)
    table = cell_effect_moments(2**cell_bits, sigma, state_ratio, cell, effects, time_s)
    return weight_effect_moments(levels, coefficients, table)


class WeightNoise(nn.Module):
    """``weight + std * z`` in training mode. With ``scale_gradient`` (the default) the std
    carries the gradient of the quantisation scale (``DeviceNoise.scale_factor``): on the chip
    the noise of every weight is proportional to its layer's (or channel's) scale, set by the
    largest weight, so training can lower the noise by narrowing the weight range; without it
    the std is a constant to the optimiser (the NeFT reference code's noise)."""

    def __init__(self, device_noise: DeviceNoise, sigma: float,
                 scale_gradient: bool = True) -> None:
        super().__init__()
        self.device_noise = device_noise
        self.sigma = float(sigma)
        self.scale_gradient = scale_gradient
        self.generator: torch.Generator | None = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.training or self.sigma <= 0:
            return weight
        if self.generator is None:
            raise RuntimeError("WeightNoise needs a torch.Generator; the NeFT trainer sets it")
        if self.device_noise.cell_effects:  # the cells' mean shift, and their spread
            shift, std = self.device_noise.weight_noise(weight, self.sigma)
            if self.scale_gradient:
                factor = self.device_noise.scale_factor(weight)
                shift, std = shift * factor, std * factor
            noise = torch.randn(weight.shape, generator=self.generator, device=weight.device)
            return weight + shift.to(weight.device) + std.to(weight.device) * noise
        std = self.device_noise.weight_std(weight, self.sigma)
        if self.scale_gradient:
            std = std * self.device_noise.scale_factor(weight)
        noise = torch.randn(weight.shape, generator=self.generator, device=weight.device)
        return weight + std * noise

    def extra_repr(self) -> str:
        noise = self.device_noise
        quant = "" if noise.mode == "paper" else (
            f", per_channel={noise.per_channel}, calibration={noise.calibration}")
        return (f"sigma={self.sigma}, mode={noise.mode}{quant}, "
                f"scale_gradient={self.scale_gradient}")


def _linear(in_features: int, out_features: int, generator: torch.Generator) -> nn.Linear:
    """``nn.Linear`` with PyTorch's default initialisation (uniform in +-1/sqrt(in_features) for
    weight and bias) drawn from ``generator`` instead of the global random state."""
    layer = nn.Linear(in_features, out_features)
    bound = 1.0 / in_features**0.5
    with torch.no_grad():
        for parameter in (layer.weight, layer.bias):
            parameter.uniform_(-bound, bound, generator=generator)
    return layer


class FeedbackHead(nn.Module):
    def __init__(self, in_channels: int, spatial_dims: int, pool_size: int, hidden: int,
                 num_classes: int, device_noise: DeviceNoise, sigma: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.pool_size = pool_size
        features = in_channels * pool_size**spatial_dims
        self.fc1 = _linear(features, hidden, generator)
        self.fc2 = _linear(hidden, num_classes, generator)
        self.noise1 = WeightNoise(device_noise, sigma)
        self.noise2 = WeightNoise(device_noise, sigma)
        self.logits: torch.Tensor | None = None
        self.active = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.active:
            h = x
            if self.spatial_dims == 2:
                h = F.adaptive_avg_pool2d(h, self.pool_size)
            elif self.spatial_dims == 1:
                h = F.adaptive_avg_pool1d(h, self.pool_size)
            h = torch.flatten(h, 1)
            h = F.relu(F.linear(h, self.noise1(self.fc1.weight), self.fc1.bias))
            self.logits = F.linear(h, self.noise2(self.fc2.weight), self.fc2.bias)
        return x
