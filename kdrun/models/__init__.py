"""Model registry (timm-style): small factory functions registered by name.

`build_model(name, num_classes, in_channels, image_size)` looks first in kdrun's own zoo and then
in torchvision's classifiers, so any torchvision model works without code; `library="timm"` looks in
timm instead, and `target` calls a factory of the user's own (kdrun.custom).
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import nn

from kdrun import KdrunError

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Registers `fn(num_classes, in_channels, image_size, **kwargs)` under its own name."""
    _REGISTRY[fn.__name__] = fn
    return fn


_KWARGS_CHECKS: Dict[str, Callable[..., None]] = {}


def register_kwargs_check(name: str):
    """Registers a model's check of its kwargs' values: it takes them as keyword arguments and raises
    ValueError("key=value: why") for a bad one. config.check runs it (through check_kwargs, once the
    keys are known to be the factory's arguments) before any data is read."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        _KWARGS_CHECKS[name] = fn
        return fn

    return register


def model_source(name: str, library: str | None = None, target: str | None = None) -> str:
    """Where build_model() takes model `name` from: "custom" (your factory `target`, kdrun.custom),
    "timm" (library=timm), "kdrun" (this zoo) or "torchvision" (any other name)."""
    if target:
        return "custom"
    if library == "timm":
        return "timm"
    return "kdrun" if name in _REGISTRY else "torchvision"


def check_kwargs(setting: str, name: str, kwargs, library: str | None = None, target: str | None = None) -> None:
    """Checks the kwargs of a kdrun model before any training: every key must be an argument of its
    factory, and its registered check (if any) must accept the values. `setting` (student, teacher...)
    names the config node in the message. Torchvision's, timm's and your own factories pass their
    **kwargs on to the model's class, so their keys are only checked when the model is built."""
    if model_source(name, library, target) != "kdrun":
        return
    _check_arguments(name, kwargs, setting)
    check = _KWARGS_CHECKS.get(name)
    if check is not None:
        try:
            check(**kwargs)
        except ValueError as e:
            raise KdrunError(f"{setting}.kwargs.{e}") from None


def _check_arguments(name: str, kwargs, setting: str | None = None) -> None:
    """Raises KdrunError for a key of `kwargs` that kdrun model `name`'s factory does not take."""
    import inspect

    accepted = inspect.signature(_REGISTRY[name]).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        options = [p for p in accepted if p not in ("num_classes", "in_channels", "image_size")]
        where = f" ({setting}.kwargs)" if setting else ""
        raise KdrunError(f"model {name}: no argument {', '.join(map(repr, unknown))} (its kwargs are "
                         f"{', '.join(options) or 'none'}): check the model's kwargs{where}")


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    min_input_size: int | None = None,
    pretrained=False,
    target: str | None = None,
    library: str | None = None,
    **kwargs,
) -> nn.Module:
    source = model_source(name, library, target)
    if source in ("custom", "kdrun"):
        if pretrained is not False:
            raise KdrunError(f"model {name} (pretrained={pretrained}): published weights exist for torchvision's and "
                             "timm's models only; set pretrained=false (or load yours with teacher.checkpoint)")
    if source == "custom":
        from kdrun.custom import build_custom_model

        model = build_custom_model(target, num_classes, in_channels, image_size, kwargs)
    elif source == "timm":
        from kdrun.models.timm_models import build_timm

        model = build_timm(name, num_classes, in_channels, pretrained, **kwargs)
    elif source == "kdrun":
        _check_arguments(name, kwargs)
        model = _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    else:
        from kdrun.models.tv import build_torchvision

        model = build_torchvision(name, num_classes=num_classes, in_channels=in_channels, pretrained=pretrained,
                                  **kwargs)
    if min_input_size and image_size < min_input_size:
        model.register_forward_pre_hook(_upsample_to(min_input_size))
    return model


def _upsample_to(size: int):
    # A pre-hook, not a wrapper module: module paths (for feature taps) and state dicts stay those
    # of the stock model.
    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False), *args[1:])

    return hook


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def unknown_model(name: str) -> KdrunError:
    return KdrunError(
        f"model name={name!r} is neither a kdrun model ({', '.join(list_models())}) nor a torchvision "
        "classifier: pick a config option (teacher=resnet18) or a torchvision name "
        "(teacher=torchvision teacher.name=regnet_y_400mf)"
    )


def logits_of(output) -> torch.Tensor:
    """Torchvision's GoogLeNet/Inception return named tuples in training mode; KD wants logits."""
    return output if isinstance(output, torch.Tensor) else output.logits



def build_from_config(node, data) -> nn.Module:
    """Builds the model a teacher/student config node describes, sized for a DataBundle."""
    return build_model(node.name, data.num_classes, data.in_channels, data.image_size, node.min_input_size,
                       pretrained=node.get("pretrained", False), target=node.get("target"),
                       library=node.get("library"), **node.kwargs)


def pretrained_of(model: nn.Module) -> dict | None:
    """For a model built with published weights: {"weights": their name, "num_classes": the classes they
    were trained for, "file": where they are}; None otherwise."""
    return getattr(model, "_kdrun_pretrained", None)


def weights_identity(node) -> str | None:
    """The published weights a config node asks for, resolved without downloading (`true` becomes the
    library's current default), for digests: None without them."""
    pretrained = node.get("pretrained", False)
    source = model_source(node.name, node.get("library"), node.get("target"))
    if pretrained is False or source in ("custom", "kdrun"):
        return None
    if source == "timm":
        from kdrun.models.timm_models import full_name

        return f"timm {full_name(node.name, pretrained)}"
    from kdrun.models.tv import resolve_weights, weights_file

    weights = resolve_weights(node.name, pretrained)
    return f"{weights} ({weights_file(weights).name})"


# Bump when model_meta() records something new: load_model() says what an older file lacks.
META_FORMAT = 2


def model_meta(node, data) -> dict:
    """What every weights file records beside the weights: what it must match to be loaded
    (arch, num_classes, in_channels: kdrun.checkpoint.load_weights checks them), and what rebuilds
    and feeds the model without the run's config (kdrun.export.load_model): where the model comes
    from (`library`: timm; `target`: your own factory) and the factory's kwargs, the input size and
    normalisation, min_input_size, the class names, whether the first convolution of a torchvision
    model was rebuilt for the data's channels, and the dataset. (Published weights a model started
    from are not needed to rebuild it: the file holds its weights.)"""
    from omegaconf import OmegaConf

    kwargs = OmegaConf.to_container(node.kwargs, resolve=True) if OmegaConf.is_config(node.kwargs) else dict(node.kwargs)
    library, target = node.get("library"), node.get("target")
    return {"arch": node.name, "num_classes": data.num_classes, "in_channels": data.in_channels,
            "meta_format": META_FORMAT, "library": library, "target": target, "kwargs": kwargs,
            "image_size": data.image_size,
            "min_input_size": node.min_input_size, "mean": list(data.config.get("mean", [])),
            "std": list(data.config.get("std", [])), "classes": data.classes,
            "first_conv_rebuilt": rebuilds_first_conv(node.name, data.in_channels, library, target),
            "dataset": data.config}


def rebuilds_first_conv(name: str, in_channels: int, library: str | None = None, target: str | None = None) -> bool:
    """Whether build_model() swaps the first Conv2d of a stock torchvision model for one that takes
    `in_channels` (kdrun.models.tv): its weights then load only into a model adapted the same way.
    (timm builds its models for any channel count itself; kdrun's and your own are built for them.)"""
    return model_source(name, library, target) == "torchvision" and in_channels != 3


from kdrun.models import cifar, lenet, mlp, soft_tree  # noqa: E402,F401  (registers the zoo)
