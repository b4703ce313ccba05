"""Published weights (torchvision's weights API, timm), read from a temporary TORCH_HOME that the
tests fill with weights files of the right names (random weights: no download, ever)."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torchvision

from kdrun import KdrunError
from kdrun.data import build_data
from kdrun.engine import evaluate
from kdrun.models import build_from_config, pretrained_of
from kdrun.run import run
from kdrun.teachers import teacher_digest
from tests.conftest import make_cfg
from tests.network import UNREACHABLE, serve

CPU = torch.device("cpu")
WEIGHTS = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
FILE = "mobilenet_v3_small-047dcff4.pth"  # the name torchvision gives it
IMAGENET_SHAPED = ["dataset=fake", "dataset.num_classes=1000", "dataset.channels=3", "dataset.image_size=32",
                   "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]", "dataset.num_train=64",
                   "dataset.num_test=32"]


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def published(torch_home):
    """A MobileNetV3-small weights file (random weights, 1000 classes) where torchvision keeps it."""
    torch.manual_seed(0)
    state = torchvision.models.mobilenet_v3_small().state_dict()
    torch_home.mkdir(parents=True)
    torch.save(state, torch_home / FILE)
    return state


def test_weights_are_loaded_and_adapted_to_channels_and_classes(published, torch_home):
    cfg = make_cfg("dataset=fake", "student=mobilenetv3_small", "student.pretrained=true")  # 1 channel, 10 classes
    model = build_from_config(cfg.student, build_data(cfg.dataset, "/unused", CPU))
    state = model.state_dict()
    for key, value in published.items():
        if key.startswith("features.0.0."):  # the first convolution: RGB filters summed for grey images
            assert torch.equal(state[key], value.sum(1, keepdim=True))
        elif not key.startswith("classifier.3."):  # all but the head: the published weights
            assert torch.equal(state[key], value), key
    assert state["classifier.3.weight"].shape == (10, 1024)  # a new head for 10 classes
    assert pretrained_of(model) == {"weights": str(WEIGHTS), "num_classes": 1000, "file": str(torch_home / FILE)}


def test_a_teacher_for_the_datas_classes_is_used_as_it_is(published, tmp_path):
    summary = run(make_cfg(*IMAGENET_SHAPED, "teacher=mobilenetv3_small", "teacher.pretrained=IMAGENET1K_V1",
                           "student=lenet5", tmp=tmp_path), tmp_path / "run")
    teacher = summary["teacher"]
    assert (teacher["source"], teacher["weights"]) == ("pretrained", str(WEIGHTS))
    assert json.loads((tmp_path / "run" / "checkpoints" / "teacher.json").read_text())["source"] == "pretrained"
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["model"] for r in lines} == {"student"}  # no teacher training
    # Its test accuracy is that of the published weights themselves.
    cfg = make_cfg(*IMAGENET_SHAPED)
    as_published = torchvision.models.mobilenet_v3_small()
    as_published.load_state_dict(published)
    test = evaluate(as_published, build_data(cfg.dataset, "/unused", CPU).loader("test", 32), CPU)
    assert teacher["test_acc"] == test["acc"] and teacher["test_acc5"] == test["acc5"]
    # 1000 classes: top-5 everywhere top-1 is.
    assert 0 <= summary["student"]["test_acc"] <= summary["student"]["test_acc5"] <= 1
    assert {"train/acc5", "val/acc5"} <= set(lines[-1])


def test_other_classes_fine_tune_a_new_head_through_the_teacher_cache(published, tmp_path):
    args = ["dataset=fake", "dataset.num_train=96", "dataset.num_test=32", "teacher=mobilenetv3_small",
            "student=mlp800"]
    summary = run(make_cfg(*args, "teacher.pretrained=true", tmp=tmp_path), tmp_path / "run")
    assert (summary["teacher"]["source"], summary["teacher"]["weights"]) == ("trained", str(WEIGHTS))
    assert "test_acc5" not in summary["student"]  # 10 classes: top-1 only
    # The cache's digest holds the weights: `true` and their name are the same teacher; none is another.
    named = teacher_digest(make_cfg(*args, "teacher.pretrained=IMAGENET1K_V1"))
    assert teacher_digest(make_cfg(*args, "teacher.pretrained=true")) == named
    assert teacher_digest(make_cfg(*args)) != named


def test_offline_without_the_weights_file_one_line_names_the_file_and_its_folder(torch_home, monkeypatch):
    monkeypatch.setattr(WEIGHTS.value, "url", UNREACHABLE + FILE)
    cfg = make_cfg("dataset=fake", "student=mobilenetv3_small", "student.pretrained=true")
    with pytest.raises(KdrunError) as e:
        build_from_config(cfg.student, build_data(cfg.dataset, "/unused", CPU))
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"model mobilenet_v3_small (pretrained=True): its weights file {FILE} is not in "
                                   f"{torch_home} and could not be downloaded (")
    assert "Connection refused" in str(e.value) and "set TORCH_HOME" in str(e.value)


def test_missing_weights_are_downloaded_into_torch_home(torch_home, tmp_path, monkeypatch):
    torch.manual_seed(0)
    (tmp_path / "site").mkdir()
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "site" / "w.pth")
    digest = hashlib.sha256((tmp_path / "site" / "w.pth").read_bytes()).hexdigest()[:8]
    name = f"mobilenet_v3_small-{digest}.pth"  # torch checks a download against the hash in its name
    (tmp_path / "site" / "w.pth").rename(tmp_path / "site" / name)
    cfg = make_cfg("dataset=fake", "student=mobilenetv3_small", "student.pretrained=true")
    with serve(tmp_path / "site") as (url, requests):
        monkeypatch.setattr(WEIGHTS.value, "url", url + name)
        build_from_config(cfg.student, build_data(cfg.dataset, "/unused", CPU))
        build_from_config(cfg.student, build_data(cfg.dataset, "/unused", CPU))  # from the cache now
    assert requests == [f"/{name}"] and (torch_home / name).is_file()


@pytest.mark.parametrize("override,message", [
    ("student.pretrained=IMAGENET9K", r"^model mobilenet_v3_small \(pretrained=IMAGENET9K\): no such weights; "
                                      r"torchvision has IMAGENET1K_V1 \(or true for IMAGENET1K_V1\)$"),
    ("student=mlp800", r"^model mlp800 \(pretrained=True\): published weights exist for torchvision's and timm's"),
])
def test_bad_pretrained_settings(override, message):
    cfg = make_cfg("dataset=fake", "student=mobilenetv3_small", "student.pretrained=true", override)
    with pytest.raises(KdrunError, match=message):
        build_from_config(cfg.student, build_data(cfg.dataset, "/unused", CPU))


def test_timm_models_with_their_own_weights_and_adaptation(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "r10t.pth")
    # timm reads a local file through its pretrained_cfg_overlay (offline; normally the Hugging Face Hub).
    cfg = make_cfg("dataset=fake", "student=timm", "student.name=resnet10t", "student.pretrained=true",
                   f"+student.kwargs.pretrained_cfg_overlay.file={tmp_path / 'r10t.pth'}")
    data = build_data(cfg.dataset, "/unused", CPU)
    model = build_from_config(cfg.student, data)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert pretrained_of(model)["weights"] == "timm resnet10t.c3_in1k"
    with pytest.raises(KdrunError, match=r"^model no_such_net \(library=timm, pretrained=False\): Unknown model"):
        build_from_config(make_cfg("student=timm", "student.name=no_such_net").student, data)


def test_the_imagenet_benchmark_preset_composes_with_its_published_recipe():
    from kdrun.config import check

    cfg = make_cfg("+experiment=imagenet_r34_r18")
    check(cfg)
    assert (cfg.teacher.name, cfg.teacher.pretrained, cfg.student.name, cfg.dataset.name) == \
        ("resnet34", "IMAGENET1K_V1", "resnet18", "imagenet")
    s = cfg.student
    assert (s.epochs, s.batch_size, s.lr, s.weight_decay, s.schedule, list(s.milestones)) == \
        (100, 64, 0.1, 1e-4, "multistep", [30, 60, 90])  # batch size 256, but for the tests' TINY override
    assert (cfg.T, cfg.alpha, cfg.dataset.val_split, cfg.dataset.image_size) == (1.0, 0.5, 0, 224)
