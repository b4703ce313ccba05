"""Heo et al. (2019), "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden
Neurons" (AAAI): connectors map the student's pre-activations to the teacher's, trained with the
paper's hinge-like loss so each student neuron is on exactly where the teacher's is. As in the paper,
by default it is an initialisation stage (`stage1_epochs`) before training on the labels.

Layer i of n (shallow to deep) is weighted 2^(i - n + 1): the deepest 1, halving per shallower
layer, as in the paper and its code (and RepDistiller's ABLoss); the overall weight, 3e-3 by
default, is their 3/1000 on the per-sample loss."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from kdrun.losses.feature import activation_boundary
from kdrun.methods.base import Batch, KDMethod, adapter, match_spatial


class AB(KDMethod):
    layer_kind = "preact"

    def __init__(self, weight: float = 0.003, margin: float = 1.0, stage1_epochs: int = 5, joint: bool = False,
                 student_layers: Optional[Sequence[str]] = None, teacher_layers: Optional[Sequence[str]] = None):
        super().__init__(weight, student_layers, teacher_layers, stage1_epochs=stage1_epochs, joint=joint)
        self.margin = margin

    def setup(self, student_feats, teacher_feats) -> None:
        self.adapters = nn.ModuleList(adapter(s.shape, t.shape) for s, t in zip(student_feats, teacher_feats))

    def loss(self, batch: Batch) -> torch.Tensor:
        n = len(self.adapters)
        return sum(2.0 ** (i - n + 1) * activation_boundary(*match_spatial(connector(s), t), margin=self.margin)
                   for i, (connector, s, t) in enumerate(zip(self.adapters, batch.student_feats, batch.teacher_feats)))
