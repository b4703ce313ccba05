"""Ba & Caruana (2014), "Do Deep Nets Really Need to be Deep?" (NIPS): regress the student's logits
onto the teacher's with a squared error."""
from __future__ import annotations

import torch

from kdrun.losses.response import logit_regression
from kdrun.methods.base import Batch, KDMethod


class Logits(KDMethod):
    def loss(self, batch: Batch) -> torch.Tensor:
        return logit_regression(batch.student_logits, batch.teacher_logits)
