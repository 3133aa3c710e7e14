"""Small-input networks written here for 28x28 / 32x32 images (Fashion-MNIST, CIFAR): ResNet-20 and
ResNet-18 in their CIFAR form (3x3 stem, no max-pool) and MobileNet-V1, each with a width multiplier.

Defaults are 1 input channel and 10 classes (Fashion-MNIST). The widths default so that one epoch
of Fashion-MNIST trains in at most 3 minutes on a 2-core CPU.
"""

from __future__ import annotations

from torch import nn

from ..data.preprocess import FASHION_MNIST
from .registry import register


def _ch(c: int, width: float) -> int:
    return max(4, int(round(c * width / 4)) * 4)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, stages: list[tuple[int, int, int]], in_channels: int, num_classes: int, width: float):
        """stages: (channels, blocks, first stride) per stage."""
        super().__init__()
        c = _ch(stages[0][0], width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU(inplace=True))
        blocks = []
        for channels, n, stride in stages:
            cout = _ch(channels, width)
            for i in range(n):
                blocks.append(BasicBlock(c, cout, stride if i == 0 else 1))
                c = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


@register("resnet20", FASHION_MNIST, "ResNet-20 for 28/32-pixel images (16-32-64 channels x width)")
def resnet20(pretrained: bool = False, in_channels: int = 1, num_classes: int = 10, width: float = 1.0):
    return ResNet([(16, 3, 1), (32, 3, 2), (64, 3, 2)], in_channels, num_classes, width)


@register("resnet18", FASHION_MNIST, "ResNet-18, CIFAR form (64-512 channels x width, default 0.25)")
def resnet18(pretrained: bool = False, in_channels: int = 1, num_classes: int = 10, width: float = 0.25):
    return ResNet([(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)], in_channels, num_classes, width)


def _conv_bn(cin: int, cout: int, stride: int, groups: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class MobileNetV1(nn.Module):
    # (output channels, stride) of each depthwise-separable block; strides adapted to 28/32-pixel inputs.
    BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]

    def __init__(self, in_channels: int, num_classes: int, width: float):
        super().__init__()
        c = _ch(32, width)
        layers = [_conv_bn(in_channels, c, 1)]
        for cout, stride in self.BLOCKS:
            cout = _ch(cout, width)
            layers += [_conv_bn(c, c, stride, groups=c), _conv_bn(c, cout, 1, k=1)]
            c = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@register("mobilenet-v1", FASHION_MNIST, "MobileNet-V1 for 28/32-pixel images (width multiplier, default 0.5)")
def mobilenet_v1(pretrained: bool = False, in_channels: int = 1, num_classes: int = 10, width: float = 0.5):
    return MobileNetV1(in_channels, num_classes, width)
