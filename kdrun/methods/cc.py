"""Peng et al. (2019), "Correlation Congruence for Knowledge Distillation" (ICCV): the student's
sample-to-sample correlations (a Taylor-expanded Gaussian RBF kernel over embeddings) match the
teacher's."""
from __future__ import annotations

import torch

from kdrun.losses.relation import correlation_congruence
from kdrun.methods._relation import RelationMethod, embedding
from kdrun.methods.base import Batch


class CC(RelationMethod):
    def __init__(self, weight: float = 1.0, gamma: float = 0.4, order: int = 2, **layers):
        super().__init__(weight, **layers)
        self.gamma, self.order = gamma, order

    def loss(self, batch: Batch) -> torch.Tensor:
        return correlation_congruence(embedding(batch.student_feats[0]), embedding(batch.teacher_feats[0]),
                                      self.gamma, self.order)
