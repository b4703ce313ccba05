"""Offline distillation: the teacher is trained (or loaded) first, then frozen while the student
learns from it. With kd=none no teacher is needed and the student learns from labels alone."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from kdrun import KdrunError
from kdrun.checkpoint import load_weights, write_json_atomic
from kdrun.config import ce_weight, student_epochs, teacher_members
from kdrun.losses.response import ensemble_logits
from kdrun.engine import fit, reseed
from kdrun.loggers.console import chance_level, teacher_line
from kdrun.methods import build_methods
from kdrun.methods.base import Distiller
from kdrun.models import build_from_config, model_meta, pretrained_of
from kdrun.schemes import RunContext, example_batch, log
from kdrun.models.cifar import warn_small_maps
from kdrun.speed import accelerate, speed_settings
from kdrun.teachers import Ensemble, cached_train_logits, get_teachers, test_report


def run(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    methods = build_methods(cfg.kd, cfg.student, cfg.teacher)
    if teacher_members(cfg).keys() != {"teacher"}:
        reading = [name for name, m in methods.items() if m.teacher_layers]
        if reading:
            raise KdrunError(f"kd={reading[0]} reads the teacher's layers, and an ensemble of teachers has no single "
                             "layer to read: with teacher=[...] or teacher.ensemble_seeds use logit methods "
                             "(hinton, logits, dkd, dist)")
    teacher, teacher_info = None, None
    if not cfg.dry_run:
        check_layers(cfg, methods, cfg.teacher, ctx.data, ctx.device)
    if methods:
        teacher, teacher_info = get_teachers(cfg, ctx.data, ctx.device, ctx.metrics, cfg.progress, ctx.should_stop,
                                             T=distillation_T(cfg, methods), train=not cfg.dry_run)
        if not cfg.dry_run:  # before the student trains on it
            log.info(teacher_line(teacher_info))
            chance_level("the teacher", teacher_info.get("test_acc"), ctx.data.num_classes)
    return distill(ctx, methods, teacher, teacher_info)


def check_layers(cfg, methods: dict, teacher_node, data, device) -> None:
    """Runs the methods' dry pass on untrained models of both architectures, so that a wrong layer
    path, or a method that needs feature maps given flat features, fails before any model trains.
    The methods given are not set up (copies are) and no random state is consumed."""
    if all(m.ready for m in methods.values()):  # logits only: nothing to size or check
        return
    with torch.random.fork_rng(devices=[]):
        student = build_from_config(cfg.student, data).to(device)
        teacher = build_from_config(teacher_node, data).to(device)
        Distiller(student, teacher, copy.deepcopy(methods), ce_weight(cfg), example=example_batch(data, device))


def distill(ctx: RunContext, methods: dict, teacher, teacher_info, role: str = "student") -> dict:
    """Trains a new student (of cfg.student) from a frozen `teacher` with `methods` (none: from the
    labels alone). `role` names its seed, checkpoint files and metrics lines. Returns the summary's
    entries, or the layers the methods read in a dry run."""
    cfg, data, device = ctx.cfg, ctx.data, ctx.device
    ckpt_dir = ctx.run_dir / "checkpoints"
    reseed(cfg.seed, role)
    student = accelerate(build_from_config(cfg.student, data).to(device), cfg, device)
    if teacher is not None:
        accelerate(teacher, cfg, device)
    meta = model_meta(cfg.student, data)
    speed = {**speed_settings(cfg, device, student), "label_smoothing": cfg.student.label_smoothing}
    # Built with every method, so that the dry pass sizes all adapters before any training.
    full = Distiller(student, teacher, methods, ce_weight(cfg), example=example_batch(data, device), **speed)
    warn_small_maps(full.layer_report, cfg.student.name, (teacher_info or {}).get("arch", cfg.student.name))
    if cfg.dry_run:
        return {"teacher": teacher_info, "layers": full.layer_report}
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if teacher_info and role == "student":
        write_json_atomic(ckpt_dir / "teacher.json", teacher_info)  # where the teacher came from
    if student_epochs(cfg) == 0:  # epochs=0: the teacher's report, and the student architecture's cost
        published = pretrained_of(student)
        student_info = {"arch": cfg.student.name, **({"weights": published["weights"]} if published else {}),
                        "source": f"{'pretrained' if published else 'untrained'} (epochs=0)",
                        **test_report(student, data, device)}
        return {"teacher": teacher_info, "student": student_info, "modules": _modules(teacher, teacher_info, student)}

    common = dict(device=device, ckpt_dir=ckpt_dir, metrics=ctx.metrics, seed=cfg.seed, resume=cfg.resume,
                  config_digest=ctx.config_digest, meta=meta, progress=cfg.progress, should_stop=ctx.should_stop)
    for name, method in methods.items():
        method.prepare(teacher, data, device, cfg.seed)
    for name, method in methods.items():  # first stages (FitNets' hints, FSP/AB initialisation)
        if method.stage1_epochs:
            stage = Distiller(student, teacher, {name: method}, ce_weight=0.0, **speed)
            fit(stage, data, cfg.student, method.stage1_epochs, role=f"{role}.{name}", **common)
    extras = _cached_logits(cfg, methods, data, teacher, teacher_info, device)
    common["train_extras"] = _with_index(extras, methods, data)
    joint = {name: m for name, m in methods.items() if m.joint}
    distiller = full if len(joint) == len(methods) else Distiller(student, teacher, joint, ce_weight(cfg), **speed)
    result = fit(distiller, data, cfg.student, student_epochs(cfg), role=role, **common)
    load_weights(student, result.best_path, "student checkpoint", **meta)
    published = pretrained_of(student)
    student_info = {"arch": cfg.student.name, **({"weights": published["weights"]} if published else {}),
                    **test_report(student, data, device, result.best_epoch, result.best_val_acc)}
    return {"teacher": teacher_info, "student": student_info,
            "teacher_logits": None if teacher is None else ("cached" if extras else "live"),
            "modules": _modules(teacher, teacher_info, student)}


def _modules(teacher, teacher_info, student) -> dict:
    """The models behind the summary's entries, by name, for run()'s deployment report."""
    modules = {"teacher": teacher, "student": student}
    if isinstance(teacher, Ensemble):
        modules.update({f"teacher.{name}": m for name, m in zip(teacher_info["members"], teacher.members.values())})
    return {name: m for name, m in modules.items() if m is not None}


def _cached_logits(cfg, methods, data, teacher, teacher_info, device):
    """The teacher's cached logits when they can stand in for running it: the student sees
    un-augmented images (so the teacher's output per image never changes), every method reads
    logits only, and the teacher lives in the cache (whose digest the logits are keyed by)."""
    augmented = cfg.student.augment and (cfg.dataset.shift or cfg.dataset.hflip)
    logits_only = all(not m.student_layers and not m.teacher_layers for m in methods.values())
    if not methods or not cfg.cache_teacher_logits or augmented or not logits_only or not data.in_memory:
        return None
    # An ensemble's members are cached one by one; their logits are combined like their outputs.
    members = teacher_info.get("members") or {"teacher": teacher_info}
    models = dict(zip(members, teacher.members.values())) if isinstance(teacher, Ensemble) else {"teacher": teacher}
    if any(info.get("source") not in ("cache", "trained") for info in members.values()):
        return None
    logits = [cached_train_logits(models[name], data, device, Path(info["path"]).parent, info["digest"])
              for name, info in members.items()]
    if isinstance(teacher, Ensemble):
        return {"teacher_logits": ensemble_logits(logits, teacher.combine, teacher.T)}
    return {"teacher_logits": logits[0]}


def _with_index(extras, methods, data):
    """The training extras plus each image's position in the split, when a method needs it (CRD's
    memory banks have one row per training image)."""
    if not any(m.needs_index for m in methods.values()):
        return extras
    return {**(extras or {}), "index": torch.arange(data.sizes["train"])}


def distillation_T(cfg, methods) -> float:
    """The temperature an ensemble averages its members' probabilities at: that of the methods
    (kd.hinton.T, kd.dkd.T; all ${T} by default), else the top-level T."""
    temperatures = {float(m.T) for m in methods.values() if hasattr(m, "T")}
    if len(temperatures) > 1:
        raise KdrunError(f"kd: the methods use different temperatures {sorted(temperatures)}, but a teacher ensemble "
                         "averages its probabilities at one: give them the same T")
    return temperatures.pop() if temperatures else float(cfg.T)
