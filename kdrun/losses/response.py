"""Response-based losses: functions of the student's and teacher's outputs (logits)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), averaged over the batch.

    Hinton, Vinyals & Dean (2015): the soft targets' gradients scale as 1/T^2, so multiplying by T^2
    keeps the term's relative weight unchanged when T changes.
    """
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


def logit_regression(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between student and teacher logits, over all N x C elements.

    Ba & Caruana, NIPS 2014, "Do Deep Nets Really Need to be Deep?": the mimic model regresses the
    teacher's logits, L = 1/(2T) sum_t ||g(x_t) - z_t||^2 over T examples. We take the mean over
    elements instead, i.e. 2/C times the paper's per-example loss, so the scale does not grow with C.
    """
    return F.mse_loss(student_logits, teacher_logits, reduction="mean")


def dkd_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, T: float = 4.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) of Decoupled KD (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation", Sec. 3.1).

    With p = softmax(z / T): TCKD = KL(b_t || b_s) over the binary b = [p_target, 1 - p_target];
    NCKD = KL(p^_t || p^_s), p^ = softmax over the non-target logits only. Each is multiplied by
    T^2 and averaged over the batch. Per sample, KL(p_t || p_s) = TCKD + (1 - p_t[target]) * NCKD,
    the paper's reformulation of classical KD.
    """
    z_s, z_t = student_logits / T, teacher_logits / T
    is_target = F.one_hot(target, z_s.shape[1]).bool()

    def binary_log_probs(z: torch.Tensor) -> torch.Tensor:
        # In log space: 1 - p_target computed as a difference would lose all precision as p -> 1.
        log_norm = z.logsumexp(dim=1)
        log_target = z[is_target] - log_norm
        log_rest = z.masked_fill(is_target, float("-inf")).logsumexp(dim=1) - log_norm
        return torch.stack([log_target, log_rest], dim=1)

    def non_target_log_probs(z: torch.Tensor) -> torch.Tensor:
        # Dropping the target column is what mdistiller's "- 1000 * mask" approximates.
        return F.log_softmax(z[~is_target].view(z.shape[0], -1), dim=1)

    def kl(log_p_s: torch.Tensor, log_p_t: torch.Tensor) -> torch.Tensor:
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)

    tckd = kl(binary_log_probs(z_s), binary_log_probs(z_t))
    nckd = kl(non_target_log_probs(z_s), non_target_log_probs(z_t))
    return tckd, nckd


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    T: float = 4.0,
) -> torch.Tensor:
    """alpha * TCKD + beta * NCKD (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation", Sec. 3.2).

    Decoupling frees NCKD from classical KD's (1 - p_t[target]) weight, which shrinks it exactly on
    the samples the teacher is sure of. Defaults are mdistiller's (mdistiller/engine/cfg.py).
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, T)
    return alpha * tckd + beta * nckd


def ensemble_logits(logits: list[torch.Tensor], combine: str, T: float) -> torch.Tensor:
    """One set of logits standing for an ensemble of teachers, so that every logit-based method
    works on it unchanged.

    `mean_logits`: the members' mean logit. `mean_probs`: T * log(mean_i softmax(z_i / T)), whose
    softmax at temperature T is exactly the mean of the members' tempered probabilities (softmax
    of log p is p when p sums to one): the averaged soft targets of Hinton et al. (2015).
    """
    stacked = torch.stack(logits)
    if combine == "mean_logits":
        return stacked.mean(0)
    if combine == "mean_probs":
        log_probs = F.log_softmax(stacked / T, dim=-1)
        return T * (log_probs.logsumexp(0) - math.log(len(logits)))
    raise ValueError(f"unknown ensemble combination {combine!r}: mean_probs or mean_logits")


def mutual_kl(logits: list[torch.Tensor], T: float) -> list[torch.Tensor]:
    """Deep mutual learning (Zhang et al., CVPR 2018): for each peer k, the mean over the other
    peers j of T^2 * KL(softmax(z_j / T) || softmax(z_k / T)), with z_j detached: each peer learns
    towards the others' current predictions, which are targets, not paths for its gradient."""
    out = []
    for k, z_k in enumerate(logits):
        others = [soft_target_kl(z_k, z_j.detach(), T) for j, z_j in enumerate(logits) if j != k]
        out.append(torch.stack(others).mean())
    return out


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The Pearson correlation of each row of `a` with the same row of `b`: the cosine of the
    centred rows (eps keeps a constant row finite, as in the authors' code)."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter-class, intra-class) relation losses of DIST (Huang et al., "Knowledge Distillation from A
    Stronger Teacher", NeurIPS 2022, Eqs. 6-9), each times T^2 as in the authors' code.

    With Y = softmax(Z / T) for a batch (N x C): inter = 1 - mean over the N samples of the Pearson
    correlation between the student's and the teacher's class distributions (the rows); intra = the
    same over the C classes, between the columns (how the batch's samples score on one class).
    Only relations are matched, not values: a teacher much stronger than the student is not asked
    to be copied exactly."""
    # In full precision: the correlations of probabilities near 0 need more than bf16's 8 bits.
    y_s, y_t = F.softmax(student_logits.float() / T, dim=1), F.softmax(teacher_logits.float() / T, dim=1)
    inter = 1 - _pearson_rows(y_s, y_t).mean()
    intra = 1 - _pearson_rows(y_s.T, y_t.T).mean()
    return inter * T * T, intra * T * T


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0, beta: float = 1.0,
              gamma: float = 1.0) -> torch.Tensor:
    """beta * inter + gamma * intra (DIST, Huang et al., NeurIPS 2022, Eq. 10 without its CE term)."""
    inter, intra = dist_terms(student_logits, teacher_logits, T)
    return beta * inter + gamma * intra
