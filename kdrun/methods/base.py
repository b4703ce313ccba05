"""The parts every method shares (after mdistiller): the Distiller runs the student and the frozen
teacher on a batch and owns the cross-entropy term; each KD method only adds its own term."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.models import logits_of


@dataclass
class Batch:
    """What a KD term may look at: the labels and both models' outputs."""

    labels: torch.Tensor
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor


class KDMethod(nn.Module):
    """One distillation term; `weight` multiplies its loss. Subclasses implement `loss(batch)`.

    It is an nn.Module so that a method's own trainable parts (adapters) train and save with the
    student."""

    def __init__(self, weight: float):
        super().__init__()
        self.weight = float(weight)

    def loss(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


class Distiller(nn.Module):
    """student (+ frozen teacher) -> {'loss', 'loss_ce', 'loss_<method>', ..., 'logits'}.

    Every loss_* value is that term's weighted contribution, so `loss` is their sum. With no KD term
    this trains a model from labels alone (the teacher, or the kd=none baseline).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: Optional[nn.Module] = None,
        methods: Optional[Dict[str, KDMethod]] = None,
        ce_weight: float = 1.0,
    ):
        super().__init__()
        methods = methods or {}
        if methods and teacher is None:
            raise ValueError("KD methods need a teacher")
        self.student = student
        self.methods = nn.ModuleDict(methods)
        self.ce_weight = ce_weight
        # Not registered as a submodule: the teacher is not trained, not saved with the student,
        # and .train() cannot switch it out of eval mode.
        self._teacher = [freeze(teacher)] if teacher is not None and methods else []

    @property
    def teacher(self) -> Optional[nn.Module]:
        return self._teacher[0] if self._teacher else None

    def to(self, *args, **kwargs):
        for t in self._teacher:
            t.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = logits_of(self.student(x))
        losses = {"loss_ce": self.ce_weight * F.cross_entropy(logits, y)}
        if self.methods:
            with torch.no_grad():
                teacher_logits = logits_of(self.teacher(x))
            batch = Batch(labels=y, student_logits=logits, teacher_logits=teacher_logits)
            for name, method in self.methods.items():
                losses[f"loss_{name}"] = method.weight * method.loss(batch)
        return {"loss": sum(losses.values()), **losses, "logits": logits}
