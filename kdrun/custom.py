"""Your own code, without editing kdrun: a model or a dataset from any importable factory.

- `student=custom student.target=my_pkg.nets.tiny_cnn`: `tiny_cnn(num_classes=N, in_channels=C,
  **student.kwargs)` (plus `image_size=S` when the factory names that argument) returns an nn.Module.
- `dataset=custom dataset.target=my_pkg.data.make`: `make(root=<dataset.root or data_dir>,
  **dataset.kwargs)` returns the train and test torch Datasets: a (train, test) pair or a dict with
  `train`, `test` and optionally `val`.

`target` is a dotted path, as Hydra's `_target_` (and read by Hydra's own locator); values in
`kwargs` that are `{_target_: ...}` nodes are instantiated first. A KD method needs nothing of this:
any `configs/kd/` entry (or `+kd.<name>._target_=...` on the command line) names its class.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Dict

from torch import nn

from kdrun import KdrunError


def locate(path: str, setting: str) -> Callable:
    """The object a dotted path names, or one line saying why it cannot be imported."""
    from hydra.utils import get_object

    try:
        return get_object(path)
    except Exception as e:  # Hydra wraps every import failure (no module, no attribute) in its own error
        detail = " ".join(str(e).split())[:200]
        raise KdrunError(f"{setting}={path}: cannot import it ({detail}); give a dotted path to a function or class "
                         "(my_pkg.module.name) whose package is installed or on PYTHONPATH") from None


def _arguments(kwargs) -> Dict[str, Any]:
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    if isinstance(kwargs, DictConfig):
        kwargs = OmegaConf.to_container(kwargs, resolve=True)
    return dict(instantiate(kwargs or {}, _convert_="all"))


def _call(factory: Callable, setting: str, target: str, **args):
    """factory(**args), after checking that its signature takes them: a factory that does not fit
    kdrun's calling convention is a setting to fix, while an error inside it keeps its traceback."""
    try:
        inspect.signature(factory).bind(**args)
    except TypeError as e:
        shown = ", ".join(f"{k}=..." for k in args)
        raise KdrunError(f"{setting}={target}: kdrun calls it as {target.rpartition('.')[2]}({shown}), which its "
                         f"signature does not take ({e})") from None
    except ValueError:  # a builtin without a signature: just call it
        pass
    return factory(**args)


def build_custom_model(target: str, num_classes: int, in_channels: int, image_size: int, kwargs) -> nn.Module:
    factory = locate(target, "model target")
    args = _arguments(kwargs)
    try:
        accepts_size = "image_size" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        accepts_size = False
    if accepts_size:
        args.setdefault("image_size", image_size)
    model = _call(factory, "model target", target, num_classes=num_classes, in_channels=in_channels, **args)
    if not isinstance(model, nn.Module):
        raise KdrunError(f"model target={target}: returned a {type(model).__name__}, not a torch nn.Module")
    return model


def make_datasets(target, root: Path, kwargs) -> Dict[str, Any]:
    if not target:
        raise KdrunError("dataset.target is not set: dataset=custom needs the factory of your datasets "
                         "(dataset.target=my_pkg.data.make, called as make(root=..., **dataset.kwargs))")
    made = _call(locate(target, "dataset.target"), "dataset.target", target, root=str(root), **_arguments(kwargs))
    if isinstance(made, (tuple, list)) and len(made) == 2:
        made = {"train": made[0], "test": made[1]}
    if not isinstance(made, dict) or not {"train", "test"} <= set(made):
        raise KdrunError(f"dataset.target={target}: must return (train, test) Datasets or a dict with train, test "
                         f"and optionally val; it returned a {type(made).__name__}")
    return made
