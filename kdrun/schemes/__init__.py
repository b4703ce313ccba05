"""Distillation schemes: who teaches whom, and when. Each takes a RunContext and returns the
summary's model entries ({"teacher": ..., "student": ...})."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict

import torch
from omegaconf import DictConfig
from torch import nn

from kdrun import KdrunError
from kdrun.data import DataBundle
from kdrun.engine import FitResult, MetricsLog

log = logging.getLogger(__name__)


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
    x, _ = next(iter(data.loader("train", size, shard=False)))  # the same images on every process
    return x.to(device)


def soft_target_settings(cfg: DictConfig) -> tuple[float, float]:
    """(T, weight) of the KL term for the schemes whose models teach each other through soft targets
    (online, self_byot): those of kd=hinton, the only method they take."""
    if list(cfg.kd) != ["hinton"]:
        raise KdrunError(f"scheme={cfg.scheme.name} teaches through soft targets: use kd=hinton (its T and weight, "
                         f"alpha by default, set the temperature and the weight of the KL term), not "
                         f"kd={'+'.join(cfg.kd) or 'none'}")
    return float(cfg.kd.hinton.T), float(cfg.kd.hinton.weight)


def refuse_pretrained_teachers(cfg: DictConfig, why: str) -> None:
    """The schemes that train their own teachers refuse the settings that would otherwise be
    silently dropped: a teacher checkpoint, an ensemble."""
    if cfg.teacher.checkpoint or len(cfg.teacher.members) > 1 or cfg.teacher.ensemble_seeds:
        raise KdrunError(f"scheme={cfg.scheme.name} {why}: unset teacher.checkpoint, teacher=[...] and "
                         "teacher.ensemble_seeds, or use scheme=offline")


def teacher_not_used(cfg: DictConfig, why: str) -> None:
    """...and those that ignore the teacher group say so once."""
    refuse_pretrained_teachers(cfg, why)
    log.info("scheme=%s %s: the teacher group (teacher=%s) is not used", cfg.scheme.name, why, cfg.teacher.name)


def best_reports(models: Dict[str, nn.Module], results: Dict[str, FitResult], archs: Dict[str, str], data,
                 device) -> Dict[str, dict]:
    """Each model's summary entry, from its best-on-validation weights (loaded into it here)."""
    from kdrun.checkpoint import load_checkpoint
    from kdrun.teachers import test_report

    out = {}
    for name, model in models.items():
        result = results[name]
        model.load_state_dict(load_checkpoint(result.best_path, f"{name} checkpoint")["model"])
        out[name] = {"arch": archs[name], **test_report(model, data, device, result.best_epoch, result.best_val_acc)}
    return out


def get_scheme(name: str) -> Callable[[RunContext], dict]:
    from kdrun.schemes import offline, online, self_byot
    from kdrun.schemes import self as born_again

    schemes = {"offline": offline.run, "online": online.run, "self": born_again.run, "self_byot": self_byot.run}
    if name not in schemes:
        raise KdrunError(f"scheme.name={name!r} is unknown: choose one of {', '.join(schemes)}")
    return schemes[name]
