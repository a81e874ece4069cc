"""Multi-scale training batches (CAS-ViT's ``--multi_scale_sampler``), DDP-aware.

Each batch has its own resolution ``(h, w)`` drawn from a few sizes between the configured
minimum and maximum crops, with a batch size that keeps ``batch * h * w`` near the base batch at
the base resolution (never below the base batch). Every rank draws the same resolution sequence
from ``seed + epoch``, so all ranks run the same number of steps; each rank reads its own
interleaved share of one shuffled index list, as ``DistributedSampler`` does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler


def make_divisible(value: float, divisor: int = 32) -> int:
    """Nearest multiple of ``divisor`` (at least ``divisor``), never more than 10% below ``value``."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


def scale_batch_pairs(base_h: int, base_w: int, base_batch: int, min_h: int, max_h: int, min_w: int, max_w: int,
                      n_scales: int = 5, divisor: int = 32) -> list[tuple[int, int, int]]:
    """Sorted ``(h, w, batch_size)`` choices: ``n_scales`` sizes plus the base size, sides
    rounded to ``divisor``, batch sizes scaled by area (even when above the base batch)."""
    heights = list(np.linspace(min_h, max_h, n_scales)) + [base_h]
    widths = list(np.linspace(min_w, max_w, n_scales)) + [base_w]
    pairs = set()
    for h, w in zip(heights, widths):
        h, w = make_divisible(h, divisor), make_divisible(w, divisor)
        bsz = max(base_batch, round(base_batch * base_h * base_w / (h * w)))
        if bsz > base_batch and bsz % 2:
            bsz -= 1
        pairs.add((h, w, bsz))
    return sorted(pairs)


class MultiScaleBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Yields batches of ``(h, w, index)``; pair it with :class:`MultiScaleDataset`."""

    def __init__(self, n_samples: int, pairs: list[tuple[int, int, int]], seed: int = 0, shuffle: bool = True,
                 num_replicas: int | None = None, rank: int | None = None) -> None:
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.n_samples, self.pairs, self.seed, self.shuffle = n_samples, list(pairs), seed, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.per_replica = math.ceil(n_samples / num_replicas)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shapes(self, rng: random.Random) -> list[tuple[int, int, int]]:
        shapes, start = [], 0
        while start < self.per_replica:
            h, w, bsz = rng.choice(self.pairs)
            shapes.append((h, w, bsz))
            start += bsz
        return shapes

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        rng = random.Random(self.seed + self.epoch)
        indices = list(range(self.n_samples))
        if self.shuffle:
            rng.shuffle(indices)
        total = self.per_replica * self.num_replicas
        indices += indices[: total - len(indices)]
        mine = indices[self.rank : total : self.num_replicas]
        start = 0
        for h, w, bsz in self._shapes(rng):
            batch = mine[start : start + bsz]
            if len(batch) < bsz:  # wrap around so every batch is full
                batch += (mine * (bsz // len(mine) + 1))[: bsz - len(batch)]
            start += bsz
            yield [(h, w, i) for i in batch]

    def __len__(self) -> int:
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            rng.shuffle(list(range(self.n_samples)))
        return len(self._shapes(rng))


class MultiScaleDataset(Dataset):
    """Applies the transform for each item's batch resolution; transforms are built once per size."""

    def __init__(self, dataset: Dataset, transform_for_size: Callable[[tuple[int, int]], Callable]) -> None:
        self.dataset, self.transform_for_size = dataset, transform_for_size
        self._cache: dict[tuple[int, int], Callable] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]):
        h, w, index = key
        if (h, w) not in self._cache:
            self._cache[(h, w)] = self.transform_for_size((h, w) if h != w else h)
        img, target = self.dataset[index]
        return self._cache[(h, w)](img), target
