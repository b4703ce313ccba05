"""Feature-based KD losses checked against values worked out by hand on tiny tensors."""
from __future__ import annotations

import math

import pytest
import torch

from kdrun.losses.feature import (
    activation_boundary,
    attention_map,
    attention_transfer,
    factor_transfer,
    fitnet_hint,
    fsp_loss,
    fsp_matrix,
    nst_mmd,
    paraphraser_reconstruction,
)

R = 1 / math.sqrt(2)  # the unit vector (1, 1) / sqrt(2) shows up in several hand computations


def maps(*samples: list[list[list[float]]]) -> torch.Tensor:
    """Build an (N, C, H, W) tensor from per-sample lists of 2-D channel grids."""
    return torch.tensor(samples, dtype=torch.float32)


def assert_grad_reaches_student(loss_fn, student: torch.Tensor, *rest) -> None:
    student = student.clone().requires_grad_(True)
    loss_fn(student, *rest).backward()
    assert student.grad is not None
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


# ---------------------------------------------------------------- FitNets
def test_fitnet_hint_value_by_hand():
    s = maps([[[1, 2], [3, 4]]], [[[0, 0], [1, 1]]])  # (2, 1, 2, 2)
    t = maps([[[1, 0], [3, 2]]], [[[2, 0], [1, -1]]])
    expected = ((1 - 1) ** 2 + (2 - 0) ** 2 + (3 - 3) ** 2 + (4 - 2) ** 2
                + (0 - 2) ** 2 + (0 - 0) ** 2 + (1 - 1) ** 2 + (1 + 1) ** 2) / 8
    assert fitnet_hint(s, t).item() == pytest.approx(expected)  # 16 / 8 = 2


def test_fitnet_hint_zero_when_identical_and_grad_and_shape_error():
    x = torch.randn(2, 3, 4, 4)
    assert fitnet_hint(x, x.clone()).item() == 0.0
    assert_grad_reaches_student(fitnet_hint, torch.randn(2, 3, 4, 4), x)
    with pytest.raises(ValueError, match="regressor"):
        fitnet_hint(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2))


# ---------------------------------------------------------------- Attention transfer
# Student has 1 channel, teacher 2: AT must accept different widths at equal resolution.
AT_S = maps([[[1, 1], [1, 1]]], [[[3, 0], [0, 3]]])
AT_T = maps([[[2, 0], [0, 0]], [[0, 0], [0, 0]]], [[[1, 0], [0, 0]], [[0, 1], [0, 0]]])


def test_attention_map_by_hand():
    # teacher sample 0: mean_c A^2 = (4+0)/2, 0, 0, 0 = (2, 0, 0, 0) -> normalised (1, 0, 0, 0)
    # teacher sample 1: (1/2, 1/2, 0, 0) -> (R, R, 0, 0)
    expected = torch.tensor([[1, 0, 0, 0], [R, R, 0, 0]])
    torch.testing.assert_close(attention_map(AT_T), expected)
    # p=1 uses |A|: (|-1|, 1, 1, |-1|) -> each 1/2
    neg = maps([[[-1, 1], [1, -1]]])
    torch.testing.assert_close(attention_map(neg, p=1), torch.full((1, 4), 0.5))


def test_attention_transfer_value_by_hand():
    # student maps: sample 0 (1,1,1,1)/2 = 0.5 each; sample 1 (9,0,0,9)/(9*sqrt2) = (R,0,0,R)
    expected = (
        (0.5 - 1) ** 2 + (0.5 - 0) ** 2 + (0.5 - 0) ** 2 + (0.5 - 0) ** 2  # sample 0 = 1.0
        + (R - R) ** 2 + (0 - R) ** 2 + (0 - 0) ** 2 + (R - 0) ** 2  # sample 1 = 1.0
    ) / (2 * 4)
    assert attention_transfer(AT_S, AT_T).item() == pytest.approx(expected)  # 0.25


def test_attention_transfer_zero_and_scale_invariant():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    assert attention_transfer(t, t.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert attention_transfer(3.7 * s, 0.2 * t).item() == pytest.approx(
        attention_transfer(s, t).item(), rel=1e-5
    )


def test_attention_transfer_grad_and_errors():
    assert_grad_reaches_student(attention_transfer, torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="spatial sizes differ.*adaptive average pooling"):
        attention_transfer(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match="convolutional feature maps.*flat vector"):
        attention_transfer(torch.randn(2, 8), torch.randn(2, 3, 2, 2))


# ---------------------------------------------------------------- NST
def test_nst_mmd_value_by_hand():
    # Student 2 channels, teacher 1, spatial 2x2 (each channel is a 4-vector).
    s = maps([[[1, 0], [0, 0]], [[0, 2], [0, 0]]],  # -> e1, e2
             [[[1, 1], [0, 0]], [[0, 0], [0, 5]]])  # -> (R, R, 0, 0), e4
    t = maps([[[3, 0], [0, 0]]],  # -> e1
             [[[1, 0], [0, 0]]])  # -> e1
    # k(x, y) = (x.y)^2.  sample 0: Kss = [[1, 0], [0, 1]], Ktt = [[1]], Kst = [1, 0]
    mmd0 = (1 + 0 + 0 + 1) / 4 + 1 / 1 - 2 * (1 + 0) / 2
    # sample 1: s1.s2 = 0, s1.t = R -> R^2 = 1/2, s2.t = 0
    mmd1 = (1 + 0 + 0 + 1) / 4 + 1 / 1 - 2 * (R ** 2 + 0) / 2
    expected = (mmd0 + mmd1) / 2  # (0.5 + 1.0) / 2 = 0.75
    assert nst_mmd(s, t).item() == pytest.approx(expected)


def test_nst_mmd_zero_and_per_channel_scale_invariant():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    assert nst_mmd(t, t.clone()).item() == pytest.approx(0.0, abs=1e-6)
    scale = torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1)
    assert nst_mmd(s * scale, t).item() == pytest.approx(nst_mmd(s, t).item(), rel=1e-5)


def test_nst_mmd_grad_and_errors():
    assert_grad_reaches_student(nst_mmd, torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="spatial sizes differ"):
        nst_mmd(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 2))
    with pytest.raises(ValueError, match="convolutional feature maps.*flat vector"):
        nst_mmd(torch.randn(2, 3, 2, 2), torch.randn(2, 8))


# ---------------------------------------------------------------- FSP
def test_fsp_matrix_by_hand():
    a = maps([[[1, 2], [3, 4]]])  # C1 = 1
    b = maps([[[1, 1], [1, 1]], [[1, 0], [0, -1]]])  # C2 = 2
    # G_0j = sum over the 4 positions of a * b_j, divided by h*w = 4
    expected = torch.tensor([[[(1 + 2 + 3 + 4) / 4, (1 * 1 + 4 * -1) / 4]]])  # [[2.5, -0.75]]
    torch.testing.assert_close(fsp_matrix(a, b), expected)


def test_fsp_loss_value_by_hand():
    ones = torch.ones(1, 1, 2, 2)
    # pair 1: a = b = a constant map c, so G = c^2. Student c = 1, 2 -> G = 1, 4; teacher G = 1, 1
    s1 = torch.cat([ones, 2 * ones])
    t1 = torch.cat([ones, ones])
    pair1 = ((1 - 1) ** 2 + (4 - 1) ** 2) / 2  # batch mean = 4.5
    # pair 2: student G = [2.5, -0.75] (see test above), teacher a = 1s, b = (1s, 0s) -> G = [1, 0]
    sa = maps([[[1, 2], [3, 4]]], [[[1, 2], [3, 4]]])
    sb = maps([[[1, 1], [1, 1]], [[1, 0], [0, -1]]], [[[1, 1], [1, 1]], [[1, 0], [0, -1]]])
    ta = torch.ones(2, 1, 2, 2)
    tb = torch.cat([torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)], dim=1)
    pair2 = ((2.5 - 1) ** 2 + (-0.75 - 0) ** 2)  # same for both samples = 2.8125
    expected = pair1 + pair2  # 7.3125: the paper sums the pairs (lambda_i = 1)
    got = fsp_loss([(s1, s1), (sa, sb)], [(t1, t1), (ta, tb)])
    assert got.item() == pytest.approx(expected)


def test_fsp_loss_zero_grad_and_errors():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    assert fsp_loss([(a, b)], [(a.clone(), b.clone())]).item() == 0.0
    assert_grad_reaches_student(lambda s: fsp_loss([(s, b)], [(torch.randn_like(a), b)]), a)
    with pytest.raises(ValueError, match="spatial sizes differ.*adaptive average pooling"):
        fsp_matrix(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match="convolutional feature maps.*flat vector"):
        fsp_matrix(torch.randn(2, 8), torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match="equal channel counts"):
        fsp_loss([(a, b)], [(torch.randn(2, 4, 4, 4), b)])
    with pytest.raises(ValueError, match="number of student and teacher layer pairs"):
        fsp_loss([(a, b)], [])


# ---------------------------------------------------------------- Factor transfer
FT_S = maps([[[3, 4], [0, 0]]], [[[1, 0], [0, 0]]])  # -> (.6, .8, 0, 0), (1, 0, 0, 0)
FT_T = maps([[[0, 4], [3, 0]]], [[[0, 0], [0, 2]]])  # -> (0, .8, .6, 0), (0, 0, 0, 1)


def test_factor_transfer_value_by_hand():
    l1_0 = abs(0 - 0.6) + abs(0.8 - 0.8) + abs(0.6 - 0) + abs(0 - 0)  # 1.2
    l1_1 = abs(0 - 1) + 0 + 0 + abs(1 - 0)  # 2
    assert factor_transfer(FT_S, FT_T).item() == pytest.approx((l1_0 + l1_1) / 2)  # 1.6
    l2_0 = math.sqrt(0.6 ** 2 + 0.6 ** 2)
    l2_1 = math.sqrt(1 ** 2 + 1 ** 2)
    assert factor_transfer(FT_S, FT_T, p=2).item() == pytest.approx((l2_0 + l2_1) / 2)


def test_factor_transfer_zero_and_scale_invariant():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert factor_transfer(t, t.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert factor_transfer(5.0 * s, 0.1 * t).item() == pytest.approx(
        factor_transfer(s, t).item(), rel=1e-5
    )


def test_factor_transfer_grad_and_shape_error():
    assert_grad_reaches_student(factor_transfer, torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="translator"):
        factor_transfer(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2))


def test_paraphraser_reconstruction_by_hand():
    rec = maps([[[1, 2], [3, 4]]])
    orig = maps([[[1, 0], [3, 6]]])
    expected = ((1 - 1) ** 2 + (2 - 0) ** 2 + (3 - 3) ** 2 + (4 - 6) ** 2) / 4  # 2
    assert paraphraser_reconstruction(rec, orig).item() == pytest.approx(expected)
    assert paraphraser_reconstruction(orig, orig.clone()).item() == 0.0
    assert_grad_reaches_student(paraphraser_reconstruction, rec, orig)
    with pytest.raises(ValueError, match="paraphraser"):
        paraphraser_reconstruction(rec, torch.zeros(1, 2, 2, 2))


# ---------------------------------------------------------------- Activation boundary
AB_S = maps([[[0.5, 3.0], [-0.5, -2.0]]], [[[0.0, -1.0], [1.0, 2.0]]])
AB_T = maps([[[2.0, 1.0], [-1.0, 0.0]]], [[[0.0, 5.0], [1.0, -3.0]]])


def test_activation_boundary_value_by_hand():
    m = 1.0
    # teacher on (t > 0) and r <= m: (r - m)^2;  teacher off (t <= 0) and r > -m: (r + m)^2
    sample0 = ((0.5 - m) ** 2  # on, r below margin
               + 0  # on, r = 3 already beyond +m
               + (-0.5 + m) ** 2  # off, r above -m
               + 0)  # off, r = -2 already beyond -m
    sample1 = ((0.0 + m) ** 2  # t = 0 counts as off
               + (-1.0 - m) ** 2  # on, r on the wrong side
               + (1.0 - m) ** 2  # on, r exactly at the margin: zero
               + (2.0 + m) ** 2)  # off, r on the wrong side
    expected = (sample0 + sample1) / 2  # (0.5 + 14) / 2 = 7.25
    assert activation_boundary(AB_S, AB_T, margin=m).item() == pytest.approx(expected)


def test_activation_boundary_zero_beyond_margin_and_teacher_sign_only():
    t = torch.tensor([[1.5, -2.0, 1.0, -1.0]])
    # identical features whose magnitudes reach the margin sit on the right side: no loss
    assert activation_boundary(t, t.clone(), margin=1.0).item() == 0.0
    # only the teacher's sign matters, so positive rescaling of the teacher changes nothing
    s = torch.randn(2, 3, 4, 4)
    tt = torch.randn(2, 3, 4, 4)
    assert activation_boundary(s, 7.0 * tt).item() == pytest.approx(activation_boundary(s, tt).item())


def test_activation_boundary_grad_and_shape_error():
    assert_grad_reaches_student(activation_boundary, AB_S, AB_T)
    with pytest.raises(ValueError, match="connector"):
        activation_boundary(torch.randn(2, 3, 4, 4), torch.randn(2, 6, 4, 4))


def test_fsp_loss_per_element_divides_each_pair_by_its_matrix_size():
    # One pair, C1 = 1, C2 = 2, 1x1 maps: G_s = [[1*1, 1*2]] = [[1, 2]], G_t = [[0, 0]] -> sum 5, per element 2.5.
    a_s, b_s = torch.ones(1, 1, 1, 1), torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    a_t, b_t = torch.zeros(1, 1, 1, 1), torch.zeros(1, 2, 1, 1)
    assert fsp_loss([(a_s, b_s)], [(a_t, b_t)]).item() == pytest.approx(5.0)
    assert fsp_loss([(a_s, b_s)], [(a_t, b_t)], per_element=True).item() == pytest.approx(2.5)
