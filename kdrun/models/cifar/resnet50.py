"""The ResNet-50 of the CIFAR-100 KD tables: He et al.'s bottleneck ResNet-50 (CVPR 2016) with a
3x3, stride-1 stem and no max-pooling, as RepDistiller defines it (HobbitLong/RepDistiller,
models/resnetv2.py, `ResNet50`): four stages at 32, 16, 8 and 4 pixels.

Module names and parameters are RepDistiller's. Feature taps: the stem is `relu`, stage outputs
`layer1..4`, a stage's pre-activation the input of its last block's `relu` (called last on the
residual sum), the embedding `linear:input`.
"""
from __future__ import annotations

from torch import nn

from kdrun.models import register_model


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        return self.relu(out + self.shortcut(x))


class CifarResNet50(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, blocks=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        c_in = 64
        for i, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)), start=1):
            stage = []
            for b in range(n):
                stage.append(Bottleneck(c_in, planes, stride if b == 0 else 1))
                c_in = planes * Bottleneck.expansion
            setattr(self, f"layer{i}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.avgpool(x).flatten(1))


@register_model
def cifar_resnet50(num_classes: int, in_channels: int, image_size: int):
    return CifarResNet50(num_classes, in_channels)
