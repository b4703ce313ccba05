"""Ahn, Hu, Damianou, Lawrence & Dai (2019), "Variational Information Distillation for Knowledge
Transfer" (CVPR): the student maximises a variational lower bound of the mutual information between
its features and the teacher's, at every stage: a small regressor predicts the mean of a Gaussian
over the teacher's feature, whose variance per channel is learned too.

As in RepDistiller's and mdistiller's VID (after the authors' code): the regressor is three 1x1
convolutions (student -> teacher channels, ReLU between them, no bias), the variance
softplus(alpha_c) + 1e-5 starts at 5, and the negative log-likelihood is averaged over elements;
weight 1 (RepDistiller's beta)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from kdrun import KdrunError
from kdrun.losses.feature import vid_nll
from kdrun.methods.base import Batch, KDMethod, match_spatial


def _regressor(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.ReLU(), nn.Conv2d(c_out, c_out, 1, bias=False),
                         nn.ReLU(), nn.Conv2d(c_out, c_out, 1, bias=False))


class VID(KDMethod):
    layer_kind = "stages"

    def __init__(self, weight: float = 1.0, init_var: float = 5.0, eps: float = 1e-5,
                 student_layers: Optional[Sequence[str]] = None, teacher_layers: Optional[Sequence[str]] = None):
        super().__init__(weight, student_layers, teacher_layers)
        if not 0 < eps < init_var:
            raise KdrunError(f"kd.vid: needs 0 < eps < init_var (got eps={eps}, init_var={init_var}): the variances "
                             "start at init_var and never fall below eps (RepDistiller's are 5 and 1e-5)")
        self.init_var, self.eps = float(init_var), float(eps)

    def setup(self, student_feats, teacher_feats) -> None:
        for role, feats, paths in (("student", student_feats, self.student_layers),
                                   ("teacher", teacher_feats, self.teacher_layers)):
            for x, path in zip(feats, paths):
                if x.dim() != 4:
                    raise ValueError(f"VID needs convolutional feature maps (N, C, H, W), but the {role} layer {path!r} "
                                     f"gives a flat vector of shape {tuple(x.shape)}; use CNN models or other layers")
        self.adapters = nn.ModuleList(_regressor(s.shape[1], t.shape[1]) for s, t in zip(student_feats, teacher_feats))
        # alpha_c with softplus(alpha_c) + eps = init_var: the inverse of the softplus.
        alpha = math.log(math.expm1(self.init_var - self.eps))
        self.log_scales = nn.ParameterList(nn.Parameter(torch.full((t.shape[1],), alpha)) for t in teacher_feats)

    def loss(self, batch: Batch) -> torch.Tensor:
        total = 0
        for regressor, log_scale, s, t in zip(self.adapters, self.log_scales, batch.student_feats, batch.teacher_feats):
            s, t = match_spatial(s, t)  # pooled before the regressor, as in RepDistiller
            total = total + vid_nll(regressor(s), t, log_scale, self.eps)
        return total
