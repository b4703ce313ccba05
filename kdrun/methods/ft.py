"""Kim, Park & Kwak (2018), "Paraphrasing Complex Network: Network Compression via Factor Transfer"
(NeurIPS): a paraphraser (a convolutional autoencoder on the teacher's last stage) is trained first
to reconstruct it, then frozen; a translator on the student's last stage learns to produce the
paraphraser's "factors", with an L1 distance between L2-normalised factors (paper's p = 1).

The distance is averaged over the factor's elements, as in the authors' code (nn.L1Loss between
the L2-normalised factors, Jangho-Kim/Factor-Transfer-pytorch), whose weight beta = 500 is the
default here, rather than the paper's per-sample sum, so the weight does not depend on the factor's
size. (RepDistiller's beta = 200 belongs to another quantity: a channel-pooled map of the factor.)"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from kdrun import distributed
from kdrun.engine import reseed
from kdrun.features import FeatureTap
from kdrun.losses.feature import factor_transfer, paraphraser_reconstruction
from kdrun.methods.base import Batch, KDMethod, match_spatial


def _conv(c_in: int, c_out: int, transpose: bool = False) -> nn.Sequential:
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    return nn.Sequential(conv(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1))


class Paraphraser(nn.Module):
    """Three 3x3 convolutions down to `factors` channels, and three transposed ones back (paper Fig. 2)."""

    def __init__(self, channels: int, factors: int):
        super().__init__()
        self.encoder = nn.Sequential(_conv(channels, channels), _conv(channels, factors), _conv(factors, factors))
        self.decoder = nn.Sequential(_conv(factors, factors, True), _conv(factors, channels, True),
                                     _conv(channels, channels, True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class FT(KDMethod):
    layer_kind = "last"

    def __init__(self, weight: float = 500.0, p: float = 1.0, rate: float = 0.5, paraphraser_epochs: int = 5,
                 paraphraser_lr: float = 0.01, student_layers: Optional[Sequence[str]] = None,
                 teacher_layers: Optional[Sequence[str]] = None):
        super().__init__(weight, student_layers, teacher_layers)
        self.p, self.rate = p, rate
        self.paraphraser_epochs, self.paraphraser_lr = paraphraser_epochs, paraphraser_lr

    def setup(self, student_feats, teacher_feats) -> None:
        s, t = student_feats[0], teacher_feats[0]
        for role, x, path in (("student", s, self.student_layers[0]), ("teacher", t, self.teacher_layers[0])):
            if x.dim() != 4:
                raise ValueError(f"FT needs convolutional feature maps (N, C, H, W), but the {role} layer {path!r} "
                                 f"gives a flat vector of shape {tuple(x.shape)}; use CNN models or other layers")
        factors = max(1, int(t.shape[1] * self.rate))
        self.paraphraser = Paraphraser(t.shape[1], factors).requires_grad_(False)  # trained in prepare() only
        self.translator = nn.Sequential(_conv(s.shape[1], s.shape[1]), _conv(s.shape[1], factors),
                                        _conv(factors, factors))

    def describe_adapter(self, index: int) -> str:
        first, last = self.translator[0][0], self.translator[-1][0]
        return f"translator {first.in_channels}->{last.out_channels}; paraphraser on the teacher's layer"

    def train(self, mode: bool = True) -> "FT":
        super().train(mode)
        if hasattr(self, "paraphraser") and not any(p.requires_grad for p in self.paraphraser.parameters()):
            self.paraphraser.eval()  # frozen: its batch-norm statistics must not drift
        return self

    def prepare(self, teacher: nn.Module, data, device: torch.device, seed: int) -> None:
        """Trains the paraphraser to reconstruct the teacher's feature (paper Eq. 1), then freezes it."""
        reseed(seed, f"{self.name}.paraphraser")
        self.paraphraser.requires_grad_(True).train()
        optimizer = torch.optim.SGD(self.paraphraser.parameters(), lr=self.paraphraser_lr, momentum=0.9)
        tap = FeatureTap(teacher, self.teacher_layers, "teacher")
        paraphraser = distributed.wrap(self.paraphraser)  # under DDP each process reconstructs its shard
        for _ in range(self.paraphraser_epochs):
            for x, _y in data.loader("train", 128, shuffle=True):
                with torch.no_grad(), tap:
                    teacher(x.to(device))
                feat = tap.outputs[self.teacher_layers[0]]
                loss = paraphraser_reconstruction(paraphraser(feat), feat)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self.paraphraser.requires_grad_(False).eval()

    def loss(self, batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            teacher_factor = self.paraphraser.encoder(batch.teacher_feats[0])
        student_factor, teacher_factor = match_spatial(self.translator(batch.student_feats[0]), teacher_factor)
        return factor_transfer(student_factor, teacher_factor, self.p) / student_factor[0].numel()
