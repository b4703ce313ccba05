"""The Hinton loss against values computed by hand from the paper's formula."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdrun.losses.response import soft_target_kl
from kdrun.methods.base import Distiller
from kdrun.methods.hinton import Hinton

Z_S = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
Z_T = [[3.0, 2.0, 1.0], [1.0, 0.0, 0.0]]
Y = [2, 0]


def softmax(z, T):
    e = [math.exp(v / T) for v in z]
    return [v / sum(e) for v in e]


def hand_kl(T):
    """mean over the batch of sum_k p_t,k (log p_t,k - log p_s,k), tempered at T."""
    total = 0.0
    for zs, zt in zip(Z_S, Z_T):
        ps, pt = softmax(zs, T), softmax(zt, T)
        total += sum(t * (math.log(t) - math.log(s)) for s, t in zip(ps, pt))
    return total / len(Z_S)


def hand_ce():
    return sum(-math.log(softmax(z, 1)[y]) for z, y in zip(Z_S, Y)) / len(Y)


def test_hand_values_are_what_we_think():
    # Row 2 at T=1 written out fully: p_t = (e, 1, 1)/(e+2), p_s = (1/3, 1/3, 1/3).
    e = math.e
    row2 = e / (e + 2) * math.log(3 * e / (e + 2)) + 2 / (e + 2) * math.log(3 / (e + 2))
    ps, pt = softmax(Z_S[0], 1), softmax(Z_T[0], 1)
    row1 = sum(t * math.log(t / s) for s, t in zip(ps, pt))
    assert hand_kl(1) == pytest.approx((row1 + row2) / 2)


@pytest.mark.parametrize("T", [1.0, 20.0])
def test_soft_target_kl_matches_hand_computation(T):
    got = soft_target_kl(torch.tensor(Z_S), torch.tensor(Z_T), T)
    assert got.item() == pytest.approx(T * T * hand_kl(T), rel=1e-5)


class Fixed(nn.Module):
    """A 'model' that returns fixed logits (so the loss sees exactly Z_S / Z_T)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x):
        return self.logits


@pytest.mark.parametrize("T", [1.0, 20.0])
@pytest.mark.parametrize("alpha,lam", [(0.9, 0.1), (0.5, 0.3)])
def test_full_hinton_objective(T, alpha, lam):
    """alpha * T^2 * KL(p_t || p_s) + lambda * CE(y, z_s), and each term logged on its own."""
    distiller = Distiller(Fixed(Z_S), Fixed(Z_T), {"hinton": Hinton(weight=alpha, T=T)}, ce_weight=lam)
    out = distiller(torch.zeros(2, 1), torch.tensor(Y))
    assert out["loss_hinton"].item() == pytest.approx(alpha * T * T * hand_kl(T), rel=1e-5)
    assert out["loss_ce"].item() == pytest.approx(lam * hand_ce(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(alpha * T * T * hand_kl(T) + lam * hand_ce(), rel=1e-5)


def test_identical_logits_give_zero_kd_term():
    z = torch.randn(4, 10)
    assert soft_target_kl(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_scale_is_independent_of_T_at_high_T():
    """The reason for T^2: at high T the soft term's gradient w.r.t. the logits ~ (z_s - z_t)/N, for any T."""
    z_t = torch.tensor([[0.5, -0.2, 0.1]])
    grads = []
    for T in (50.0, 100.0):
        z_s = torch.tensor([[0.1, 0.3, -0.4]], requires_grad=True)
        soft_target_kl(z_s, z_t, T).backward()
        grads.append(z_s.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=0.05)


def test_teacher_is_frozen_and_gets_no_gradient():
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    distiller = Distiller(student, teacher, {"hinton": Hinton(weight=0.9, T=4)}, ce_weight=0.1)
    distiller.train()
    assert not teacher.training, "the teacher must stay in eval mode when the distiller trains"
    distiller(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert not any(k.startswith("teacher") for k in distiller.state_dict())
