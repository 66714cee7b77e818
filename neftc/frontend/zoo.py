"""A small zoo of reference architectures, sized from the input shape and the class count.

These are ordinary ``nn.Module`` classes, exactly as a user would write them: neftc adds noise and
feedback as graph passes, never inside these ``forward`` methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

InputShape = tuple[int, ...]  # (C, H, W) for images, (F,) for vectors


def _numel(shape: InputShape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class MLP(nn.Module):
    """Flatten -> 256 -> 128 -> classes, ReLU between."""

    def __init__(self, input_shape: InputShape, num_classes: int,
                 hidden: tuple[int, ...] = (256, 128)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = _numel(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BagOfWords(nn.Module):
    """Token ids [N, T] -> embedding (64) averaged over the tokens -> 64 -> classes: the zoo's
    text model. The embedding table stays digital; the two linears go on crossbars."""

    def __init__(self, input_shape: InputShape, num_classes: int, vocab: int = 1000):
        super().__init__()
        if len(input_shape) != 1:
            from neftc.errors import ModelFileError

            raise ModelFileError(f"bow takes token ids of shape [T], got {list(input_shape)}; "
                                 "pass --input-shape T")
        self.embed = nn.Embedding(vocab, 64)
        self.features = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.embed(ids).mean(1)))


class LeNet(nn.Module):
    """LeNet-5 style: two 5x5 convs (padded, so 8x8 inputs work) with max-pooling, three FCs."""

    def __init__(self, input_shape: InputShape, num_classes: int):
        super().__init__()
        c, h, w = _image_shape(input_shape, "lenet", min_side=4)
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * (h // 4) * (w // 4), 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class VGG8(nn.Module):
    """The NeFT paper's VGG-8 (as in NeuroSim): 6 conv3x3 (128,128,256,256,512,512), 2 FC."""

    def __init__(self, input_shape: InputShape, num_classes: int, width: int = 128):
        super().__init__()
        c, h, w = _image_shape(input_shape, "vgg8", min_side=8)
        w1, w2, w3 = width, 2 * width, 4 * width
        self.features = nn.Sequential(
            *_conv_bn_relu(c, w1), *_conv_bn_relu(w1, w1), nn.MaxPool2d(2),
            *_conv_bn_relu(w1, w2), *_conv_bn_relu(w2, w2), nn.MaxPool2d(2),
            *_conv_bn_relu(w2, w3), *_conv_bn_relu(w3, w3), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(w3 * (h // 8) * (w // 8), 8 * width), nn.ReLU(),
            nn.Linear(8 * width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stem, no max-pool, four stages of two basic blocks."""

    def __init__(self, input_shape: InputShape, num_classes: int, width: int = 64):
        super().__init__()
        c, _, _ = _image_shape(input_shape, "resnet18", min_side=8)
        self.conv1 = nn.Conv2d(c, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages: list[nn.Module] = []
        c_in = width
        for i, stride in enumerate((1, 2, 2, 2)):
            c_out = width * 2**i
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, stride),
                                        BasicBlock(c_out, c_out, 1)))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _image_shape(shape: InputShape, arch: str, min_side: int) -> tuple[int, int, int]:
    from neftc.errors import ModelFileError

    if len(shape) != 3 or shape[1] < min_side or shape[2] < min_side:
        raise ModelFileError(
            f"architecture '{arch}' needs an image input shape C,H,W with H and W >= {min_side}, "
            f"got {','.join(map(str, shape))}; pass --input-shape C,H,W"
        )
    return shape[0], shape[1], shape[2]


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[..., nn.Module]  # (input_shape, num_classes[, vocab]) -> module
    head_key: str  # state_dict key of the classifier weight, to read the class count from
    summary: str
    vocab_key: str | None = None  # a text model: state_dict key of its embedding table


def zoo() -> dict[str, ZooEntry]:
    return {
        "mlp": ZooEntry(MLP, "classifier.weight", "MLP: flatten, 256, 128, classes"),
        "lenet": ZooEntry(LeNet, "classifier.5.weight", "LeNet-5 style CNN, 2 conv + 3 FC"),
        "vgg8": ZooEntry(VGG8, "classifier.3.weight", "the NeFT paper's VGG-8 (6 conv + 2 FC, BN)"),
        "resnet18": ZooEntry(ResNet18, "fc.weight", "CIFAR-style ResNet-18 (11 M weights)"),
        "bow": ZooEntry(BagOfWords, "classifier.weight",
                        "bag of words for token ids: embedding (64), mean, 64, classes",
                        vocab_key="embed.weight"),
    }


def build(arch: str, input_shape: InputShape, num_classes: int,
          vocab: int | None = None) -> nn.Module:
    """A fresh zoo model, in eval mode (``vocab``: a text model's token count)."""
    from neftc.errors import ModelFileError, did_you_mean

    entries = zoo()
    if arch not in entries:
        own = (" A class of your own is not sized from the data here: train it in PyTorch, then "
               "compile its .pt2 (or its state_dict with --arch module:Class)" if ":" in arch
               else "")
        raise ModelFileError(f"unknown architecture '{arch}'.{did_you_mean(arch, entries)} "
                             f"Built-in: {', '.join(entries)}.{own}")
    entry = entries[arch]
    if entry.vocab_key is not None:
        return entry.build(input_shape, num_classes, vocab or 1000).eval()
    return entry.build(input_shape, num_classes).eval()
