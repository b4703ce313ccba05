"""The CIFAR family in runs: RepDistiller's published checkpoints load as teachers (a file, or the
folder its fetch script fills), the published protocol, and the warning about 2x2 feature maps."""
from __future__ import annotations

import logging

import pytest
import torch

from kdrun import KdrunError
from kdrun.checkpoint import load_weights
from kdrun.data import build_data
from kdrun.models import build_model, cifar
from kdrun.run import run
from tests.conftest import make_cfg

CPU = torch.device("cpu")
RGB = ["dataset=fake", "dataset.channels=3", "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]",
       "dataset.num_train=64", "dataset.num_test=32"]


def repdistiller_checkpoint(path, model, legacy: bool) -> None:
    """What RepDistiller's train_teacher.py saves as ckpt_epoch_240.pth: the weights under "model", with
    the epoch, the test accuracy (a tensor) and the optimizer's state. Files from its PyTorch 0.4 have no
    num_batches_tracked and use the pre-1.6 serialisation."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    state = {k: v for k, v in model.state_dict().items() if not (legacy and k.endswith("num_batches_tracked"))}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 240, "model": state, "accuracy": torch.tensor(72.34), "optimizer": optimizer.state_dict()},
               path, _use_new_zipfile_serialization=not legacy)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_repdistiller_checkpoint_loads_weights_only(tmp_path, legacy):
    torch.manual_seed(0)
    theirs = build_model("cifar_resnet8", 100, 3, 32)
    repdistiller_checkpoint(tmp_path / "ckpt_epoch_240.pth", theirs, legacy)
    ours = build_model("cifar_resnet8", 100, 3, 32)
    record = load_weights(ours, tmp_path / "ckpt_epoch_240.pth", "teacher.checkpoint", "cifar_resnet8", 100, 3)
    assert record["epoch"] == 240
    for key, value in theirs.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(ours.state_dict()[key], value), key


def test_the_folder_of_published_teachers_serves_as_teacher_checkpoint(tmp_path):
    folder = tmp_path / "save" / "models"
    torch.manual_seed(0)
    repdistiller_checkpoint(folder / "resnet8_vanilla" / "ckpt_epoch_240.pth", build_model("cifar_resnet8", 10, 3, 8),
                            legacy=True)
    cfg = make_cfg("teacher=cifar_resnet8", "student=cifar_resnet8", f"teacher.checkpoint={folder}", *RGB,
                   "dataset.image_size=8", tmp=tmp_path)
    teacher = run(cfg, tmp_path / "run")["teacher"]
    assert teacher["source"] == "checkpoint"
    assert teacher["path"] == str(folder / "resnet8_vanilla" / "ckpt_epoch_240.pth")
    with pytest.raises(KdrunError, match="resnet20_vanilla/ckpt_epoch_240.pth"):
        cifar.checkpoint_file(folder, "cifar_resnet20")
    with pytest.raises(KdrunError, match="CIFAR models only"):
        cifar.checkpoint_file(folder, "resnet18")


def test_the_published_protocol_trains_on_every_image_and_selects_on_test():
    cfg = make_cfg(*RGB, "dataset.protocol=best_test_epoch")
    data = build_data(cfg.dataset, "/unused", CPU)
    assert data.sizes == {"train": 64, "val": 32, "test": 32}  # dataset.val_split=0.1 is not used
    (val_x, val_y), = [next(iter(data.loader(split, 32))) for split in ("val",)]
    test_x, test_y = next(iter(data.loader("test", 32)))
    assert torch.equal(val_x, test_x) and torch.equal(val_y, test_y)
    with pytest.raises(KdrunError, match="dataset.protocol"):
        run(make_cfg(*RGB, "dataset.protocol=best_test"), "/nonexistent")


def test_2x2_feature_maps_warn_in_a_dry_run_naming_the_cifar_models(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(cifar, "_warned", set())
    cfg = make_cfg("kd=at", "teacher=resnet18", "student=resnet18", *RGB, "dataset.image_size=32", "dry_run=true",
                   tmp=tmp_path)
    with caplog.at_level(logging.WARNING, logger="kdrun.models.cifar"):
        run(cfg, tmp_path / "run")
    warning = " ".join(r.getMessage() for r in caplog.records if r.name == "kdrun.models.cifar")
    assert "student resnet18 layer3 (2x2, kd.at)" in warning and "teacher resnet18 layer4 (1x1, kd.at)" in warning
    assert "cifar_resnet32x4" in warning
    # The CIFAR models are exempt: MobileNetV2's 2x2 last stage is RepDistiller's own design.
    row = {"method": "at", "student": "blocks.6", "student_shape": (160, 2, 2), "teacher": "layer3",
           "teacher_shape": (64, 8, 8)}
    assert cifar.warn_small_maps([row], "cifar_mobilenetv2", "cifar_resnet56") is None
    assert "torchvision_name" in cifar.warn_small_maps([row], "torchvision_name", "cifar_resnet56")
