"""The in-memory data path (after airbench / hlb-cifar10): the whole dataset is one uint8 tensor
on the device; batches are drawn by shuffled index and augmented a whole batch at a time."""
from __future__ import annotations

import math
from typing import Dict, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from kdrun import distributed


def shift_batch(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translates each image by its own random offset of up to max_shift pixels (zero fill):
    the same as torchvision's RandomCrop(size, padding=max_shift), for a whole batch at once."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def flip_batch(x: torch.Tensor) -> torch.Tensor:
    """Mirrors a random half of the images left-right."""
    mask = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)


class TensorLoader:
    """Iterates (normalised float images, labels) over uint8 images held in memory."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        shift: int = 0,
        hflip: bool = False,
        extras: Optional[Dict[str, torch.Tensor]] = None,
        shard: bool = True,
    ):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        # Under DDP: this process's share of every global batch, from its shard of the global order.
        self.shard = shard and distributed.world_size() > 1
        self.step = distributed.local_batch(batch_size) if self.shard else batch_size
        self.extras = {k: v.to(images.device) for k, v in (extras or {}).items()}
        for name, value in self.extras.items():
            if len(value) != len(labels):
                raise ValueError(f"extra {name!r} has {len(value)} rows for {len(labels)} images")
        self.shuffle, self.shift, self.hflip = shuffle, shift, hflip
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=images.device).view(shape) * 255
        self.std = torch.tensor(std, dtype=torch.float32, device=images.device).view(shape) * 255

    def __len__(self) -> int:
        n = len(self.labels)
        return math.ceil((distributed.shard_size(n, train=self.shuffle) if self.shard else n) / self.step)

    def __iter__(self) -> Iterator[tuple]:
        n = len(self.labels)
        device = self.images.device
        # Drawn from the global RNG, which the engine seeds per epoch: a resumed run sees the same order
        # (and under DDP every process the same global order, of which it takes its shard).
        order = torch.randperm(n).to(device) if self.shuffle else torch.arange(n, device=device)
        if self.shard:
            order = distributed.shard(order, train=self.shuffle)
        for start in range(0, len(order), self.step):
            idx = order[start : start + self.step]
            x = self.images[idx]
            if self.shift:
                x = shift_batch(x, self.shift)
            if self.hflip:
                x = flip_batch(x)
            x = (x.float() - self.mean) / self.std
            if self.extras:
                yield x, self.labels[idx], {k: v[idx] for k, v in self.extras.items()}
            else:
                yield x, self.labels[idx]
