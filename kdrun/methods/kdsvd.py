"""Lee, Kim & Song (2018), "Self-supervised Knowledge Distillation Using Singular Value
Decomposition" (ECCV): the stages' feature maps are compressed by SVD to their dominant singular
vectors, and the student learns the teacher's Gaussian-RBF correlations between the vectors of
consecutive stages (kdrun.losses.feature.kdsvd_loss). k = 1 and weight 1, as in RepDistiller's and
mdistiller's KDSVD; student and teacher stages need equal widths."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from kdrun import KdrunError
from kdrun.losses.feature import kdsvd_loss
from kdrun.methods.base import Batch, KDMethod


class KDSVD(KDMethod):
    layer_kind = "stages"

    def __init__(self, weight: float = 1.0, k: int = 1, student_layers: Optional[Sequence[str]] = None,
                 teacher_layers: Optional[Sequence[str]] = None):
        super().__init__(weight, student_layers, teacher_layers)
        if k < 1:
            raise KdrunError(f"kd.kdsvd.k={k}: keep at least one singular vector per layer (the paper's is 1)")
        self.k = int(k)

    def setup(self, student_feats, teacher_feats) -> None:
        if len(student_feats) < 2:
            raise ValueError(f"KD-SVD relates consecutive layers: it needs at least two per model, got {self.student_layers}")

    def loss(self, batch: Batch) -> torch.Tensor:
        return kdsvd_loss(batch.student_feats, batch.teacher_feats, self.k)
