"""Every KD method wired into runs: layers, adapters, gradients, composition, and training end to end
with every model family. (The loss formulas are checked by hand in tests/test_losses_*.py.)"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from kdrun import KdrunError
from kdrun.data import build_data
from kdrun.engine import make_optimizer, train_one_epoch
from kdrun.features import FeatureTap
from kdrun.methods import build_methods
from kdrun.methods.base import Distiller
from kdrun.models import build_from_config
from kdrun.run import run
from tests.conftest import CONFIGS, make_cfg, needs_mnist

CPU = torch.device("cpu")
METHODS = sorted(p.stem for p in (CONFIGS / "kd").glob("*.yaml") if p.stem != "none")
SPATIAL_ONLY = {"at", "nst", "fsp", "ft", "vid", "kdsvd"}  # these compare feature maps; an MLP has none
EQUAL_WIDTHS = {"fsp", "kdsvd"}  # compare C x C' matrices between the models: resnet34 -> resnet18 has equal widths
NEEDS_BATCH_NORM = {"ofd"}  # margins from the teacher's batch norms: not for MNIST's MLPs and LeNet
# The second wave's end-to-end runs and torchvision steps are slow-marked (test budget): tests/test_second_wave.py
# runs CRD end to end (with resume) and OFD's margins, and a dry run of them all on ResNets.
SECOND_WAVE = {"crd", "vid", "ofd", "reviewkd", "kdsvd", "dist"}


def _slow(methods):
    return [pytest.param(m, marks=pytest.mark.slow) if m in SECOND_WAVE else m for m in methods]
CIFAR_FAKE = ["dataset=fake", "dataset.channels=3", "dataset.image_size=32", "dataset.mean=[0.5,0.5,0.5]",
              "dataset.std=[0.25,0.25,0.25]"]
FAMILIES = {
    "mlp": (["teacher=mlp1200", "student=mlp800", "dataset=fake"]),
    "lenet": (["teacher=lenet5", "student=lenet5", "dataset=fake"]),
    "torchvision": (["teacher=resnet18", "student=mobilenetv2", *CIFAR_FAKE]),
}


def test_every_method_has_its_file_yaml_and_class():
    import importlib

    for name in METHODS:
        module = importlib.import_module(f"kdrun.methods.{name}")
        target = (CONFIGS / "kd" / f"{name}.yaml").read_text()
        assert f"# @package kd.{name}" in target and f"_target_: kdrun.methods.{name}." in target
        assert module.__doc__ and "(" in module.__doc__  # cites its paper (authors, year)


def test_readme_documents_every_method_with_its_paper():
    readme = (CONFIGS.parent / "README.md").read_text()
    for name in METHODS:
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"README's kd table has no row for {name}"
        assert any(str(year) in row for year in range(2014, 2023)), f"{name}: no paper year in {row}"


def _distiller(cfg, data):
    methods = build_methods(cfg.kd, cfg.student, cfg.teacher)
    teacher = build_from_config(cfg.teacher, data)
    student = build_from_config(cfg.student, data)
    x, _ = next(iter(data.loader("train", 4)))
    return Distiller(student, teacher, methods, 0.1, example=x), student, teacher, methods


@pytest.mark.parametrize("method,family", [(m, f) for m in METHODS for f in FAMILIES if f != "torchvision"]
                         + [pytest.param(m, f, marks=[pytest.mark.slow] if m in SECOND_WAVE else [])
                            for m in METHODS for f in FAMILIES if f == "torchvision"])
def test_one_training_step_with_every_model_family(method, family):
    overrides = FAMILIES[family]
    if method in EQUAL_WIDTHS and family == "torchvision":
        overrides = ["teacher=resnet34", "student=resnet18", *CIFAR_FAKE]
    cfg = make_cfg(f"kd={method}", *overrides)
    data = build_data(cfg.dataset, "/unused", CPU)
    if family == "mlp" and method in SPATIAL_ONLY:
        with pytest.raises(KdrunError, match=rf"^kd.{method}: .*needs convolutional feature maps \(N, C, H, W\)"):
            _distiller(cfg, data)
        return
    distiller, student, teacher, methods = _distiller(cfg, data)
    params = [p for p in distiller.parameters() if p.requires_grad]
    x, y = next(iter(data.loader("train", 8, shuffle=True)))
    out = distiller(x, y)
    assert torch.isfinite(out["loss"]) and out[f"loss_{method}"].item() != 0
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters()), "the teacher is frozen"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    for p in methods[method].parameters():  # adapters train with the student
        if p.requires_grad:
            assert p.grad is not None, f"an adapter of {method} gets no gradient"
    assert len(params) >= len(list(student.parameters()))


def test_methods_can_be_composed_and_each_term_is_logged(tmp_path):
    cfg = make_cfg("kd=[hinton,at]", *FAMILIES["lenet"], tmp=tmp_path)
    assert list(cfg.kd) == ["hinton", "at"] and cfg.kd.at.weight == 1000
    run(cfg, tmp_path / "run")
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["model"] == "student"
    assert line["train/loss"] == pytest.approx(line["train/loss_ce"] + line["train/loss_hinton"] + line["train/loss_at"],
                                               rel=1e-5)


def test_fsp_between_models_of_other_widths_is_a_clear_error():
    cfg = make_cfg("kd=fsp", "teacher=resnet18", "student=mobilenetv2", *CIFAR_FAKE)
    with pytest.raises(KdrunError, match=r"^kd.fsp: .*needs equal channel counts in student and teacher"):
        _distiller(cfg, build_data(cfg.dataset, "/unused", CPU))


def test_layers_can_be_overridden_and_a_wrong_path_lists_valid_ones():
    cfg = make_cfg("kd=at", *FAMILIES["lenet"], "kd.at.student_layers=[features.1]", "kd.at.teacher_layers=[features.1]")
    data = build_data(cfg.dataset, "/unused", CPU)
    distiller, *_ = _distiller(cfg, data)
    assert [r["student"] for r in distiller.layer_report] == ["features.1"]
    cfg = make_cfg("kd=at", *FAMILIES["lenet"], "kd.at.student_layers=[layer9]", "kd.at.teacher_layers=[features.1]")
    with pytest.raises(KdrunError, match=r"student layer 'layer9' is not a module path of LeNet5.*valid paths include: "
                                         r"features, features.0, .*classifier"):
        _distiller(cfg, data)


def test_unequal_layer_lists_are_a_clear_error():
    cfg = make_cfg("kd=at", *FAMILIES["lenet"], "kd.at.student_layers=[features.2]")
    with pytest.raises(KdrunError, match=r"kd.at pairs student and teacher layers in order, but got 1 student"):
        build_methods(cfg.kd, cfg.student, cfg.teacher)


def test_a_model_without_default_layers_asks_for_them():
    cfg = make_cfg("kd=at", "student=torchvision", "student.name=squeezenet1_1", "teacher=lenet5")
    with pytest.raises(KdrunError, match=r"kd.at: student=squeezenet1_1 names no default layers .*kd.at.student_layers"):
        build_methods(cfg.kd, cfg.student, cfg.teacher)


def test_preactivation_tap_reads_a_resnet_block_before_its_last_relu():
    cfg = make_cfg("student=resnet18", *CIFAR_FAKE)
    model = build_from_config(cfg.student, build_data(cfg.dataset, "/unused", CPU)).eval()
    with FeatureTap(model, ["layer1.1.relu:input", "layer1.1"]) as tap, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    pre, out = tap.outputs["layer1.1.relu:input"], tap.outputs["layer1.1"]
    assert (pre < 0).any() and torch.allclose(F.relu(pre), out)
    assert not model._forward_hooks and not model.layer1[1].relu._forward_pre_hooks  # hooks removed


def test_fitnet_hint_stage_trains_only_up_to_the_guided_layer():
    cfg = make_cfg("kd=fitnet", *FAMILIES["lenet"], "kd.fitnet.student_layers=[features.2]",
                   "kd.fitnet.teacher_layers=[features.2]")
    data = build_data(cfg.dataset, "/unused", CPU)
    _, student, teacher, methods = _distiller(cfg, data)
    stage = Distiller(student, teacher, methods, ce_weight=0.0)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    optimizer = make_optimizer(cfg.student, [p for p in stage.parameters() if p.requires_grad])
    train_one_epoch(stage, list(data.loader("train", 16))[:2], optimizer, CPU, "hint", progress=False)
    after = student.state_dict()
    assert not torch.equal(before["features.0.weight"], after["features.0.weight"])
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("features.3", "classifier")))


def test_ft_trains_its_paraphraser_first_then_freezes_it():
    cfg = make_cfg("kd=ft", *FAMILIES["lenet"], "kd.ft.paraphraser_epochs=2")
    data = build_data(cfg.dataset, "/unused", CPU)
    distiller, student, teacher, methods = _distiller(cfg, data)
    ft = methods["ft"]
    x, _ = next(iter(data.loader("train", 64)))
    with FeatureTap(teacher, ft.teacher_layers) as tap, torch.no_grad():
        teacher(x)
    feat = tap.outputs[ft.teacher_layers[0]]

    def reconstruction():
        ft.paraphraser.eval()
        with torch.no_grad():
            return F.mse_loss(ft.paraphraser(feat), feat).item()

    untrained = reconstruction()
    ft.prepare(teacher, data, CPU, seed=0)
    assert reconstruction() < untrained
    assert not any(p.requires_grad for p in ft.paraphraser.parameters())
    distiller.train()
    assert not ft.paraphraser.training and ft.translator.training


@pytest.mark.parametrize("alpha,kd,expected", [(0.9, "hinton", 0.1), (0.9, "[hinton,at]", 0.1), (0.9, "at", 1.0),
                                               (0.9, "none", 1.0), (0.9, "logits", 0.0), (0.9, "[logits,at]", 1.0)])
def test_default_hard_label_weight(alpha, kd, expected):
    from kdrun.config import ce_weight

    assert ce_weight(make_cfg(f"kd={kd}", f"alpha={alpha}")) == pytest.approx(expected)


def test_dry_run_prints_layers_and_trains_nothing(tmp_path):
    from tests.conftest import kdrun_cli

    proc = kdrun_cli("kd=[fitnet,rkd]", "teacher=resnet18", "student=lenet5", *CIFAR_FAKE, "dry_run=true",
                     f"hydra.run.dir={tmp_path / 'r'}", f"teacher_cache={tmp_path / 't'}", cwd=tmp_path)
    out = " ".join(proc.stdout.split())
    assert "layer3" in out and "(256, 2, 2)" in out and "features.5" in out and "(16, 6, 6)" in out
    assert "conv1x1 16->256 + BN" in out and "avgpool" in out and "classifier.4" in out
    assert not (tmp_path / "r" / "summary.json").exists() and not (tmp_path / "r" / "checkpoints").exists()


E2E_TINY = ["kd.fitnet.hint_epochs=1", "kd.fsp.stage1_epochs=1", "kd.ab.stage1_epochs=1", "kd.ft.paraphraser_epochs=1",
            "kd.crd.nce_k=256"]


def _e2e(method, family_overrides, tmp_path, cache):
    overrides = [o for o in E2E_TINY if o.startswith(f"kd.{method}.")]
    cfg = make_cfg(f"kd={method}", *family_overrides, *overrides, f"teacher_cache={cache}")
    summary = run(cfg, tmp_path / method)
    assert summary["status"] == "ok" and summary["student"]["test_images"] > 0
    lines = [json.loads(x) for x in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    student = [r for r in lines if r["model"] == "student"]
    assert student and all(f"train/loss_{method}" in r for r in student) == (summary["kd"] == [method] and
                                                                             method not in ("fsp", "ab"))
    if method in ("fitnet", "fsp", "ab"):  # their first stage ran and was logged under its own name
        assert any(r["model"] == f"student.{method}" for r in lines)
    return summary


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("teachers")


@needs_mnist
@pytest.mark.parametrize("method", _slow(METHODS))
def test_end_to_end_on_mnist_with_lenet5_and_mlp_students(method, tmp_path, shared_cache):
    mnist = ["dataset=mnist", "dataset.train_subset=300"]
    if method in NEEDS_BATCH_NORM:
        with pytest.raises(KdrunError, match=rf"^kd.{method}: the teacher's layer .* follows no batch norm"):
            _e2e(method, ["teacher=lenet5", "student=lenet5", *mnist], tmp_path / "lenet", shared_cache)
        return
    _e2e(method, ["teacher=lenet5", "student=lenet5", *mnist], tmp_path / "lenet", shared_cache)
    if method not in SPATIAL_ONLY:
        _e2e(method, ["teacher=mlp1200", "student=mlp800", *mnist], tmp_path / "mlp", shared_cache)


@pytest.mark.parametrize("method", _slow(METHODS))
def test_end_to_end_on_cifar_shaped_data_with_torchvision_students(method, tmp_path, shared_cache):
    models = ["teacher=resnet34", "student=resnet18"] if method in EQUAL_WIDTHS else ["teacher=resnet18", "student=mobilenetv2"]
    # A gentle teacher recipe: two steps at lr 0.1 leave a ResNet's batch-norm statistics (and so its
    # eval-mode features, which FSP squares) far off.
    _e2e(method, [*models, *CIFAR_FAKE, "dataset.num_train=128", "dataset.num_test=64", "teacher.lr=0.01"],
         tmp_path, shared_cache)
