"""Wide residual networks, Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016): WRN-d-k,
pre-activation blocks, as RepDistiller defines them (HobbitLong/RepDistiller, models/wrn.py).

Module names and parameters are RepDistiller's. Feature taps: the stem is `conv1`, stage outputs
`block1..3`; the pre-activations RepDistiller reads are the next batch norm applied to a stage's
output (`block2.layer.0.bn1`, `block3.layer.0.bn1`, `bn1`); the embedding `fc:input`.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from kdrun.models import register_model


class BasicBlock(nn.Module):
    """BN-ReLU-conv twice. When the width changes, the shortcut (a 1x1 convolution) also starts from
    the activated input; otherwise it is the raw input."""

    def __init__(self, c_in: int, c_out: int, stride: int, drop_rate: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = c_in == c_out
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x):
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return (x if self.equal_in_out else self.convShortcut(act)) + out


class Stage(nn.Module):
    def __init__(self, blocks: int, c_in: int, c_out: int, stride: int, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(*[BasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, drop_rate)
                                     for i in range(blocks)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3, drop_rate: float = 0.0):
        super().__init__()
        assert (depth - 4) % 6 == 0, "a WRN has depth 6n + 4"
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = Stage(blocks, widths[0], widths[1], 1, drop_rate)
        self.block2 = Stage(blocks, widths[1], widths[2], 2, drop_rate)
        self.block3 = Stage(blocks, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # normal(0, sqrt(2 / (k * k * out))): He init, fan-out
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.avgpool(self.relu(self.bn1(x))).flatten(1))


@register_model
def cifar_wrn_16_1(num_classes: int, in_channels: int, image_size: int, drop_rate: float = 0.0):
    return WideResNet(16, 1, num_classes, in_channels, drop_rate)


@register_model
def cifar_wrn_16_2(num_classes: int, in_channels: int, image_size: int, drop_rate: float = 0.0):
    return WideResNet(16, 2, num_classes, in_channels, drop_rate)


@register_model
def cifar_wrn_40_1(num_classes: int, in_channels: int, image_size: int, drop_rate: float = 0.0):
    return WideResNet(40, 1, num_classes, in_channels, drop_rate)


@register_model
def cifar_wrn_40_2(num_classes: int, in_channels: int, image_size: int, drop_rate: float = 0.0):
    return WideResNet(40, 2, num_classes, in_channels, drop_rate)
