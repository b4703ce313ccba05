"""The seven places where an audit against the reference code found kdrun's numbers off (issue 14):
each test writes the reference's formula out on its own and compares it with what kdrun computes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from kdrun import KdrunError
from kdrun.config import ce_weight, ensemble_combine
from kdrun.losses.response import logit_regression
from kdrun.methods.ab import AB
from kdrun.methods.base import Batch, Distiller
from kdrun.methods.fitnet import FitNet
from kdrun.methods.fsp import FSP
from kdrun.methods.ft import FT
from kdrun.run import run
from kdrun.schemes.self_byot import SelfDistiller, pooled
from kdrun.teachers import Ensemble
from tests.conftest import CONFIGS, make_cfg
from tests.test_cifar100_presets import ref_ab, ref_fsp


def _batch(student_feats, teacher_feats, n=4, classes=5):
    return Batch(labels=torch.zeros(n, dtype=torch.long), student_logits=torch.zeros(n, classes),
                 teacher_logits=torch.zeros(n, classes), student_feats=student_feats, teacher_feats=teacher_feats)


def _weight(name: str) -> float:
    return float(OmegaConf.load(CONFIGS / "kd" / f"{name}.yaml").weight)


# 1. FSP: RepDistiller sums its pairs' per-element means, unweighted, in its initialisation stage.
def test_fsp_is_repdistillers_sum_over_pairs_of_per_element_means():
    torch.manual_seed(0)
    s = [torch.randn(3, 4, 8, 8), torch.randn(3, 6, 4, 4), torch.randn(3, 6, 2, 2)]
    t = [torch.randn(3, 4, 8, 8), torch.randn(3, 6, 4, 4), torch.randn(3, 6, 2, 2)]
    reference = ref_fsp(s, t)  # RepDistiller's FSPLoss, written out in test_cifar100_presets
    fsp = FSP()
    assert _weight("fsp") == fsp.weight == 1.0
    assert (fsp.weight * fsp.loss(_batch(s, t, n=3))).item() == pytest.approx(reference.item(), rel=1e-5)


# 2. AB: layer i of n weighted 3e-3 * 2^(i - n + 1), on the hinge loss summed and divided by the batch.
def test_ab_weights_each_layer_as_the_paper_and_repdistiller():
    torch.manual_seed(0)
    s = [torch.randn(4, 3, 8, 8), torch.randn(4, 5, 4, 4), torch.randn(4, 7, 2, 2)]
    t = [torch.randn(4, 3, 8, 8), torch.randn(4, 5, 4, 4), torch.randn(4, 7, 2, 2)]
    reference = ref_ab(s, t)  # RepDistiller's ABLoss (the paper's alternative L2), written out in test_cifar100_presets
    ab = AB()
    ab.setup(s, t)
    ab.adapters = nn.ModuleList(nn.Identity() for _ in s)  # the connectors are the student's; compare the loss
    assert _weight("ab") == ab.weight == pytest.approx(3e-3)
    assert (ab.weight * ab.loss(_batch(s, t))).item() == pytest.approx(reference.item(), rel=1e-5)


# 3. BYOT: the authors' torch.dist over the whole batch, and no hint on the head nearest the deepest classifier.
def test_byot_hint_is_the_authors_batch_distance_and_skips_their_head():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2), nn.Conv2d(4, 6, 3),
                            nn.Conv2d(6, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 3, (8,))
    model = SelfDistiller(student, ["0", "1", "2"], "4", 3, x[:2], ce_weight=0.7, kd_weight=0.3,
                          feature_weight=0.03, T=3.0)
    out = model(x, y)
    assert "head3/loss_hint" not in out  # index 1 of the authors' deepest-first outputs: the layer-3 head
    feats = {}
    for i, path in enumerate(["0", "1", "2"]):
        feats[path] = student[: i + 1](x)
    target = pooled(student[:5](x)).detach()
    for name, path in (("head1", "0"), ("head2", "1")):
        f, _ = model.methods[name](feats[path])
        assert out[f"{name}/loss_hint"].item() == pytest.approx(0.03 * torch.dist(f, target).item(), rel=1e-5)


# 4. An ensemble teacher with kd=logits regresses the mean of the members' logits.
def test_ensemble_of_identical_members_gives_logits_a_zero_loss():
    torch.manual_seed(0)
    member, x = nn.Linear(5, 10), torch.randn(6, 5)
    cfg = make_cfg("kd=logits", "teacher=mlp800", "teacher.ensemble_seeds=[0,1]")
    assert cfg.ensemble.combine == "auto" and ensemble_combine(cfg) == "mean_logits"
    teacher = Ensemble({"a": member, "b": member}, ensemble_combine(cfg), T=4.0)
    assert logit_regression(member(x), teacher(x)).item() == 0.0  # the student that matches one member
    wrong = Ensemble({"a": member, "b": member}, "mean_probs", T=4.0)  # T * log p: no logit
    assert logit_regression(member(x), wrong(x)).item() > 1.0
    assert ensemble_combine(make_cfg("kd=hinton", "teacher.ensemble_seeds=[0,1]")) == "mean_probs"


def test_an_explicit_mean_probs_ensemble_with_logits_is_refused(tmp_path):
    cfg = make_cfg("kd=logits", "dataset=fake", "teacher=lenet5", "teacher.ensemble_seeds=[0,1]",
                   "ensemble.combine=mean_probs", tmp=tmp_path)
    with pytest.raises(KdrunError, match=r"^ensemble.combine=mean_probs: kd=logits regresses the teacher's logits"):
        run(cfg, tmp_path / "run")


# 5. FT: the authors' beta = 500 on nn.L1Loss between the L2-normalised factors.
def test_ft_is_the_authors_l1_between_normalised_factors_with_beta_500():
    torch.manual_seed(0)
    s, t = torch.randn(4, 6, 4, 4), torch.randn(4, 8, 4, 4)
    ft = FT(student_layers=["s"], teacher_layers=["t"])
    ft.setup([s], [t])
    ft.eval()
    with torch.no_grad():
        factor_s, factor_t = ft.translator(s), ft.paraphraser.encoder(t)
    reference = 500 * F.l1_loss(F.normalize(factor_s.flatten(1)), F.normalize(factor_t.flatten(1)))
    assert _weight("ft") == ft.weight == 500.0
    with torch.no_grad():
        assert (ft.weight * ft.loss(_batch([s], [t]))).item() == pytest.approx(reference.item(), rel=1e-5)


# 6. logits alone: Ba & Caruana's mimic model regresses the logits, with no hard labels.
def test_logits_alone_regresses_the_logits_without_the_labels():
    # (the default for kd=[logits,at] is the full cross-entropy: tests/test_methods.py, default_hard_label_weight)
    torch.manual_seed(0)
    student, teacher = nn.Linear(5, 10), nn.Linear(5, 10)
    x, y = torch.randn(6, 5), torch.randint(0, 10, (6,))
    cfg = make_cfg("kd=logits")
    from kdrun.methods.logits import Logits

    out = Distiller(student, teacher, {"logits": Logits(cfg.kd.logits.weight)}, ce_weight(cfg))(x, y)
    reference = ((student(x) - teacher(x)) ** 2).mean()  # the squared error per logit, averaged
    assert set(out) == {"loss", "loss_logits", "logits"} and out["loss"].item() == pytest.approx(reference.item())


# 7. FitNet: a regressor ending in a ReLU for a post-ReLU hint (RepDistiller's and mdistiller's ConvReg).
def test_fitnet_regressor_ends_in_a_relu_for_a_post_relu_hint():
    torch.manual_seed(0)
    s, t = torch.randn(4, 3, 4, 4), torch.relu(torch.randn(4, 5, 4, 4))
    fitnet = FitNet()
    fitnet.setup([s], [t])
    conv, bn = fitnet.adapters[0][0][0], fitnet.adapters[0][0][1]
    reference = F.mse_loss(torch.relu(bn(conv(s))), t)  # ConvReg: relu(bn(conv(x))), then nn.MSELoss
    assert fitnet.loss(_batch([s], [t])).item() == pytest.approx(reference.item(), rel=1e-6)
    fitnet.setup([s], [t - 0.5])  # a hint that can be negative (a linear bottleneck): no ReLU could reach it
    assert not any(isinstance(m, nn.ReLU) for m in fitnet.adapters.modules())
    forced = FitNet(relu=True)
    forced.setup([s], [t - 0.5])
    assert any(isinstance(m, nn.ReLU) for m in forced.adapters.modules())
