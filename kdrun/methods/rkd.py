"""Park et al. (2019), "Relational Knowledge Distillation" (CVPR): the student preserves the
teacher's distance (weight 25) and angle (weight 50) relations between the samples of a batch."""
from __future__ import annotations

import torch

from kdrun.losses.relation import rkd_angle, rkd_distance
from kdrun.methods._relation import RelationMethod, embedding
from kdrun.methods.base import Batch


class RKD(RelationMethod):
    def __init__(self, weight: float = 1.0, distance_weight: float = 25.0, angle_weight: float = 50.0, **layers):
        super().__init__(weight, **layers)
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    def loss(self, batch: Batch) -> torch.Tensor:
        s, t = embedding(batch.student_feats[0]), embedding(batch.teacher_feats[0])
        return self.distance_weight * rkd_distance(s, t) + self.angle_weight * rkd_angle(s, t)
