"""Writers of tiny datasets in the exact on-disk formats torchvision reads (CIFAR pickles, image
folders), so the real loaders are exercised without downloads."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f)


def write_cifar(root: Path, classes: int, per_batch: int = 20, seed: int = 0) -> None:
    """cifar-10-batches-py (5 train batches + test_batch) or cifar-100-python (train + test)."""
    rng = np.random.default_rng(seed)

    def batch(n):
        return rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8), rng.integers(0, classes, n).tolist()

    if classes == 10:
        folder = root / "cifar-10-batches-py"
        for i in range(1, 6):
            x, y = batch(per_batch)
            _pickle(folder / f"data_batch_{i}", {"data": x, "labels": y})
        x, y = batch(per_batch)
        _pickle(folder / "test_batch", {"data": x, "labels": y})
        _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    else:
        folder = root / "cifar-100-python"
        for name, n in (("train", 5 * per_batch), ("test", per_batch)):
            x, y = batch(n)
            _pickle(folder / name, {"data": x, "fine_labels": y})
        _pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})


def write_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 8, size: int = 20,
                       seed: int = 0) -> None:
    """root/<class>/<i>.png, each class a different colour (so it is learnable)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            pixels[..., c % 3] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def write_idx_gz(folder: Path, n_train: int = 60, n_test: int = 20, size: int = 28, seed: int = 0) -> dict:
    """The four gzipped IDX files of MNIST's format (as its mirrors serve them), tiny; returns
    {file name: md5}, what torchvision's MNIST.resources lists."""
    import gzip
    import hashlib
    import struct

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    md5 = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        files = {f"{prefix}-images-idx3-ubyte.gz": struct.pack(">IIII", 2051, n, size, size) + images.tobytes(),
                 f"{prefix}-labels-idx1-ubyte.gz": struct.pack(">II", 2049, n) + labels.tobytes()}
        for name, raw in files.items():
            data = gzip.compress(raw, mtime=0)
            (folder / name).write_bytes(data)
            md5[name] = hashlib.md5(data).hexdigest()
    return md5


def write_imagenet_tree(root: Path, classes=("n01", "n02", "n03"), train: int = 6, val: int = 2,
                        shape=(30, 40)) -> None:
    """root/train/<class>/ and root/val/<class>/, non-square images (the pipeline resizes and crops)."""
    rng = np.random.default_rng(1)
    for split, n in (("train", train), ("val", val)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (*shape, 3), dtype=np.uint8)
                pixels[..., c % 3] += 150
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
