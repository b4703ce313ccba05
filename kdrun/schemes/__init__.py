"""Distillation schemes: who teaches whom, and when. Each takes a RunContext and returns the
summary's model entries ({"teacher": ..., "student": ...})."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig

from kdrun.data import DataBundle
from kdrun.engine import MetricsLog


@dataclass
class RunContext:
    cfg: DictConfig
    run_dir: Path
    device: torch.device
    data: DataBundle
    metrics: MetricsLog
    config_digest: str
    should_stop: Callable[[], bool]


def example_batch(data: DataBundle, device: torch.device, size: int = 4) -> torch.Tensor:
    """A few real training images, for the dry forward pass that sizes adapters."""
    x, _ = next(iter(data.loader("train", size)))
    return x.to(device)


def get_scheme(name: str) -> Callable[[RunContext], dict]:
    from kdrun import KdrunError
    from kdrun.schemes import offline

    schemes = {"offline": offline.run}
    if name not in schemes:
        raise KdrunError(f"scheme.name={name!r} is unknown: choose one of {', '.join(schemes)}")
    return schemes[name]
