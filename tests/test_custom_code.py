"""A user's own model, dataset and KD method, from a module outside kdrun (written to a temporary
folder on sys.path), with no file of kdrun edited."""
from __future__ import annotations

import json
import textwrap

import pytest

from kdrun import KdrunError
from kdrun.run import run
from tests.conftest import make_cfg

MODULE = '''
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from kdrun.methods.base import KDMethod


def tiny_cnn(num_classes, in_channels, width=8):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))


def tiny_mlp(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, num_classes))


class Shapes(Dataset):
    """Bright squares (class 1) or dark ones (class 0), 2 x 12 x 12."""

    classes = ["dark", "bright"]

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.randint(0, 2, (n,), generator=g).tolist()
        self.noise = torch.rand(n, 2, 12, 12, generator=g)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.noise[i] + 2.0 * self.targets[i], self.targets[i]


def make(root, n_train=40):
    return Shapes(n_train, 0), Shapes(16, 1)


class Jittered(Shapes):
    """Shapes whose images are read from `root/noise.pt` and augmented with random jitter."""

    def __init__(self, n, seed, noise):
        super().__init__(n, seed)
        self.noise = noise

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x + 0.01 * torch.rand(()), y


def from_root(root):
    return Jittered(40, 0, torch.load(root + "/noise.pt")), Shapes(16, 1)


class MeanMatch(KDMethod):
    """A made-up method: the student's mean logit towards the teacher's."""

    def loss(self, batch):
        return (batch.student_logits.mean() - batch.teacher_logits.mean()) ** 2
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_code").mkdir()
    (tmp_path / "user_code" / "my_kd.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "user_code"))


def test_own_model_dataset_and_method_from_outside_the_package(tmp_path, user_module):
    cfg = make_cfg("dataset=custom", "dataset.target=my_kd.make", "+dataset.kwargs.n_train=48", "dataset.val_split=8",
                   "dataset.num_workers=0", "teacher=custom", "teacher.target=my_kd.tiny_mlp",
                   "student=custom", "student.target=my_kd.tiny_cnn", "+student.kwargs.width=4", "student.name=tiny_cnn",
                   "+kd.mean_match._target_=my_kd.MeanMatch", "+kd.mean_match.weight=0.5", tmp=tmp_path)
    summary = run(cfg, tmp_path / "run")
    assert summary["student"]["arch"] == "tiny_cnn" and summary["teacher"]["arch"] == "custom"
    assert summary["student"]["params"] == (2 * 9 + 1) * 4 + 4 * 2 + 2  # width 4, 2 channels, 2 classes
    assert summary["kd"] == ["hinton", "mean_match"] and summary["student"]["test_images"] == 16
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["model"] == "student" and "train/loss_mean_match" in last


@pytest.mark.parametrize("override,message", [
    ("student.target=my_kd.nothing_here", r"^model target=my_kd.nothing_here: cannot import it \("),
    ("dataset.target=no_such_pkg.make", r"^dataset.target=no_such_pkg.make: cannot import it \(.*PYTHONPATH$"),
    ("dataset.target=my_kd.tiny_cnn", r"^dataset.target=my_kd.tiny_cnn: kdrun calls it as tiny_cnn\(root=\.\.\.\), "
                                      r"which its signature does not take"),
    ("student.target=null", r"^student.target=None: student=custom builds a model of your own"),
])
def test_custom_settings_that_cannot_work(tmp_path, user_module, override, message):
    cfg = make_cfg("dataset=custom", "dataset.target=my_kd.make", "student=custom", "student.target=my_kd.tiny_cnn",
                   "kd=none", override, tmp=tmp_path)
    with pytest.raises(KdrunError, match=message):
        run(cfg, tmp_path / "run")


def test_the_teacher_cache_tells_apart_datasets_that_differ_only_in_their_data(tmp_path, user_module):
    """dataset.root is not part of the teacher's key (a moved dataset keeps its teachers): the digest of
    what the datasets hold is. Same factory, kwargs, types, lengths and labels; other images."""
    import torch

    from kdrun.data import build_data

    cfg = make_cfg("dataset=custom", "dataset.target=my_kd.from_root").dataset

    def digest(folder):
        cfg.root = str(folder)
        return build_data(cfg, "/unused", torch.device("cpu")).fingerprint

    for name, seed in (("a", 0), ("b", 1)):
        (tmp_path / name).mkdir()
        torch.save(torch.rand(40, 2, 12, 12, generator=torch.Generator().manual_seed(seed)), tmp_path / name / "noise.pt")
    assert digest(tmp_path / "a") == digest(tmp_path / "a")  # its random augmentation does not change it
    assert digest(tmp_path / "a") != digest(tmp_path / "b")

