"""Zagoruyko & Komodakis (2017), "Paying More Attention to Attention" (ICLR): the student matches the
teacher's spatial attention maps (channel-pooled |A|^p, L2-normalised) at the end of every stage;
weight beta = 1000 as in the paper's CIFAR experiments."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from kdrun.losses.feature import attention_transfer
from kdrun.methods.base import Batch, KDMethod, match_spatial


class AT(KDMethod):
    layer_kind = "stages"

    def __init__(self, weight: float = 1000.0, p: float = 2.0, student_layers: Optional[Sequence[str]] = None,
                 teacher_layers: Optional[Sequence[str]] = None):
        super().__init__(weight, student_layers, teacher_layers)
        self.p = p

    def loss(self, batch: Batch) -> torch.Tensor:
        return sum(attention_transfer(*match_spatial(s, t), p=self.p)
                   for s, t in zip(batch.student_feats, batch.teacher_feats))
