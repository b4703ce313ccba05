"""Contrastive losses: a sample's embedding against a bank of other samples' embeddings.

Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020 (CRD): the student's
embedding of an image should be recognised among many other images by its match with the
teacher's embedding of that same image, and the other way round. Banks hold one embedding per
training image, updated with momentum (kept by the method); these functions only score and score
against the noise distribution, so they hold no state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def contrast_scores(anchor: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, T: float) -> torch.Tensor:
    """exp(<bank[idx[b, j]], anchor[b]> / T): (B, K+1) unnormalised scores of each anchor (B, D)
    against the bank rows that idx (B, K+1) picks, the positive first (CRD, Eq. 19's h before Z)."""
    rows = bank[idx].to(anchor.dtype)  # (B, K+1, D); the bank is a target, not a path for gradients
    return torch.exp(torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2) / T)


def nce_loss(probs: torch.Tensor, n_data: int, eps: float = 1e-7) -> torch.Tensor:
    """CRD's NCE loss (Eq. 18, as in RepDistiller's ContrastLoss) for (B, K+1) normalised scores
    h = P(positive | pair), the positive pair first and K negatives drawn from the noise distribution
    P_n = 1 / n_data: -(log h_0 / (h_0 + K P_n) + sum_k log K P_n / (h_k + K P_n)), summed over the
    pairs and divided by the batch."""
    k = probs.shape[1] - 1
    noise = k / float(n_data)
    positive = torch.log(probs[:, 0] / (probs[:, 0] + noise + eps))
    negative = torch.log(noise / (probs[:, 1:] + noise + eps))
    return -(positive.sum() + negative.sum()) / probs.shape[0]


def crd_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, student_bank: torch.Tensor,
             teacher_bank: torch.Tensor, idx: torch.Tensor, T: float, z_student, z_teacher, n_data: int
             ) -> torch.Tensor:
    """Both halves of CRD's objective: the student's embedding (B, D) scored against the teacher's
    bank, and the teacher's against the student's, at the rows idx (B, K+1) (positive first), each
    normalised by its constant Z (CRD's h = exp(<.,.>/T) / Z, Z estimated once as
    mean(exp(<.,.>/T)) * n_data; a number or a 0-dim tensor) and scored by nce_loss."""
    student_side = contrast_scores(student_emb, teacher_bank, idx, T) / z_student
    teacher_side = contrast_scores(teacher_emb, student_bank, idx, T) / z_teacher
    return nce_loss(student_side, n_data) + nce_loss(teacher_side, n_data)


def momentum_update(bank: torch.Tensor, index: torch.Tensor, new: torch.Tensor, momentum: float) -> None:
    """bank[index] <- normalise(momentum * bank[index] + (1 - momentum) * new), in place (CRD's memory)."""
    with torch.no_grad():
        rows = momentum * bank[index] + (1 - momentum) * new.detach().to(bank.dtype)
        bank.index_copy_(0, index, F.normalize(rows, dim=1))
