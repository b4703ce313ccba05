"""Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network" (NIPS Deep
Learning Workshop): match the teacher's class probabilities softened at temperature T."""
from __future__ import annotations

import torch

from kdrun import KdrunError
from kdrun.losses.response import soft_target_kl
from kdrun.methods.base import Batch, KDMethod


class Hinton(KDMethod):
    def __init__(self, weight: float, T: float):
        super().__init__(weight)
        if T <= 0:
            raise KdrunError(f"T={T}: the temperature must be > 0 (e.g. T=4)")
        self.T = float(T)

    def loss(self, batch: Batch) -> torch.Tensor:
        return soft_target_kl(batch.student_logits, batch.teacher_logits, self.T)
