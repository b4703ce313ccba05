"""Relation-based losses: functions of how the samples of a batch relate to each other.

Each takes the student's and the teacher's outputs for the same batch, (N, ...) each, flattened per
sample; the two may have different widths, since only N x N (or N x N x N) relations are compared.
The teacher is not detached here: the method or scheme decides what is frozen.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(start_dim=1)


def _distance_potential(e: torch.Tensor) -> torch.Tensor:
    """(N, N) Euclidean distances divided by their mean over the pairs i != j; zero diagonal."""
    n = e.shape[0]
    if n < 2:
        raise ValueError(f"RKD distance needs at least 2 samples in a batch, got {n}")
    # Distances ignore translation; centring first keeps the Gram-matrix form below precise when
    # all embeddings share a large offset.
    e = e - e.mean(dim=0, keepdim=True)
    sq = e.pow(2).sum(dim=1)
    # The clamp keeps sqrt's gradient finite for coincident points (as in the authors' pdist).
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.T).clamp_min(1e-12).sqrt()
    off_diag = ~torch.eye(n, dtype=torch.bool, device=e.device)
    d = d * off_diag
    return d / d[off_diag].mean()


def rkd_distance(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Distance-wise RKD loss (Park et al., CVPR 2019, "Relational Knowledge Distillation", Sec. 3.2).

    psi_D(x_i, x_j) = ||x_i - x_j||_2 / mu, mu = mean of ||x_i - x_j||_2 over the N(N-1) pairs i != j;
    loss = mean over all N^2 ordered pairs (i, j) of Huber(psi_D(s_i, s_j) - psi_D(t_i, t_j)), with
    Huber = smooth L1, delta = 1. As in the authors' code (lenscloth/RKD, RkdDistance) the diagonal
    (0 vs 0) stays in the mean, so this is (N-1)/N times the mean over distinct pairs.
    """
    s = _distance_potential(_flat(student_emb))
    t = _distance_potential(_flat(teacher_emb))
    return F.smooth_l1_loss(s, t, reduction="mean", beta=1.0)


def _angle_potential(e: torch.Tensor) -> torch.Tensor:
    """(N, N, N) cosines: [i, j, k] = cos of the angle at vertex e_i between e_j and e_k."""
    diff = e[None, :, :] - e[:, None, :]  # diff[i, j] = e_j - e_i
    # F.normalize maps a zero vector (j == i) to zero, so degenerate triplets get cosine 0.
    unit = F.normalize(diff, p=2, dim=2)
    return unit @ unit.transpose(1, 2)


def rkd_angle(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Angle-wise RKD loss (Park et al., CVPR 2019, "Relational Knowledge Distillation", Sec. 3.2).

    psi_A(x_i, x_j, x_k) = <e_ij, e_kj>, e_ij = (x_i - x_j) / ||x_i - x_j||_2 (cosine of the angle at
    x_j); loss = mean over all N^3 ordered triplets of Huber(psi_A(s) - psi_A(t)), smooth L1 with
    delta = 1. As in the authors' code (RKdAngle) the mean runs over all N^3 entries; the degenerate
    ones (a repeated index) are equal for student and teacher and add 0, so the loss is
    (1 / N^3) * sum over triplets of distinct indices.
    """
    s = _angle_potential(_flat(student_emb))
    t = _angle_potential(_flat(teacher_emb))
    return F.smooth_l1_loss(s, t, reduction="mean", beta=1.0)


def similarity_preserving(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019, "Similarity-Preserving Knowledge Distillation").

    G~ = Q Q^T over the flattened features Q (b, d); G = G~ with each row L2-normalised;
    loss = ||G_s - G_t||_F^2 / b^2 (one layer pair of the paper's L_SP).
    """
    b = student_feat.shape[0]

    def gram(x: torch.Tensor) -> torch.Tensor:
        q = _flat(x)
        return F.normalize(q @ q.T, p=2, dim=1)

    return (gram(student_feat) - gram(teacher_feat)).pow(2).sum() / (b * b)


def pkt(student_emb: torch.Tensor, teacher_emb: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018, "Learning Deep Representations
    with Probabilistic Knowledge Transfer", Sec. 3, cosine-similarity kernel).

    x_i <- x_i / (||x_i|| + eps); K_ij = (x_i . x_j + 1) / 2 in [0, 1]; P_ij = K_ij / sum_k K_ik;
    loss = mean over all N^2 entries of P^t_ij * log((P^t_ij + eps) / (P^s_ij + eps)).
    Follows the authors' `cosine_similarity_loss` (passalis/probabilistic_kt, nn/pkt.py): the
    diagonal (i == j) stays in the kernel, unlike the paper's conditional probabilities, and the
    reduction is a mean over N^2 entries, i.e. the mean per-row KL divergence divided by N.
    """

    def conditional(x: torch.Tensor) -> torch.Tensor:
        x = _flat(x)
        x = x / (x.norm(dim=1, keepdim=True) + eps)
        k = (x @ x.T + 1.0) / 2.0
        return k / k.sum(dim=1, keepdim=True)

    p_s, p_t = conditional(student_emb), conditional(teacher_emb)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def correlation_congruence(
    student_emb: torch.Tensor, teacher_emb: torch.Tensor, gamma: float = 0.4, order: int = 2
) -> torch.Tensor:
    """Correlation congruence (Peng et al., ICCV 2019, "Correlation Congruence for Knowledge
    Distillation", Sec. 3: correlation congruence, and the Taylor-expanded Gaussian RBF kernel).

    With L2-normalised x, exp(-gamma ||x_i - x_j||^2) = exp(-2 gamma) exp(2 gamma x_i . x_j), whose
    P-order Taylor expansion gives C_ij = sum_{p=0..P} exp(-2 gamma) (2 gamma)^p / p! (x_i . x_j)^p;
    loss = ||C_s - C_t||_F^2 / n^2 (the mean of the squared entries, as in the common public
    implementations; the expansion assumes unit-norm embeddings, hence the normalisation).
    """

    def correlation(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(_flat(x), p=2, dim=1)
        sim = x @ x.T
        return sum(
            math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * sim.pow(p) for p in range(order + 1)
        )

    return (correlation(student_emb) - correlation(teacher_emb)).pow(2).mean()
