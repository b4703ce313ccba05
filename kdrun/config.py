"""Structured config schemas (registered in Hydra's ConfigStore) and value checks.

Hydra validates types and key names against these dataclasses when it composes; `check()` adds
the checks of ranges and combinations that a type cannot express, each failing with one line
that names the setting and how to fix it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from kdrun import KdrunError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "multistep")
SCHEMES = ("offline", "online", "self", "self_byot")
COMBINES = ("auto", "mean_probs", "mean_logits")
LIBRARIES = (None, "timm")
PROTOCOLS = ("validation", "best_test_epoch")


def config_dir() -> Path:
    """configs/: inside the package in an installed wheel, at the top of a checkout."""
    packaged = Path(__file__).parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "configs"


def _open_dict() -> DictConfig:
    # A node that takes new keys on the command line without `+` (student.kwargs.dropout=0.3): the
    # rest of the config stays strict, so a misspelt key anywhere else is still an error.
    return DictConfig({}, flags={"struct": False})


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
    kwargs: Dict[str, Any] = field(default_factory=_open_dict)  # extra arguments of the model factory
    # Published weights (torchvision's weights API, or timm's): true for the default ones, or a weights
    # name (IMAGENET1K_V2; for timm a tag). Another class count than theirs gets a new, trained head.
    pretrained: Any = False
    target: Optional[str] = None  # a factory of your own (pkg.module.fn): fn(num_classes=, in_channels=, **kwargs)
    library: Optional[str] = None  # where `name` is found: null (kdrun's zoo, then torchvision) or timm
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
    label_smoothing: float = 0.0  # of the cross-entropy on the labels, in [0, 1)
    warmup_epochs: int = 0  # linear learning-rate warmup (per step) over the first N epochs, times the schedule
    grad_clip: Optional[float] = None  # clip the gradients' total L2 norm to this; null: no clipping
    layers: LayersConfig = field(default_factory=LayersConfig)


@dataclass
class MemberConfig(ModelConfig):
    checkpoint: Optional[str] = None  # load these weights instead of training (bypasses the cache)
    seed: Optional[int] = None  # null: the run's seed; fix it to share one teacher across seeds


@dataclass
class TeacherConfig(MemberConfig):
    # Every teacher option files its name here, so that `teacher=[resnet18,lenet5]` (Hydra's multiple
    # selection, which merges the options' top-level keys) knows its members. With one option the
    # top-level keys are the teacher; with several, each member is its own configs/model/<option>.yaml
    # changed by the keys given here (teacher.members.lenet5.epochs=5).
    members: Dict[str, Any] = field(default_factory=_open_dict)
    ensemble_seeds: List[int] = field(default_factory=list)  # an ensemble of each member over these seeds


@dataclass
class EnsembleConfig:
    # The soft targets: the mean of the members' tempered probabilities, or of their logits; auto is
    # mean_logits for kd=logits (which regresses logits), else mean_probs.
    combine: str = "auto"


@dataclass
class DatasetConfig:
    name: str = MISSING  # the builder: mnist, fashion_mnist, cifar10, cifar100, image_folder, imagenet, fake, custom
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
    num_workers: int = 2  # image_folder, imagenet, custom: DataLoader workers
    prefetch_factor: int = 2  # image_folder, imagenet, custom: batches each worker loads ahead
    resize_size: Optional[int] = None  # imagenet: test images are resized to this, then centre-cropped to image_size
    download: bool = True  # mnist, fashion_mnist, cifar10, cifar100: torchvision fetches missing files into data_dir
    test_subset: Optional[int] = None  # only N test images (quick checks); a fixed sample for image folders
    target: Optional[str] = None  # custom: a factory (pkg.module.fn) returning the train and test Datasets
    kwargs: Dict[str, Any] = field(default_factory=dict)  # custom: the factory's arguments
    # validation: the best epoch is chosen on val_split, the test set is read once. best_test_epoch: the
    # published CIFAR protocol (RepDistiller, mdistiller): all training images train, and the test set
    # is evaluated after every epoch and its best epoch reported (for like-for-like comparisons only).
    protocol: str = "validation"


@dataclass
class SchemeConfig:
    name: str = MISSING  # offline, online, self, self_byot
    peers: Optional[int] = None  # online: null trains the teacher and student together; K: K student peers
    generations: int = 2  # self: born-again generations after generation 0
    heads: Optional[List[str]] = None  # self_byot: student layers that get an exit head; null: stages but the last
    feature_weight: float = 0.03  # self_byot: weight of the L2 hint towards the deepest feature (lambda)
    alpha: float = 0.3  # self_byot: weight of the heads' KL term towards the deepest classifier (1 - alpha: CE)
    T: float = 3.0  # self_byot: temperature of that KL term


@dataclass
class TensorBoardLoggerConfig:
    _target_: str = "kdrun.loggers.tensorboard.TensorBoardLogger"
    dir: str = "tensorboard"  # the event files' folder, inside the run directory


@dataclass
class MLflowLoggerConfig:
    _target_: str = "kdrun.loggers.mlflow.MLflowLogger"
    tracking_uri: Optional[str] = None  # null: $MLFLOW_TRACKING_URI, else SQLite in save_dir
    save_dir: str = "outputs/mlruns"  # the default store (mlflow.db) and its artifacts
    experiment_name: Optional[str] = None  # null: the sweep directory (a multirun), else "kdrun"
    run_name: Optional[str] = None  # null: the run's overrides
    log_model: bool = False  # also upload checkpoints/*_best.pt


WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class WandbLoggerConfig:
    _target_: str = "kdrun.loggers.wandb.WandbLogger"
    project: str = "kdrun"
    entity: Optional[str] = None
    mode: Optional[str] = None  # null: $WANDB_MODE, else online when logged in, else offline
    group: Optional[str] = None  # null: the sweep directory (a multirun)
    tags: List[str] = field(default_factory=list)


@dataclass
class CSVLoggerConfig:
    _target_: str = "kdrun.loggers.csv.CSVLogger"
    dir: str = "csv"  # metrics.csv and hparams.yaml, inside the run directory


@dataclass
class LoggerConfig:
    """The `logger` group: each selected tracker (logger=[tensorboard,mlflow]) fills its entry; null is off."""

    tensorboard: Optional[TensorBoardLoggerConfig] = None
    mlflow: Optional[MLflowLoggerConfig] = None
    wandb: Optional[WandbLoggerConfig] = None
    csv: Optional[CSVLoggerConfig] = None


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
        "ensemble": EnsembleConfig,
        "logger": LoggerConfig,
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
        "cuda_graphs": str,
        "sync_bn": bool,
        "dist_timeout_s": float,
        "deploy_report": bool,
    }
    defaults = {
        "teacher": field(default_factory=TeacherConfig),
        "student": field(default_factory=ModelConfig),
        "dataset": field(default_factory=DatasetConfig),
        "kd": field(default_factory=dict),
        "scheme": field(default_factory=SchemeConfig),
        "ensemble": field(default_factory=EnsembleConfig),
        "logger": field(default_factory=LoggerConfig),
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
        "cuda_graphs": "auto",
        "sync_bn": False,  # under torchrun/SLURM: BatchNorm statistics over the global batch (SyncBatchNorm)
        "dist_timeout_s": 1800.0,  # under torchrun/SLURM: how long a process waits for the others
        # Parameters, weight bytes, multiply-adds, CPU latency and throughput of every model (kdrun/deploy.py)
        "deploy_report": True,
    }
    cls = type("RunConfig", (), {"__annotations__": annotations, **defaults})
    return dataclass(init=False, repr=False, eq=False)(cls)


RunConfig = _run_config_class()


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)


def _fail(setting: str, value: Any, why: str) -> None:
    raise KdrunError(f"{setting}={value}: {why}")


def _check_finite(node: Any, prefix: str = "") -> None:
    """NaN or inf anywhere (T=nan, dataset.val_split=inf) would pass every range check below and
    surface as a NaN loss blamed on the learning rate."""
    items = list(node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ())
    # A level's own values first: T=nan is reported as T, not as kd.hinton.T (which is ${T}).
    for key, value in sorted(items, key=lambda kv: isinstance(kv[1], (dict, list))):
        name = f"{prefix}.{key}" if prefix and isinstance(key, str) else f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, float) and not math.isfinite(value):
            _fail(name, value, "must be a finite number")
        _check_finite(value, name)


def _check_recipe(prefix: str, m: DictConfig) -> None:
    if m.epochs < 1:
        _fail(f"{prefix}.epochs", m.epochs, "must be at least 1")
    if m.batch_size < 2:
        _fail(f"{prefix}.batch_size", m.batch_size, "must be at least 2 (a batch of one image cannot train: batch "
              "norm and the batch statistics of some methods need two)")
    if not 0 <= m.momentum < 1:
        _fail(f"{prefix}.momentum", m.momentum, "must be in [0, 1)")
    if m.lr <= 0:
        _fail(f"{prefix}.lr", m.lr, "the learning rate must be > 0")
    if m.weight_decay < 0:
        _fail(f"{prefix}.weight_decay", m.weight_decay, "must be >= 0")
    if m.optimizer not in OPTIMIZERS:
        _fail(f"{prefix}.optimizer", m.optimizer, f"choose one of {', '.join(OPTIMIZERS)}")
    if m.schedule not in SCHEDULES:
        _fail(f"{prefix}.schedule", m.schedule, f"choose one of {', '.join(SCHEDULES)}")
    if not 0 <= m.label_smoothing < 1:
        _fail(f"{prefix}.label_smoothing", m.label_smoothing, "must be in [0, 1) (0.1 is the usual ImageNet value)")
    if m.warmup_epochs < 0:
        _fail(f"{prefix}.warmup_epochs", m.warmup_epochs, "must be >= 0 (0: no warmup)")
    if m.grad_clip is not None and m.grad_clip <= 0:
        _fail(f"{prefix}.grad_clip", m.grad_clip, "the largest gradient norm must be > 0 (or null: no clipping)")
    if m.name == "custom" and not m.target:
        _fail(f"{prefix}.target", m.target, f"{prefix}=custom builds a model of your own: name its factory, e.g. "
              f"{prefix}.target=my_pkg.nets.tiny_cnn (called with num_classes, in_channels and {prefix}.kwargs)")
    if m.library not in LIBRARIES:
        _fail(f"{prefix}.library", m.library, "choose null (kdrun's models, then torchvision's) or timm")
    if not isinstance(m.pretrained, (bool, str)) or m.pretrained == "":
        _fail(f"{prefix}.pretrained", m.pretrained, "write true (the default weights), false, or a weights name "
              "such as IMAGENET1K_V2")
    if m.pretrained is not False and m.get("checkpoint"):
        _fail(f"{prefix}.pretrained", m.pretrained, f"{prefix}.checkpoint gives every weight already: set one of them")
    from kdrun.models import check_kwargs

    check_kwargs(prefix, m.name, m.kwargs, m.library, m.target)


def check(cfg: DictConfig) -> None:
    """Checks values a type cannot; raises KdrunError naming the setting and the fix."""
    _check_finite(plain(cfg))
    if cfg.T <= 0:
        _fail("T", cfg.T, "the temperature must be > 0 (e.g. T=4)")
    if not 0 <= cfg.alpha <= 1:
        _fail("alpha", cfg.alpha, "the weight of the distillation term must be in [0, 1]")
    lam = cfg["lambda"]
    if lam is not None and not 0 <= lam <= 1:
        _fail("lambda", lam, "the weight of the hard-label term must be in [0, 1] (or null for 1 - alpha)")
    if cfg.epochs is not None and cfg.epochs < 0:
        _fail("epochs", cfg.epochs, "must be at least 1, 0 to train no student (or null for student.epochs)")
    if cfg.epochs == 0 and cfg.scheme.name != "offline":
        # The other schemes train their teachers with the student's epochs too: nothing would train.
        _fail("epochs", 0, f"scheme={cfg.scheme.name} trains every model with the student's epochs, so nothing "
              "would train: give epochs >= 1, or use scheme=offline (epochs=0 there reports the teacher and the "
              "untrained student)")
    if cfg.amp not in ("auto", "off", "bf16", "fp16"):
        _fail("amp", cfg.amp, "choose auto, off, bf16 or fp16")
    if cfg.channels_last not in ("auto", "on", "off"):
        _fail("channels_last", cfg.channels_last, "choose auto, on or off")
    if cfg.cuda_graphs not in ("auto", "on", "off"):
        _fail("cuda_graphs", cfg.cuda_graphs, "choose auto, on or off")
    if cfg.dist_timeout_s <= 0:
        _fail("dist_timeout_s", cfg.dist_timeout_s, "the seconds a process waits for the others must be > 0")
    if cfg.ensemble.combine not in COMBINES:
        _fail("ensemble.combine", cfg.ensemble.combine, f"choose one of {', '.join(COMBINES)}")
    options = member_options(cfg)  # each option's model file read once, for both checks
    if len(teacher_members(cfg, options)) > 1:  # (also checks the ensemble's settings)
        ensemble_combine(cfg)
    # Several options selected: each member's own recipe is used, the merged top level is not.
    if len(cfg.teacher.members) > 1:
        for option, node in options.items():
            _check_recipe(f"teacher.members.{option}", node)
    else:
        _check_recipe("teacher", cfg.teacher)
    _check_scheme(cfg.scheme)
    _check_logger(cfg.logger)
    _check_recipe("student", cfg.student)
    d = cfg.dataset
    if d.val_split < 0:
        _fail("dataset.val_split", d.val_split, "must be >= 0: a fraction below 1 or a count")
    for key in ("train_subset", "test_subset"):
        if d[key] is not None and d[key] < 1:
            _fail(f"dataset.{key}", d[key], "must be at least 1 (or null for all)")
    if d.num_workers < 0:
        _fail("dataset.num_workers", d.num_workers, "must be >= 0 (0: load in the main process)")
    if d.prefetch_factor < 1:
        _fail("dataset.prefetch_factor", d.prefetch_factor, "must be at least 1")
    if d.shift < 0:
        _fail("dataset.shift", d.shift, "must be >= 0 pixels")
    if len(d.mean) != len(d.std):
        _fail("dataset.std", list(d.std), "needs one value per channel, like dataset.mean")
    if any(s <= 0 for s in d.std):
        _fail("dataset.std", list(d.std), "every value must be > 0")
    if d.protocol not in PROTOCOLS:
        _fail("dataset.protocol", d.protocol, f"choose one of {', '.join(PROTOCOLS)}")
    if d.name == "fake":
        for key, least, what in (("num_train", 2, "2 training images"), ("num_test", 1, "1 test image"),
                                 ("num_classes", 2, "2 classes"), ("channels", 1, "1 channel"),
                                 ("image_size", 1, "images of 1 pixel")):
            if d[key] is None or d[key] < least:
                _fail(f"dataset.{key}", d[key], f"the fake dataset needs at least {what}")
    for name, method in cfg.kd.items():
        if isinstance(method, DictConfig) and "weight" in method and method.weight < 0:
            _fail(f"kd.{name}.weight", method.weight, "a method's weight must be >= 0")


def check_data(cfg: DictConfig, num_classes: int) -> None:
    """The checks that need the data's class count: excluded classes exist, and some are left."""
    recipes = {"student": cfg.student}
    if cfg.kd and cfg.scheme.name != "self":
        several = len(cfg.teacher.members) > 1
        recipes.update({(f"teacher.members.{n.split('.')[0]}" if several else "teacher"): node
                        for n, node in teacher_members(cfg).items()})
    for prefix, node in recipes.items():
        excluded = set(node.exclude_classes)
        if excluded - set(range(num_classes)):
            _fail(f"{prefix}.exclude_classes", list(node.exclude_classes),
                  f"the data has classes 0..{num_classes - 1} only")
        if len(excluded) >= num_classes:
            _fail(f"{prefix}.exclude_classes", list(node.exclude_classes),
                  f"leaves none of the {num_classes} classes to train on")


def _check_logger(trackers: DictConfig) -> None:
    wandb = trackers.wandb
    if wandb is not None and wandb.mode is not None and wandb.mode not in WANDB_MODES:
        _fail("logger.wandb.mode", wandb.mode,
              f"choose one of {', '.join(WANDB_MODES)} (or null: offline unless logged in)")


def _check_scheme(s: DictConfig) -> None:
    if s.name not in SCHEMES:
        _fail("scheme.name", s.name, f"unknown: choose one of {', '.join(SCHEMES)}")
    if s.peers is not None and s.peers < 2:
        _fail("scheme.peers", s.peers, "mutual learning needs at least 2 peers (or null: teacher and student)")
    if s.generations < 1:
        _fail("scheme.generations", s.generations, "must be at least 1 (generation 0 is trained from labels)")
    if s.feature_weight < 0:
        _fail("scheme.feature_weight", s.feature_weight, "must be >= 0")
    if not 0 <= s.alpha <= 1:
        _fail("scheme.alpha", s.alpha, "the weight of the heads' KL term must be in [0, 1]")
    if s.T <= 0:
        _fail("scheme.T", s.T, "the temperature must be > 0 (the paper's is 3)")


def teacher_members(cfg: DictConfig, options: Optional[Dict[str, DictConfig]] = None) -> Dict[str, DictConfig]:
    """The teacher's config nodes by name: {"teacher": cfg.teacher} for one teacher; for an ensemble
    (several options selected, or teacher.ensemble_seeds), one node per member and seed, named
    `<option>` or `<option>.s<seed>`, each with its seed filled in. `options`: member_options(cfg),
    when the caller has it already."""
    t = cfg.teacher
    if len(t.members) < 2 and not t.ensemble_seeds:
        return {"teacher": t}
    out = {}
    for option, node in (options if options is not None else member_options(cfg)).items():
        for seed in t.ensemble_seeds or [None]:
            member = node.copy()
            if seed is not None:
                if member.checkpoint:
                    _fail("teacher.ensemble_seeds", list(t.ensemble_seeds),
                          f"the member {option} is loaded from a checkpoint, which has no seed to vary")
                member.seed = int(seed)
            out[option if seed is None else f"{option}.s{seed}"] = member
    return out


def member_options(cfg: DictConfig) -> Dict[str, DictConfig]:
    """The teacher's options, each a whole config: with several selected (teacher=[a,b]), each is its
    configs/model/<option>.yaml changed by teacher.members.<option>.*; with one, the teacher itself."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    t = cfg.teacher
    if len(t.members) < 2:
        return {t.name: OmegaConf.masked_copy(t, [k for k in t if k not in ("members", "ensemble_seeds")])}
    if t.checkpoint:
        _fail("teacher.checkpoint", t.checkpoint, "an ensemble takes one checkpoint per member: set "
              "teacher.members.<option>.checkpoint instead")
    out = {}
    for option, changes in t.members.items():
        if not (config_dir() / "model" / f"{option}.yaml").is_file():
            _fail("teacher", option, f"no model config {config_dir() / 'model' / option}.yaml for this member of the ensemble")
        try:
            out[option] = OmegaConf.merge(OmegaConf.structured(MemberConfig), model_option(option), changes)
        except OmegaConfBaseException as e:
            raise KdrunError(f"teacher.members.{option}: {str(e).splitlines()[0]}") from None
    return out


def model_option(option: str) -> DictConfig:
    """configs/model/<option>.yaml as Hydra composes it: its defaults list (other files of the model
    group, and `_self_`) merged in order, so a member of an ensemble is the option a single teacher is."""
    from omegaconf import OmegaConf

    node = OmegaConf.load(config_dir() / "model" / f"{option}.yaml")
    defaults = list(node.pop("defaults", None) or [])
    if "_self_" not in defaults:
        defaults.append("_self_")
    return OmegaConf.merge(*(node if d == "_self_" else model_option(d) for d in defaults))


def check_overrides(cfg: DictConfig, overrides: List[str]) -> None:
    """With several teacher options selected, the top-level teacher.* keys are the options merged in
    turn: a command-line `teacher.<key>=...` would silently apply to no member."""
    members = list(cfg.teacher.members)
    if len(members) < 2:
        return
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key.startswith("teacher.") and not key.startswith(("teacher.members.", "teacher.ensemble_seeds")):
            setting = key[len("teacher."):]
            _fail(key, value, f"with several teachers ({', '.join(members)}) each keeps its own settings: set "
                  f"teacher.members.<option>.{setting} (e.g. teacher.members.{members[0]}.{setting}={value})")


def ce_weight(cfg: DictConfig) -> float:
    """lambda, the weight of the hard-label term: by default 1 - alpha when Hinton's soft targets (whose
    weight is alpha) are among the terms, as in the paper's weighted average; 0 for `logits` alone,
    since Ba & Caruana's mimic models regress the teacher's logits without the labels; 1 otherwise,
    since the other methods' papers add their term to the full cross-entropy."""
    if cfg["lambda"] is not None:
        return float(cfg["lambda"])
    if "hinton" in cfg.kd:
        return round(1.0 - float(cfg.alpha), 12)
    return 0.0 if list(cfg.kd) == ["logits"] else 1.0


def ensemble_combine(cfg: DictConfig) -> str:
    """How a teacher ensemble's members make one set of logits. `logits` regresses them, and
    mean_probs hands it T * log(mean probability), which is no logit (two identical members would
    give a loss of ~100 where 0 is right): auto takes the mean of the logits for it, and an explicit
    mean_probs is refused."""
    combine, regresses = cfg.ensemble.combine, "logits" in cfg.kd
    if combine == "auto":
        return "mean_logits" if regresses else "mean_probs"
    if combine == "mean_probs" and regresses:
        _fail("ensemble.combine", combine, "kd=logits regresses the teacher's logits, and the averaged probabilities "
              "give no logits to regress: use ensemble.combine=auto or mean_logits")
    return combine


def student_epochs(cfg: DictConfig) -> int:
    return int(cfg.epochs) if cfg.epochs is not None else int(cfg.student.epochs)


def plain(node: Any) -> Any:
    """A resolved, plain-Python copy of a config node (for digests and JSON files)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node

