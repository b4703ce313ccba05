"""VGG with batch norm (Simonyan & Zisserman, ICLR 2015) for CIFAR, as RepDistiller defines it
(HobbitLong/RepDistiller, models/vgg.py: its `vgg8`..`vgg19` are the `_bn` variants): five blocks of
3x3 convolutions separated by 2x2 max-pooling (the fourth pooling only for 64x64 inputs), global
average pooling and one linear classifier. vgg8 is RepDistiller's one-convolution-per-block variant.

Module names and parameters are RepDistiller's. Feature taps: `relu0`..`relu4` are the blocks'
activations (the stem and the four stages), `block1..4` the same before them, `classifier:input`
the embedding.
"""
from __future__ import annotations

from torch import nn

from kdrun.models import register_model

# Channels of the convolutions in each of the five blocks.
_BLOCKS = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _block(widths: list[int], c_in: int) -> nn.Sequential:
    """conv-BN-ReLU per width, without the last ReLU: the block's output is its pre-activation."""
    layers: list[nn.Module] = []
    for c_out in widths:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        c_in = c_out
    return nn.Sequential(*layers[:-1])


class CifarVGG(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        c_in = in_channels
        for i, widths in enumerate(_BLOCKS[depth]):
            setattr(self, f"block{i}", _block(widths, c_in))
            setattr(self, f"relu{i}", nn.ReLU(inplace=True))
            c_in = widths[-1]
        for i in range(4):
            setattr(self, f"pool{i}", nn.MaxPool2d(2, 2))
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        size = x.shape[-2]
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.relu3(self.block3(x))
        if size == 64:  # RepDistiller pools here only for 64x64 inputs: CIFAR's last two blocks share 4x4
            x = self.pool3(x)
        x = self.relu4(self.block4(x))
        return self.classifier(self.pool4(x).flatten(1))


@register_model
def cifar_vgg8(num_classes: int, in_channels: int, image_size: int):
    return CifarVGG(8, num_classes, in_channels)


@register_model
def cifar_vgg11(num_classes: int, in_channels: int, image_size: int):
    return CifarVGG(11, num_classes, in_channels)


@register_model
def cifar_vgg13(num_classes: int, in_channels: int, image_size: int):
    return CifarVGG(13, num_classes, in_channels)


@register_model
def cifar_vgg16(num_classes: int, in_channels: int, image_size: int):
    return CifarVGG(16, num_classes, in_channels)


@register_model
def cifar_vgg19(num_classes: int, in_channels: int, image_size: int):
    return CifarVGG(19, num_classes, in_channels)
