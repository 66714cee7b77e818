"""The built-in architectures trace, compile and are sized from input shape and class count."""

from __future__ import annotations

import pytest
import torch

from neftc.driver.compiler import compile_module
from neftc.errors import ModelFileError
from neftc.frontend.zoo import VGG8, ResNet18, build


@pytest.mark.parametrize("arch,shape", [("mlp", (1, 8, 8)), ("lenet", (3, 16, 16))])
def test_small_zoo_models_compile(arch, shape, fefet) -> None:
    model = build(arch, shape, 5)
    result = compile_module(model, torch.randn(1, *shape), fefet)
    assert result.doc.layers[-1].matrix_cols == 5
    assert result.doc.summary.weights == sum(
        p.numel() for n, p in model.named_parameters() if n.endswith("weight"))


def test_vgg8_and_resnet18_structure(fefet) -> None:
    # Narrow versions: same topology as the paper's, fast to compile.
    vgg = compile_module(VGG8((1, 28, 28), 10, width=8), torch.randn(1, 1, 28, 28), fefet)
    assert [layer.op for layer in vgg.doc.layers] == ["conv2d"] * 6 + ["linear"] * 2
    resnet = compile_module(ResNet18((3, 32, 32), 100, width=4), torch.randn(1, 3, 32, 32), fefet)
    assert sum(layer.op == "conv2d" for layer in resnet.doc.layers) == 20  # 17 + 3 shortcuts
    assert resnet.doc.layers[-1].matrix_cols == 100


def test_full_size_weight_counts() -> None:
    # Paper sizes: ResNet-18 (CIFAR) has 11.17 M parameters.
    assert sum(p.numel() for p in ResNet18((3, 32, 32), 10).parameters()) == 11_173_962


def test_zoo_rejects_too_small_images() -> None:
    with pytest.raises(ModelFileError, match="H and W >= 8"):
        build("vgg8", (1, 4, 4), 10)
