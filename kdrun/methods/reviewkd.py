"""Chen, Liu, Zhao & Jia (2021), "Distilling Knowledge via Knowledge Review" (CVPR): each level of
the teacher (its stages before their ReLU, and the pooled embedding) is learned from the student's
features of that level *and all deeper ones*: a chain of attention-based fusion (ABF) modules, from
the deepest level up, merges each student level with the fused features from below, and the
hierarchical context loss (kdrun.losses.feature.hcl_loss) compares every fused level with the
teacher's at several pooled resolutions.

As in the authors' code (dvlab-research/ReviewKD, also mdistiller's): ABF = 1x1 convolution + BN
to min(512, the student's embedding width) channels, fusion with the upsampled deeper result by two
sigmoid attention maps, then 3x3 convolution + BN to the teacher's channels, resized (nearest) to
the teacher's resolution; weight 1. Their warm-up of the weight over the first 20 epochs is not
done here (as for dkd)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdrun import KdrunError
from kdrun.losses.feature import hcl_loss
from kdrun.methods.base import Batch, KDMethod, default_layers


def as_map(feat: torch.Tensor) -> torch.Tensor:
    """A feature map (N, C, H, W); a flat feature (an embedding) is a 1x1 map."""
    return feat if feat.dim() == 4 else feat.flatten(1)[:, :, None, None]


class ABF(nn.Module):
    """Attention-based fusion: a student level, merged with the fused result of the deeper levels."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, deeper: Optional[torch.Tensor], out_size) -> tuple[torch.Tensor, torch.Tensor]:
        """(the level's output for the loss, the fused features passed to the next shallower level)."""
        x = self.conv1(x)
        if self.att is not None:
            deeper = F.interpolate(deeper, size=x.shape[2:], mode="nearest")
            w = self.att(torch.cat([x, deeper], dim=1))
            x = x * w[:, :1] + deeper * w[:, 1:]
        if x.shape[2:] != out_size:
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


class ReviewKD(KDMethod):
    layer_kind = "stages"

    def __init__(self, weight: float = 1.0, max_mid_channels: int = 512,
                 student_layers: Optional[Sequence[str]] = None, teacher_layers: Optional[Sequence[str]] = None):
        super().__init__(weight, student_layers, teacher_layers)
        if max_mid_channels < 1:
            raise KdrunError(f"kd.reviewkd.max_mid_channels={max_mid_channels}: must be at least 1 (the authors' is 512)")
        self.max_mid_channels = int(max_mid_channels)

    def resolve_layers(self, student_cfg, teacher_cfg) -> None:
        # The student's stages (after their ReLU) and the teacher's before it, each with its embedding.
        if self.student_layers is None and student_cfg.layers.stages:
            self.student_layers = default_layers("stages", student_cfg.layers) + default_layers("embedding", student_cfg.layers)
        if self.teacher_layers is None and teacher_cfg.layers.stages:
            self.teacher_layers = default_layers("preact", teacher_cfg.layers) + default_layers("embedding", teacher_cfg.layers)
        super().resolve_layers(student_cfg, teacher_cfg)

    def setup(self, student_feats, teacher_feats) -> None:
        s, t = [as_map(f) for f in student_feats], [as_map(f) for f in teacher_feats]
        mid = min(self.max_mid_channels, s[-1].shape[1])
        # In the order of the layers (shallow to deep); the deepest has nothing deeper to fuse.
        self.adapters = nn.ModuleList(ABF(a.shape[1], mid, b.shape[1], fuse=i < len(s) - 1)
                                      for i, (a, b) in enumerate(zip(s, t)))

    def loss(self, batch: Batch) -> torch.Tensor:
        s, t = [as_map(f) for f in batch.student_feats], [as_map(f) for f in batch.teacher_feats]
        outputs, deeper = [None] * len(s), None
        for i in reversed(range(len(s))):  # the review: from the deepest level up
            outputs[i], deeper = self.adapters[i](s[i], deeper, t[i].shape[2:])
        return hcl_loss(outputs, t)
