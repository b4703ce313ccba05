"""Tian, Krishnan & Isola (2020), "Contrastive Representation Distillation" (ICLR): linear heads
embed the student's and the teacher's penultimate features (L2-normalised, 128 dimensions), and a
noise-contrastive objective makes each image's student embedding pick out the teacher's embedding of
that same image among 16384 other images', and the other way round. The other images are read from
two memory banks, one embedding per training image for each model, updated with momentum 0.5 as
the images come by; temperature 0.07, weight 0.8 (RepDistiller's, and mdistiller's, defaults).

The banks need to know which training image each sample is: the loaders hand the Distiller each
sample's index (its position in the training split). Banks, their normalisation constants Z and the
heads are the method's state, saved with the student's checkpoints, so a resumed run goes on
exactly. As in RepDistiller's `exact` mode the negatives come from the other classes; they are
drawn with replacement (independent draws from the noise distribution, as NCE assumes), where
RepDistiller draws without replacement when there are enough."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdrun import KdrunError
from kdrun.engine import reseed
from kdrun.losses.contrastive import contrast_scores, crd_loss, momentum_update
from kdrun.methods._relation import embedding
from kdrun.methods.base import Batch, KDMethod, describe


class Embed(nn.Module):
    """A linear map to the contrastive space, L2-normalised."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(embedding(x)), dim=1)


class OtherClassSampler:
    """Draws, for each sample of label y, k indices uniformly and with replacement from the samples
    of the other classes (labels: the training split's, in its order)."""

    def __init__(self, labels: torch.Tensor):
        self.order = torch.argsort(labels, stable=True)  # the split's positions, grouped by class
        self.counts = torch.bincount(labels)
        if int((self.counts > 0).sum()) < 2:  # checked once here, not on the host in every step
            raise KdrunError("kd.crd needs training images of at least two classes to draw negatives from")
        self.starts = self.counts.cumsum(0) - self.counts
        self.n = len(labels)

    def __call__(self, y: torch.Tensor, k: int) -> torch.Tensor:
        own, first = self.counts[y].unsqueeze(1), self.starts[y].unsqueeze(1)
        others = self.n - own
        u = (torch.rand(len(y), k, device=y.device) * others).long().clamp_max(others - 1)
        return self.order[u + own * (u >= first)]  # skip the block of y's own class


class CRD(KDMethod):
    layer_kind = "embedding"
    needs_index = True

    def __init__(self, weight: float = 0.8, feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07,
                 nce_m: float = 0.5, student_layers: Optional[Sequence[str]] = None,
                 teacher_layers: Optional[Sequence[str]] = None):
        super().__init__(weight, student_layers, teacher_layers)
        if nce_k < 1 or nce_t <= 0 or not 0 <= nce_m < 1:
            raise KdrunError(f"kd.crd: needs nce_k >= 1, nce_t > 0 and 0 <= nce_m < 1 (got nce_k={nce_k}, "
                             f"nce_t={nce_t}, nce_m={nce_m}): the paper's are 16384, 0.07 and 0.5")
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = int(feat_dim), int(nce_k), float(nce_t), float(nce_m)
        # One row per training image, sized in prepare(): saved with the student's checkpoints.
        self.register_buffer("memory_s", torch.empty(0, self.feat_dim))
        self.register_buffer("memory_t", torch.empty(0, self.feat_dim))
        self.register_buffer("z", torch.full((2,), -1.0))  # Z of the student's and teacher's side; < 0: not set
        self.register_buffer("labels", torch.empty(0, dtype=torch.long), persistent=False)
        self.negatives: Optional[OtherClassSampler] = None
        self._z_set: Optional[bool] = None  # whether z holds Z: read from the buffer once (it may come from a checkpoint)

    def setup(self, student_feats, teacher_feats) -> None:
        from kdrun import distributed

        # Here, in the dry pass on untrained models (schemes/offline.check_layers), not in prepare(): a
        # refusal comes before the teacher trains.
        if distributed.world_size() > 1:  # each process would update its own banks' rows, DDP keeps rank 0's
            raise KdrunError(f"kd.{self.name} keeps memory banks that several processes (torchrun, SLURM) do not "
                             "share yet: run it on one device (or choose another method)")
        self.embed_s = Embed(embedding(student_feats[0]).shape[1], self.feat_dim)
        self.embed_t = Embed(embedding(teacher_feats[0]).shape[1], self.feat_dim)

    def describe_adapter(self, index: int) -> str:
        return describe(self.embed_s)  # the dry run's table shows the student's head

    def prepare(self, teacher: nn.Module, data, device: torch.device, seed: int) -> None:
        """Sizes the banks to the training split, with RepDistiller's uniform start, and reads its labels."""
        n = data.sizes["train"]
        reseed(seed, f"{self.name}.memory")
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        self.memory_s = ((torch.rand(n, self.feat_dim) * 2 - 1) * stdv).to(device)
        self.memory_t = ((torch.rand(n, self.feat_dim) * 2 - 1) * stdv).to(device)
        self.z = torch.full((2,), -1.0, device=device)
        self._z_set = None
        self.labels = data.labels("train").to(device)
        self.negatives = OtherClassSampler(self.labels)

    def loss(self, batch: Batch) -> torch.Tensor:
        # In full precision, also under mixed precision: exp(<., .> / 0.07) spans six orders of magnitude.
        with torch.autocast(batch.student_logits.device.type, enabled=False):
            return self._loss(batch.student_feats[0].float(), batch.teacher_feats[0].float(), batch.index)

    def _loss(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, index: Optional[torch.Tensor]):
        f_s, f_t = self.embed_s(student_feat), self.embed_t(teacher_feat)
        n = len(self.memory_s)
        if n == 0:  # the dry pass, before prepare(): contrast within the batch, to check the heads
            b = len(f_s)
            idx = (torch.arange(b, device=f_s.device)[:, None] + torch.arange(b, device=f_s.device)) % b
            return crd_loss(f_s, f_t, f_s.detach(), f_t.detach(), idx, self.nce_t, 1.0, 1.0, b)
        if index is None:
            raise ValueError("kd.crd needs each training sample's index (the loaders' `index` extra)")
        index = index.to(self.memory_s.device)
        idx = torch.cat([index[:, None], self.negatives(self.labels[index], self.nce_k)], dim=1)
        if self._z_set is None:  # one host read per run, not a sync in every step
            self._z_set = bool(self.z[0] >= 0)
        if not self._z_set:  # Z from the first batch, as in RepDistiller: the mean score times the data size
            self._z_set = True
            with torch.no_grad():
                self.z[0] = contrast_scores(f_s, self.memory_t, idx, self.nce_t).mean() * n
                self.z[1] = contrast_scores(f_t, self.memory_s, idx, self.nce_t).mean() * n
        loss = crd_loss(f_s, f_t, self.memory_s, self.memory_t, idx, self.nce_t, self.z[0], self.z[1], n)
        if self.training:
            momentum_update(self.memory_s, index, f_s, self.nce_m)
            momentum_update(self.memory_t, index, f_t, self.nce_m)
        return loss
