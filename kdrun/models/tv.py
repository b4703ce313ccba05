"""Any torchvision classifier, adapted to the dataset's input channels and class count."""
from __future__ import annotations

import torchvision
from torch import nn

from kdrun import KdrunError


def build_torchvision(name: str, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    from kdrun.models import unknown_model

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise unknown_model(name)
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise KdrunError(f"model {name}: {e} (check the model's kwargs)") from None
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swaps the first Conv2d for one that takes `in_channels` (same shape otherwise)."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            conv = nn.Conv2d(
                in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, groups=1, bias=module.bias is not None, padding_mode=module.padding_mode,
            )
            parent_path, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, attr, conv)
            return
    raise KdrunError(f"{type(model).__name__} has no Conv2d to adapt to {in_channels} input channels")
