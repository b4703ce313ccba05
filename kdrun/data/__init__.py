"""Datasets: a builder per dataset returns a DataBundle (train/val/test, classes, shape).

MNIST-, Fashion-MNIST- and CIFAR-sized data are held in memory as uint8 tensors on the device and
batched by shuffled index (kdrun.data.memory); image folders go through torchvision's DataLoader.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch

from kdrun import KdrunError

BUILDERS: Dict[str, Callable[..., "DataBundle"]] = {}


def register_dataset(fn):
    BUILDERS[fn.__name__] = fn
    return fn


@dataclass
class DataBundle:
    """What a run needs to know about its data. `loader()` gives an iterable of (images, labels)."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    sizes: Dict[str, int]  # images per split: train, val (0 when there is none), test
    make_loader: Callable[..., Iterable] = field(repr=False)
    in_memory: bool = True  # held as tensors on the device (else read from files by a DataLoader)
    split_labels: Optional[Callable[[str], torch.Tensor]] = field(default=None, repr=False)  # fast path of labels()
    fingerprint: str = ""  # what the data is (not where it lives): part of the teacher cache's key
    # Recorded in every checkpoint, so that a model can be fed and its outputs named after the run:
    classes: Optional[List[str]] = None  # the class names, in label order
    config: Dict[str, Any] = field(default_factory=dict)  # the dataset config it was built from (build_data)

    def loader(self, split: str, batch_size: int, shuffle: bool = False, augment: bool = False,
               extras: Optional[Dict[str, torch.Tensor]] = None, exclude: Sequence[int] = (),
               shard: bool = True) -> Iterable:
        """Batches of (images, labels), or (images, labels, {name: extra[idx]}) with `extras`: tensors
        with one row per image of the split, in its order (a teacher's cached logits, each image's
        index). Images of the classes in `exclude` are left out (e.g. Hinton et al.'s transfer set
        without any 3). Under DDP (kdrun.distributed) each process gets its shard and its share of
        `batch_size`, the global batch, unless `shard` is false."""
        if self.sizes.get(split, 0) == 0:
            raise ValueError(f"the {split} split is empty")
        return self.make_loader(split, batch_size, shuffle, augment, extras, tuple(exclude), shard)

    def labels(self, split: str) -> torch.Tensor:
        """Every label of a split, in its order."""
        if self.split_labels is not None:
            return self.split_labels(split)
        return torch.cat([y for _, y in self.loader(split, 1024, shard=False)])  # all of them, on every process

    @property
    def has_val(self) -> bool:
        return self.sizes.get("val", 0) > 0


def split_indices(n: int, val_split: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Holds out a seeded random `val_split` (fraction < 1, or a count) of n training images."""
    n_val = int(round(val_split * n)) if val_split < 1 else int(val_split)
    if n_val >= n:
        raise KdrunError(
            f"dataset.val_split={val_split}: holds out {n_val} of only {n} training images; "
            "use a smaller fraction or count (or 0 for no validation split)"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def fingerprint(parts: Iterable) -> str:
    """A cheap digest of what the data is: byte strings and tensors (on the CPU), hashed in order."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def sample(n: int, k: int = 1024) -> torch.Tensor:
    """Up to k indices spread evenly over range(n): which images a fingerprint reads."""
    return torch.linspace(0, n - 1, min(n, k)).long() if n else torch.zeros(0, dtype=torch.long)


def resolve_root(data_dir: str, root: Optional[str]) -> Path:
    base = Path(os.path.expanduser(data_dir))
    if root is None:
        return base
    root_path = Path(os.path.expanduser(root))
    return root_path if root_path.is_absolute() else base / root_path


def build_data(ds_cfg, data_dir: str, device: torch.device) -> DataBundle:
    """Builds the dataset named by `ds_cfg.name` from its config node."""
    if ds_cfg.name not in BUILDERS:
        raise KdrunError(f"dataset.name={ds_cfg.name!r} is unknown: choose one of {', '.join(sorted(BUILDERS))}")
    published = ds_cfg.get("protocol", "validation") == "best_test_epoch"
    if published:
        from omegaconf import OmegaConf

        ds_cfg = OmegaConf.merge(ds_cfg, {"val_split": 0})
    bundle = BUILDERS[ds_cfg.name](ds_cfg, resolve_root(data_dir, ds_cfg.root), device)
    bundle = test_as_validation(bundle) if published else bundle
    from omegaconf import OmegaConf

    bundle.config = OmegaConf.to_container(ds_cfg, resolve=True) if OmegaConf.is_config(ds_cfg) else dict(ds_cfg)
    return bundle


def test_as_validation(bundle: DataBundle) -> DataBundle:
    """The published CIFAR protocol: no held-out images; the test set stands in for the validation split,
    so the best epoch is chosen on it, as the papers' tables report (max test accuracy over epochs)."""
    import dataclasses
    import logging

    logging.getLogger(__name__).warning(
        "dataset.protocol=best_test_epoch: every training image trains and the best epoch is chosen on the test "
        "set, as the published CIFAR tables do; its accuracy is not an unbiased estimate (for comparisons only)")

    def as_test(split: str) -> str:
        return "test" if split == "val" else split

    labels = bundle.split_labels
    return dataclasses.replace(bundle, sizes={**bundle.sizes, "val": bundle.sizes["test"]},
                               make_loader=lambda split, *args: bundle.make_loader(as_test(split), *args),
                               split_labels=(lambda split: labels(as_test(split))) if labels else None)


from kdrun.data import builders  # noqa: E402,F401  (registers the builders)
