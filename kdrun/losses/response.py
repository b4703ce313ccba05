"""Response-based losses: functions of the student's and teacher's outputs (logits)."""
from __future__ import annotations

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
