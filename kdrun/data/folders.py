"""The DataLoader path, for data read from files (image folders, ImageNet, your own Datasets): worker
processes, pinned memory, persistent workers and prefetching.

Augmentation stays a function of (the epoch's seed, the image) alone: each item is read with the
random generator seeded from both, so which worker reads it, how many workers there are and whether
they persist across epochs change nothing, and a resumed run draws the same crops as an
uninterrupted one."""
from __future__ import annotations

import contextlib
import random
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kdrun import KdrunError, distributed
from kdrun.data import DataBundle


class SeededItems(Dataset):
    """`dataset[indices[i]]`, read as item `(seed, i)` under a generator seeded from both; with
    `extras` (one row per item: cached logits, each image's index for CRD), (image, label, {name: row})."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], extras: Optional[Dict[str, torch.Tensor]] = None):
        self.dataset, self.indices, self.extras = dataset, list(indices), extras

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: Tuple[int, int]):
        seed, i = key
        with _seeded((seed * 1_000_003 + i) % 2**63):
            item = self.dataset[self.indices[i]]
        return (*item, {k: v[i] for k, v in self.extras.items()}) if self.extras else item


@contextlib.contextmanager
def _seeded(seed: int):
    """torch's CPU, Python's and NumPy's generators seeded (torchvision's transforms use the first, other
    augmentation libraries the others), then restored: the reading process's own state is untouched.
    Only the CPU generator: torch.manual_seed would also reseed the CUDA/MPS/XPU ones, which fork_rng
    (devices=[]) does not restore, so with num_workers=0 every item read would reset the GPU's random
    stream (and it costs ~30x more per item)."""
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])


class SeededOrder(Sampler):
    """Positions 0..n-1 (shuffled or not), each paired with one seed per pass, both drawn from the global
    generator that the engine seeds per epoch. They are its only draws in a pass: the DataLoader gets a
    generator of its own for its workers' base seed (which SeededItems makes moot), so persistent
    workers, which draw none on later passes, leave the same global state as fresh ones.

    With `shard`, under DDP, this process's share of the order (kdrun.distributed.shard): every process
    draws the same seed and order, so an image is augmented alike at any world size."""

    def __init__(self, n: int, shuffle: bool, shard: bool = False):
        self.n, self.shuffle, self.shard = n, shuffle, shard

    def __len__(self) -> int:
        return distributed.shard_size(self.n, train=self.shuffle) if self.shard else self.n

    def __iter__(self):
        seed = int(torch.randint(0, 2**62, ()))
        order = torch.randperm(self.n) if self.shuffle else torch.arange(self.n)
        if self.shard:
            order = distributed.shard(order, train=self.shuffle)
        return iter([(seed, i) for i in order.tolist()])


def labels_of(dataset: Dataset, indices: Sequence[int]) -> list:
    targets = getattr(dataset, "targets", None)  # torchvision's datasets list them; others are read
    return [int(targets[i]) if targets is not None else int(dataset[i][1]) for i in indices]


def loader_bundle(cfg, device: torch.device, datasets: Dict[str, Tuple[Optional[Dataset], Dataset]],
                  indices: Dict[str, torch.Tensor], num_classes: int, in_channels: int, image_size: int,
                  fingerprint: str = "") -> DataBundle:
    """A DataBundle over map-style datasets: `datasets[split]` is (the augmented view or None, the plain
    view), `indices[split]` the items of that split. `cfg` gives the DataLoader's workers and prefetching;
    `fingerprint` says what the data is (kdrun.data.fingerprint), for the teacher cache's key."""

    def make_loader(split, batch_size, shuffle, augment, extras=None, exclude=(), shard=True):
        augmented, plain = datasets[split]
        dataset = augmented if augment and augmented is not None else plain
        chosen = indices[split].tolist()
        kept = list(range(len(chosen)))  # positions in the split, which extras are indexed by
        if exclude:
            kept = [p for p, y in zip(kept, labels_of(dataset, chosen)) if y not in exclude]
            chosen = [chosen[p] for p in kept]
        rows = {k: v[kept] for k, v in extras.items()} if extras else None
        workers = cfg.num_workers
        shard = shard and distributed.world_size() > 1  # under DDP: this process's share of each batch
        batch_size = distributed.local_batch(batch_size) if shard else batch_size
        return _OneLineErrors(DataLoader(SeededItems(dataset, chosen, rows), batch_size=batch_size,
                                         sampler=SeededOrder(len(chosen), shuffle, shard),
                          num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                          prefetch_factor=cfg.prefetch_factor if workers > 0 else None, generator=torch.Generator()))

    return DataBundle(name=cfg.name, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                      sizes={k: len(v) for k, v in indices.items()}, make_loader=make_loader, in_memory=False,
                      fingerprint=fingerprint,
                      split_labels=lambda split: torch.tensor(labels_of(datasets[split][1], indices[split].tolist()),
                                                              dtype=torch.long))


class _OneLineErrors:
    """A DataLoader whose workers' errors keep their one line: torch re-raises an error of a worker
    with the worker's traceback in its message."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):  # the DataLoader's own attributes (sampler, dataset...)
        return getattr(self.loader, name)

    def __iter__(self):
        try:
            yield from self.loader
        except KdrunError as e:
            raise KdrunError(str(e).strip().splitlines()[-1].removeprefix("kdrun.KdrunError: ")) from None
