"""Romero et al. (2015), "FitNets: Hints for Thin Deep Nets" (ICLR): a regressor maps the student's
guided layer to the teacher's hint layer (by default the middle stage of each), trained with an L2
hint loss. `hint_epochs` > 0 runs the paper's first stage: the student up to the guided layer (and
the regressor) trained on the hint alone, before the main training.

The regressor (1x1 convolution + batch norm, or linear) ends in a ReLU when the teacher's hint is
an activation's output (`relu: null` decides from the dry pass: a hint never negative there), as
RepDistiller's and mdistiller's ConvReg do for their post-ReLU hints; without it, the regressor
would waste capacity on negative values the hint never takes. A hint that can be negative (a
linear bottleneck, a pre-activation) gets none, since a ReLU could not reach it."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from kdrun import KdrunError
from kdrun.losses.feature import fitnet_hint
from kdrun.methods.base import Batch, KDMethod, adapter, match_spatial


class FitNet(KDMethod):
    layer_kind = "middle"

    def __init__(self, weight: float = 100.0, hint_epochs: int = 0, joint: bool = True, relu: Optional[bool] = None,
                 student_layers: Optional[Sequence[str]] = None, teacher_layers: Optional[Sequence[str]] = None):
        super().__init__(weight, student_layers, teacher_layers, stage1_epochs=hint_epochs, joint=joint)
        if relu not in (None, True, False):
            raise KdrunError(f"kd.fitnet.relu={relu}: choose true, false or null (a ReLU when the teacher's hint is "
                             "non-negative)")
        self.relu = relu

    def setup(self, student_feats, teacher_feats) -> None:
        def regressor(s, t):
            relu = bool((t >= 0).all()) if self.relu is None else self.relu
            return nn.Sequential(adapter(s.shape, t.shape), nn.ReLU()) if relu else adapter(s.shape, t.shape)

        self.adapters = nn.ModuleList(regressor(s, t) for s, t in zip(student_feats, teacher_feats))

    def loss(self, batch: Batch) -> torch.Tensor:
        return sum(fitnet_hint(*match_spatial(regressor(s), t))
                   for regressor, s, t in zip(self.adapters, batch.student_feats, batch.teacher_feats))
