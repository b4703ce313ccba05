"""The second wave's losses (DIST, VID, KD-SVD, OFD, ReviewKD, CRD) against their papers' formulas,
worked out by hand (or with an independent formula) on tiny tensors."""
from __future__ import annotations

import math
import statistics

import pytest
import torch

from kdrun.losses.contrastive import contrast_scores, crd_loss, momentum_update, nce_loss
from kdrun.losses.feature import (align_singular_vectors, hcl_loss, kdsvd_loss, ofd_loss, ofd_margin, svd_rbf_loss,
                                  top_singular_vectors, vid_nll)
from kdrun.losses.response import dist_loss, dist_terms
from kdrun import KdrunError
from kdrun.methods.crd import OtherClassSampler


def _log(rows):
    """Logits whose softmax (at T = 1) is `rows`."""
    return torch.tensor(rows, dtype=torch.float64).log()


# ---------------------------------------------------------------- DIST
P_S = [[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.1, 0.7, 0.2]]
P_T = [[0.6, 0.3, 0.1], [0.1, 0.3, 0.6], [0.3, 0.5, 0.2]]


def test_dist_is_one_minus_the_mean_pearson_correlation_of_rows_and_of_columns():
    inter = 1 - statistics.mean(statistics.correlation(s, t) for s, t in zip(P_S, P_T))
    columns = lambda rows: list(zip(*rows))  # noqa: E731
    intra = 1 - statistics.mean(statistics.correlation(s, t) for s, t in zip(columns(P_S), columns(P_T)))
    got_inter, got_intra = dist_terms(_log(P_S), _log(P_T), T=1.0)
    assert (got_inter.item(), got_intra.item()) == pytest.approx((inter, intra), rel=1e-5)  # eps 1e-8 in the denominator
    assert dist_loss(_log(P_S), _log(P_T), 1.0, beta=2.0, gamma=3.0).item() == pytest.approx(2 * inter + 3 * intra, rel=1e-5)


def test_dist_temperature_softens_both_and_scales_by_t_squared():
    z_s, z_t = _log(P_S), _log(P_T)
    soft = lambda z: (z / 2).softmax(1).tolist()  # noqa: E731
    inter = 1 - statistics.mean(statistics.correlation(s, t) for s, t in zip(soft(z_s), soft(z_t)))
    assert dist_terms(z_s, z_t, T=2.0)[0].item() == pytest.approx(4 * inter, rel=1e-5)
    # Only relations count: a student whose probabilities are the teacher's, affinely rescaled, has no loss.
    flatter = _log([[0.5 * p + 0.5 / 3 for p in row] for row in P_T])
    assert [x.item() for x in dist_terms(flatter, z_t, 1.0)] == pytest.approx([0, 0], abs=1e-6)


# ---------------------------------------------------------------- VID
def test_vid_is_the_gaussian_negative_log_likelihood_with_a_softplus_variance():
    mu = torch.tensor([[[[1.0]], [[0.0]]]])  # (1, 2, 1, 1)
    t = torch.tensor([[[[3.0]], [[-1.0]]]])
    alpha = torch.tensor([0.0, 2.0])
    var = [math.log(1 + math.exp(0.0)) + 1e-5, math.log(1 + math.exp(2.0)) + 1e-5]
    expected = (0.5 * (4 / var[0] + math.log(var[0])) + 0.5 * (1 / var[1] + math.log(var[1]))) / 2
    assert vid_nll(mu, t, alpha).item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- KD-SVD
def test_top_singular_vectors_of_a_map_read_as_positions_by_channels():
    # 2 positions x 2 channels: position 0 = (3, 0), position 1 = (0, 1) -> singular values 3 and 1,
    # right singular vectors (1, 0) and (0, 1) (up to sign).
    feat = torch.tensor([[[[3.0, 0.0]], [[0.0, 1.0]]]])  # (1, C=2, H=1, W=2)
    s, v = top_singular_vectors(feat, 2)
    torch.testing.assert_close(s, torch.tensor([[3.0, 1.0]]) / math.sqrt(10))
    torch.testing.assert_close(v.abs(), torch.eye(2).unsqueeze(0))


def test_the_student_vector_with_the_largest_cosine_is_chosen_and_its_sign_agreed():
    v_t = torch.tensor([[[1.0], [0.0]]])  # (1, C=2, k=1)
    v_s = torch.tensor([[[0.6, -0.8], [0.8, 0.6]]])  # candidates (0.6, 0.8) and (-0.8, 0.6): cosines 0.6, -0.8
    torch.testing.assert_close(align_singular_vectors(v_s, v_t), torch.tensor([[[0.8], [-0.6]]]))


def test_svd_rbf_loss_by_hand():
    # Two layers of two channels, one vector each; G_ij = exp(-(v2[i] - v1[j])^2 / 8).
    s1, s2 = torch.tensor([[[1.0], [0.0]]]), torch.tensor([[[0.0], [1.0]]])
    t1, t2 = torch.tensor([[[0.6], [0.8]]]), torch.tensor([[[0.8], [0.6]]])
    g = lambda a, b: [[math.exp(-(a[i] - b[j]) ** 2 / 8) for j in range(2)] for i in range(2)]  # noqa: E731
    g_s, g_t = g([0.0, 1.0], [1.0, 0.0]), g([0.8, 0.6], [0.6, 0.8])
    expected = sum((g_s[i][j] - g_t[i][j]) ** 2 for i in range(2) for j in range(2))
    assert svd_rbf_loss([s1, s2], [t1, t2]).item() == pytest.approx(expected, rel=1e-6)


def test_kdsvd_is_zero_for_the_teacher_itself_and_its_gradient_finite_on_degenerate_maps():
    torch.manual_seed(0)
    t = [torch.relu(torch.randn(4, 6, 4, 4)), torch.relu(torch.randn(4, 8, 2, 2))]
    assert kdsvd_loss([x.clone() for x in t], t).item() == pytest.approx(0, abs=1e-10)
    # Mostly dead ReLU maps: repeated zero singular values, where torch's own SVD gradient is NaN.
    s = [torch.relu(torch.randn(4, 6, 4, 4) - 2).requires_grad_(), torch.relu(torch.randn(4, 8, 2, 2) - 2).requires_grad_()]
    kdsvd_loss(s, t).backward()
    assert all(torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 for x in s)
    with pytest.raises(ValueError, match="equal widths"):
        kdsvd_loss([torch.randn(2, 3, 2, 2), torch.randn(2, 4, 2, 2)], [torch.randn(2, 5, 2, 2), torch.randn(2, 4, 2, 2)])


def test_kdsvd_gradient_is_torchs_svd_gradient_where_that_one_is_finite():
    torch.manual_seed(0)
    t = [torch.randn(3, 4, 3, 3, dtype=torch.float64), torch.randn(3, 5, 2, 2, dtype=torch.float64)]
    s = [torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True),
         torch.randn(3, 5, 2, 2, dtype=torch.float64, requires_grad=True)]
    kdsvd_loss(s, t).backward()
    ours = [x.grad.clone() for x in s]
    for x in s:
        x.grad = None
    import kdrun.losses.feature as feature

    def torch_svd(feat, k):  # the same computation through torch's own SVD gradient
        _, sv, vh = torch.linalg.svd(feat.flatten(2).transpose(1, 2), full_matrices=False)
        return (torch.nn.functional.normalize(sv[:, :k], dim=1),
                torch.nn.functional.normalize(vh.transpose(1, 2)[:, :, :k], dim=1))

    original, feature.top_singular_vectors = feature.top_singular_vectors, torch_svd
    try:
        kdsvd_loss(s, t).backward()
    finally:
        feature.top_singular_vectors = original
    for a, x in zip(ours, s):
        torch.testing.assert_close(a, x.grad)


# ---------------------------------------------------------------- OFD
def test_ofd_margin_is_the_expected_negative_response_of_the_batch_norm_gaussian():
    weight, bias = torch.tensor([2.0, -1.0, 1.0]), torch.tensor([1.0, 5.0, 0.0])
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    Phi = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))  # noqa: E731
    expected = [1 - 2 * phi(0.5) / Phi(-0.5),  # E[x | x < 0] for N(1, 2^2)
                -3.0,  # N(5, 1): P(x < 0) = 3e-7 < 1e-3, the authors' -3 |gamma|
                0 - 1 * phi(0.0) / Phi(0.0)]  # N(0, 1): -sqrt(2 / pi)
    got = ofd_margin(weight, bias)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    torch.manual_seed(0)
    x = 1 + 2 * torch.randn(1_000_000, dtype=torch.float64)
    assert got[0].item() == pytest.approx(x[x < 0].mean().item(), abs=0.01)  # and by sampling


def test_ofd_partial_l2_by_hand():
    margin = torch.tensor([-0.5])
    t = torch.tensor([[[[-1.0, -0.2, 0.5, 2.0]]]])  # target = max(t, m) = (-0.5, -0.2, 0.5, 2)
    s = torch.tensor([[[[-2.0, 0.0, 0.3, 3.0]]]])
    # -2 <= -0.5 <= 0: nothing; 0 > -0.2: 0.2^2; target 0.5 > 0: 0.2^2; target 2 > 0: 1^2
    assert ofd_loss(s, t, margin).item() == pytest.approx(0.04 + 0.04 + 1.0)
    assert ofd_loss(torch.cat([s, s]), torch.cat([t, t]), margin).item() == pytest.approx(1.08)  # per sample


# ---------------------------------------------------------------- ReviewKD
def test_hierarchical_context_loss_by_hand():
    s, t = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # 2x2 maps: 4x4 and 2x2 poolings are not smaller, the 1x1 is (weight 1/2): (MSE + MSE_1x1 / 2) / 1.5
    expected = ((1 + 4 + 9 + 16) / 4 + 0.5 * 2.5 ** 2) / 1.5
    assert hcl_loss([s], [t]).item() == pytest.approx(expected)
    s8, t8 = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)  # every level differs by 1: (1 + 1/2 + 1/4 + 1/8) / 1.875
    assert hcl_loss([s8, s], [t8, t]).item() == pytest.approx(1.0 + expected)


# ---------------------------------------------------------------- CRD
def test_contrast_scores_and_nce_loss_by_hand():
    anchor = torch.tensor([[1.0, 0.0]])
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    scores = contrast_scores(anchor, bank, torch.tensor([[0, 1, 2]]), T=0.5)
    assert scores.tolist()[0] == pytest.approx([math.exp(2), 1.0, math.exp(1.2)])
    # h = (0.5, 0.2, 0.1), K = 2 negatives from n = 10 images: K * Pn = 0.2
    h = torch.tensor([[0.5, 0.2, 0.1]])
    expected = -(math.log(0.5 / 0.7) + math.log(0.2 / 0.4) + math.log(0.2 / 0.3))
    assert nce_loss(h, n_data=10).item() == pytest.approx(expected, rel=1e-6)
    # Both directions: the student against the teacher's bank, the teacher against the student's.
    s, t = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    both = crd_loss(s, t, bank, bank.flip(1), torch.tensor([[0, 1, 2]]), 0.5, 4.0, 2.0, 10)
    # s against the teacher's bank (0,1), (1,0), (0.8,0.6) and t against the student's (1,0), (0,1), (0.6,0.8):
    # both score exp(1/0.5), exp(0), exp(0.6/0.5); divided by Z = 4 and 2, with K * Pn = 0.2 as above.
    def nce(h0, h1, h2):
        return -(math.log(h0 / (h0 + 0.2)) + math.log(0.2 / (h1 + 0.2)) + math.log(0.2 / (h2 + 0.2)))
    expected = nce(math.exp(2) / 4, 1 / 4, math.exp(1.2) / 4) + nce(math.exp(2) / 2, 1 / 2, math.exp(1.2) / 2)
    assert both.item() == pytest.approx(expected, rel=1e-5)


def test_memory_bank_momentum_update_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    momentum_update(bank, torch.tensor([1]), torch.tensor([[1.0, 0.0]]), momentum=0.5)
    r = 1 / math.sqrt(2)  # normalise(0.5 * (0, 1) + 0.5 * (1, 0))
    torch.testing.assert_close(bank, torch.tensor([[1.0, 0.0], [r, r], [0.6, 0.8]]))


def test_negatives_need_a_second_class_and_the_check_is_made_once():
    with pytest.raises(KdrunError, match="at least two classes"):
        OtherClassSampler(torch.tensor([3, 3, 3]))


def test_negatives_come_from_every_other_class_and_never_the_own():
    torch.manual_seed(0)
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 1, 0])
    y = torch.tensor([0, 1, 2])
    negatives = OtherClassSampler(labels)(y, 400)
    for row, own in zip(negatives, y.tolist()):
        assert set(row.tolist()) == {i for i, c in enumerate(labels.tolist()) if c != own}
