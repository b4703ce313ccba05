"""Feature-based losses: functions of intermediate features captured from student and teacher.

Each function takes tensors already captured by hooks; the student feature is taken *after* any
adapter/regressor/connector, so these functions hold no parameters. Method weights (FitNets'
lambda, AT's beta, AB's 1/1000 ...) are applied by the method, not here. Resizing mismatched
spatial maps (e.g. adaptive average pooling) is also the caller's job: silently resizing here would
hide a mis-chosen tap.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _require_maps(name: str, **feats: torch.Tensor) -> None:
    for arg, x in feats.items():
        if x.dim() == 2:
            raise ValueError(
                f"{name}: the method needs convolutional feature maps (N, C, H, W), but the layer "
                f"given as {arg} gives a flat vector of shape {tuple(x.shape)}; tap a convolutional "
                "layer instead of a linear/flattened one."
            )
        if x.dim() != 4:
            raise ValueError(
                f"{name}: the method needs convolutional feature maps (N, C, H, W), "
                f"got {arg} of shape {tuple(x.shape)}."
            )


def _require_same_spatial(name: str, a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name}: batch sizes differ ({a.shape[0]} vs {b.shape[0]}) for {what}.")
    if a.shape[2:] != b.shape[2:]:
        raise ValueError(
            f"{name}: spatial sizes differ for {what}: {tuple(a.shape[2:])} vs "
            f"{tuple(b.shape[2:])}; tap layers of equal resolution or resize one side first "
            "(e.g. adaptive average pooling) — resizing is the caller's job."
        )


def _require_same_shape(name: str, student: torch.Tensor, teacher: torch.Tensor, hint: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"{name}: student shape {tuple(student.shape)} != teacher shape "
            f"{tuple(teacher.shape)}; {hint}"
        )


def fitnet_hint(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Hint loss: mean over all elements of (r(v_g) - u_h)^2.

    Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015, Eq. 3:
    L_HT = 1/2 ||u_h(x) - r(v_g(x))||^2. We average over every element (batch included) instead of
    the paper's 1/2 * sum, as common reference implementations do (e.g. RepDistiller's HintLoss =
    nn.MSELoss()), so the loss scale does not grow with layer size; the constant goes into the
    method weight. `student_feat` is r(v_g), i.e. already through the regressor; any shape works.
    """
    _require_same_shape(
        "fitnet_hint", student_feat, teacher_feat,
        "the regressor must map the student's guided layer to the teacher's hint shape.",
    )
    return F.mse_loss(student_feat, teacher_feat, reduction="mean")


def attention_map(feat: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Spatial attention map Q = vec(mean_c |A_c|^p), L2-normalised per sample; shape (N, H*W).

    Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017, Sec. 3.1, F^p_sum.
    The paper sums over channels; like the authors' code (at(x) in szagoruyko/attention-transfer) we
    take the mean, which differs by the factor C that the L2 normalisation removes. The mean keeps
    intermediate values small, and lets student and teacher have different channel counts.
    """
    _require_maps("attention_map", feat=feat)
    q = feat.abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(q, p=2.0, dim=1)


def attention_transfer(
    student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float = 2
) -> torch.Tensor:
    """AT loss: mean over batch and positions of (Q_s/||Q_s|| - Q_t/||Q_t||)^2.

    Zagoruyko & Komodakis, ICLR 2017, Eq. 2, whose term is beta/2 * ||Q_s/|Q_s| - Q_t/|Q_t|||_p
    (p=2, not squared). We follow the authors' reference `at_loss` instead:
    (at(x) - at(y)).pow(2).mean(), i.e. the squared difference averaged over N*H*W. The beta
    weighting (the paper's beta/2; their code multiplies by beta, default 1e3) is the method weight.
    Channel counts may differ; spatial sizes must match.
    """
    _require_maps("attention_transfer", student_feat=student_feat, teacher_feat=teacher_feat)
    _require_same_spatial("attention_transfer", student_feat, teacher_feat, "student vs teacher")
    diff = attention_map(student_feat, p) - attention_map(teacher_feat, p)
    return diff.pow(2).mean()


def nst_mmd(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """NST loss: squared MMD between the sets of L2-normalised channel vectors, batch-averaged.

    Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer",
    arXiv:1707.01219, Sec. 3 (L_MMD^2(F_T, F_S), Eq. 4 there), with the polynomial kernel
    k(x, y) = (x^T y + c)^d, d=2, c=0. Per sample, each channel's H*W vector f^{k.}/||f^{k.}|| is one
    draw; with C_T teacher and C_S student draws:
        MMD^2 = mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j') - 2 mean_{i,j} k(t_i, s_j),
    then the mean over the batch (as in RepDistiller/mdistiller). The paper's lambda/2 is the method
    weight. The teacher term is constant for the student but kept so the value is a true MMD^2 (zero
    when the two sets coincide); the teacher is frozen by the caller.
    """
    _require_maps("nst_mmd", student_feat=student_feat, teacher_feat=teacher_feat)
    _require_same_spatial("nst_mmd", student_feat, teacher_feat, "student vs teacher")
    s = F.normalize(student_feat.flatten(2), p=2.0, dim=2)  # (N, C_S, HW)
    t = F.normalize(teacher_feat.flatten(2), p=2.0, dim=2)  # (N, C_T, HW)

    def poly2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.bmm(a, b.transpose(1, 2)).pow(2)

    per_sample = (
        poly2(t, t).mean(dim=(1, 2)) + poly2(s, s).mean(dim=(1, 2)) - 2 * poly2(s, t).mean(dim=(1, 2))
    )
    return per_sample.mean()


def fsp_matrix(feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
    """FSP ("flow of solution procedure") matrix G = F1^T F2 / (h*w); shape (N, C1, C2).

    Yim et al., "A Gift from Knowledge Distillation", CVPR 2017, Eq. 1:
    G_ij = sum_{s,t} F1_{s,t,i} * F2_{s,t,j} / (h * w). Both maps come from the same network and
    must share their spatial size.
    """
    _require_maps("fsp_matrix", feat_a=feat_a, feat_b=feat_b)
    _require_same_spatial("fsp_matrix", feat_a, feat_b, "the two layers of one FSP pair")
    h, w = feat_a.shape[2:]
    return torch.bmm(feat_a.flatten(2), feat_b.flatten(2).transpose(1, 2)) / (h * w)


def fsp_loss(
    student_pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    teacher_pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    per_element: bool = False,
) -> torch.Tensor:
    """FSP loss: sum over pairs i of the mean over the batch of ||G_i^T - G_i^S||_2^2 (summed over
    C1*C2); with per_element=True each pair's term is divided by C1*C2 (a mean over matrix elements).

    Yim et al., CVPR 2017, Eq. 2: L = 1/N sum_x sum_i lambda_i ||G_i^T(x) - G_i^S(x)||_2^2 with all
    lambda_i equal (1 here; the overall weight is the method's). per_element=True is RepDistiller's
    reduction, (s - t).pow(2).mean() per pair, summed over the pairs in its initialisation stage.
    """
    if len(student_pairs) != len(teacher_pairs) or not student_pairs:
        raise ValueError(
            f"fsp_loss: need the same, non-zero number of student and teacher layer pairs, got "
            f"{len(student_pairs)} and {len(teacher_pairs)}."
        )
    terms = []
    for i, ((sa, sb), (ta, tb)) in enumerate(zip(student_pairs, teacher_pairs)):
        g_s, g_t = fsp_matrix(sa, sb), fsp_matrix(ta, tb)
        _require_same_shape(
            "fsp_loss", g_s, g_t,
            f"FSP pair {i} needs equal channel counts in student and teacher (C1, C2); "
            "pick layers with matching widths.",
        )
        term = (g_s - g_t).pow(2).sum(dim=(1, 2)).mean()
        terms.append(term / (g_s.shape[1] * g_s.shape[2]) if per_element else term)
    return torch.stack(terms).sum()


def factor_transfer(
    student_factor: torch.Tensor, teacher_factor: torch.Tensor, p: float = 1
) -> torch.Tensor:
    """FT loss: mean over batch of || F_T/||F_T||_2 - F_S/||F_S||_2 ||_p, factors flattened per sample.

    Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer",
    NeurIPS 2018, Eq. 3 (p=1 in the paper). This is the paper's per-sample p-norm (for p=1 the sum of
    absolute differences over C*H*W). Reference code differs: mmrazor's FTLoss takes the L1 mean over
    elements (ours / (C*H*W)); RepDistiller's FactorTransfer first reduces the factor to an AT-style
    map mean_c(F^2), which the paper does not do. Inputs are the translator's (student) and the
    paraphraser's (teacher) factors and must have the same shape; flat factors are accepted, since the
    loss only sees the vectorised factor.
    """
    _require_same_shape(
        "factor_transfer", student_factor, teacher_factor,
        "the translator must output factors of the paraphraser's shape.",
    )
    s = F.normalize(student_factor.flatten(1), p=2.0, dim=1)
    t = F.normalize(teacher_factor.flatten(1), p=2.0, dim=1)
    return torch.linalg.vector_norm(t - s, ord=p, dim=1).mean()


def paraphraser_reconstruction(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Paraphraser reconstruction loss: mean over all elements of (P(x) - x)^2.

    Kim et al., NeurIPS 2018, Eq. 1: L_rec = ||x - P(x)||^2, where x is the teacher's feature and
    P(x) the paraphraser's output. We average over elements rather than sum (the same MSE the
    reference implementations use), so the value does not scale with the feature size.
    """
    _require_same_shape(
        "paraphraser_reconstruction", reconstructed, original,
        "the paraphraser's decoder must reproduce the teacher feature's shape.",
    )
    return F.mse_loss(reconstructed, original, reduction="mean")


def activation_boundary(
    student_pre: torch.Tensor, teacher_pre: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """AB alternative loss, summed over neurons and averaged over the batch.

    Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden
    Neurons", AAAI 2019, Sec. 3 (the differentiable alternative to the activation-transfer loss):
    with r the student's pre-activation after the connector and t the teacher's pre-activation,
        (r - m)^2 * 1[t > 0 and r <= m]   teacher neuron on: push r above +m
      + (r + m)^2 * 1[t <= 0 and r > -m]  teacher neuron off: push r below -m
    summed over all elements and divided by the batch size, as in the authors' code
    (criterion_alternative_L2(...).sum() / batch_size). Their per-layer weights 2^(i - n + 1) and
    further 3/1000 are the method's. Only the teacher's sign matters. Any shape (conv or flat) works.
    """
    _require_same_shape(
        "activation_boundary", student_pre, teacher_pre,
        "the connector must map the student's layer to the teacher's shape.",
    )
    on = teacher_pre > 0
    push_up = (student_pre - margin).pow(2) * (on & (student_pre <= margin))
    push_down = (student_pre + margin).pow(2) * (~on & (student_pre > -margin))
    return (push_up + push_down).sum() / student_pre.shape[0]


def byot_hint(head_feat: torch.Tensor, deepest_feat: torch.Tensor) -> torch.Tensor:
    """||F_i - F_C||_2 over the whole batch: the Euclidean distance between the (N, D) matrices.

    Zhang et al., "Be Your Own Teacher", ICCV 2019, Sec. 3.2: the hint that pulls a shallow head's
    bottleneck feature F_i towards the deepest feature F_C (detach F_C to make it a target). The
    paper writes the squared norm, but its weight lambda = 0.03 goes with the authors' code
    (ArchipLab-LinfengZhang/pytorch-self-distillation-final), which takes torch.dist of the two
    batches: one distance over all N x D elements, neither squared nor averaged over the samples.
    So the term grows as sqrt(N) with the batch size, as theirs does (batch 128 there).
    """
    _require_same_shape("byot_hint", head_feat, deepest_feat, "the head's bottleneck must map to the deepest feature.")
    return (head_feat - deepest_feat).flatten().norm()


def vid_variance(log_scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The per-channel variance of VID's Gaussian: softplus(alpha_c) + eps (always positive)."""
    return F.softplus(log_scale) + eps


def vid_nll(pred_mean: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """VID loss: the negative log-likelihood of the teacher's feature under a Gaussian whose mean the
    student predicts, with a learned variance per channel, up to its constant log(2 pi) / 2:
    mean over all elements of (t - mu)^2 / (2 sigma_c^2) + log(sigma_c^2) / 2.

    Ahn et al., "Variational Information Distillation for Knowledge Transfer", CVPR 2019, Eqs. 2-5:
    maximising this variational lower bound of the mutual information between the two networks'
    features. The mean over elements is RepDistiller's and mdistiller's reduction (the paper sums).
    `pred_mean` is the student's prediction (after its regressor), `target` the teacher's feature,
    `log_scale` the C parameters alpha_c of the variances (see vid_variance)."""
    _require_same_shape("vid_nll", pred_mean, target, "the regressor must map the student's layer to the teacher's shape.")
    var = vid_variance(log_scale, eps).view(1, -1, *([1] * (target.dim() - 2)))
    return (0.5 * ((pred_mean - target) ** 2 / var + var.log())).mean()


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class _SVD(torch.autograd.Function):
    """(S, V) of a batch of matrices X = U S V^T (thin SVD), with the standard gradient (Townsend,
    "Differentiating the Singular Value Decomposition", 2016) in which the terms 1/(s_j^2 - s_i^2)
    of equal singular values count 0. torch's own gradient is NaN as soon as two singular values
    are equal (the zeros of a rank-deficient map: a ReLU map with dead channels), even when the loss
    uses only the leading vectors, whose gradient those terms do not touch; the authors' TensorFlow
    gradient drops them likewise (removenan)."""

    @staticmethod
    def forward(ctx, x):
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        v = vh.transpose(-2, -1)
        ctx.save_for_backward(u, s, v)
        return s, v

    @staticmethod
    def backward(ctx, grad_s, grad_v):
        u, s, v = ctx.saved_tensors
        s2 = s.pow(2)
        f = _finite(1.0 / (s2.unsqueeze(-2) - s2.unsqueeze(-1)))  # F_ij = 1 / (s_j^2 - s_i^2), 0 on the diagonal
        f.diagonal(dim1=-2, dim2=-1).zero_()
        vt_gv = v.transpose(-2, -1) @ grad_v
        inner = s.unsqueeze(-1) * (f * (vt_gv - vt_gv.transpose(-2, -1))) + torch.diag_embed(grad_s)
        grad = u @ inner @ v.transpose(-2, -1)
        # The part of V's gradient outside V's span (when X has fewer rows than columns).
        s_inv = _finite(torch.where(s > 0, 1.0 / s, torch.zeros_like(s)))
        grad = grad + (u * s_inv.unsqueeze(-2)) @ (grad_v - v @ vt_gv).transpose(-2, -1)
        return _finite(grad)


def top_singular_vectors(feat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, v) of the feature map read as a matrix of H*W positions x C channels: its k largest singular
    values, L2-normalised together (N, k), and their right singular vectors, unit length over the
    channels (N, C, k)."""
    s, v = _SVD.apply(feat.float().flatten(2).transpose(1, 2))  # (SVD has no half-precision kernels)
    s, v = _finite(s[:, :k]), _finite(v[:, :, :k])
    return F.normalize(s, dim=1), F.normalize(v, dim=1)


def align_singular_vectors(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """For each of the teacher's singular vectors (N, C, k_t), the student's (N, C, k_s) with the
    largest |cosine|, its sign flipped to agree: a singular vector's sign is arbitrary."""
    cosine = v_s.transpose(1, 2) @ v_t  # (N, k_s, k_t)
    best = cosine.abs().amax(dim=1, keepdim=True)
    pick = torch.where(cosine.abs() == best, cosine.sign(), torch.zeros_like(cosine))
    return v_s @ pick


def svd_rbf_loss(student_vectors: Sequence[torch.Tensor], teacher_vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The correlation part of KD-SVD: for consecutive layers l-1, l with (N, C, k) vectors, the
    Gaussian RBF G_ij = exp(-(v_l[i] - v_{l-1}[j])^2 / 8) between their entries (channel i of one
    layer, channel j of the other, each of the k vectors), and sum over the pairs of ||G_s - G_t||^2,
    summed over the entries (non-finite ones count 0) and divided by the batch size."""
    total = 0
    for (p_s, v_s), (p_t, v_t) in zip(zip(student_vectors, student_vectors[1:]), zip(teacher_vectors, teacher_vectors[1:])):
        g_s = torch.exp(-(v_s.unsqueeze(2) - p_s.unsqueeze(1)).pow(2) / 8)
        g_t = torch.exp(-(v_t.unsqueeze(2) - p_t.unsqueeze(1)).pow(2) / 8)
        total = total + _finite((g_s - g_t.detach()).pow(2)).sum()
    return total / student_vectors[0].shape[0]


def kdsvd_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], k: int = 1
               ) -> torch.Tensor:
    """KD-SVD (Lee, Kim & Song, "Self-supervised Knowledge Distillation Using Singular Value
    Decomposition", ECCV 2018, Sec. 3): the student learns how the dominant singular vectors of
    consecutive layers relate in the teacher.

    Per layer, each map is compressed by SVD to its k top right singular vectors (the teacher's; the
    student's k + 3 candidates are matched to them by |cosine| and sign), both scaled by the
    teacher's normalised singular values; svd_rbf_loss then compares their RBF correlations between
    consecutive layers. As in RepDistiller's KDSVD (after the authors' TensorFlow code), non-finite
    values from a degenerate SVD count as 0, and student and teacher layers need equal channel
    counts (the two G's must have one shape)."""
    if len(student_feats) != len(teacher_feats) or len(student_feats) < 2:
        raise ValueError(f"kdsvd_loss: needs at least two layer pairs, got {len(student_feats)} student and "
                         f"{len(teacher_feats)} teacher layers")
    student_vectors, teacher_vectors = [], []
    for i, (f_s, f_t) in enumerate(zip(student_feats, teacher_feats)):
        _require_maps("kdsvd_loss", student_feat=f_s, teacher_feat=f_t)
        if f_s.shape[1] != f_t.shape[1]:
            raise ValueError(f"kdsvd_loss: layer {i} has {f_s.shape[1]} student and {f_t.shape[1]} teacher channels; "
                             "KD-SVD relates the channels of consecutive layers, so it needs layers of equal widths")
        s_t, v_t = top_singular_vectors(f_t, k)
        _, v_s = top_singular_vectors(f_s, k + 3)
        v_s = align_singular_vectors(v_s, v_t)
        student_vectors.append(v_s * s_t.unsqueeze(1))
        teacher_vectors.append(v_t * s_t.unsqueeze(1))
    return svd_rbf_loss(student_vectors, teacher_vectors)


def ofd_margin(bn_weight: torch.Tensor, bn_bias: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """OFD's margin per channel: E[x | x < 0] for x ~ N(beta, gamma^2), the teacher's batch-norm output
    before its ReLU (Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV 2019,
    Eq. 4): beta - |gamma| phi(beta/|gamma|) / Phi(-beta/|gamma|); where the negative side holds no
    more than `floor` of the mass (Phi(-beta/|gamma|) <= 1e-3), -3 |gamma| instead, as in the
    authors' code."""
    s = bn_weight.abs().clamp_min(1e-12)
    z = bn_bias / s
    tail = torch.special.ndtr(-z)
    density = torch.exp(-z.pow(2) / 2) / math.sqrt(2 * math.pi)
    return torch.where(tail > floor, bn_bias - s * density / tail.clamp_min(1e-30), -3 * s)


def ofd_loss(student_pre: torch.Tensor, teacher_pre: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """OFD's partial L2 distance, summed over all elements and divided by the batch size.

    Heo et al., ICCV 2019, Eq. 5-6: the teacher's pre-ReLU feature passes a margin ReLU, target =
    max(t, m_c); the squared distance counts where the student could still change what the ReLU
    lets through, (s - target)^2 if s > target or target > 0, and nothing where both are negative
    enough (s <= target <= 0). `margin` holds one value per channel (dim 1)."""
    _require_same_shape("ofd_loss", student_pre, teacher_pre, "the connector must map the student's layer to the teacher's shape.")
    target = torch.max(teacher_pre, margin.view(1, -1, *([1] * (teacher_pre.dim() - 2))))
    mask = (student_pre > target) | (target > 0)
    return ((student_pre - target).pow(2) * mask).sum() / student_pre.shape[0]


def hcl_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """ReviewKD's hierarchical context loss (Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge
    Review", CVPR 2021, Sec. 3.3), summed over the levels: per level, the mean squared error of the
    maps, and of the maps average-pooled to 4x4, 2x2 and 1x1 (those smaller than the map) with
    weights 1/2, 1/4, 1/8, the weighted sum divided by the sum of the weights used (the authors'
    `hcl`)."""
    total = 0
    for s, t in zip(student_feats, teacher_feats):
        _require_same_shape("hcl_loss", s, t, "each fused student level must have the teacher level's shape.")
        loss, weight, weights = F.mse_loss(s, t), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= s.shape[2]:
                continue
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
            weights += weight
        total = total + loss / weights
    return total
