"""One builder per dataset. Each returns a DataBundle; torchvision does all the file reading (and,
where the files are missing, the downloading)."""
from __future__ import annotations

import contextlib
import copy
import os
import socket
from pathlib import Path

import torch
import torchvision
from filelock import FileLock
from torchvision import transforms

from kdrun import KdrunError
from kdrun.data import DataBundle, fingerprint, register_dataset, sample, split_indices
from kdrun.data.folders import SeededItems, labels_of, loader_bundle
from kdrun.data.memory import TensorLoader

# A stalled connection fails a download (data, or pretrained weights) after this long, with the one
# line that says what to do.
DOWNLOAD_TIMEOUT_S = 60


def _where(root: Path, expected: str) -> str:
    return (f"put the files there (torchvision expects {expected}), or set data_dir=/path/to/datasets (or the "
            "KDRUN_DATA_DIR environment variable) to a folder that has them")


def _missing(cfg_name: str, what: str, root: Path, expected: str) -> KdrunError:
    return KdrunError(f"dataset={cfg_name}: {what} not found under {root}: {_where(root, expected)}; or set "
                      "dataset.download=true to fetch them")


@contextlib.contextmanager
def socket_timeout(seconds: float = DOWNLOAD_TIMEOUT_S):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _last_line(e: Exception) -> str:
    """The cause of a failed download: torchvision lists every mirror it tried, the last line is the error."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    return lines[-1][:160]


def _torchvision_splits(cls, cfg, root: Path, expected: str):
    """The train and test splits of a torchvision dataset under `root`. When its files are missing and
    dataset.download is true, torchvision's own download() fetches them first (once: jobs that start
    together wait on a lock); files that are there are read without touching the network."""
    def load():
        return cls(str(root), train=True), cls(str(root), train=False)

    try:
        return load()
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        if not cfg.download:
            raise _missing(cfg.name, cls.__name__, root, expected) from None
    try:
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / f".{cls.__name__}.download.lock")), socket_timeout():
            cls(str(root), train=True, download=True)  # one download holds both splits
        return load()
    except (RuntimeError, OSError) as e:  # URLError and timeouts are OSErrors
        reason = _last_line(e)
        raise KdrunError(f"dataset={cfg.name}: {cls.__name__} not found under {root} and the download failed "
                         f"({reason}): {_where(root, expected)}; dataset.download=false skips the download") from None


def _check_norm(cfg, channels: int) -> None:
    if len(cfg.mean) != channels:
        raise KdrunError(
            f"dataset.mean={list(cfg.mean)}: {cfg.name} images have {channels} channel(s); give one mean "
            "and one std per channel"
        )


def _subset(n: int, limit) -> int:
    return min(n, limit) if limit else n


def _in_memory(cfg, train_x, train_y, test_x, test_y, num_classes: int, device, classes=None) -> DataBundle:
    """Splits, moves to the device once, and wraps the tensors in TensorLoaders."""
    if train_x.dim() == 3:  # N, H, W (MNIST) -> N, 1, H, W
        train_x, test_x = train_x.unsqueeze(1), test_x.unsqueeze(1)
    n = _subset(len(train_y), cfg.train_subset)
    train_x, train_y = train_x[:n], train_y[:n]
    n_test = _subset(len(test_y), cfg.test_subset)
    test_x, test_y = test_x[:n_test], test_y[:n_test]
    _check_norm(cfg, train_x.shape[1])
    tr_idx, va_idx = split_indices(n, cfg.val_split, cfg.split_seed)
    splits = {
        "train": (train_x[tr_idx], train_y[tr_idx]),
        "val": (train_x[va_idx], train_y[va_idx]),
        "test": (test_x, test_y),
    }
    # Every split's shape and labels and a spread sample of its images: cheap, and no two datasets
    # (or subsets, or splits) that a teacher could tell apart share it.
    digest = fingerprint(part for name, (x, y) in splits.items()
                         for part in (f"{name}{tuple(x.shape)}".encode(), y.long(), x[sample(len(x))]))
    splits = {k: (x.contiguous().to(device), y.long().to(device)) for k, (x, y) in splits.items()}

    def make_loader(split, batch_size, shuffle, augment, extras=None, exclude=(), shard=True):
        x, y = splits[split]
        if exclude:
            keep = ~torch.isin(y, torch.tensor(exclude, device=y.device))
            x, y = x[keep], y[keep]
            extras = {k: v[keep.to(v.device)] for k, v in (extras or {}).items()} or None
        shift, hflip = (cfg.shift, cfg.hflip) if augment else (0, False)
        return TensorLoader(x, y, batch_size, cfg.mean, cfg.std, shuffle=shuffle, shift=shift, hflip=hflip,
                            extras=extras, shard=shard)

    return DataBundle(
        name=cfg.name,
        num_classes=num_classes,
        in_channels=train_x.shape[1],
        image_size=train_x.shape[-1],
        sizes={k: len(y) for k, (_, y) in splits.items()},
        make_loader=make_loader,
        fingerprint=digest,
        split_labels=lambda split: splits[split][1],
        classes=list(classes) if classes else [str(i) for i in range(num_classes)],
    )


def _unreadable(cfg_name: str, path: Path, error: OSError) -> KdrunError:
    return KdrunError(f"dataset={cfg_name}: could not read {path} ({error.strerror or error}); check the file and its "
                      "permissions (a network or disk fault may pass: then run again)")


def _corrupt(cfg_name: str, path: Path, expected: str) -> KdrunError:
    return KdrunError(f"dataset={cfg_name}: {path} is corrupt ({expected}); replace it with an intact copy of the "
                      "original file")


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_dataset(cls, cfg, root: Path, device, num_classes: int) -> DataBundle:
    """The four IDX files torchvision's MNIST/FashionMNIST read, read with torchvision's own readers,
    so that a missing, a corrupt and an unreadable file are each reported as what they are."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    raw = root / cls.__name__ / "raw"
    if not all((raw / name).exists() for name in IDX_FILES):
        # Missing: torchvision downloads them (dataset.download), or the one line says what to do.
        _torchvision_splits(cls, cfg, root, f"{raw}/train-images-idx3-ubyte etc.")
    arrays = {}
    for name in IDX_FILES:
        images = "images" in name
        try:
            arrays[name] = (read_image_file if images else read_label_file)(str(raw / name))
        except OSError as e:
            raise _unreadable(cfg.name, raw / name, e) from None
        except Exception:  # a wrong magic number, a file cut short: torchvision's readers assert and reshape
            raise _corrupt(cfg.name, raw / name, f"not an IDX file of {'images' if images else 'labels'} of the "
                           "size its header gives") from None
    for split in ("train", "t10k"):
        x, y = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        if len(x) != len(y):
            raise _corrupt(cfg.name, raw / f"{split}-labels-idx1-ubyte", f"{len(y)} labels for {len(x)} images")
    return _in_memory(cfg, arrays[IDX_FILES[0]], arrays[IDX_FILES[1]], arrays[IDX_FILES[2]], arrays[IDX_FILES[3]],
                      num_classes, device, cls.classes)


@register_dataset
def mnist(cfg, root: Path, device) -> DataBundle:
    return _idx_dataset(torchvision.datasets.MNIST, cfg, root, device, 10)


@register_dataset
def fashion_mnist(cfg, root: Path, device) -> DataBundle:
    return _idx_dataset(torchvision.datasets.FashionMNIST, cfg, root, device, 10)


def _cifar(cls, cfg, root: Path, device) -> DataBundle:
    try:
        train, test = cls(str(root), train=True), cls(str(root), train=False)
    except OSError as e:
        raise _unreadable(cfg.name, Path(e.filename or root / cls.base_folder), e) from None
    except RuntimeError:  # torchvision says "not found or corrupted": which one, and which file?
        from torchvision.datasets.utils import check_integrity

        files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
        missing = [root / cls.base_folder / name for name, _ in files if not (root / cls.base_folder / name).is_file()]
        if missing:  # torchvision downloads them (dataset.download), or the one line says what to do
            train, test = _torchvision_splits(cls, cfg, root, f"{missing[0]} among the original files")
        else:
            bad = next((root / cls.base_folder / name for name, md5 in files
                        if not check_integrity(str(root / cls.base_folder / name), md5)), root / cls.base_folder)
            raise _corrupt(cfg.name, bad, "its md5 is not that of the original file") from None

    def to_tensors(ds):  # .data is N, H, W, C uint8 (numpy); .targets a list
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.tensor(ds.targets)

    return _in_memory(cfg, *to_tensors(train), *to_tensors(test), len(train.classes), device, train.classes)


@register_dataset
def cifar10(cfg, root: Path, device) -> DataBundle:
    return _cifar(torchvision.datasets.CIFAR10, cfg, root, device)


@register_dataset
def cifar100(cfg, root: Path, device) -> DataBundle:
    return _cifar(torchvision.datasets.CIFAR100, cfg, root, device)


@register_dataset
def fake(cfg, root: Path, device) -> DataBundle:
    """Class prototypes plus noise, generated from split_seed: learnable, and the same in every run."""
    g = torch.Generator().manual_seed(cfg.split_seed)
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    prototypes = torch.randn(cfg.num_classes, *shape, generator=g)

    def sample(n):
        y = torch.randint(0, cfg.num_classes, (n,), generator=g)
        x = 128 + 48 * prototypes[y] + 32 * torch.randn(n, *shape, generator=g)
        return x.clamp(0, 255).to(torch.uint8), y

    return _in_memory(cfg, *sample(cfg.num_train), *sample(cfg.num_test), cfg.num_classes, device)


@register_dataset
def image_folder(cfg, root: Path, device) -> DataBundle:
    """root/<class>/<image> (split by test_split), or root/train/... with root/test/... (or val/)."""
    if cfg.root is None:
        raise KdrunError("dataset.root is not set: image_folder needs the folder of the <class>/<image> tree "
                         "(dataset.root=/path/to/tree, or a path relative to data_dir)")
    if not root.is_dir():
        raise KdrunError(
            f"dataset.root={root}: no such folder; point dataset.root at a <class>/<image> tree "
            "(absolute, or relative to data_dir)"
        )
    _check_norm(cfg, 3)  # ImageFolder decodes every image to RGB
    size = cfg.image_size
    if size is None:
        raise KdrunError("dataset.image_size=null: image_folder needs a size to resize images to (e.g. 64)")
    normalize = [transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)]
    plain = transforms.Compose([transforms.Resize((size, size)), *normalize])
    augmented = transforms.Compose(
        [transforms.Resize((size, size))]
        + ([transforms.RandomCrop(size, padding=cfg.shift)] if cfg.shift else [])
        + ([transforms.RandomHorizontalFlip()] if cfg.hflip else [])
        + normalize
    )
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    train_dir = root / "train" if (root / "train").is_dir() and test_dir else root
    tree = _image_tree(train_dir, root)
    test_tree = _image_tree(test_dir, root) if train_dir != root else tree
    if test_tree.classes != tree.classes:
        raise KdrunError(f"dataset.root={root}: {test_dir} has other classes than {train_dir}")
    if train_dir == root:  # one tree: hold out test_split of it for test, with another seed than val
        pool, test_idx = split_indices(len(tree), cfg.test_split, cfg.split_seed + 1)
    else:
        pool, test_idx = torch.arange(len(tree)), torch.arange(len(test_tree))
    return _trees(cfg, device, tree, test_tree, pool, test_idx, augmented, plain, size)


def _image_tree(folder: Path, root: Path) -> torchvision.datasets.ImageFolder:
    try:
        return torchvision.datasets.ImageFolder(str(folder), loader=_load_image)
    except (FileNotFoundError, RuntimeError) as e:
        raise KdrunError(f"dataset.root={root}: {e}") from None


def _sample(indices: torch.Tensor, limit, seed: int) -> torch.Tensor:
    """`limit` of the indices, a fixed random sample (an image tree is sorted by class, so its first N
    would hold a class or two), in their order."""
    if not limit or limit >= len(indices):
        return indices
    return indices[torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))[:limit].sort().values]


def _files(tree) -> list:
    """(`Path(path).relative_to(tree.root).as_posix()`, class) of each file ImageFolder found (its path
    is the root, a separator, the rest), without pathlib's parsing per file: 0.02 s for 100k paths
    against 0.6 s (2 CPU cores, 2026-11-26), seconds saved per run on ImageNet's 1.3M files."""
    start = len(os.path.join(tree.root, ""))
    return [(path[start:].replace(os.sep, "/"), c) for path, c in tree.samples]


def _trees(cfg, device, tree, test_tree, pool, test_idx, augmented, plain, size: int) -> DataBundle:
    """The bundle of a train tree (train and val splits, from the indices in `pool`) and a test tree."""
    pool = _sample(pool, cfg.train_subset, cfg.split_seed + 2)
    tr, va = split_indices(len(pool), cfg.val_split, cfg.split_seed)
    indices = {"train": pool[tr], "val": pool[va], "test": _sample(test_idx, cfg.test_subset, cfg.split_seed + 3)}
    # The file list, the splits, and the bytes of a few files spread over each tree.
    files = [f for t in {id(tree): tree, id(test_tree): test_tree}.values() for f in _files(t)]
    read = [Path(t.samples[i][0]).read_bytes() for t in (tree, test_tree) for i in sample(len(t), 32).tolist()]
    digest = fingerprint([repr(files).encode(), *indices.values(), *read])

    def with_transform(ds, transform):  # a shallow copy shares the scanned file list
        ds = copy.copy(ds)
        ds.transform = transform
        return ds

    datasets = {"train": (with_transform(tree, augmented), with_transform(tree, plain)),
                "val": (None, with_transform(tree, plain)), "test": (None, with_transform(test_tree, plain))}
    bundle = loader_bundle(cfg, device, datasets, indices, len(tree.classes), 3, size, digest)
    bundle.classes = list(tree.classes)
    return bundle


def imagenet_resize(size: int, resize_size=None) -> int:
    """The shorter side an ImageNet-style evaluation resizes to before its centre crop of `size`:
    dataset.resize_size, or 256 for 224 (the usual ratio)."""
    return resize_size or round(size * 256 / 224)


@register_dataset
def imagenet(cfg, root: Path, device) -> DataBundle:
    """ImageNet's layout, root/train/<class>/ and root/val/<class>/ (ImageNet itself or any tree shaped
    like it), with the standard pipeline: RandomResizedCrop + flip for training; resize, then centre
    crop for evaluation. val/ is the test split, as in every ImageNet paper; the validation split
    that picks the best epoch is held out of train/."""
    missing = [d for d in ("train", "val") if not (root / d).is_dir()]
    if missing:
        raise KdrunError(f"dataset.root={root}: dataset=imagenet needs train/<class>/ and val/<class>/ folders there "
                         f"(no {' or '.join(d + '/' for d in missing)}); point dataset.root (absolute, or relative to "
                         "data_dir) at such a folder, or use dataset=image_folder for another layout")
    _check_norm(cfg, 3)
    size = cfg.image_size or 224
    resize = imagenet_resize(size, cfg.resize_size)
    normalize = [transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)]
    plain = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(size), *normalize])
    augmented = transforms.Compose([transforms.RandomResizedCrop(size)]
                                   + ([transforms.RandomHorizontalFlip()] if cfg.hflip else []) + normalize)
    tree, test_tree = _image_tree(root / "train", root), _image_tree(root / "val", root)
    if test_tree.classes != tree.classes:
        raise KdrunError(f"dataset.root={root}: val/ has other classes than train/ ({len(test_tree.classes)} and "
                         f"{len(tree.classes)}): both need the same <class>/ folders")
    return _trees(cfg, device, tree, test_tree, torch.arange(len(tree)), torch.arange(len(test_tree)), augmented,
                  plain, size)


@register_dataset
def custom(cfg, root: Path, device) -> DataBundle:
    """Datasets from your own code (kdrun.custom.make_datasets): their items are (image tensor C x H x W,
    label), transformed and augmented by the datasets themselves. A `val` dataset from the factory
    replaces the validation split held out of `train`."""
    from kdrun.custom import make_datasets

    made = make_datasets(cfg.target, root, cfg.kwargs)
    train, test = made["train"], made["test"]
    x, _ = train[0]
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise KdrunError(f"dataset.target={cfg.target}: the items of its datasets must be (image tensor C x H x W, "
                         f"label), but its first training image is a {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    # A dataset that lists its classes (as torchvision's do) says how many; its labels (`targets`) do too.
    if hasattr(train, "classes"):
        num_classes = len(train.classes)
    elif hasattr(train, "targets"):
        num_classes = int(max(train.targets)) + 1
    else:
        num_classes = cfg.num_classes
    pool = _sample(torch.arange(len(train)), cfg.train_subset, cfg.split_seed + 2)
    test_idx = _sample(torch.arange(len(test)), cfg.test_subset, cfg.split_seed + 3)
    if "val" in made:
        val, indices = made["val"], {"train": pool, "val": torch.arange(len(made["val"])), "test": test_idx}
    else:
        tr, va = split_indices(len(pool), cfg.val_split, cfg.split_seed)
        val, indices = train, {"train": pool[tr], "val": pool[va], "test": test_idx}
    datasets = {"train": (train, train), "val": (None, val), "test": (None, test)}
    bundle = loader_bundle(cfg, device, datasets, indices, num_classes, x.shape[0], x.shape[-1],
                           _items_fingerprint({k: v[1] for k, v in datasets.items()}, indices))
    bundle.classes = [str(c) for c in train.classes] if hasattr(train, "classes") else None
    return bundle


def _items_fingerprint(datasets: dict, indices: dict) -> str:
    """What datasets of your own hold, for the teacher cache (which ignores dataset.root, so that a
    moved dataset keeps its teachers): per split, the dataset's type and length, the chosen indices,
    their labels when the dataset lists them (`targets`; others are not read whole for this), and 32
    items spread over the split, read as the loaders read them under a fixed seed (so a dataset that
    augments its items gives the same digest each run)."""
    parts = []
    for split, dataset in datasets.items():
        chosen = indices[split]
        parts += [f"{split} {type(dataset).__name__} {len(dataset)}".encode(), chosen]
        if hasattr(dataset, "targets"):
            parts.append(torch.tensor(labels_of(dataset, chosen.tolist())))
        items = SeededItems(dataset, chosen.tolist())
        for i in sample(len(chosen), 32).tolist():
            x, y = items[(0, i)][:2]
            parts += [torch.as_tensor(x).detach().cpu(), torch.tensor([int(y)])]
    return fingerprint(parts)


def _load_image(path: str):
    """torchvision's loader (PIL, RGB), naming the file that cannot be read."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except OSError as e:  # PIL's UnidentifiedImageError (not an image, cut short) is an OSError too
        why = e.strerror or str(e).split(" <")[0] or type(e).__name__
        raise KdrunError(f"dataset.root: cannot read the image {path} ({why}); remove it "
                         "or replace it with an intact image") from None
