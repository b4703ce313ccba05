"""Yim et al. (2017), "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization
and Transfer Learning" (CVPR): the student matches the teacher's FSP matrices (Gram matrices between
consecutive stages). As in the paper, by default it is a first stage (`stage1_epochs`) that
initialises the student, which then trains on the labels (`joint=false`).

As in RepDistiller's initialisation stage, the squared distance is averaged over each matrix's
C1 x C2 elements and the pairs are summed, unweighted (weight 1): the paper's per-matrix sum grows
with the layers' widths (8192 elements for a ResNet's first pair) and diverges at usual learning
rates."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from kdrun.losses.feature import fsp_loss
from kdrun.methods.base import Batch, KDMethod, match_spatial


def _consecutive(feats):
    # A stage's output is usually smaller than the previous one's: pool to the smaller size.
    return [match_spatial(a, b) for a, b in zip(feats, feats[1:])]


class FSP(KDMethod):
    layer_kind = "stages"

    def __init__(self, weight: float = 1.0, stage1_epochs: int = 5, joint: bool = False,
                 student_layers: Optional[Sequence[str]] = None, teacher_layers: Optional[Sequence[str]] = None):
        super().__init__(weight, student_layers, teacher_layers, stage1_epochs=stage1_epochs, joint=joint)

    def setup(self, student_feats, teacher_feats) -> None:
        if len(student_feats) < 2:
            raise ValueError(f"FSP needs at least two layers per model to pair, got {self.student_layers}")

    def loss(self, batch: Batch) -> torch.Tensor:
        return fsp_loss(_consecutive(batch.student_feats), _consecutive(batch.teacher_feats), per_element=True)
