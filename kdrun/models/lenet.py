"""LeNet-5 (LeCun et al. 1998), with ReLU and max-pooling, for any square input size."""
from __future__ import annotations

from torch import nn

from kdrun.models import register_model


class LeNet5(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: int):
        super().__init__()
        # conv1 keeps the size (padding 2, as for 28x28 MNIST in place of the paper's 32x32).
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = (image_size // 2 - 4) // 2
        if side < 1:
            from kdrun import KdrunError

            raise KdrunError(f"lenet5 needs images of at least 12x12 pixels, not {image_size}x{image_size}")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model
def lenet5(num_classes: int, in_channels: int, image_size: int):
    return LeNet5(num_classes, in_channels, image_size)
