"""Huang & Wang (2017), "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer"
(arXiv:1707.01219): match the distributions of neuron selectivity patterns of the last stage with
a squared MMD under a degree-2 polynomial kernel."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from kdrun.losses.feature import nst_mmd
from kdrun.methods.base import Batch, KDMethod, match_spatial


class NST(KDMethod):
    layer_kind = "last"

    def __init__(self, weight: float = 50.0, student_layers: Optional[Sequence[str]] = None,
                 teacher_layers: Optional[Sequence[str]] = None):
        super().__init__(weight, student_layers, teacher_layers)

    def loss(self, batch: Batch) -> torch.Tensor:
        return sum(nst_mmd(*match_spatial(s, t)) for s, t in zip(batch.student_feats, batch.teacher_feats))
