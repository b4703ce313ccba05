"""The CIFAR ResNets of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016, Sec.
4.2), as RepDistiller defines them (HobbitLong/RepDistiller, models/resnet.py): a 3x3 stem, three
stages of basic blocks at 32, 16 and 8 pixels, global average pooling. `resnet8x4` and `resnet32x4`
are RepDistiller's 4x wider variants (32-64-128-256 channels).

Module names and parameters are RepDistiller's, so its checkpoints load as they are. Feature taps:
the stem is `relu`, stage outputs `layer1..3`, a stage's pre-activation the input of its last
block's `relu` (called last on the residual sum), the embedding `fc:input`.
"""
from __future__ import annotations

from torch import nn

from kdrun.models import register_model


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, widths: list[int], num_classes: int, in_channels: int = 3):
        super().__init__()
        assert (depth - 2) % 6 == 0, "a CIFAR ResNet has depth 6n + 2"
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        c_in = widths[0]
        for i, (c_out, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            stage = [BasicBlock(c_in if b == 0 else c_out, c_out, stride if b == 0 else 1) for b in range(blocks)]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
            c_in = c_out
        # RepDistiller's AvgPool2d(8) on the 8x8 map of a 32x32 image: the same mean, at any size.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


_NARROW, _WIDE = [16, 16, 32, 64], [32, 64, 128, 256]


@register_model
def cifar_resnet8(num_classes: int, in_channels: int, image_size: int):
    return CifarResNet(8, _NARROW, num_classes, in_channels)


@register_model
def cifar_resnet14(num_classes: int, in_channels: int, image_size: int):
    return CifarResNet(14, _NARROW, num_classes, in_channels)


@register_model
def cifar_resnet20(num_classes: int, in_channels: int, image_size: int):
    return CifarResNet(20, _NARROW, num_classes, in_channels)


@register_model
def cifar_resnet32(num_classes: int, in_channels: int, image_size: int):
    return CifarResNet(32, _NARROW, num_classes, in_channels)


@register_model
def cifar_resnet44(num_classes: int, in_channels: int, image_size: int):
    return CifarResNet(44, _NARROW, num_classes, in_channels)


@register_model
def cifar_resnet56(num_classes: int, in_channels: int, image_size: int):
    return CifarResNet(56, _NARROW, num_classes, in_channels)


@register_model
def cifar_resnet110(num_classes: int, in_channels: int, image_size: int):
    return CifarResNet(110, _NARROW, num_classes, in_channels)


@register_model
def cifar_resnet8x4(num_classes: int, in_channels: int, image_size: int):
    return CifarResNet(8, _WIDE, num_classes, in_channels)


@register_model
def cifar_resnet32x4(num_classes: int, in_channels: int, image_size: int):
    return CifarResNet(32, _WIDE, num_classes, in_channels)
