"""Logit regression and Decoupled KD against values worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from kdrun.losses.response import dkd_loss, dkd_terms, logit_regression, soft_target_kl

LN2, LN3 = math.log(2), math.log(3)
# Teacher probabilities [1/3, 1/2, 1/6] (exp of the logits: 2, 3, 1, over 6);
# student probabilities [1/4, 1/4, 1/2] (1, 1, 2, over 4). Target class 0.
TEACHER = torch.tensor([[LN2, LN3, 0.0]])
STUDENT = torch.tensor([[0.0, 0.0, LN2]])
TARGET = torch.tensor([0])
# Binary: teacher [1/3, 2/3], student [1/4, 3/4].
TCKD = 1 / 3 * math.log((1 / 3) / (1 / 4)) + 2 / 3 * math.log((2 / 3) / (3 / 4))
# Non-target classes renormalised: teacher [3, 1]/4, student [1, 2]/3.
NCKD = 3 / 4 * math.log((3 / 4) / (1 / 3)) + 1 / 4 * math.log((1 / 4) / (2 / 3))


def test_logit_regression_by_hand():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 2.0], [3.0, 7.0]])
    # Differences 1, 0, 0, -3 -> squares 1, 0, 0, 9 -> mean over 4 elements.
    assert logit_regression(s, t).item() == pytest.approx((1 + 0 + 0 + 9) / 4)


def test_dkd_terms_by_hand():
    tckd, nckd = dkd_terms(STUDENT, TEACHER, TARGET, T=1.0)
    assert tckd.item() == pytest.approx(TCKD, rel=1e-5)
    assert nckd.item() == pytest.approx(NCKD, rel=1e-5)


def test_dkd_temperature_and_batch_mean():
    # Doubled logits at T = 2 give the same probabilities; both terms gain the factor T^2 = 4.
    # The second sample is the first with its classes rotated (target now at index 2): same terms.
    perm = [1, 2, 0]
    s = 2 * torch.cat([STUDENT, STUDENT[:, perm]])
    t = 2 * torch.cat([TEACHER, TEACHER[:, perm]])
    tckd, nckd = dkd_terms(s, t, torch.tensor([0, 2]), T=2.0)
    assert tckd.item() == pytest.approx(4 * TCKD, rel=1e-5)
    assert nckd.item() == pytest.approx(4 * NCKD, rel=1e-5)


def test_dkd_loss_weights_the_terms():
    got = dkd_loss(STUDENT, TEACHER, TARGET, alpha=2.0, beta=3.0, T=1.0).item()
    assert got == pytest.approx(2 * TCKD + 3 * NCKD, rel=1e-5)


def test_dkd_finite_when_teacher_is_certain():
    # Teacher p_target ~ 1 - 2e-100: binary [1, ~0] against the student's [1/3, 2/3] -> ln 3;
    # non-target classes uniform for both -> 0.
    tckd, nckd = dkd_terms(torch.zeros(1, 3), torch.tensor([[100.0, 0.0, 0.0]]), TARGET, T=1.0)
    assert tckd.item() == pytest.approx(LN3, rel=1e-5)
    assert nckd.item() == pytest.approx(0.0, abs=1e-6)


def test_kd_equals_tckd_plus_weighted_nckd():
    # The paper's reformulation, per sample: KL(p_t || p_s) = TCKD + (1 - p_t[target]) NCKD.
    g = torch.Generator().manual_seed(0)
    s, t = 3 * torch.randn(5, 7, generator=g), 3 * torch.randn(5, 7, generator=g)
    y = torch.randint(0, 7, (5,), generator=g)
    T = 3.0
    p_target = torch.softmax(t / T, dim=1).gather(1, y[:, None]).squeeze(1)
    per_sample = []
    for i in range(5):  # batch of one: the batch mean is that sample's value
        tckd, nckd = dkd_terms(s[i : i + 1], t[i : i + 1], y[i : i + 1], T=T)
        per_sample.append(tckd + (1 - p_target[i]) * nckd)
    assert torch.stack(per_sample).mean().item() == pytest.approx(soft_target_kl(s, t, T).item(), rel=1e-5)


@pytest.mark.parametrize("loss", [logit_regression, lambda s, t: dkd_loss(s, t, torch.tensor([0, 3, 1, 2]))])
def test_zero_for_identical_logits(loss):
    z = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    assert loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("loss", [logit_regression, lambda s, t: dkd_loss(s, t, torch.tensor([0, 3, 1, 2]))])
def test_gradient_reaches_student_only(loss):
    g = torch.Generator().manual_seed(2)
    s = torch.randn(4, 5, generator=g).requires_grad_()
    t = torch.randn(4, 5, generator=g)  # a plain tensor, as from a frozen teacher
    loss(s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
