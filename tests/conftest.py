"""Shared fixtures: small third-party-style models, written as a user would write them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neftc.datasets.base import Dataset
from neftc.datasets.digits import load_digits
from neftc.frontend.zoo import build
from neftc.neft.train import accuracy, train_classifier
from neftc.targets import TargetSpec, resolve_target


class SmallBnCNN(nn.Module):
    """Conv + BatchNorm + Linear on 1x8x8 digits: the smallest graph with BatchNorm buffers, for
    the NeFT BatchNorm tests."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


class ResidualCNN(nn.Module):
    """Conv + BN + residual add + pooling + flatten + functional linear: nothing neftc-specific."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
        )
        self.head_w = nn.Parameter(torch.randn(10, 16 * 4 * 4) * 0.05)
        self.head_b = nn.Parameter(torch.zeros(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(self.block(x) + x)
        x = F.max_pool2d(x, 2)
        x = torch.flatten(x, 1)
        return F.linear(x, self.head_w, self.head_b)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics so that BN handling is really tested."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


@pytest.fixture
def residual_cnn() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(ResidualCNN())


@pytest.fixture
def cnn_input() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def exported_cnn(tmp_path: Path, residual_cnn: nn.Module, cnn_input: torch.Tensor) -> Path:
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(residual_cnn, (cnn_input[:1],)), path)
    return path


@pytest.fixture
def fefet() -> TargetSpec:
    return resolve_target("fefet_128x128")


@pytest.fixture(scope="module")
def mlp_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained MLP (seed 0) on the digits' 1x8x8 inputs, compiled for fefet_128x128 (one
    per test module; tests copy it before changing it)."""
    from neftc.driver.compiler import compile_module

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build("mlp", (1, 8, 8), 10).eval()
    out = tmp_path_factory.mktemp("mlp") / "layout"
    compile_module(model, torch.zeros(1, 1, 8, 8), resolve_target("fefet_128x128"), out)
    return out


@pytest.fixture
def lenet_layout(tmp_path: Path, fefet: TargetSpec) -> Path:
    """An untrained LeNet (seed 0) for 1x8x8 inputs compiled for fefet_128x128 into
    ``tmp_path / "out"``."""
    from neftc.driver.compiler import compile_module
    from neftc.frontend.zoo import build

    torch.manual_seed(0)
    out = tmp_path / "out"
    compile_module(build("lenet", (1, 8, 8), 10), torch.zeros(1, 1, 8, 8), fefet, out)
    return out


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """The test models are tiny: one intra-op thread is as fast, and it keeps the suite's run time
    steady when other processes share the two cores (OpenMP worker threads otherwise spin-wait
    for a busy core and small ops slow down by orders of magnitude). Set before every test: an
    in-process ``neftc`` command sets the thread count of the whole process (``--threads``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class TrainedLeNet:
    """The LeNet trained on the digits once per session (the state is read-only: tests take
    their own copy with :meth:`model`)."""

    data: Dataset
    state: dict[str, torch.Tensor]
    float_accuracy: float  # the float model on the digits test split

    def model(self) -> nn.Module:
        """A fresh copy of the trained model, in eval mode."""
        model = build("lenet", self.data.input_shape, self.data.num_classes)
        model.load_state_dict(self.state)  # copies: the session's tensors stay untouched
        return model.eval()


@pytest.fixture(scope="session")
def trained_lenet() -> TrainedLeNet:
    """LeNet on the digits, 25 epochs at lr 3e-3: trained once and shared. Deterministic: the
    initial weights come from seed 0 (in a forked RNG, so the global stream is left as it was)
    and the batch order from the trainer's explicit generator (``seed=0``)."""
    data = load_digits()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build("lenet", data.input_shape, data.num_classes).train()
    model = train_classifier(model, data.train, epochs=25, lr=3e-3, seed=0, progress=False)
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    for value in state.values():
        value.requires_grad_(False)
    return TrainedLeNet(data, state, accuracy(model, data.test))


@pytest.fixture(scope="session")
def trained_lenet_layout(tmp_path_factory, trained_lenet: TrainedLeNet) -> Path:
    """``trained_lenet`` compiled for fefet_128x128 with the defaults, once per session; for tests
    that only read the layout (verify --no-report, sweep)."""
    from neftc.driver.compiler import compile_module
    from neftc.targets import resolve_target

    data, model = trained_lenet.data, trained_lenet.model()
    out = tmp_path_factory.mktemp("trained-lenet") / "layout"
    compile_module(model, data.test.x[:1], resolve_target("fefet_128x128"), out)
    return out
