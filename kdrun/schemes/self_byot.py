"""Self-distillation within one network: be your own teacher (Zhang, Song, Gao, Chen, Bao & Ma,
"Be Your Own Teacher: Improve the Performance of Convolutional Neural Networks via Self
Distillation", ICCV 2019). Exit heads on the student's intermediate stages (read through forward
hooks, as feature methods do: the model is not edited) learn from the labels, from the deepest
classifier's softened predictions and from an L2 hint towards its feature; the deepest classifier,
the student's own, learns from the labels. Every head's accuracy is reported: what each early exit
gives."""
from __future__ import annotations

import functools
import math
import operator
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from kdrun import KdrunError
from kdrun.config import student_epochs
from kdrun.engine import fit, reseed
from kdrun.features import FeatureTap
from kdrun.losses.feature import byot_hint
from kdrun.losses.response import soft_target_kl
from kdrun.methods.base import default_layers, label_terms
from kdrun.models import build_from_config, logits_of, model_meta
from kdrun.schemes import RunContext, example_batch, teacher_not_used, best_reports
from kdrun.speed import MixedPrecision, accelerate, speed_settings


def pooled(feat: torch.Tensor) -> torch.Tensor:
    """One vector per sample: feature maps are average-pooled, flat features kept."""
    return F.adaptive_avg_pool2d(feat, 1).flatten(1) if feat.dim() == 4 else feat.flatten(1)


class Head(nn.Module):
    """The paper's shallow classifier: a bottleneck to the deepest feature's width (its hint
    feature F_i), then a linear classifier. The paper's bottleneck downsamples feature maps with
    strided convolutions to the deepest stage's resolution; ours average-pools them to a 4x4 grid
    (keeping where things are, which a global pool would lose) before a linear layer, so one head
    fits any stage of any model, flat features included."""

    GRID = 4

    def __init__(self, in_shape, width: int, num_classes: int):
        super().__init__()
        grid = (nn.AdaptiveAvgPool2d(self.GRID),) if len(in_shape) == 3 else ()
        in_features = in_shape[0] * self.GRID ** 2 if grid else math.prod(in_shape)
        self.bottleneck = nn.Sequential(*grid, nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(inplace=True))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, feat: torch.Tensor):
        f = self.bottleneck(feat)
        return f, self.fc(f)


class HeadView(nn.Module):
    """The student up to one head, as a classifier of its own (for evaluation and its checkpoint)."""

    def __init__(self, student: nn.Module, path: str, head: Head):
        super().__init__()
        self.student, self.path, self.head = student, path, head
        self._tap = FeatureTap(student, [path], "student")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._tap:
            self.student(x)
        return self.head(self._tap.outputs[self.path])[1]


class SelfDistiller(MixedPrecision):
    """student + exit heads -> {'loss', 'student/...', 'head<i>/loss_ce', 'head<i>/loss_kd',
    'head<i>/loss_hint', 'head<i>/logits', ...}."""

    def __init__(self, student: nn.Module, head_paths: List[str], deepest: str, num_classes: int,
                 example: torch.Tensor, ce_weight: float, kd_weight: float, feature_weight: float, T: float,
                 label_smoothing: float = 0.0, **speed):
        super().__init__(**speed)
        self.label_smoothing = label_smoothing
        self.student, self.head_paths, self.deepest = student, list(head_paths), deepest
        self.ce_weight, self.kd_weight, self.feature_weight, self.T = ce_weight, kd_weight, feature_weight, T
        self._tap = FeatureTap(student, [*self.head_paths, deepest], "student")
        was_training = student.training
        student.eval()
        with torch.no_grad(), self._tap:  # one dry pass sizes the heads
            student(example)
        student.train(was_training)
        width = pooled(self._tap.outputs[deepest]).shape[1]
        # `methods` is what fit() saves beside the student: here, the heads.
        self.methods = nn.ModuleDict({
            f"head{i}": Head(tuple(self._tap.outputs[p].shape[1:]), width, num_classes).to(example.device)
            for i, p in enumerate(self.head_paths, start=1)})

    def views(self) -> Dict[str, nn.Module]:
        return {name: HeadView(self.student, path, head)
                for (name, head), path in zip(self.methods.items(), self.head_paths)}

    def _forward(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        with self._tap:
            z = logits_of(self.student(x))
        # The student's label terms are a Distiller's (its own label loss and regularisers, if any).
        terms = label_terms(self.student, z, y, self.label_smoothing)
        out = {"student/loss": functools.reduce(operator.add, terms.values()),
               **{f"student/{k}": v for k, v in terms.items()}, "student/logits": z}
        # The deepest classifier teaches: its outputs are targets, not paths for the heads' gradients.
        target_z, target_f = z.detach(), pooled(self._tap.outputs[self.deepest]).detach()
        for i, ((name, head), path) in enumerate(zip(self.methods.items(), self.head_paths)):
            f, z_i = head(self._tap.outputs[path])
            terms = {"loss_ce": self.ce_weight * F.cross_entropy(z_i, y, label_smoothing=self.label_smoothing),
                     # The paper's KL has no T^2 factor (Hinton's has): alpha = 0.3 is tuned without it.
                     "loss_kd": self.kd_weight * soft_target_kl(z_i, target_z, self.T) / self.T ** 2}
            # The authors' code hints every head but the one nearest the deepest classifier (its
            # `index != 1` over the outputs, which it orders deepest first).
            if i < len(self.head_paths) - 1:
                terms["loss_hint"] = self.feature_weight * byot_hint(f, target_f)
            out.update({f"{name}/{k}": v for k, v in terms.items()})
            out.update({f"{name}/loss": sum(terms.values()), f"{name}/logits": z_i})
        out["loss"] = sum(v for k, v in out.items() if k.endswith("/loss"))
        return out


def run(ctx: RunContext) -> dict:
    cfg, data, device = ctx.cfg, ctx.data, ctx.device
    if list(cfg.kd) != ["hinton"]:
        raise KdrunError(f"scheme=self_byot distils with its own loss (soft targets of the deepest classifier at "
                         f"scheme.T with weight scheme.alpha, and an L2 hint weighted scheme.feature_weight): use "
                         f"kd=hinton, the default, not kd={'+'.join(cfg.kd) or 'none'}")
    T, kd_weight = float(cfg.scheme.T), float(cfg.scheme.alpha)
    teacher_not_used(cfg, "teaches the student's early exits with its own deepest classifier")
    stages = default_layers("stages", cfg.student.layers)
    heads = list(cfg.scheme.heads) if cfg.scheme.heads is not None else stages[:-1]
    deepest = default_layers("embedding", cfg.student.layers)
    if not heads or not deepest:
        raise KdrunError(f"scheme=self_byot: student={cfg.student.name} names no intermediate stages for exit heads; "
                         "set scheme.heads=[...] to module paths of the student (and student.layers.embedding)")
    reseed(cfg.seed, "student")
    student = accelerate(build_from_config(cfg.student, data).to(device), cfg, device)
    model = SelfDistiller(student, heads, deepest[0], data.num_classes, example_batch(data, device),
                          1.0 - kd_weight, kd_weight, cfg.scheme.feature_weight, T, cfg.student.label_smoothing,
                          **speed_settings(cfg, device, student))
    if cfg.dry_run:
        return {"layers": []}
    views = model.views()
    meta = model_meta(cfg.student, data)
    results = fit(model, data, cfg.student, student_epochs(cfg), device, ctx.run_dir / "checkpoints", "byot",
                  ctx.metrics, seed=cfg.seed, resume=cfg.resume, config_digest=ctx.config_digest,
                  progress=cfg.progress, should_stop=ctx.should_stop,
                  members={"student": (student, meta), **{name: (view, meta) for name, view in views.items()}})
    archs = {"student": cfg.student.name, **{n: f"{cfg.student.name} up to {p}" for n, p in zip(views, heads)}}
    # The student first: a head's best checkpoint holds the backbone of its own best epoch.
    models = best_reports({"student": student}, results, archs, data, device)
    models.update(best_reports(views, results, archs, data, device))
    for name, path in zip(views, heads):
        models[name]["layer"] = path
    return {"teacher": None, "student": models["student"], "models": models,
            "modules": {"student": student, **views}}
