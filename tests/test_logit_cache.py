"""The teacher-logit cache: read instead of running the teacher when the student's inputs are not
augmented; the same loss as the live teacher; invalidated by any change to what it depends on."""
from __future__ import annotations

import json

import pytest
import torch

from kdrun.data import build_data
from kdrun.methods import build_methods
from kdrun.methods.base import Distiller
from kdrun.models import build_from_config
from kdrun.run import run
from kdrun.teachers import cached_train_logits, teacher_digest
from tests.conftest import make_cfg

CPU = torch.device("cpu")
BASE = ["dataset=fake", "teacher=mlp800", "student=mlp800", "student.augment=false"]


def test_cached_logits_give_the_same_loss_as_the_live_teacher(tmp_path):
    cfg = make_cfg(*BASE)
    data = build_data(cfg.dataset, "/unused", CPU)
    teacher, student = build_from_config(cfg.teacher, data), build_from_config(cfg.student, data)
    logits = cached_train_logits(teacher, data, CPU, tmp_path, "d1")
    assert logits.shape == (data.sizes["train"], 10)
    distiller = Distiller(student, teacher, build_methods(cfg.kd, cfg.student, cfg.teacher), 0.1)
    torch.manual_seed(0)
    x, y, extras = next(iter(data.loader("train", 64, shuffle=True, extras={"teacher_logits": logits})))
    cached = distiller(x, y, **extras)
    live = distiller(x, y)
    assert torch.allclose(cached["loss_hinton"], live["loss_hinton"], rtol=1e-6, atol=0)
    assert torch.allclose(cached["loss"], live["loss"], rtol=1e-6, atol=0)


def test_a_stale_cache_file_is_recomputed(tmp_path):
    cfg = make_cfg(*BASE)
    data = build_data(cfg.dataset, "/unused", CPU)
    teacher = build_from_config(cfg.teacher, data)
    torch.save({"digest": "other", "logits": torch.zeros(data.sizes["train"], 10)}, tmp_path / "train_logits.pt")
    assert cached_train_logits(teacher, data, CPU, tmp_path, "mine").abs().sum() > 0
    assert torch.load(tmp_path / "train_logits.pt", weights_only=True)["digest"] == "mine"


@pytest.mark.parametrize("change", ["teacher.lr=0.01", "teacher=lenet5", "dataset.train_subset=300",
                                    "dataset.mean=[0.4]", "dataset.shift=2", "dataset.val_split=0.2", "seed=1"])
def test_the_cache_key_changes_with_teacher_dataset_and_transform(change):
    assert teacher_digest(make_cfg(*BASE, change)) != teacher_digest(make_cfg(*BASE))


def test_the_cache_key_ignores_where_the_data_lives():
    assert teacher_digest(make_cfg(*BASE, "data_dir=/elsewhere")) == teacher_digest(make_cfg(*BASE))


def test_runs_say_which_they_used_and_agree(tmp_path):
    cached = run(make_cfg(*BASE, tmp=tmp_path), tmp_path / "cached")
    assert cached["teacher_logits"] == "cached"
    assert (tmp_path / "teachers" / cached["teacher"]["digest"] / "train_logits.pt").is_file()
    live = run(make_cfg(*BASE, "cache_teacher_logits=false", tmp=tmp_path), tmp_path / "live")
    assert live["teacher_logits"] == "live"
    lines = [json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[-1]) for d in ("cached", "live")]
    assert lines[0]["train/loss"] == pytest.approx(lines[1]["train/loss"], rel=1e-5)
    augmented = run(make_cfg(*BASE, "student.augment=true", tmp=tmp_path), tmp_path / "augmented")
    assert augmented["teacher_logits"] == "live"  # random shifts: the teacher must see each shifted image
    features = run(make_cfg(*BASE, "kd=[hinton,rkd]", tmp=tmp_path), tmp_path / "features")
    assert features["teacher_logits"] == "live"  # rkd reads the teacher's features
