"""Datasets: splits, the in-memory loader and its batch augmentation, and the real torchvision
readers on tiny files written in their formats."""
from __future__ import annotations

import os

import pytest
import torch

from kdrun import KdrunError
from kdrun.data import build_data, split_indices
from kdrun.data.memory import TensorLoader, flip_batch, shift_batch
from tests.conftest import DATA_DIR, make_cfg, needs_mnist
from tests.datasets import write_cifar, write_image_folder

CPU = torch.device("cpu")


def test_split_is_disjoint_deterministic_and_sized():
    train, val = split_indices(100, 0.2, split_seed=0)
    assert len(val) == 20 and len(train) == 80
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert torch.equal(val, split_indices(100, 0.2, split_seed=0)[1])
    assert not torch.equal(val, split_indices(100, 0.2, split_seed=1)[1])
    assert len(split_indices(100, 30, split_seed=0)[1]) == 30  # a count, not a fraction
    assert len(split_indices(100, 0, split_seed=0)[1]) == 0


def test_split_larger_than_data_is_a_clear_error():
    with pytest.raises(KdrunError, match="dataset.val_split"):
        split_indices(10, 10, split_seed=0)


def test_shift_moves_each_image_within_the_limit():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 9, 9, dtype=torch.uint8)
    x[:, 0, 4, 4] = 255  # one bright pixel in the centre
    shifted = shift_batch(x, 2)
    assert shifted.shape == x.shape and shifted.dtype == torch.uint8
    for img in shifted[:, 0]:
        (r, c), = (img == 255).nonzero().tolist()  # exactly one pixel, moved by at most 2
        assert abs(r - 4) <= 2 and abs(c - 4) <= 2
    assert len({tuple((img == 255).nonzero()[0].tolist()) for img in shifted[:, 0]}) > 5  # per-image offsets


def test_flip_mirrors_about_half_of_the_batch():
    torch.manual_seed(0)
    x = torch.arange(4, dtype=torch.uint8).view(1, 1, 1, 4).repeat(200, 1, 1, 1)
    out = flip_batch(x)
    flipped = (out[:, 0, 0, 0] == 3).sum().item()
    assert 60 < flipped < 140
    assert ((out[:, 0, 0] == x[:, 0, 0]).all(1) | (out[:, 0, 0] == x[:, 0, 0].flip(1)).all(1)).all()


def test_tensor_loader_normalises_and_covers_every_image_once():
    x = torch.full((10, 1, 2, 2), 255, dtype=torch.uint8)
    y = torch.arange(10)
    loader = TensorLoader(x, y, batch_size=4, mean=[0.5], std=[0.25], shuffle=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(10))
    assert torch.allclose(batches[0][0], torch.full_like(batches[0][0], (1 - 0.5) / 0.25))


@needs_mnist
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_idx_datasets(name):
    data = build_data(make_cfg(f"dataset={name}", "dataset.train_subset=1000").dataset, str(DATA_DIR), CPU)
    assert data.sizes == {"train": 900, "val": 100, "test": 10000}
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 28)
    x, y = next(iter(data.loader("train", 32, shuffle=True, augment=True)))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long


@pytest.fixture
def tiny_cifar_ok(monkeypatch):
    # The tiny files cannot match torchvision's md5 sums of the real archives; everything else
    # (folder layout, pickle format, parsing) is torchvision's own code.
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_reads_torchvision_format(tmp_path, tiny_cifar_ok, name, classes):
    write_cifar(tmp_path, classes)
    data = build_data(make_cfg(f"dataset={name}").dataset, str(tmp_path), CPU)
    assert (data.num_classes, data.in_channels, data.image_size) == (classes, 3, 32)
    assert data.sizes == {"train": 90, "val": 10, "test": 20}
    x, _ = next(iter(data.loader("train", 8, shuffle=True, augment=True)))
    assert x.shape == (8, 3, 32, 32)


def test_cifar_missing_says_where_it_looked(tmp_path):
    with pytest.raises(KdrunError, match=r"dataset=cifar10: CIFAR10 not found under .*data_dir"):
        build_data(make_cfg("dataset=cifar10").dataset, str(tmp_path), CPU)


def test_mnist_missing_says_where_it_looked_and_how_to_fix(tmp_path):
    with pytest.raises(KdrunError) as e:
        build_data(make_cfg("dataset=mnist").dataset, str(tmp_path / "nowhere"), CPU)
    assert str(tmp_path / "nowhere") in str(e.value) and "KDRUN_DATA_DIR" in str(e.value)


def test_image_folder_single_tree_is_split_into_train_val_test(tmp_path):
    write_image_folder(tmp_path / "pets")
    cfg = make_cfg("dataset=image_folder", "dataset.root=pets", "dataset.image_size=16", "dataset.num_workers=0")
    data = build_data(cfg.dataset, str(tmp_path), CPU)  # root relative to data_dir
    assert data.num_classes == 3 and data.in_channels == 3 and data.image_size == 16
    assert sum(data.sizes.values()) == 24 and data.sizes["test"] == 5
    x, y = next(iter(data.loader("train", 4, shuffle=True, augment=True)))
    assert x.shape == (4, 3, 16, 16) and y.max() < 3


def test_image_folder_with_train_and_test_folders(tmp_path):
    write_image_folder(tmp_path / "train")
    write_image_folder(tmp_path / "test", per_class=2)
    cfg = make_cfg("dataset=image_folder", f"dataset.root={tmp_path}", "dataset.image_size=16",
                   "dataset.num_workers=0", "dataset.val_split=0")
    data = build_data(cfg.dataset, "/unused", CPU)
    assert data.sizes == {"train": 24, "val": 0, "test": 6} and not data.has_val


def test_image_folder_missing_root(tmp_path):
    cfg = make_cfg("dataset=image_folder", "dataset.root=absent")
    with pytest.raises(KdrunError, match="dataset.root=.*absent: no such folder"):
        build_data(cfg.dataset, str(tmp_path), CPU)


def test_fake_data_is_the_same_in_every_build():
    cfg = make_cfg("dataset=fake").dataset
    a, b = build_data(cfg, "/unused", CPU), build_data(cfg, "/unused", CPU)
    xa, ya = next(iter(a.loader("test", 16)))
    xb, yb = next(iter(b.loader("test", 16)))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
