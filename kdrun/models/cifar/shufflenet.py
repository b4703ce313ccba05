"""ShuffleNet V1 (Zhang et al., CVPR 2018) and V2 (Ma et al., ECCV 2018) for CIFAR, as RepDistiller
defines them (HobbitLong/RepDistiller, models/ShuffleNetv1.py, ShuffleNetv2.py: `ShuffleV1` with 3
groups and 240-480-960 channels, `ShuffleV2` at width 1.0): a 1x1 stem at full resolution, three
stages that each halve the size.

Module names and parameters are RepDistiller's. Feature taps: the stem is `relu`, stage outputs
`layer1..3`, the embedding `linear:input`; a stage's pre-activation is the input of its last block's
`relu` (V1) or its last block's `preact` (V2, an identity that names the concatenation of the
passed-through half and the branch before its ReLU).
"""
from __future__ import annotations

import torch
from torch import nn

from kdrun.models import register_model


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class V1Block(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; a stride-2 block concatenates an
    average-pooled shortcut instead of adding it."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int):
        super().__init__()
        mid = c_out // 4
        first_groups = 1 if c_in == 24 else groups  # the stem's 24 channels are not grouped
        self.stride = stride
        self.conv1 = nn.Conv2d(c_in, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle1 = ChannelShuffle(first_groups)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.shuffle1(self.relu(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        shortcut = self.shortcut(x)
        return self.relu(torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut)


class _ShuffleNet(nn.Module):
    """Both versions: a 1x1 stem to 24 channels at full resolution, then three stages."""

    def __init__(self, in_channels: int, stages: list[nn.Sequential]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU(inplace=True)
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def features(self, x):
        return self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))


class ShuffleNetV1(_ShuffleNet):
    def __init__(self, num_classes: int, in_channels: int = 3, widths=(240, 480, 960), blocks=(4, 8, 4), groups=3):
        # The first block of a stage concatenates its c_in shortcut channels to its output.
        c_ins = (24, *widths[:-1])
        super().__init__(in_channels, [nn.Sequential(V1Block(c_in, c_out - c_in, 2, groups),
                                                     *[V1Block(c_out, c_out, 1, groups) for _ in range(n - 1)])
                                       for c_in, c_out, n in zip(c_ins, widths, blocks)])
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        return self.linear(self.avgpool(self.features(x)).flatten(1))


class V2Block(nn.Module):
    """Half the channels pass through; the other half goes 1x1, depthwise 3x3, 1x1; then a shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.relu = nn.ReLU(inplace=True)
        self.preact = nn.Identity()  # a tap point: RepDistiller's pre-activation of this block
        self.shuffle = ChannelShuffle(2)

    def forward(self, x):
        half = x.shape[1] // 2
        kept, branch = x[:, :half], x[:, half:]
        branch = self.bn3(self.conv3(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(branch)))))))
        self.preact(torch.cat([kept, branch], 1))
        return self.shuffle(torch.cat([kept, self.relu(branch)], 1))


class V2DownBlock(nn.Module):
    """Both halves see the whole input, each with a stride-2 depthwise convolution."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        mid = c_out // 2
        self.conv1 = nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv2 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.relu = nn.ReLU(inplace=True)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x):
        left = self.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(self.relu(self.bn3(self.conv3(x)))))
        right = self.relu(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(_ShuffleNet):
    def __init__(self, num_classes: int, in_channels: int = 3, widths=(116, 232, 464), blocks=(3, 7, 3), head=1024):
        c_ins = (24, *widths[:-1])
        super().__init__(in_channels, [nn.Sequential(V2DownBlock(c_in, c_out), *[V2Block(c_out) for _ in range(n)])
                                       for c_in, c_out, n in zip(c_ins, widths, blocks)])
        self.conv2 = nn.Conv2d(widths[-1], head, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.head_relu = nn.ReLU(inplace=True)  # not `relu`: that tap is the stem's
        self.linear = nn.Linear(head, num_classes)

    def forward(self, x):
        x = self.head_relu(self.bn2(self.conv2(self.features(x))))
        return self.linear(self.avgpool(x).flatten(1))


@register_model
def cifar_shufflev1(num_classes: int, in_channels: int, image_size: int):
    return ShuffleNetV1(num_classes, in_channels)


@register_model
def cifar_shufflev2(num_classes: int, in_channels: int, image_size: int):
    return ShuffleNetV2(num_classes, in_channels)
