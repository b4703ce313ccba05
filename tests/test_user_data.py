"""The data a user has or fetches: torchvision's downloads (from a local HTTP server, never the
internet), ImageNet-layout folders with the standard pipeline, test subsets."""
from __future__ import annotations

import hashlib
import tarfile

import pytest
import torch
import torchvision

from kdrun import KdrunError
from kdrun.data import build_data
from tests.conftest import make_cfg
from tests.datasets import write_cifar, write_idx_gz, write_imagenet_tree
from tests.network import UNREACHABLE, serve

CPU = torch.device("cpu")


@pytest.fixture
def mnist_mirror(tmp_path, monkeypatch):
    """Tiny MNIST files in the mirrors' format, served on localhost; torchvision's MNIST looks there."""
    md5 = write_idx_gz(tmp_path / "mirror")
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", sorted(md5.items()))
    with serve(tmp_path / "mirror") as (url, requests):
        monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [url])
        yield requests


def test_mnist_is_downloaded_when_missing_and_then_read_without_the_network(tmp_path, mnist_mirror):
    cfg = make_cfg("dataset=mnist", "dataset.download=true").dataset
    data = build_data(cfg, str(tmp_path / "data"), CPU)
    assert data.sizes == {"train": 54, "val": 6, "test": 20} and data.in_channels == 1
    assert set(mnist_mirror) == {f"/{name}" for name, _ in torchvision.datasets.MNIST.resources}
    assert (tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    requests = len(mnist_mirror)
    build_data(cfg, str(tmp_path / "data"), CPU)  # the files are there now: no request
    assert len(mnist_mirror) == requests


def test_cifar10_is_downloaded_as_torchvision_does(tmp_path, monkeypatch):
    """The archive torchvision fetches (cifar-10-python.tar.gz), its md5 and the files' md5s, all tiny."""
    write_cifar(tmp_path / "made", 10, per_batch=4)
    cls = torchvision.datasets.CIFAR10
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (tmp_path / "made" / cls.base_folder).iterdir()}
    (tmp_path / "mirror").mkdir()
    with tarfile.open(tmp_path / "mirror" / cls.filename, "w:gz") as tar:
        tar.add(tmp_path / "made" / cls.base_folder, arcname=cls.base_folder)
    monkeypatch.setattr(cls, "tgz_md5", hashlib.md5((tmp_path / "mirror" / cls.filename).read_bytes()).hexdigest())
    monkeypatch.setattr(cls, "train_list", [[n, md5[n]] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5[n]] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5[cls.meta["filename"]]})
    with serve(tmp_path / "mirror") as (url, requests):
        monkeypatch.setattr(cls, "url", url + cls.filename)
        data = build_data(make_cfg("dataset=cifar10", "dataset.download=true").dataset, str(tmp_path / "data"), CPU)
    assert set(requests) == {f"/{cls.filename}"} and data.sizes["test"] == 4 and data.image_size == 32


def test_offline_the_error_says_what_is_missing_where_and_how_to_skip_the_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [UNREACHABLE])
    with pytest.raises(KdrunError) as e:
        build_data(make_cfg("dataset=mnist", "dataset.download=true").dataset, str(tmp_path), CPU)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"dataset=mnist: MNIST not found under {tmp_path} and the download failed (")
    assert "Connection refused" in message and f"{tmp_path}/MNIST/raw/train-images-idx3-ubyte" in message
    assert "data_dir=" in message and message.endswith("dataset.download=false skips the download")
    with pytest.raises(KdrunError, match=r"not found under .*; or set dataset.download=true to fetch them$"):
        build_data(make_cfg("dataset=mnist", "dataset.download=false").dataset, str(tmp_path), CPU)


@pytest.fixture
def imagenet_tree(tmp_path):
    write_imagenet_tree(tmp_path / "imagenet")
    return tmp_path


def _imagenet(data_dir, *overrides):
    cfg = make_cfg("dataset=imagenet", "dataset.image_size=16", "dataset.resize_size=20", "dataset.num_workers=0",
                   "dataset.val_split=2", *overrides)
    return build_data(cfg.dataset, str(data_dir), CPU)


def test_imagenet_layout_reads_with_the_standard_pipeline(imagenet_tree):
    data = _imagenet(imagenet_tree)  # dataset.root defaults to <data_dir>/imagenet
    assert (data.num_classes, data.in_channels, data.image_size) == (3, 3, 16)
    assert data.sizes == {"train": 16, "val": 2, "test": 6}  # val/ is the test split
    x, y = next(iter(data.loader("train", 16, shuffle=True, augment=True)))
    assert x.shape == (16, 3, 16, 16) and sorted(set(y.tolist())) == [0, 1, 2]
    # Evaluation: the shorter side resized to 20 (30x40 -> 20x26), then the centre 16x16, normalised.
    from PIL import Image

    image = Image.open(imagenet_tree / "imagenet" / "val" / "n01" / "0.png").convert("RGB")
    F = torchvision.transforms.functional
    expected = F.to_tensor(F.center_crop(F.resize(image, 20), 16))
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    first = next(iter(data.loader("test", 6)))[0][0]
    assert torch.allclose(first, (expected - mean) / std, atol=1e-5)


def test_random_crops_depend_on_the_epoch_and_image_alone_not_on_the_workers(imagenet_tree):
    """So a resumed run draws the crops of an uninterrupted one, with persistent workers too."""
    def batches(workers):
        data = _imagenet(imagenet_tree, f"dataset.num_workers={workers}", "dataset.prefetch_factor=3")
        loader = data.loader("train", 8, shuffle=True, augment=True)
        torch.manual_seed(7)  # as the engine seeds each epoch
        first = [b[0] for b in loader]
        torch.manual_seed(8)
        second = [b[0] for b in loader]  # a second epoch of the same (persistent) workers
        return loader, first, second

    in_process, first, second = batches(0)
    workers, first_w, second_w = batches(2)
    assert workers.persistent_workers and workers.prefetch_factor == 3 and workers.num_workers == 2
    assert not workers.pin_memory  # only for a CUDA device
    assert all(torch.equal(a, b) for a, b in zip(first, first_w))
    assert all(torch.equal(a, b) for a, b in zip(second, second_w))
    assert not torch.equal(first[0], second[0])


def test_reading_images_in_process_leaves_the_gpu_random_streams_alone(imagenet_tree, monkeypatch):
    """With num_workers=0 on a GPU, each item is read in the training process: seeding its augmentation
    must not reseed the device generators (dropout's, the engine's), which nothing restores."""
    reseeded = []
    for module, name in ((torch.cuda, "manual_seed_all"), (torch.mps, "manual_seed"), (torch.xpu, "manual_seed_all")):
        monkeypatch.setattr(module, name, lambda seed, name=f"{module.__name__}.{name}": reseeded.append(name))
    data = _imagenet(imagenet_tree)
    next(iter(data.loader("train", 4, shuffle=True, augment=True)))
    assert reseeded == []


def test_the_fingerprint_lists_each_file_relative_to_its_tree_as_it_always_did(imagenet_tree):
    """The list is sliced from the paths (pathlib per file is slow on ImageNet): the same strings as
    pathlib's, so the teacher-cache keys of existing caches stay valid."""
    from pathlib import Path

    from kdrun.data.builders import _files, _image_tree

    tree = _image_tree(imagenet_tree / "imagenet" / "train", imagenet_tree)
    assert _files(tree) == [(Path(p).relative_to(tree.root).as_posix(), c) for p, c in tree.samples]
    assert _files(tree)[0] == ("n01/0.png", 0)


def test_imagenet_needs_train_and_val_folders(tmp_path):
    (tmp_path / "imagenet" / "train" / "a").mkdir(parents=True)
    with pytest.raises(KdrunError, match=r"dataset.root=.*imagenet: dataset=imagenet needs train/<class>/ and "
                                         r"val/<class>/ folders there \(no val/\)"):
        _imagenet(tmp_path)


def test_test_subset_for_quick_checks(imagenet_tree):
    data = _imagenet(imagenet_tree, "dataset.test_subset=3", "dataset.train_subset=9")
    assert data.sizes == {"train": 7, "val": 2, "test": 3}
    # An image tree is sorted by class: the subsets are samples over the classes, not its first files.
    assert len(set(torch.cat([y for _, y in data.loader("train", 16)]).tolist())) > 1
    fake = build_data(make_cfg("dataset=fake", "dataset.test_subset=10").dataset, "/unused", CPU)
    assert fake.sizes["test"] == 10


@pytest.mark.parametrize("dataset", ["fake", "imagenet"])
def test_under_the_published_protocol_the_validation_labels_are_the_test_labels(dataset, imagenet_tree):
    """dataset.protocol=best_test_epoch: the test set stands in for the validation split, its labels too."""
    cfg = make_cfg(f"dataset={dataset}", "dataset.image_size=16", "dataset.num_workers=0",
                   "dataset.protocol=best_test_epoch").dataset
    data = build_data(cfg, str(imagenet_tree), CPU)
    read = torch.cat([y for _, y in data.loader("val", 64)])
    assert len(read) == data.sizes["val"] == data.sizes["test"]
    assert torch.equal(data.labels("val"), read) and torch.equal(data.labels("val"), data.labels("test"))
