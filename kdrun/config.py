"""Structured config schemas (registered in Hydra's ConfigStore) and value checks.

Hydra validates types and key names against these dataclasses when it composes; `check()` adds
the checks of ranges and combinations that a type cannot express, each failing with one line
that names the setting and how to fix it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from kdrun import KdrunError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "multistep")


@dataclass
class LayersConfig:
    """Default module paths that feature- and relation-based methods read (kd.<method>.*_layers override)."""

    stages: List[str] = field(default_factory=list)  # stage outputs, shallow to deep
    preact: List[str] = field(default_factory=list)  # the same stages before their activation (AB); empty: stages
    embedding: Optional[str] = None  # the representation before the classifier (relation methods)


@dataclass
class ModelConfig:
    """An architecture plus the recipe that trains it (shared by the teacher and student groups)."""

    name: str = MISSING  # a kdrun model (mlp1200, lenet5, ...) or any torchvision classifier
    kwargs: Dict[str, Any] = field(default_factory=dict)  # extra arguments of the model factory
    min_input_size: Optional[int] = None  # upsample smaller inputs (e.g. VGG's 5 poolings need 32)
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: List[int] = field(default_factory=list)  # epochs where multistep multiplies by gamma
    gamma: float = 0.1
    augment: bool = True  # use the dataset's training augmentation
    exclude_classes: List[int] = field(default_factory=list)  # train without these classes (a transfer set)
    layers: LayersConfig = field(default_factory=LayersConfig)


@dataclass
class TeacherConfig(ModelConfig):
    checkpoint: Optional[str] = None  # load these weights instead of training (bypasses the cache)
    seed: Optional[int] = None  # null: the run's seed; fix it to share one teacher across seeds


@dataclass
class DatasetConfig:
    name: str = MISSING  # the builder: mnist, fashion_mnist, cifar10, cifar100, image_folder, fake
    root: Optional[str] = None  # null: data_dir; a relative path is taken inside data_dir
    train_subset: Optional[int] = None  # first N training images
    val_split: float = 0.1  # held out from training: a fraction (<1) or a count (>=1); 0 for none
    split_seed: int = 0  # which images are held out; independent of the run's seed
    mean: List[float] = field(default_factory=list)
    std: List[float] = field(default_factory=list)
    shift: int = 0  # augmentation: random translation by up to this many pixels
    hflip: bool = False  # augmentation: random horizontal flip
    image_size: Optional[int] = None  # image_folder: resize to this; fake: generated size
    channels: int = 3  # fake only
    num_classes: int = 10  # fake only (other datasets know their own)
    num_train: int = 512  # fake only
    num_test: int = 256  # fake only
    test_split: float = 0.2  # image_folder without a test/ folder: the share held out for test
    num_workers: int = 2  # image_folder: DataLoader workers


@dataclass
class SchemeConfig:
    name: str = MISSING  # offline


def _run_config_class():
    # `lambda` is the name users type (`kdrun lambda=0.3`) but a Python keyword, so the schema's
    # class is built by hand: no generated __init__/__repr__/__eq__ (which would not compile);
    # OmegaConf reads only the fields and their defaults.
    annotations = {
        "teacher": TeacherConfig,
        "student": ModelConfig,
        "dataset": DatasetConfig,
        "kd": Dict[str, Any],
        "scheme": SchemeConfig,
        "T": float,
        "alpha": float,
        "lambda": Optional[float],
        "epochs": Optional[int],
        "seed": int,
        "device": str,
        "data_dir": str,
        "teacher_cache": str,
        "resume": bool,
        "progress": bool,
        "dry_run": bool,
        "cache_teacher_logits": bool,
        "amp": str,
        "channels_last": str,
        "compile": bool,
    }
    defaults = {
        "teacher": field(default_factory=TeacherConfig),
        "student": field(default_factory=ModelConfig),
        "dataset": field(default_factory=DatasetConfig),
        "kd": field(default_factory=dict),
        "scheme": field(default_factory=SchemeConfig),
        "T": 4.0,
        "alpha": 0.9,
        "lambda": None,
        "epochs": None,
        "seed": 0,
        "device": "auto",
        "data_dir": "./data",
        "teacher_cache": "outputs/teachers",
        "resume": False,
        "progress": True,
        "dry_run": False,
        "cache_teacher_logits": True,
        "amp": "auto",
        "channels_last": "auto",
        "compile": False,
    }
    cls = type("RunConfig", (), {"__annotations__": annotations, **defaults})
    return dataclass(init=False, repr=False, eq=False)(cls)


RunConfig = _run_config_class()


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)


def _fail(setting: str, value: Any, why: str) -> None:
    raise KdrunError(f"{setting}={value}: {why}")


def _check_recipe(prefix: str, m: DictConfig) -> None:
    if m.epochs < 1:
        _fail(f"{prefix}.epochs", m.epochs, "must be at least 1")
    if m.batch_size < 1:
        _fail(f"{prefix}.batch_size", m.batch_size, "must be at least 1")
    if m.lr <= 0:
        _fail(f"{prefix}.lr", m.lr, "the learning rate must be > 0")
    if m.weight_decay < 0:
        _fail(f"{prefix}.weight_decay", m.weight_decay, "must be >= 0")
    if m.optimizer not in OPTIMIZERS:
        _fail(f"{prefix}.optimizer", m.optimizer, f"choose one of {', '.join(OPTIMIZERS)}")
    if m.schedule not in SCHEDULES:
        _fail(f"{prefix}.schedule", m.schedule, f"choose one of {', '.join(SCHEDULES)}")


def check(cfg: DictConfig) -> None:
    """Checks values a type cannot; raises KdrunError naming the setting and the fix."""
    if cfg.T <= 0:
        _fail("T", cfg.T, "the temperature must be > 0 (e.g. T=4)")
    if not 0 <= cfg.alpha <= 1:
        _fail("alpha", cfg.alpha, "the weight of the distillation term must be in [0, 1]")
    lam = cfg["lambda"]
    if lam is not None and not 0 <= lam <= 1:
        _fail("lambda", lam, "the weight of the hard-label term must be in [0, 1] (or null for 1 - alpha)")
    if cfg.epochs is not None and cfg.epochs < 1:
        _fail("epochs", cfg.epochs, "must be at least 1 (or null for student.epochs)")
    if cfg.amp not in ("auto", "off", "bf16", "fp16"):
        _fail("amp", cfg.amp, "choose auto, off, bf16 or fp16")
    if cfg.channels_last not in ("auto", "on", "off"):
        _fail("channels_last", cfg.channels_last, "choose auto, on or off")
    _check_recipe("teacher", cfg.teacher)
    _check_recipe("student", cfg.student)
    d = cfg.dataset
    if d.val_split < 0:
        _fail("dataset.val_split", d.val_split, "must be >= 0: a fraction below 1 or a count")
    if d.train_subset is not None and d.train_subset < 1:
        _fail("dataset.train_subset", d.train_subset, "must be at least 1 (or null for all)")
    if d.shift < 0:
        _fail("dataset.shift", d.shift, "must be >= 0 pixels")
    if len(d.mean) != len(d.std):
        _fail("dataset.std", list(d.std), "needs one value per channel, like dataset.mean")
    if any(s <= 0 for s in d.std):
        _fail("dataset.std", list(d.std), "every value must be > 0")


def ce_weight(cfg: DictConfig) -> float:
    """lambda, the weight of the hard-label term: by default 1 - alpha when Hinton's soft targets (whose
    weight is alpha) are among the terms, as in the paper's weighted average; 1 otherwise, since the
    other methods' papers add their term to the full cross-entropy."""
    if cfg["lambda"] is not None:
        return float(cfg["lambda"])
    return round(1.0 - float(cfg.alpha), 12) if "hinton" in cfg.kd else 1.0


def student_epochs(cfg: DictConfig) -> int:
    return int(cfg.epochs) if cfg.epochs is not None else int(cfg.student.epochs)


def plain(node: Any) -> Any:
    """A resolved, plain-Python copy of a config node (for digests and JSON files)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node

