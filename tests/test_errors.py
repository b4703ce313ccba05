"""Every bad input a user can give fails before training, with one line naming the setting and the fix."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from kdrun import KdrunError
from kdrun.checkpoint import load_checkpoint, save_checkpoint
from kdrun.run import run
from tests.conftest import kdrun_cli, make_cfg

FAKE = ["dataset=fake", "teacher=lenet5", "student=lenet5"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("T=0", r"^T=0.0: the temperature must be > 0"),
        ("T=-2", r"^T=-2.0: the temperature must be > 0"),
        ("alpha=1.5", r"^alpha=1.5: .*must be in \[0, 1\]"),
        ("lambda=-0.1", r"^lambda=-0.1: .*must be in \[0, 1\]"),
        ("device=tpu", r"^device=tpu: unknown; choose auto, cpu, cuda, cuda:N or mps"),
        ("student.lr=0", r"^student.lr=0.0: the learning rate must be > 0"),
        ("teacher.optimizer=rmsprop", r"^teacher.optimizer=rmsprop: choose one of sgd, adam, adamw"),
        ("dataset.val_split=10000", r"^dataset.val_split=10000.0: holds out 10000 of only 512"),
        ("T=nan", r"^T=nan: must be a finite number"),
        ("alpha=inf", r"^alpha=inf: must be a finite number"),
        ("dataset.val_split=nan", r"^dataset.val_split=nan: must be a finite number"),
        ("kd.hinton.weight=-1", r"^kd.hinton.weight=-1: a method's weight must be >= 0"),
        ("student.momentum=1.0", r"^student.momentum=1.0: must be in \[0, 1\)"),
        ("teacher.momentum=-0.5", r"^teacher.momentum=-0.5: must be in \[0, 1\)"),
        ("student.batch_size=1", r"^student.batch_size=1: must be at least 2"),
        ("student.exclude_classes=[0,1,2,3,4,5,6,7,8,9]", r"^student.exclude_classes=\[0, .*9\]: leaves none of the 10 "
                                                           r"classes to train on"),
        ("teacher.exclude_classes=[10]", r"^teacher.exclude_classes=\[10\]: the data has classes 0..9 only"),
        ("dataset.num_train=0", r"^dataset.num_train=0: the fake dataset needs at least 2 training images"),
        ("dataset.num_test=0", r"^dataset.num_test=0: the fake dataset needs at least 1 test image"),
        # A key a kdrun model does not take, found by the config check: the teacher would otherwise train first.
        ("student.kwargs.width=3", r"^model lenet5: no argument 'width' \(its kwargs are none\): check the model's "
                                   r"kwargs \(student.kwargs\)$"),
    ],
)
def test_bad_values_fail_before_training(tmp_path, override, message):
    with pytest.raises(KdrunError, match=message):
        run(make_cfg(*FAKE, override, tmp=tmp_path), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "teachers").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_absent_cuda_device(tmp_path, device):
    with pytest.raises(KdrunError, match=rf"^device={device}: no CUDA device is visible here; use device=auto or device=cpu"):
        run(make_cfg(*FAKE, f"device={device}", tmp=tmp_path), tmp_path / "run")


def test_missing_dataset_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(KdrunError, match=rf"MNIST not found under {tmp_path}.*set data_dir=.*KDRUN_DATA_DIR"):
        run(make_cfg(f"data_dir={tmp_path}", tmp=tmp_path), tmp_path / "run")


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(KdrunError, match=r"^teacher.checkpoint=.*nope.pt: no such file"):
        run(make_cfg(*FAKE, f"teacher.checkpoint={tmp_path / 'nope.pt'}", tmp=tmp_path), tmp_path / "run")


def _trained_teacher(tmp_path, *overrides) -> str:
    run(make_cfg(*FAKE, "kd=none", "student=mlp800", *overrides, tmp=tmp_path), tmp_path / "donor")
    return str(tmp_path / "donor" / "checkpoints" / "student_best.pt")


def test_checkpoint_of_another_architecture(tmp_path):
    path = _trained_teacher(tmp_path)  # an mlp800
    with pytest.raises(KdrunError, match=r"teacher.checkpoint=.*holds a model with arch=mlp800, but this run builds lenet5"):
        run(make_cfg(*FAKE, f"teacher.checkpoint={path}", tmp=tmp_path), tmp_path / "run")


def test_checkpoint_with_another_class_count(tmp_path):
    path = _trained_teacher(tmp_path, "dataset.num_classes=5")
    with pytest.raises(KdrunError, match=r"holds a model with num_classes=5, but this run builds mlp800 with 10 classes"):
        run(make_cfg(*FAKE, "teacher=mlp800", f"teacher.checkpoint={path}", tmp=tmp_path), tmp_path / "run")


def test_bare_state_dict_of_the_wrong_shape(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save({"fc1.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(KdrunError, match=r"the weights do not fit mlp800 with 10 classes"):
        run(make_cfg(*FAKE, "teacher=mlp800", f"teacher.checkpoint={path}", tmp=tmp_path), tmp_path / "run")


def test_a_matching_checkpoint_is_used_as_the_teacher(tmp_path):
    path = _trained_teacher(tmp_path)
    summary = run(make_cfg(*FAKE, "teacher=mlp800", f"teacher.checkpoint={path}", tmp=tmp_path), tmp_path / "run")
    assert summary["teacher"]["source"] == "checkpoint" and summary["teacher"]["path"] == path
    assert not (tmp_path / "teachers").exists()  # the cache is bypassed


class Payload:
    """A pickle that would run code when loaded without weights_only."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoints_that_would_run_code_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(KdrunError, match=r"refused, it holds more than tensors"):
        load_checkpoint(path, "teacher.checkpoint")


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint({"epoch": 1}, path)

    def crash(obj, f, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KdrunError, match=r"^cannot write .*ck.pt \(disk full\)"):
        save_checkpoint({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # and no temporary file is left


@pytest.mark.parametrize(
    "args,message",
    [
        (["T=0"], "kdrun: error: T=0.0: the temperature must be > 0"),
        (["dataset=image_folder"], "kdrun: error: dataset.root is not set: image_folder needs the folder"),
        (["student=torchvision", "dataset=fake"], "kdrun: error: student.name has no value (???)"),
        (["teacher.checkpoint=/no/such.pt", "dataset=fake"], "kdrun: error: teacher.checkpoint=/no/such.pt: no such file"),
    ],
)
def test_cli_prints_one_line_and_exits_non_zero(tmp_path, args, message):
    proc = kdrun_cli(*args, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in proc.stderr
    # ... and the run's directory says it failed, and why (kdrun-report lists it as failed, not missing)
    record = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert record["status"] == "failed" and message.startswith("kdrun: error: " + record["error"][:20])
