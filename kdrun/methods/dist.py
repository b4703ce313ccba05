"""Huang, You, Wang, Qian & Xu (2022), "Knowledge Distillation from A Stronger Teacher" (NeurIPS):
DIST matches relations instead of values, the Pearson correlations of the student's and teacher's
class probabilities across classes (inter-class, weight beta) and across the batch's samples
(intra-class, weight gamma). It reads logits only, so it works with the teacher-logit cache and with
teacher ensembles (whose probabilities are averaged at its temperature T).

Defaults are the authors' loss (hunto/DIST_KD, and its image_classification_sota code): beta =
gamma = 1, T = 1, each term times T^2; the paper's ImageNet setting."""
from __future__ import annotations

import torch

from kdrun import KdrunError
from kdrun.losses.response import dist_loss
from kdrun.methods.base import Batch, KDMethod


class DIST(KDMethod):
    def __init__(self, weight: float = 1.0, beta: float = 1.0, gamma: float = 1.0, T: float = 1.0):
        super().__init__(weight)
        if T <= 0:
            raise KdrunError(f"kd.dist.T={T}: the temperature must be > 0 (the paper's is 1)")
        self.beta, self.gamma, self.T = float(beta), float(gamma), float(T)

    def loss(self, batch: Batch) -> torch.Tensor:
        return dist_loss(batch.student_logits, batch.teacher_logits, self.T, self.beta, self.gamma)
