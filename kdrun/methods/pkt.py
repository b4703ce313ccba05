"""Passalis & Tefas (2018), "Learning Deep Representations with Probabilistic Knowledge Transfer"
(ECCV): match the conditional probability distributions that cosine similarities between the
samples' embeddings induce. Weight 30000, as in RepDistiller's CIFAR-100 benchmark."""
from __future__ import annotations

import torch

from kdrun.losses.relation import pkt
from kdrun.methods._relation import RelationMethod, embedding
from kdrun.methods.base import Batch


class PKT(RelationMethod):
    def __init__(self, weight: float = 30000.0, **layers):
        super().__init__(weight, **layers)

    def loss(self, batch: Batch) -> torch.Tensor:
        return pkt(embedding(batch.student_feats[0]), embedding(batch.teacher_feats[0]))
