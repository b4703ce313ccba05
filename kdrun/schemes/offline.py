"""Offline distillation: the teacher is trained (or loaded) first, then frozen while the student
learns from it. With kd=none no teacher is needed and the student learns from labels alone."""
from __future__ import annotations

from pathlib import Path

from kdrun.checkpoint import load_weights, write_json_atomic
from kdrun.config import ce_weight, student_epochs
from kdrun.engine import fit, reseed
from kdrun.methods import build_methods
from kdrun.methods.base import Distiller
from kdrun.models import build_from_config, model_meta
from kdrun.schemes import RunContext, example_batch
from kdrun.speed import accelerate, amp_dtype, use_channels_last
from kdrun.teachers import cached_train_logits, get_teacher, test_report


def run(ctx: RunContext) -> dict:
    cfg, data, device = ctx.cfg, ctx.data, ctx.device
    methods = build_methods(cfg.kd, cfg.student, cfg.teacher)
    ckpt_dir = ctx.run_dir / "checkpoints"

    teacher, teacher_info = None, None
    if methods:
        teacher, teacher_info = get_teacher(cfg, data, device, ctx.metrics, cfg.progress, ctx.should_stop,
                                            train=not cfg.dry_run)
    reseed(cfg.seed, "student")
    student = accelerate(build_from_config(cfg.student, data).to(device), cfg, device)
    if teacher is not None:
        accelerate(teacher, cfg, device)
    meta = model_meta(cfg.student, data)
    speed = dict(amp_dtype=amp_dtype(cfg.amp, device), channels_last=use_channels_last(cfg.channels_last, device, student))
    # Built with every method, so that the dry pass sizes all adapters before any training.
    full = Distiller(student, teacher, methods, ce_weight(cfg), example=example_batch(data, device), **speed)
    if cfg.dry_run:
        return {"teacher": teacher_info, "layers": full.layer_report}
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if teacher_info:
        write_json_atomic(ckpt_dir / "teacher.json", teacher_info)  # where the teacher came from

    common = dict(device=device, ckpt_dir=ckpt_dir, metrics=ctx.metrics, seed=cfg.seed, resume=cfg.resume,
                  config_digest=ctx.config_digest, meta=meta, progress=cfg.progress, should_stop=ctx.should_stop)
    for name, method in methods.items():
        method.prepare(teacher, data, device, cfg.seed)
    for name, method in methods.items():  # first stages (FitNets' hints, FSP/AB initialisation)
        if method.stage1_epochs:
            stage = Distiller(student, teacher, {name: method}, ce_weight=0.0, **speed)
            fit(stage, data, cfg.student, method.stage1_epochs, role=f"student.{name}", **common)
    extras = _cached_logits(cfg, methods, data, teacher, teacher_info, device)
    common["train_extras"] = extras
    joint = {name: m for name, m in methods.items() if m.joint}
    distiller = full if len(joint) == len(methods) else Distiller(student, teacher, joint, ce_weight(cfg), **speed)
    result = fit(distiller, data, cfg.student, student_epochs(cfg), role="student", **common)
    load_weights(student, result.best_path, "student checkpoint", **meta)
    student_info = {"arch": cfg.student.name,
                    **test_report(student, data, device, result.best_epoch, result.best_val_acc)}
    return {"teacher": teacher_info, "student": student_info,
            "teacher_logits": None if teacher is None else ("cached" if extras else "live")}


def _cached_logits(cfg, methods, data, teacher, teacher_info, device):
    """The teacher's cached logits when they can stand in for running it: the student sees
    un-augmented images (so the teacher's output per image never changes), every method reads
    logits only, and the teacher lives in the cache (whose digest the logits are keyed by)."""
    augmented = cfg.student.augment and (cfg.dataset.shift or cfg.dataset.hflip)
    logits_only = all(not m.student_layers and not m.teacher_layers for m in methods.values())
    if (not methods or not cfg.cache_teacher_logits or augmented or not logits_only or not data.in_memory
            or teacher_info.get("source") not in ("cache", "trained")):
        return None
    folder = Path(teacher_info["path"]).parent
    return {"teacher_logits": cached_train_logits(teacher, data, device, folder, teacher_info["digest"])}
