"""Shared by the relation-based methods: they compare samples through one embedding per model."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from kdrun.methods.base import KDMethod


def embedding(feat: torch.Tensor) -> torch.Tensor:
    """A vector per sample: feature maps are average-pooled (as before a classifier), then flattened."""
    if feat.dim() == 4:
        feat = F.adaptive_avg_pool2d(feat, 1)
    return feat.flatten(1)


class RelationMethod(KDMethod):
    layer_kind = "embedding"

    def __init__(self, weight: float, student_layers: Optional[Sequence[str]] = None,
                 teacher_layers: Optional[Sequence[str]] = None):
        super().__init__(weight, student_layers, teacher_layers)
