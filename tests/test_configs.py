"""Every option of every config group composes, builds, and trains one step on tiny data."""
from __future__ import annotations

import os

import pytest
import torch

from kdrun.data import build_data
from kdrun.engine import make_optimizer, train_one_epoch
from kdrun.methods.base import Distiller
from kdrun.models import build_from_config
from kdrun.models.cifar import CIFAR_MODELS
from kdrun.run import run
from tests.conftest import CONFIGS, HAS_MNIST, make_cfg
from tests.datasets import write_cifar, write_image_folder, write_imagenet_tree
from tests.test_custom_code import MODULE

CPU = torch.device("cpu")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_the_groups_hold_what_the_readme_promises():
    models = {"mlp1200", "mlp800", "lenet5", "resnet18", "resnet34", "resnet50", "mobilenetv2",
              "mobilenetv3_small", "shufflenetv2", "efficientnet_b0", "vgg11", "torchvision", "timm", "custom", "soft_tree"} | CIFAR_MODELS
    assert set(options("teacher")) == set(options("student")) == models
    assert set(options("dataset")) == {"mnist", "fashion_mnist", "cifar10", "cifar100", "image_folder", "imagenet",
                                       "fake", "custom"}
    assert {"hinton", "none"} <= set(options("kd"))
    assert set(options("scheme")) == {"offline", "online", "self", "self_byot"}


def test_default_experiment_is_hinton_mnist():
    cfg = make_cfg()
    assert (cfg.teacher.name, cfg.student.name, cfg.dataset.name, cfg.scheme.name) == ("mlp1200", "mlp800", "mnist", "offline")
    assert list(cfg.kd) == ["hinton"]


def _one_step(model_node, dataset: str, extra=()):
    cfg = make_cfg(f"dataset={dataset}", "dataset.num_train=8", *extra)
    data = build_data(cfg.dataset, "/unused", CPU)
    model = build_from_config(model_node, data)
    distiller = Distiller(model)
    loader = data.loader("train", 4, shuffle=True, augment=True)
    metrics = train_one_epoch(distiller, [next(iter(loader))], make_optimizer(model_node, model.parameters()), CPU,
                              "one step", progress=False)
    assert metrics["train/loss"] > 0


# The CIFAR family trains one step each in tests/test_cifar_models.py, on tiny CIFAR-shaped images.
@pytest.mark.parametrize("role", ["teacher", "student"])
# torchvision, timm and custom need a name or a target: tested with one here, in test_pretrained and test_custom_code;
# the CIFAR family trains one step each in tests/test_cifar_models.py, on tiny CIFAR-shaped images.
@pytest.mark.parametrize("option", [o for o in options("student") if o not in ("torchvision", "timm", "custom") and o not in CIFAR_MODELS])
def test_every_model_option_trains_one_step_on_mnist_shaped_data(role, option):
    cfg = make_cfg(f"{role}={option}")
    _one_step(cfg[role], "fake")


def test_torchvision_option_takes_any_classifier_by_name():
    cfg = make_cfg("student=torchvision", "student.name=squeezenet1_1")
    _one_step(cfg.student, "fake", ["dataset.channels=3", "dataset.image_size=32", "dataset.mean=[0.5,0.5,0.5]",
                                    "dataset.std=[0.25,0.25,0.25]"])


@pytest.mark.parametrize("option", ["resnet18", "mobilenetv2", "lenet5", "mlp800"])
def test_models_adapt_to_cifar_shape(option):
    _one_step(make_cfg(f"student={option}").student, "fake",
              ["dataset.channels=3", "dataset.image_size=32", "dataset.num_classes=100",
               "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]"])


def _dataset_files(option, tmp_path, monkeypatch):
    """Overrides that point a dataset option at real or tiny on-disk data."""
    if option in ("mnist", "fashion_mnist"):
        if not HAS_MNIST:
            pytest.skip("no MNIST/Fashion-MNIST here")
        return ["dataset.train_subset=200"]
    if option in ("cifar10", "cifar100"):
        import torchvision.datasets.cifar as cifar

        monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
        write_cifar(tmp_path / "data", 10 if option == "cifar10" else 100, per_batch=10)
        return [f"data_dir={tmp_path / 'data'}"]
    if option == "image_folder":
        write_image_folder(tmp_path / "data" / "imgs")
        return [f"data_dir={tmp_path / 'data'}", "dataset.root=imgs", "dataset.image_size=16",
                "dataset.num_workers=0"]
    if option == "imagenet":
        write_imagenet_tree(tmp_path / "data" / "imagenet", train=8)
        return [f"data_dir={tmp_path / 'data'}", "dataset.image_size=16", "dataset.resize_size=18",
                "dataset.num_workers=0"]
    if option == "custom":
        (tmp_path / "code").mkdir()
        (tmp_path / "code" / "my_kd.py").write_text(MODULE)
        monkeypatch.syspath_prepend(str(tmp_path / "code"))
        return ["dataset.target=my_kd.make", "dataset.num_workers=0"]
    return []


@pytest.mark.parametrize("option", options("dataset"))
def test_every_dataset_option_runs_end_to_end(option, tmp_path, monkeypatch):
    overrides = _dataset_files(option, tmp_path, monkeypatch)
    cfg = make_cfg(f"dataset={option}", "teacher=lenet5", "student=lenet5", *overrides, tmp=tmp_path)
    summary = run(cfg, tmp_path / "run")
    assert summary["student"]["test_images"] > 0 and summary["teacher"]["source"] == "trained"


@pytest.mark.parametrize("option", options("scheme"))
def test_every_scheme_option_runs(option, tmp_path):
    cfg = make_cfg(f"scheme={option}", "dataset=fake", "teacher=mlp800", tmp=tmp_path)
    assert run(cfg, tmp_path / "run")["status"] == "ok"
