"""MobileNetV2 (Sandler et al., CVPR 2018) for CIFAR as RepDistiller defines it (HobbitLong/
RepDistiller, models/mobilenetv2.py, `mobile_half`: expansion 6, width 0.5, a stride-2 stem, a
1280-wide head), the MobileNetV2 of every CIFAR-100 KD table.

Module names and parameters are RepDistiller's. Feature taps: the stem is `conv1`, the stages
RepDistiller reads `blocks.1`, `blocks.2`, `blocks.4`, `blocks.6` (each ends in a linear
bottleneck, so they are also its pre-activations), the embedding `classifier:input`. Its last stage
is 2x2 on a 32x32 image, by design.
"""
from __future__ import annotations

from torch import nn

from kdrun.models import register_model

# (expansion, channels, blocks, stride) per stage, before the width multiplier.
_STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        self.residual = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class CifarMobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 0.5, head: int = 1280):
        super().__init__()
        c_in = int(32 * width)
        self.conv1 = _conv_bn_relu(in_channels, c_in, 3, 2)
        self.blocks = nn.ModuleList()
        for expansion, channels, n, stride in _STAGES:
            c_out = int(channels * width)
            self.blocks.append(nn.Sequential(*[InvertedResidual(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1,
                                                                expansion) for i in range(n)]))
            c_in = c_out
        self.conv2 = _conv_bn_relu(c_in, head, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(head, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.avgpool(self.conv2(x)).flatten(1))


@register_model
def cifar_mobilenetv2(num_classes: int, in_channels: int, image_size: int):
    return CifarMobileNetV2(num_classes, in_channels)
