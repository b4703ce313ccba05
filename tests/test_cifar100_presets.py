"""The CIFAR-100 presets are the published settings: for every method, kdrun's weighted loss
(weight * kdrun's term, plus lambda * cross-entropy) equals RepDistiller's weighted loss
(scripts/run_cifar_distill.sh, helper/loops.py and distiller_zoo/, written out below) -- or
mdistiller's for DKD -- on the same random tensors, through kdrun's real method classes, so a change
of a method's scale shows up here. Where the two are different quantities (cc, ft), the test shows
that no weight can make them equal, which is why those presets keep kdrun's weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdrun.config import ce_weight
from kdrun.methods import build_methods
from kdrun.methods.base import Batch
from tests.conftest import make_cfg

N, CLASSES = 8, 100


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def preset(method: str, pair: str):
    cfg = make_cfg(f"+experiment=cifar100_{method}", f"pair={pair}")
    methods = build_methods(cfg.kd, cfg.student, cfg.teacher)
    return cfg, methods


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def logits_and_labels():
    return rand(N, CLASSES, seed=1) * 3, rand(N, CLASSES, seed=2) * 3, torch.arange(N) * 7 % CLASSES


def kdrun_total(cfg, methods, student_feats=(), teacher_feats=(), with_ce=True):
    zs, zt, y = logits_and_labels()
    total = ce_weight(cfg) * F.cross_entropy(zs, y) if with_ce else 0.0
    for m in methods.values():
        if not m.ready:
            m.setup(list(student_feats), list(teacher_feats))
        m.eval()
        batch = Batch(labels=y, student_logits=zs, teacher_logits=zt, student_feats=list(student_feats),
                      teacher_feats=list(teacher_feats))
        total = total + m.weight * m.loss(batch)
    return total


# ---- RepDistiller's losses (distiller_zoo/*.py), written out ------------------------------------------

def ref_kd(zs, zt, T):  # DistillKL
    return F.kl_div(F.log_softmax(zs / T, 1), F.softmax(zt / T, 1), reduction="sum") * T ** 2 / zs.shape[0]


def ref_at(fs, ft):  # Attention, p = 2, summed over feat[1:-1]
    def at(f):
        return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))
    return sum((at(s) - at(t)).pow(2).mean() for s, t in zip(fs, ft))


def ref_sp(fs, ft):  # Similarity, on feat[-2]
    bsz = fs.shape[0]
    gs = F.normalize(fs.view(bsz, -1) @ fs.view(bsz, -1).t())
    gt = F.normalize(ft.view(bsz, -1) @ ft.view(bsz, -1).t())
    return ((gt - gs) ** 2).sum() / (bsz * bsz)


def ref_rkd(s, t, w_d=25, w_a=50):  # RKDLoss
    def pdist(e):
        sq = e.pow(2).sum(1)
        res = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=1e-12).sqrt().clone()
        res[range(len(e)), range(len(e))] = 0
        return res
    t_d = pdist(t)
    t_d = t_d / t_d[t_d > 0].mean()
    d = pdist(s)
    d = d / d[d > 0].mean()
    loss_d = F.smooth_l1_loss(d, t_d)

    def angles(e):
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
        return torch.bmm(diff, diff.transpose(1, 2)).view(-1)
    return w_d * loss_d + w_a * F.smooth_l1_loss(angles(s), angles(t))


def ref_pkt(s, t, eps=1e-7):  # PKT.cosine_similarity_loss
    def cond(x):
        x = x / (torch.sqrt((x ** 2).sum(1, keepdim=True)) + eps)
        k = (x @ x.t() + 1.0) / 2.0
        return k / k.sum(1, keepdim=True)
    ps, pt = cond(s), cond(t)
    return torch.mean(pt * torch.log((pt + eps) / (ps + eps)))


def ref_nst(fs, ft):  # NSTLoss, summed over feat[1:-1]
    def poly(a, b):
        return (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2)
    total = 0
    for s, t in zip(fs, ft):
        s = F.normalize(s.view(s.shape[0], s.shape[1], -1), dim=2)
        t = F.normalize(t.view(t.shape[0], t.shape[1], -1), dim=2)
        total = total + poly(t, t).mean() + poly(s, s).mean() - 2 * poly(s, t).mean()
    return total


def ref_fsp(fs, ft):  # FSP in the init stage: sum(loss_group), unweighted
    def fsp(g):
        out = []
        for bot, top in zip(g, g[1:]):
            if bot.shape[2] > top.shape[2]:
                bot = F.adaptive_avg_pool2d(bot, top.shape[2:])
            b = bot.unsqueeze(1).view(bot.shape[0], 1, bot.shape[1], -1)
            t = top.unsqueeze(2).view(top.shape[0], top.shape[1], 1, -1)
            out.append((b * t).mean(-1))
        return out
    return sum((s - t).pow(2).mean() for s, t in zip(fsp(fs), fsp(ft)))


def ref_ab(rs, ts, margin=1.0):  # ABLoss in the init stage: sum(loss_group)
    n, bsz = len(rs), rs[0].shape[0]
    total = 0
    for i, (r, t) in enumerate(zip(rs, ts)):
        loss = ((r + margin) ** 2 * ((r > -margin) & (t <= 0)).float()
                + (r - margin) ** 2 * ((r <= margin) & (t > 0)).float()).abs().sum()
        total = total + 2 ** (i - n + 1) * loss / bsz / 1000 * 3
    return total


def ref_dkd(zs, zt, y, alpha, beta, T):  # mdistiller/distillers/DKD.py
    gt = torch.zeros_like(zs).scatter_(1, y.unsqueeze(1), 1).bool()

    def cat_mask(p):
        return torch.cat([(p * gt).sum(1, keepdim=True), (p * ~gt).sum(1, keepdim=True)], 1)
    ps, pt = cat_mask(F.softmax(zs / T, 1)), cat_mask(F.softmax(zt / T, 1))
    tckd = F.kl_div(torch.log(ps), pt, reduction="sum") * T ** 2 / y.shape[0]
    nckd = F.kl_div(F.log_softmax(zs / T - 1000.0 * gt, 1), F.softmax(zt / T - 1000.0 * gt, 1),
                    reduction="sum") * T ** 2 / y.shape[0]
    return alpha * tckd + beta * nckd


# ---- the presets ----------------------------------------------------------------------------------

def test_kd_is_repdistillers_point1_ce_plus_point9_kl():
    cfg, methods = preset("hinton", "resnet32x4-resnet8x4")
    zs, zt, y = logits_and_labels()
    expected = 0.1 * F.cross_entropy(zs, y) + 0.9 * ref_kd(zs, zt, T=4)
    assert float(kdrun_total(cfg, methods)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("pair, beta", [("resnet32x4-resnet8x4", 8.0), ("wrn_40_2-wrn_16_2", 6.0),
                                        ("resnet56-resnet20", 2.0)])
def test_dkd_is_mdistillers_with_its_beta_per_pair(pair, beta):
    cfg, methods = preset("dkd", pair)
    zs, zt, y = logits_and_labels()
    expected = F.cross_entropy(zs, y) + ref_dkd(zs, zt, y, alpha=1.0, beta=beta, T=4.0)
    assert float(kdrun_total(cfg, methods)) == pytest.approx(float(expected), rel=1e-5)


def test_fitnet_is_repdistillers_hint_on_the_second_stage():
    cfg, methods = preset("fitnet", "resnet50-vgg8")
    fitnet = methods["fitnet"]
    # hint_layer=2 is feat[2]: the second stage of both models (kdrun's "middle" would be vgg8's third)
    assert (fitnet.student_layers, fitnet.teacher_layers) == (["relu2"], ["layer2"])
    s, t = rand(N, 8, 4, 4, seed=3), rand(N, 16, 4, 4, seed=4)
    total = kdrun_total(cfg, methods, [s], [t])
    regressed = fitnet.adapters[0](s)  # kdrun's own regressor (RepDistiller's ConvReg is another module)
    zs, _, y = logits_and_labels()
    expected = F.cross_entropy(zs, y) + 100 * F.mse_loss(regressed, t)
    assert float(total) == pytest.approx(float(expected), rel=1e-5)


def test_at_is_repdistillers_sum_over_stages():
    cfg, methods = preset("at", "resnet110-resnet32")
    assert methods["at"].student_layers == ["layer1", "layer2", "layer3"]
    fs = [rand(N, 4, 8, 8, seed=5), rand(N, 8, 4, 4, seed=6), rand(N, 16, 2, 2, seed=7)]
    ft = [rand(N, 6, 8, 8, seed=8), rand(N, 12, 4, 4, seed=9), rand(N, 24, 2, 2, seed=10)]
    zs, _, y = logits_and_labels()
    expected = F.cross_entropy(zs, y) + 1000 * ref_at(fs, ft)
    assert float(kdrun_total(cfg, methods, fs, ft)) == pytest.approx(float(expected), rel=1e-5)


def test_sp_is_repdistillers_on_the_last_stage():
    cfg, methods = preset("sp", "vgg13-mobilenetv2")
    assert (methods["sp"].student_layers, methods["sp"].teacher_layers) == (["blocks.6"], ["relu4"])
    s, t = rand(N, 16, 2, 2, seed=11), rand(N, 32, 4, 4, seed=12)
    zs, _, y = logits_and_labels()
    expected = F.cross_entropy(zs, y) + 3000 * ref_sp(s, t)
    assert float(kdrun_total(cfg, methods, [s], [t])) == pytest.approx(float(expected), rel=1e-5)


def test_rkd_is_repdistillers_on_the_embedding():
    cfg, methods = preset("rkd", "resnet32x4-shufflev2")
    assert methods["rkd"].student_layers == ["linear:input"]
    s, t = rand(N, 20, seed=13), rand(N, 30, seed=14)
    zs, _, y = logits_and_labels()
    expected = F.cross_entropy(zs, y) + ref_rkd(s, t)
    assert float(kdrun_total(cfg, methods, [s], [t])) == pytest.approx(float(expected), rel=1e-5)


def test_pkt_is_repdistillers_on_the_embedding():
    cfg, methods = preset("pkt", "wrn_40_2-wrn_40_1")
    s, t = rand(N, 20, seed=15), rand(N, 30, seed=16)
    zs, _, y = logits_and_labels()
    expected = F.cross_entropy(zs, y) + 30000 * ref_pkt(s, t)
    assert float(kdrun_total(cfg, methods, [s], [t])) == pytest.approx(float(expected), rel=1e-5)


def test_nst_is_repdistillers_sum_over_stages():
    cfg, methods = preset("nst", "wrn_40_2-shufflev1")
    assert methods["nst"].teacher_layers == ["block1", "block2", "block3"]
    fs = [rand(N, 4, 4, 4, seed=17), rand(N, 6, 2, 2, seed=18), rand(N, 8, 2, 2, seed=19)]
    ft = [rand(N, 5, 4, 4, seed=20), rand(N, 7, 2, 2, seed=21), rand(N, 9, 2, 2, seed=22)]
    zs, _, y = logits_and_labels()
    expected = F.cross_entropy(zs, y) + 50 * ref_nst(fs, ft)
    assert float(kdrun_total(cfg, methods, fs, ft)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("pair, layers", [("resnet56-resnet20", 4), ("vgg13-vgg8", 5)])
def test_fsp_first_stage_is_repdistillers_sum_over_the_stem_and_stages(pair, layers):
    cfg, methods = preset("fsp", pair)
    fsp = methods["fsp"]
    assert len(fsp.student_layers) == layers and (fsp.stage1_epochs, fsp.joint) == (30, False)
    widths, sizes = [4, 4, 8, 16, 16][:layers], [8, 8, 4, 2, 2][:layers]
    fs = [rand(N, c, h, h, seed=23 + i) for i, (c, h) in enumerate(zip(widths, sizes))]
    ft = [rand(N, c, h, h, seed=33 + i) for i, (c, h) in enumerate(zip(widths, sizes))]
    # The first stage trains on this term alone (kdrun: ce_weight 0; RepDistiller: sum(loss_group)).
    total = kdrun_total(cfg, methods, fs, ft, with_ce=False)
    assert float(total) == pytest.approx(float(ref_fsp(fs, ft)), rel=1e-5)


def test_ab_first_stage_is_repdistillers_per_layer_weighted_sum():
    cfg, methods = preset("ab", "resnet32x4-resnet8x4")
    ab = methods["ab"]
    assert ab.student_layers == ["layer1.0.relu:input", "layer2.0.relu:input", "layer3.0.relu:input"]
    assert (ab.stage1_epochs, ab.joint) == (30, False)
    ss = [rand(N, 4, 4, 4, seed=60 + i) for i in range(3)]
    ts = [rand(N, 4, 4, 4, seed=40 + i) for i in range(3)]
    total = kdrun_total(cfg, methods, ss, ts, with_ce=False)
    connected = [connector(s) for connector, s in zip(ab.adapters, ss)]  # kdrun's connectors (1x1 conv + BN)
    assert float(total) == pytest.approx(float(ref_ab(connected, ts)), rel=1e-5)


def ref_vid(fs, ft, regressors, log_scales, eps=1e-5):  # VIDLoss, summed over feat[1:-1]
    total = 0
    for s, t, regressor, log_scale in zip(fs, ft, regressors, log_scales):
        pred_var = (torch.log(1.0 + torch.exp(log_scale)) + eps).view(1, -1, 1, 1)
        total = total + torch.mean(0.5 * ((regressor(s) - t) ** 2 / pred_var + torch.log(pred_var)))
    return total


def test_vid_is_repdistillers_sum_over_stages():
    cfg, methods = preset("vid", "resnet32x4-shufflev2")
    vid = methods["vid"]
    assert vid.student_layers == ["layer1", "layer2", "layer3"]
    fs = [rand(N, 4, 4, 4, seed=90), rand(N, 6, 2, 2, seed=91)]
    ft = [rand(N, 5, 4, 4, seed=92), rand(N, 7, 2, 2, seed=93)]
    total = kdrun_total(cfg, methods, fs, ft)
    # RepDistiller's init_pred_var=5.0: log_scale = log(exp(5 - eps) - 1)
    assert torch.allclose(torch.log(1 + torch.exp(vid.log_scales[0])) + 1e-5, torch.tensor(5.0))
    zs, _, y = logits_and_labels()
    expected = F.cross_entropy(zs, y) + ref_vid(fs, ft, vid.adapters, vid.log_scales)
    assert float(total) == pytest.approx(float(expected), rel=1e-5)


def test_crd_has_repdistillers_settings():
    """CRD's loss itself (memory banks, NCE) is checked against RepDistiller's in kdrun's method tests;
    here, that the preset is its command: -r 1 -a 0 -b 0.8, feat_dim 128, 16384 negatives, T 0.07, m 0.5."""
    cfg, methods = preset("crd", "resnet32x4-resnet8x4")
    crd = methods["crd"]
    assert (ce_weight(cfg), crd.weight, cfg.kd.crd.feat_dim, cfg.kd.crd.nce_k, cfg.kd.crd.nce_t, cfg.kd.crd.nce_m) == (
        1.0, 0.8, 128, 16384, 0.07, 0.5)
    assert (crd.student_layers, crd.teacher_layers) == (["fc:input"], ["fc:input"])


# ---- where no weight can match ------------------------------------------------------------------

def ref_cc(s, t):  # Correlation (RepDistiller's CC, on its 128-d embeddings)
    delta = torch.abs(s - t)
    return torch.mean((delta[:-1] * delta[1:]).sum(1))


def ref_ft(fs, ft):  # FactorTransfer, p1 = 2, p2 = 1
    def factor(f):
        return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))
    return (factor(fs) - factor(ft)).abs().mean()


def test_cc_and_ft_are_other_quantities_than_repdistillers():
    """kdrun/RepDistiller ratios differ from one draw to the next: no single weight makes them equal."""
    cfg, methods = preset("cc", "resnet110-resnet20")
    cc = methods["cc"]
    ratios = []
    for seed in (70, 71):
        s, t = rand(N, 16, seed=seed), rand(N, 16, seed=seed + 10)
        batch = Batch(labels=None, student_logits=None, teacher_logits=None, student_feats=[s], teacher_feats=[t])
        ratios.append(float(cc.loss(batch) / ref_cc(s, t)))
    assert abs(ratios[0] / ratios[1] - 1) > 0.01

    cfg, methods = preset("ft", "resnet110-resnet20")
    ft = methods["ft"]
    s, t = rand(N, 8, 4, 4, seed=80), rand(N, 8, 4, 4, seed=81)
    ft.setup([s], [t])
    ft.eval()
    ratios = []
    for seed in (82, 83):
        s, t = rand(N, 8, 4, 4, seed=seed), rand(N, 8, 4, 4, seed=seed + 10)
        batch = Batch(labels=None, student_logits=None, teacher_logits=None, student_feats=[s], teacher_feats=[t])
        with torch.no_grad():
            factors = ft.translator(s), ft.paraphraser.encoder(t)
            ratios.append(float(ft.loss(batch) / ref_ft(*factors)))
    assert abs(ratios[0] / ratios[1] - 1) > 0.01
