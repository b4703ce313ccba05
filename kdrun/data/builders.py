"""One builder per dataset. Each returns a DataBundle; torchvision does all the file reading."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torchvision
from torchvision import transforms

from kdrun import KdrunError
from kdrun.data import DataBundle, register_dataset, split_indices
from kdrun.data.memory import TensorLoader


def _missing(cfg_name: str, what: str, root: Path, expected: str) -> KdrunError:
    return KdrunError(
        f"dataset={cfg_name}: {what} not found under {root} (torchvision expects {expected}; it cannot be "
        "downloaded here): set data_dir=/path/to/datasets or the KDRUN_DATA_DIR environment variable"
    )


def _check_norm(cfg, channels: int) -> None:
    if len(cfg.mean) != channels:
        raise KdrunError(
            f"dataset.mean={list(cfg.mean)}: {cfg.name} images have {channels} channel(s); give one mean "
            "and one std per channel"
        )


def _subset(n: int, cfg) -> int:
    return min(n, cfg.train_subset) if cfg.train_subset else n


def _in_memory(cfg, train_x, train_y, test_x, test_y, num_classes: int, device, classes=None) -> DataBundle:
    """Splits, moves to the device once, and wraps the tensors in TensorLoaders."""
    if train_x.dim() == 3:  # N, H, W (MNIST) -> N, 1, H, W
        train_x, test_x = train_x.unsqueeze(1), test_x.unsqueeze(1)
    n = _subset(len(train_y), cfg)
    train_x, train_y = train_x[:n], train_y[:n]
    _check_norm(cfg, train_x.shape[1])
    tr_idx, va_idx = split_indices(n, cfg.val_split, cfg.split_seed)
    splits = {
        "train": (train_x[tr_idx], train_y[tr_idx]),
        "val": (train_x[va_idx], train_y[va_idx]),
        "test": (test_x, test_y),
    }
    splits = {k: (x.contiguous().to(device), y.long().to(device)) for k, (x, y) in splits.items()}

    def make_loader(split, batch_size, shuffle, augment, extras=None, exclude=()):
        x, y = splits[split]
        if exclude:
            keep = ~torch.isin(y, torch.tensor(exclude, device=y.device))
            x, y = x[keep], y[keep]
            extras = {k: v[keep.to(v.device)] for k, v in (extras or {}).items()} or None
        shift, hflip = (cfg.shift, cfg.hflip) if augment else (0, False)
        return TensorLoader(x, y, batch_size, cfg.mean, cfg.std, shuffle=shuffle, shift=shift, hflip=hflip,
                            extras=extras)

    return DataBundle(
        name=cfg.name,
        num_classes=num_classes,
        in_channels=train_x.shape[1],
        image_size=train_x.shape[-1],
        sizes={k: len(y) for k, (_, y) in splits.items()},
        make_loader=make_loader,
        classes=list(classes) if classes else [str(i) for i in range(num_classes)],
    )


def _idx_dataset(cls, cfg, root: Path, device, num_classes: int) -> DataBundle:
    # torchvision's MNIST/FashionMNIST hold the decoded IDX files as uint8 tensors in .data
    try:
        train, test = cls(str(root), train=True), cls(str(root), train=False)
    except RuntimeError:
        raise _missing(cfg.name, cls.__name__, root, f"{root / cls.__name__ / 'raw'}/train-images-idx3-ubyte etc.") from None
    return _in_memory(cfg, train.data, train.targets, test.data, test.targets, num_classes, device, cls.classes)


@register_dataset
def mnist(cfg, root: Path, device) -> DataBundle:
    return _idx_dataset(torchvision.datasets.MNIST, cfg, root, device, 10)


@register_dataset
def fashion_mnist(cfg, root: Path, device) -> DataBundle:
    return _idx_dataset(torchvision.datasets.FashionMNIST, cfg, root, device, 10)


def _cifar(cls, cfg, root: Path, device) -> DataBundle:
    try:
        train, test = cls(str(root), train=True), cls(str(root), train=False)
    except RuntimeError:
        raise _missing(cfg.name, cls.__name__, root, f"{root / cls.base_folder} with the original, md5-checked files") from None

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
    try:
        tree = torchvision.datasets.ImageFolder(str(train_dir))
        test_tree = torchvision.datasets.ImageFolder(str(test_dir)) if train_dir != root else tree
    except (FileNotFoundError, RuntimeError) as e:
        raise KdrunError(f"dataset.root={root}: {e}") from None
    if test_tree.classes != tree.classes:
        raise KdrunError(f"dataset.root={root}: {test_dir} has other classes than {train_dir}")

    all_idx = torch.arange(len(tree))
    if train_dir == root:  # one tree: hold out test_split of it for test, with another seed than val
        pool, test_idx = split_indices(len(tree), cfg.test_split, cfg.split_seed + 1)
    else:
        pool, test_idx = all_idx, torch.arange(len(test_tree))
    pool = pool[: _subset(len(pool), cfg)]
    tr, va = split_indices(len(pool), cfg.val_split, cfg.split_seed)
    indices = {"train": pool[tr], "val": pool[va], "test": test_idx}
    source = {"train": tree, "val": tree, "test": test_tree}

    def with_transform(ds, transform):  # a shallow copy shares the scanned file list
        ds = copy.copy(ds)
        ds.transform = transform
        return ds

    def make_loader(split, batch_size, shuffle, augment, extras=None, exclude=()):
        ds = with_transform(source[split], augmented if augment else plain)
        chosen = [i for i in indices[split].tolist() if ds.targets[i] not in exclude]
        return torch.utils.data.DataLoader(
            torch.utils.data.Subset(ds, chosen),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )

    return DataBundle(
        name=cfg.name,
        num_classes=len(tree.classes),
        in_channels=3,
        image_size=size,
        sizes={k: len(v) for k, v in indices.items()},
        make_loader=make_loader,
        in_memory=False,
        classes=list(tree.classes),
    )
