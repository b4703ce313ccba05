"""Tung & Mori (2019), "Similarity-Preserving Knowledge Distillation" (ICCV): the student's
batch similarity matrix of last-stage activations matches the teacher's; weight gamma = 3000."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from kdrun.losses.relation import similarity_preserving
from kdrun.methods.base import Batch, KDMethod


class SP(KDMethod):
    layer_kind = "last"

    def __init__(self, weight: float = 3000.0, student_layers: Optional[Sequence[str]] = None,
                 teacher_layers: Optional[Sequence[str]] = None):
        super().__init__(weight, student_layers, teacher_layers)

    def loss(self, batch: Batch) -> torch.Tensor:
        return sum(similarity_preserving(s, t) for s, t in zip(batch.student_feats, batch.teacher_feats))
