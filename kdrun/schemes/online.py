"""Online distillation: deep mutual learning (Zhang, Xiang, Hospedales & Lu, "Deep Mutual
Learning", CVPR 2018). No pre-trained teacher: the teacher and the student (or `scheme.peers` = K
students) train together from scratch, each on its cross-entropy plus the KL divergence towards
the others' current, detached predictions."""
from __future__ import annotations

import functools
import operator
from typing import Dict

import torch
from torch import nn

from kdrun.config import ce_weight, student_epochs
from kdrun.engine import fit, reseed
from kdrun.losses.response import mutual_kl
from kdrun.methods.base import label_terms
from kdrun.models import build_from_config, logits_of, model_meta
from kdrun.schemes import (RunContext, best_reports, log, refuse_pretrained_teachers, soft_target_settings,
                           teacher_not_used)
from kdrun.speed import MixedPrecision, accelerate, speed_settings


class Mutual(MixedPrecision):
    """Peers -> {'loss', '<peer>/loss', '<peer>/loss_ce', '<peer>/loss_<regulariser>'...,
    '<peer>/loss_dml', '<peer>/logits'}.

    Each peer's label terms are those a Distiller gives it (`label_terms`: a soft decision tree's
    leaf-weighted cross-entropy and penalty, else the cross-entropy with label smoothing). Each
    peer's loss depends on its own parameters only (the others' predictions are detached), so one
    optimizer over all peers updates each as its own optimizer would."""

    def __init__(self, peers: Dict[str, nn.Module], ce_weight: float, kd_weight: float, T: float,
                 label_smoothing: float = 0.0, **speed):
        super().__init__(**speed)
        self.student = nn.ModuleDict(peers)  # what fit() trains and checkpoints
        self.methods = nn.ModuleDict()  # no adapters
        self.ce_weight, self.kd_weight, self.T, self.label_smoothing = ce_weight, kd_weight, T, label_smoothing

    def _forward(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = [logits_of(peer(x)) for peer in self.student.values()]
        out: Dict[str, torch.Tensor] = {}
        for (name, peer), z, kl in zip(self.student.items(), logits, mutual_kl(logits, self.T)):
            terms = {**label_terms(peer, z, y, self.label_smoothing, self.ce_weight), "loss_dml": self.kd_weight * kl}
            out[f"{name}/loss"] = functools.reduce(operator.add, terms.values())
            out.update({f"{name}/{k}": v for k, v in terms.items()})
            out[f"{name}/logits"] = z
        out["loss"] = sum(out[f"{name}/loss"] for name in self.student)
        return out


def run(ctx: RunContext) -> dict:
    cfg, data, device = ctx.cfg, ctx.data, ctx.device
    T, kd_weight = soft_target_settings(cfg)
    if cfg.scheme.peers is None:
        refuse_pretrained_teachers(cfg, "trains its teacher from scratch with the student")
        nodes = {"teacher": cfg.teacher, "student": cfg.student}
    else:
        teacher_not_used(cfg, f"trains {cfg.scheme.peers} peers of the student architecture")
        nodes = {f"peer{k}": cfg.student for k in range(1, cfg.scheme.peers + 1)}
    # One batch stream feeds every peer, so they share one recipe: the student's.
    log.info("scheme=online: %s train together with the student's recipe (%s, lr %s, %d epochs)",
             " and ".join(nodes), cfg.student.optimizer, cfg.student.lr, student_epochs(cfg))
    peers = {}
    for name, node in nodes.items():
        reseed(cfg.seed, name)
        peers[name] = accelerate(build_from_config(node, data).to(device), cfg, device)
    if cfg.dry_run:
        return {"layers": []}
    cohort = Mutual(peers, ce_weight(cfg), kd_weight, T, cfg.student.label_smoothing,
                    **speed_settings(cfg, device, nn.ModuleList(peers.values())))
    ckpt_dir = ctx.run_dir / "checkpoints"
    results = fit(cohort, data, cfg.student, student_epochs(cfg), device, ckpt_dir, "online", ctx.metrics,
                  seed=cfg.seed, resume=cfg.resume, config_digest=ctx.config_digest, progress=cfg.progress,
                  should_stop=ctx.should_stop,
                  members={name: (peer, model_meta(nodes[name], data)) for name, peer in peers.items()})
    models = best_reports(peers, results, {name: node.name for name, node in nodes.items()}, data, device)
    if cfg.scheme.peers is None:
        return {"teacher": {**models["teacher"], "source": "online"}, "student": models["student"], "models": models,
                "modules": peers}
    # The headline student is the peer that validates best (the test set selects nothing).
    best = max(models, key=lambda n: (models[n]["best_val_acc"] or 0.0, -list(models).index(n)))
    mean = sum(m["test_acc"] for m in models.values()) / len(models)
    return {"teacher": None, "student": {**models[best], "peer": best}, "models": models,
            "peers_mean_test_acc": mean, "modules": {**peers, "student": peers[best]}}
