"""The quantisation scale's gradient (neftc.ir.quantization.scale_gradient): a factor equal to 1
whose gradient is that of the weight_scales bound, checked against numpy and by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neftc.ir.quantization import scale_gradient, weight_scales


def _matrix(rows: int = 37, cols: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("calibration", ["max-abs", "percentile"])
def test_factor_is_one_in_value(per_channel: bool, calibration: str) -> None:
    matrix = _matrix().requires_grad_()
    factor = scale_gradient(matrix, per_channel=per_channel, calibration=calibration)  # type: ignore[arg-type]
    assert factor.shape == ((1, 5) if per_channel else (1, 1))
    assert torch.equal(factor.detach(), torch.ones_like(factor))


def test_max_abs_gradient_is_on_the_largest_weight() -> None:
    matrix = _matrix()
    matrix[3, 2] = -9.0  # the layer's largest magnitude, negative
    matrix.requires_grad_()
    scale_gradient(matrix).sum().backward()
    expected = torch.zeros_like(matrix)
    expected[3, 2] = -1 / 9.0  # d(|w| / |w|_detached) / dw = sign(w) / |w|
    assert torch.allclose(matrix.grad, expected)


def test_per_channel_gradient_per_column() -> None:
    matrix = _matrix().requires_grad_()
    scale_gradient(matrix, per_channel=True).sum().backward()
    magnitude = matrix.detach().abs()
    rows = magnitude.argmax(dim=0)
    for col in range(matrix.shape[1]):
        nonzero = matrix.grad[:, col].nonzero().flatten().tolist()
        assert nonzero == [int(rows[col])]
        value = matrix.detach()[rows[col], col]
        expected = float(value.sign() / value.abs())
        assert float(matrix.grad[rows[col], col]) == pytest.approx(expected)


@pytest.mark.parametrize("per_channel", [False, True])
def test_percentile_bound_matches_numpy(per_channel: bool) -> None:
    matrix = _matrix(rows=400)
    percentile = 97.3
    reference = np.percentile(matrix.abs().numpy().astype(np.float64), percentile,
                              axis=0 if per_channel else None)
    # The factor's bound is the live form of weight_scales' bound: compare through the scales.
    scales = weight_scales(matrix, 127, per_channel=per_channel, calibration="percentile",
                           percentile=percentile)
    assert np.allclose(scales.numpy().reshape(-1) * 127, np.reshape(reference, -1), rtol=1e-6)
    live = matrix.clone().requires_grad_()
    factor = scale_gradient(live, per_channel=per_channel, calibration="percentile",
                            percentile=percentile)
    factor.sum().backward()
    # Linear interpolation between two order statistics: the gradient weights sum to 1 per
    # bound (times 1/bound), on at most two entries per column (or per layer).
    grads = live.grad.abs() * torch.as_tensor(np.reshape(reference, -1), dtype=torch.float32)
    if per_channel:
        assert torch.allclose(grads.sum(dim=0), torch.ones(matrix.shape[1]), atol=1e-5)
        assert int((live.grad != 0).sum(dim=0).max()) <= 2
    else:
        assert float(grads.sum()) == pytest.approx(1.0, abs=1e-5)
        assert int((live.grad != 0).sum()) <= 2
