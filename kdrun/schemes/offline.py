"""Offline distillation: the teacher is trained (or loaded) first, then frozen while the student
learns from it. With kd=none no teacher is needed and the student learns from labels alone."""
from __future__ import annotations

from kdrun.checkpoint import load_weights, write_json_atomic
from kdrun.config import ce_weight, student_epochs
from kdrun.engine import fit, reseed
from kdrun.methods import build_methods
from kdrun.methods.base import Distiller
from kdrun.models import build_from_config, model_meta
from kdrun.schemes import RunContext
from kdrun.teachers import get_teacher, test_report


def run(ctx: RunContext) -> dict:
    cfg, data, device = ctx.cfg, ctx.data, ctx.device
    methods = build_methods(cfg.kd)
    ckpt_dir = ctx.run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    teacher, teacher_info = None, None
    if methods:
        teacher, teacher_info = get_teacher(cfg, data, device, ctx.metrics, cfg.progress, ctx.should_stop)
        write_json_atomic(ckpt_dir / "teacher.json", teacher_info)  # where the teacher came from

    reseed(cfg.seed, "student")
    student = build_from_config(cfg.student, data)
    meta = model_meta(cfg.student, data)
    distiller = Distiller(student, teacher, methods, ce_weight(cfg)).to(device)
    result = fit(distiller, data, cfg.student, student_epochs(cfg), device, ckpt_dir, "student", ctx.metrics,
                 seed=cfg.seed, resume=cfg.resume, config_digest=ctx.config_digest, meta=meta,
                 progress=cfg.progress, should_stop=ctx.should_stop)
    load_weights(student, result.best_path, "student checkpoint", **meta)
    student_info = {"arch": cfg.student.name,
                    **test_report(student, data, device, result.best_epoch, result.best_val_acc)}
    return {"teacher": teacher_info, "student": student_info}
