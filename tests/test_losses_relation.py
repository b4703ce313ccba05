"""Relation-based losses against values worked out by hand on 2- and 3-point configurations."""
from __future__ import annotations

import math

import pytest
import torch

from kdrun.losses.relation import correlation_congruence, pkt, rkd_angle, rkd_distance, similarity_preserving

ALL = [rkd_distance, rkd_angle, similarity_preserving, pkt, correlation_congruence]

# A 3-4-5 right triangle (right angle at the first point) and three collinear, evenly spaced points.
TRIANGLE = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
LINE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
# Two orthogonal unit vectors (teacher) and the same vector twice (student).
ORTHO = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
SAME = torch.tensor([[1.0, 0.0], [1.0, 0.0]])


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_rkd_distance_by_hand():
    # Teacher: distances 3 (AB), 4 (AC), 5 (BC); mean 4 -> potentials 0.75, 1, 1.25.
    # Student: distances 1 (AB), 2 (AC), 1 (BC); mean 4/3 -> potentials 0.75, 1.5, 0.75.
    # Differences 0, 0.5, -0.5; each unordered pair appears twice among the 9 ordered pairs,
    # the 3 diagonal entries add 0.
    expected = 2 * (huber(0.0) + huber(0.5) + huber(-0.5)) / 9  # = 1/18
    assert expected == pytest.approx(1 / 18)
    assert rkd_distance(LINE, TRIANGLE).item() == pytest.approx(expected, rel=1e-6)


def test_rkd_angle_by_hand():
    # Teacher cosines: at A (0,0): 0 (right angle); at B (3,0): BA.BC/(3*5) = 9/15 = 0.6;
    # at C (0,4): CA.CB/(4*5) = 16/20 = 0.8.
    # Student cosines: at A: 1 (B and C on the same side); at B: -1 (between them); at C: 1.
    # Differences 1, -1.6, 0.2 -> Huber 0.5, 1.1, 0.02; each angle appears twice (j, k swapped)
    # among the 27 ordered triplets, the degenerate ones add 0.
    expected = 2 * (huber(1.0) + huber(-1.6) + huber(0.2)) / 27
    assert expected == pytest.approx(0.12)
    assert rkd_angle(LINE, TRIANGLE).item() == pytest.approx(expected, rel=1e-6)


def test_similarity_preserving_by_hand():
    # Teacher Gram = I (rows already unit). Student Gram = all ones -> rows / sqrt(2).
    # Squared differences: diagonal (1/sqrt2 - 1)^2 twice, off-diagonal (1/sqrt2)^2 twice;
    # total 4 - 2 sqrt2, over b^2 = 4.
    r = 1 / math.sqrt(2)
    expected = (2 * (r - 1) ** 2 + 2 * r**2) / 4
    assert expected == pytest.approx(1 - math.sqrt(2) / 2)
    assert similarity_preserving(SAME, ORTHO).item() == pytest.approx(expected, rel=1e-6)


def test_pkt_by_hand():
    # Teacher cosines I -> kernel (cos+1)/2 = [[1, .5], [.5, 1]] -> rows [2/3, 1/3].
    # Student cosines all 1 -> kernel all 1 -> rows [1/2, 1/2].
    # Row KL = 2/3 ln(4/3) + 1/3 ln(2/3); both rows alike; mean over 4 entries = row KL / 2.
    row_kl = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    assert pkt(SAME, ORTHO).item() == pytest.approx(row_kl / 2, rel=1e-5)


def test_correlation_congruence_by_hand():
    # gamma = 0.4, order 2: c(s) = e^-0.8 (1 + 0.8 s + 0.32 s^2). Diagonals agree (s = 1);
    # off-diagonal: student s = 1 -> 2.12 e^-0.8, teacher s = 0 -> e^-0.8, gap 1.12 e^-0.8,
    # twice, over n^2 = 4.
    expected = 2 * (1.12 * math.exp(-0.8)) ** 2 / 4
    got = correlation_congruence(SAME, ORTHO, gamma=0.4, order=2).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_correlation_congruence_high_order_is_the_rbf_kernel():
    # Unit vectors: student ||xi - xj||^2 = 0 -> exp(0) = 1; teacher = 2 -> exp(-0.8).
    expected = 2 * (1 - math.exp(-0.8)) ** 2 / 4
    got = correlation_congruence(SAME, ORTHO, gamma=0.4, order=20).item()
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss", ALL)
def test_zero_for_identical_inputs(loss):
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    assert loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("loss", ALL)
def test_flattens_each_sample(loss):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 8, 2, 2, generator=g)
    assert loss(s, t).item() == pytest.approx(loss(s.flatten(1), t.flatten(1)).item(), rel=1e-5)


@pytest.mark.parametrize("loss", [rkd_distance, rkd_angle])
def test_rkd_invariant_to_uniform_scale_and_translation(loss):
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 3, generator=g)  # widths may differ
    base = loss(s, t).item()
    assert loss(5.0 * s, t).item() == pytest.approx(base, rel=1e-4)
    assert loss(s, 0.2 * t).item() == pytest.approx(base, rel=1e-4)
    assert loss(s + 100.0, t - 30.0).item() == pytest.approx(base, rel=1e-4)


def test_sp_invariant_to_a_global_positive_scale_only():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 6, generator=g)
    base = similarity_preserving(s, t).item()
    assert similarity_preserving(3.0 * s, 0.5 * t).item() == pytest.approx(base, rel=1e-5)
    # Not per-sample: scaling sample j by a_j scales column j of every row of Q Q^T, which the
    # row normalisation does not undo.
    a = torch.tensor([[1.0], [2.0], [0.5], [4.0], [1.0]])
    assert similarity_preserving(a * s, t).item() != pytest.approx(base, rel=1e-3)


@pytest.mark.parametrize("loss", [pkt, correlation_congruence])
def test_cosine_losses_invariant_to_per_sample_positive_scale(loss):
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 6, generator=g)
    a = torch.tensor([[1.0], [2.0], [0.5], [4.0], [10.0]])
    assert loss(a * s, t / a).item() == pytest.approx(loss(s, t).item(), rel=1e-4)


@pytest.mark.parametrize("loss", ALL)
def test_gradient_reaches_student_only(loss):
    g = torch.Generator().manual_seed(5)
    s = torch.randn(6, 4, generator=g).requires_grad_()
    t = torch.randn(6, 3, generator=g)  # a plain tensor, as from a frozen teacher
    loss(s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", [rkd_distance, rkd_angle])
def test_rkd_gradients_finite_with_coincident_samples(loss):
    s = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]], requires_grad=True)
    loss(s, TRIANGLE).backward()
    assert torch.isfinite(s.grad).all()


def test_rkd_distance_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        rkd_distance(torch.ones(1, 3), torch.ones(1, 3))
