"""Feature taps (after torchdistill): read any module's output by its path, through forward hooks,
so no model's forward() is ever edited and any torchvision model works.

A path is what `model.named_modules()` lists (`layer3`, `features.12`, `fc1`). A path ending in
`:input` reads the module's input instead; a module called several times per forward (ResNet blocks
call their `relu` after each convolution and after the residual sum) keeps its last call, so
`layer4.1.relu:input` is the block's output before its final activation.
"""
from __future__ import annotations

from typing import Dict, Iterable

import torch
from torch import nn

from kdrun import KdrunError


def module_paths(model: nn.Module, depth: int = 2) -> list[str]:
    """Module paths up to `depth` levels deep (for error messages)."""
    return [name for name, _ in model.named_modules() if name and name.count(".") < depth]


class FeatureTap:
    """`with FeatureTap(model, paths) as tap: model(x)` fills `tap.outputs[path]`."""

    def __init__(self, model: nn.Module, paths: Iterable[str], owner: str = "model"):
        self.model = model
        self.paths = list(dict.fromkeys(paths))
        self.outputs: Dict[str, torch.Tensor] = {}
        self._handles: list = []
        modules = dict(model.named_modules())
        for path in self.paths:
            name, _, kind = path.partition(":")
            if name not in modules or kind not in ("", "input"):
                raise KdrunError(
                    f"{owner} layer {path!r} is not a module path of {type(model).__name__} (add ':input' to read a "
                    f"module's input); valid paths include: {', '.join(module_paths(model))}"
                )

    def _hook(self, path: str, read_input: bool):
        def capture(value):
            value = value[0] if isinstance(value, (tuple, list)) else value
            # A copy: an in-place activation after the tapped module would otherwise overwrite it.
            self.outputs[path] = value.clone()

        if read_input:
            return lambda module, args: capture(args)
        return lambda module, args, output: capture(output)

    def __enter__(self) -> "FeatureTap":
        self.outputs = {}
        for path in self.paths:
            name, _, kind = path.partition(":")
            module = self.model.get_submodule(name)
            if kind == "input":
                self._handles.append(module.register_forward_pre_hook(self._hook(path, True)))
            else:
                self._handles.append(module.register_forward_hook(self._hook(path, False)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
