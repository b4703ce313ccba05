"""Any torchvision classifier, adapted to the dataset's input channels and class count, with random
or published weights (torchvision's weights API, files cached under $TORCH_HOME/hub/checkpoints)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import torch
import torchvision
from filelock import FileLock
from torch import nn

from kdrun import KdrunError
from kdrun.checkpoint import load_checkpoint


def build_torchvision(name: str, num_classes: int, in_channels: int, pretrained=False, **kwargs) -> nn.Module:
    from kdrun.models import unknown_model

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise unknown_model(name)
    weights = resolve_weights(name, pretrained)
    try:
        if weights is None:
            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        else:
            ensure_weights_file(name, pretrained, weights)
            # torchvision's builder sets what the weights need (class count, input size, transform_input...)
            # and reads the file from its cache, which holds it now.
            model = torchvision.models.get_model(name, weights=weights, **kwargs)
    except (TypeError, ValueError) as e:
        raise KdrunError(f"model {name}: {e} (check the model's kwargs)") from None
    if in_channels != 3:
        _replace_first_conv(model, in_channels, keep_weights=weights is not None)
    if weights is not None:
        published = len(weights.meta["categories"])
        if published != num_classes:
            replace_head(model, published, num_classes)
        model._kdrun_pretrained = {"weights": str(weights), "num_classes": published,
                                   "file": str(weights_file(weights))}
    return model


def resolve_weights(name: str, pretrained) -> Optional[torchvision.models.WeightsEnum]:
    """torchvision's weights for `pretrained` = false | true (the default ones) | a weights name."""
    if pretrained is False or pretrained is None:
        return None
    try:
        enum = torchvision.models.get_model_weights(name)
    except (KeyError, ValueError):
        raise KdrunError(f"model {name} (pretrained={pretrained}): torchvision publishes no weights for it; "
                         "set pretrained=false") from None
    if pretrained is True:
        return enum.DEFAULT
    key = str(pretrained).rpartition(".")[2]  # IMAGENET1K_V2, or ResNet50_Weights.IMAGENET1K_V2
    if key.upper() in ("TRUE", "DEFAULT"):
        return enum.DEFAULT
    try:
        return enum[key]
    except KeyError:
        raise KdrunError(f"model {name} (pretrained={pretrained}): no such weights; torchvision has "
                         f"{', '.join(w.name for w in enum)} (or true for {enum.DEFAULT.name})") from None


def weights_file(weights) -> Path:
    """Where torchvision keeps a weights file: $TORCH_HOME/hub/checkpoints/<the URL's file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def ensure_weights_file(name: str, pretrained, weights) -> Path:
    """Downloads the weights file when it is not in the cache (checking the hash prefix in its name), and
    checks that it holds tensors only (kdrun never unpickles code, torchvision's own reader would)."""
    from kdrun.data.builders import socket_timeout

    path = weights_file(weights)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"), socket_timeout():
            if not path.is_file():
                match = re.search(r"-([a-f0-9]+)\.", path.name)
                try:
                    torch.hub.download_url_to_file(weights.url, str(path), match.group(1) if match else None,
                                                   progress=False)
                except (OSError, RuntimeError) as e:  # no network, a timeout, a hash mismatch
                    reason = " ".join(str(e).split())[:160]
                    raise KdrunError(
                        f"model {name} (pretrained={pretrained}): its weights file {path.name} is not in {path.parent} "
                        f"and could not be downloaded ({reason}): copy {weights.url} there, or set TORCH_HOME to a "
                        "folder whose hub/checkpoints/ holds it") from None
    load_checkpoint(path, f"pretrained weights of {name}")
    return path


def replace_head(model: nn.Module, old: int, new: int) -> None:
    """Gives every layer that outputs the weights' `old` classes (a Linear; SqueezeNet's 1x1 Conv2d;
    Inception's and GoogLeNet's auxiliary heads too) a freshly initialised twin with `new` outputs."""
    replaced = 0
    for path, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and module.out_features == old:
            fresh = nn.Linear(module.in_features, new, bias=module.bias is not None)
        elif isinstance(module, nn.Conv2d) and module.out_channels == old:
            fresh = nn.Conv2d(module.in_channels, new, module.kernel_size, module.stride, module.padding,
                              bias=module.bias is not None)
        else:
            continue
        parent_path, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, attr, fresh)
        replaced += 1
    if not replaced:
        raise KdrunError(f"{type(model).__name__}: no layer outputs the weights' {old} classes, so no head to "
                         f"replace for {new}; use a dataset with {old} classes or pretrained=false")


def _replace_first_conv(model: nn.Module, in_channels: int, keep_weights: bool = False) -> None:
    """Swaps the first Conv2d for one that takes `in_channels` (same shape otherwise). Pretrained RGB
    filters are carried over as timm does: summed for one channel, else repeated and rescaled."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            conv = nn.Conv2d(
                in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, groups=1, bias=module.bias is not None, padding_mode=module.padding_mode,
            )
            if keep_weights:
                with torch.no_grad():
                    conv.weight.copy_(adapt_input_weight(module.weight, in_channels))
                    if module.bias is not None:
                        conv.bias.copy_(module.bias)
            parent_path, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, attr, conv)
            return
    raise KdrunError(f"{type(model).__name__} has no Conv2d to adapt to {in_channels} input channels")


def adapt_input_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB filters (out, 3, k, k) for `in_channels` inputs: their sum for one channel (a grey image
    seen as R = G = B gives the same response); otherwise cycled through and scaled by 3/in_channels."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)
