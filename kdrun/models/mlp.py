"""The fully connected nets of Hinton, Vinyals & Dean (2015), section 3."""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from kdrun.models import register_model


class MLP(nn.Sequential):
    """Flatten, then hidden ReLU layers with dropout. Named children (fc1, act1, ...) give
    readable module paths for feature taps."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int, dropout: float, input_dropout: float):
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        if input_dropout > 0:
            layers["drop0"] = nn.Dropout(input_dropout)
        width = in_features
        for i, h in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, h)
            layers[f"act{i}"] = nn.ReLU(inplace=True)
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
            width = h
        layers[f"fc{len(hidden) + 1}"] = nn.Linear(width, num_classes)
        super().__init__(layers)


def _mlp(hidden, num_classes, in_channels, image_size, dropout, input_dropout):
    return MLP(in_channels * image_size * image_size, hidden, num_classes, dropout, input_dropout)


@register_model
def mlp1200(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.5, input_dropout: float = 0.2):
    """The teacher: 784-1200-1200-10 on MNIST, with dropout."""
    return _mlp([1200, 1200], num_classes, in_channels, image_size, dropout, input_dropout)


@register_model
def mlp800(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0, input_dropout: float = 0.0):
    """The student: 784-800-800-10 on MNIST, unregularised."""
    return _mlp([800, 800], num_classes, in_channels, image_size, dropout, input_dropout)
