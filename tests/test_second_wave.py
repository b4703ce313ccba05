"""The second wave's methods wired into runs: CRD's memory banks and sample indices (in-memory and
folder loaders, resume), OFD's margins from the teacher's batch norms, and a dry run of them all.
(Their formulas are checked by hand in tests/test_losses_second_wave.py; one training step of each
with every model family, in tests/test_methods.py.)"""
from __future__ import annotations

import json

import pytest
import torch

from kdrun import Interrupted, KdrunError
from kdrun.data import build_data
from kdrun.features import FeatureTap
from kdrun.losses.contrastive import crd_loss
from kdrun.losses.feature import ofd_margin
from kdrun.methods import build_methods
from kdrun.methods.base import Distiller
from kdrun.methods.crd import OtherClassSampler
from kdrun.models import build_from_config
from kdrun.run import run
from tests.conftest import make_cfg
from tests.datasets import write_image_folder
from tests.test_resume import _student_lines, stop_in_epoch

CPU = torch.device("cpu")
CIFAR_FAKE = ["dataset=fake", "dataset.channels=3", "dataset.image_size=32", "dataset.mean=[0.5,0.5,0.5]",
              "dataset.std=[0.25,0.25,0.25]", "dataset.num_train=64", "dataset.num_test=32"]


def _parts(*overrides):
    cfg = make_cfg(*overrides)
    data = build_data(cfg.dataset, "/unused", CPU)
    methods = build_methods(cfg.kd, cfg.student, cfg.teacher)
    torch.manual_seed(0)
    teacher, student = build_from_config(cfg.teacher, data), build_from_config(cfg.student, data)
    x, _ = next(iter(data.loader("train", 4)))
    return cfg, data, methods, Distiller(student, teacher, methods, 1.0, example=x), student, teacher


def test_crd_step_contrasts_against_banks_of_the_whole_training_set():
    cfg, data, methods, distiller, student, teacher = _parts("kd=crd", "kd.crd.nce_k=16", "dataset=fake",
                                                             "teacher=lenet5", "student=lenet5")
    crd, n = methods["crd"], data.sizes["train"]
    crd.prepare(teacher, data, CPU, seed=0)
    assert crd.memory_s.shape == crd.memory_t.shape == (n, 128) and torch.equal(crd.labels, data.labels("train"))
    x, y, extras = next(iter(data.loader("train", 8, shuffle=True, extras={"index": torch.arange(n)})))
    index = extras["index"]
    banks = crd.memory_s.clone(), crd.memory_t.clone()
    distiller.train()
    torch.manual_seed(1)
    out = distiller(x, y, index=index)

    # The same step written out: embeddings of both models' penultimate layers, the positive (the
    # sample's own bank row) and K negatives of other classes, Z from this first batch.
    with FeatureTap(student, crd.student_layers) as s_tap, FeatureTap(teacher, crd.teacher_layers) as t_tap:
        student(x), teacher(x)
    f_s, f_t = crd.embed_s(s_tap.outputs["classifier.4"]), crd.embed_t(t_tap.outputs["classifier.4"])
    torch.manual_seed(1)
    idx = torch.cat([index[:, None], OtherClassSampler(data.labels("train"))(y, 16)], dim=1)
    z = [(torch.exp(torch.bmm(bank[idx], f.unsqueeze(2)) / 0.07)).mean().item() * n
         for bank, f in ((banks[1], f_s), (banks[0], f_t))]
    reference = 0.8 * crd_loss(f_s, f_t, banks[0], banks[1], idx, 0.07, z[0], z[1], n)
    assert out["loss_crd"].item() == pytest.approx(reference.item(), rel=1e-4)
    assert crd.z.tolist() == pytest.approx(z, rel=1e-4)

    # Only the batch's rows moved, by momentum 0.5, and stay unit vectors.
    moved = torch.zeros(n, dtype=torch.bool)
    moved[index] = True
    assert torch.equal(crd.memory_s[~moved], banks[0][~moved]) and not torch.equal(crd.memory_s[moved], banks[0][moved])
    expected = torch.nn.functional.normalize(0.5 * banks[0][index] + 0.5 * f_s.detach(), dim=1)
    torch.testing.assert_close(crd.memory_s[index], expected)

    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert crd.embed_s.linear.weight.grad.abs().sum() > 0 and crd.embed_t.linear.weight.grad.abs().sum() > 0
    assert student.classifier[3].weight.grad.abs().sum() > 0


def test_crd_with_hinton_resumes_exactly_with_its_memory_banks(tmp_path, monkeypatch):
    args = ["kd=[crd,hinton]", "kd.crd.nce_k=32", "dataset=fake", "dataset.num_train=160", "dataset.num_test=32",
            "teacher=lenet5", "student=lenet5", "epochs=3"]
    full = run(make_cfg(*args, tmp=tmp_path), tmp_path / "full")
    with stop_in_epoch(3, monkeypatch), pytest.raises(Interrupted):
        run(make_cfg(*args, tmp=tmp_path), tmp_path / "cut")
    state = torch.load(tmp_path / "cut" / "checkpoints" / "student_last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["methods"]["crd.memory_s"].shape == (144, 128)  # 160 minus val
    resumed = run(make_cfg(*args, "resume=true", tmp=tmp_path), tmp_path / "cut")
    lines = _student_lines(tmp_path / "full")
    assert _student_lines(tmp_path / "cut") == lines and all("train/loss_crd" in r for r in lines)
    assert resumed["student"]["test_acc"] == full["student"]["test_acc"] and full["kd"] == ["crd", "hinton"]


@pytest.mark.parametrize("dataset", ["fake", "image_folder"])
def test_loaders_hand_over_each_samples_index_in_its_split(dataset, tmp_path):
    if dataset == "image_folder":
        write_image_folder(tmp_path / "tree", per_class=6)
        overrides = ["dataset=image_folder", f"dataset.root={tmp_path / 'tree'}", "dataset.image_size=16",
                     "dataset.num_workers=0", "dataset.val_split=2"]
    else:
        overrides = ["dataset=fake", "dataset.num_train=40"]
    cfg = make_cfg(*overrides)
    data = build_data(cfg.dataset, str(tmp_path), CPU)
    n = data.sizes["train"]
    all_x, all_y = next(iter(data.loader("train", n)))
    assert torch.equal(data.labels("train"), all_y)
    seen = []
    for x, y, extras in data.loader("train", 5, shuffle=True, extras={"index": torch.arange(n)}, exclude=[1]):
        torch.testing.assert_close(x, all_x[extras["index"]])
        assert torch.equal(y, all_y[extras["index"]])
        seen += extras["index"].tolist()
    assert sorted(seen) == [i for i in range(n) if all_y[i] != 1]  # positions in the whole split, class 1 left out


def test_ofd_takes_its_margins_from_the_teachers_batch_norms_before_each_layer():
    cfg, data, methods, distiller, student, teacher = _parts("kd=ofd", "teacher=resnet18", "student=resnet18",
                                                             *CIFAR_FAKE)
    ofd = methods["ofd"]
    assert ofd.teacher_layers[0] == "layer1.1.relu:input"  # the block's sum before its last ReLU
    torch.manual_seed(0)
    for bn in (teacher.layer1[1].bn2, teacher.layer4[1].bn2):
        bn.weight.data.uniform_(0.5, 2.0)
        bn.bias.data.uniform_(-1.0, 1.0)
    ofd.prepare(teacher, data, CPU, seed=0)
    torch.testing.assert_close(ofd.margin0, ofd_margin(teacher.layer1[1].bn2.weight, teacher.layer1[1].bn2.bias))
    torch.testing.assert_close(ofd.margin3, ofd_margin(teacher.layer4[1].bn2.weight, teacher.layer4[1].bn2.bias))
    assert (ofd.margin0 < 0).all()


def test_dry_run_of_the_second_wave_shows_layers_and_adapters_and_trains_nothing(tmp_path, capsys):
    kd = "kd=[crd,ofd,reviewkd,vid,kdsvd,dist]"
    summary = run(make_cfg(kd, "teacher=resnet34", "student=resnet18", *CIFAR_FAKE, "dry_run=true", tmp=tmp_path),
                  tmp_path / "run")
    assert summary["status"] == "dry_run"
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
    rows = {(r["method"], r["student"], r["teacher"]): r for r in summary["layers"]}
    # Pre-ReLU layers: the sums of each stage's last block, before its ReLU (resnet34's stages have 3, 4, 6, 3 blocks).
    assert ("crd", "avgpool", "avgpool") in rows and ("ofd", "layer1.1.relu:input", "layer1.2.relu:input") in rows
    assert ("reviewkd", "layer1", "layer1.2.relu:input") in rows and ("reviewkd", "avgpool", "avgpool") in rows
    assert {(m, s) for m, s, _ in rows if m in ("vid", "kdsvd")} == {(m, f"layer{i}") for m in ("vid", "kdsvd")
                                                                     for i in range(1, 5)}
    out = " ".join(capsys.readouterr().out.split())
    assert "linear 512->128" in out and "conv1x1 64->64 + BN" in out and "conv3x3 512->512 + BN" in out


def test_the_second_wave_under_bf16_autocast_gives_finite_full_precision_losses():
    # (SVD has no bf16 kernels; CRD's and DIST's exponentials and correlations are computed in float32.)
    kd = ["kd=[kdsvd,crd,vid,ofd,reviewkd,dist]", "kd.crd.nce_k=8", "kd.ofd.student_layers=[features.0,features.3]",
          "kd.ofd.teacher_layers=[features.0,features.3]"]
    cfg, data, methods, _, student, teacher = _parts(*kd, "dataset=fake", "teacher=lenet5", "student=lenet5")
    x, y = next(iter(data.loader("train", 8)))
    methods["crd"].prepare(teacher, data, CPU, seed=0)
    out = Distiller(student, teacher, methods, 1.0, amp_dtype=torch.bfloat16)(x, y, index=torch.arange(8))
    losses = {k: v for k, v in out.items() if k.startswith("loss_")}
    assert len(losses) == 7 and all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_a_bad_setting_of_a_method_is_one_clear_line():
    from kdrun.methods.crd import CRD
    from kdrun.methods.dist import DIST
    from kdrun.methods.fitnet import FitNet
    from kdrun.methods.kdsvd import KDSVD
    from kdrun.methods.reviewkd import ReviewKD
    from kdrun.methods.vid import VID

    for build, message in [
        (lambda: VID(init_var=0), r"^kd.vid: needs 0 < eps < init_var"),
        (lambda: KDSVD(k=0), r"^kd.kdsvd.k=0: keep at least one singular vector"),
        (lambda: ReviewKD(max_mid_channels=0), r"^kd.reviewkd.max_mid_channels=0: must be at least 1"),
        (lambda: DIST(T=0), r"^kd.dist.T=0: the temperature must be > 0"),
        (lambda: FitNet(relu="maybe"), r"^kd.fitnet.relu=maybe: choose true, false or null"),
        (lambda: CRD(nce_m=1), r"^kd.crd: needs nce_k >= 1, nce_t > 0 and 0 <= nce_m < 1 \(got .*nce_m=1\)"),
    ]:
        with pytest.raises(KdrunError, match=message):
            build()
    cfg = make_cfg("kd=crd", "kd.crd.nce_t=0")  # as a user meets it: from the config, the same one line
    with pytest.raises(KdrunError, match=r"^kd.crd: needs nce_k >= 1, nce_t > 0 and 0 <= nce_m < 1 \(got nce_k=16384, nce_t=0"):
        build_methods(cfg.kd, cfg.student, cfg.teacher)
