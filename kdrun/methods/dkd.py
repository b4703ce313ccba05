"""Zhao et al. (2022), "Decoupled Knowledge Distillation" (CVPR): the KD loss split into a
target-class term (TCKD, weight alpha) and a non-target-class term (NCKD, weight beta)."""
from __future__ import annotations

import torch

from kdrun import KdrunError
from kdrun.losses.response import dkd_loss
from kdrun.methods.base import Batch, KDMethod


class DKD(KDMethod):
    def __init__(self, weight: float = 1.0, alpha: float = 1.0, beta: float = 8.0, T: float = 4.0):
        super().__init__(weight)
        if T <= 0:
            raise KdrunError(f"kd.dkd.T={T}: the temperature must be > 0")
        self.alpha, self.beta, self.T = float(alpha), float(beta), float(T)

    def loss(self, batch: Batch) -> torch.Tensor:
        return dkd_loss(batch.student_logits, batch.teacher_logits, batch.labels, self.alpha, self.beta, self.T)
