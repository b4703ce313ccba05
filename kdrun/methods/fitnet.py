"""Romero et al. (2015), "FitNets: Hints for Thin Deep Nets" (ICLR): a regressor maps the student's
guided layer to the teacher's hint layer (by default the middle stage of each), trained with an L2
hint loss. `hint_epochs` > 0 runs the paper's first stage: the student up to the guided layer (and
the regressor) trained on the hint alone, before the main training."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from kdrun.losses.feature import fitnet_hint
from kdrun.methods.base import Batch, KDMethod, adapter, match_spatial


class FitNet(KDMethod):
    layer_kind = "middle"

    def __init__(self, weight: float = 100.0, hint_epochs: int = 0, joint: bool = True,
                 student_layers: Optional[Sequence[str]] = None, teacher_layers: Optional[Sequence[str]] = None):
        super().__init__(weight, student_layers, teacher_layers, stage1_epochs=hint_epochs, joint=joint)

    def setup(self, student_feats, teacher_feats) -> None:
        self.adapters = nn.ModuleList(adapter(s.shape, t.shape) for s, t in zip(student_feats, teacher_feats))

    def loss(self, batch: Batch) -> torch.Tensor:
        return sum(fitnet_hint(*match_spatial(regressor(s), t))
                   for regressor, s, t in zip(self.adapters, batch.student_feats, batch.teacher_feats))
