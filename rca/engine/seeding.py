"""Reproducible randomness: one config seed -> Python, NumPy and torch, per rank, epoch and worker.

Two granularities:

* per epoch (``train_cls``): each epoch starts from a state derived only from ``(seed, epoch, rank)``
  (:func:`seed_epoch`), so a run resumed at an epoch boundary replays exactly the batches,
  augmentations and dropout of an uninterrupted run, with any number of data-loader workers;
* per sample (``train_seg``, which checkpoints mid-epoch): :class:`SeededItems` draws the
  augmentation of each sample from its own seed ``(seed, epoch, index)`` (:func:`seeded_indices`),
  so a run resumed at any iteration replays exactly the remaining batches of the epoch.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (e.g. config seed, epoch, rank), stable across runs."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Seed the global RNGs for one epoch of one rank; return a generator for its data loader."""
    epoch_seed = derive_seed(seed, epoch, rank)
    seed_everything(epoch_seed)
    return torch.Generator().manual_seed(epoch_seed)


def worker_init_fn(worker_id: int) -> None:
    """Data-loader worker start-up: seed ``random`` and NumPy from the worker's torch seed.

    torch already gives every worker ``base_seed + worker_id`` (``base_seed`` drawn from the
    loader's generator); this extends it to the other libraries an augmentation might use.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def seeded_indices(indices, seed: int, epoch: int) -> list[tuple[int, int]]:
    """``(index, sample seed)`` keys for :class:`SeededItems`; a sample's seed is ``(seed, epoch, index)``."""
    return [(int(index), derive_seed(seed, epoch, int(index))) for index in indices]


class SeededItems(Dataset):
    """``dataset`` indexed by ``(index, sample seed)``: item ``index`` augmented from its own seed.

    The item's transform runs with torch's global RNG seeded from the sample seed (the transforms
    of :mod:`rca.data.transforms` draw from it only), inside ``torch.random.fork_rng`` so the
    caller's RNG is left as it was. The augmentation of a sample therefore depends on nothing but
    its key: not on the samples before it, the data-loader workers, or a resume.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, sample_seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.dataset[index]
