"""The regional memory bank of RCA: per-class queues of region embeddings.

Zhou et al., "Regional Semantic Contrast and Aggregation for Weakly Supervised Semantic
Segmentation", CVPR 2022, arXiv:2203.09653, Sec. 3.1: the memory stores, for every class, the embeddings of object
regions seen across the whole training set. Semantic contrast (:mod:`rca.losses.semantic_contrast`)
reads them as positives/negatives and semantic aggregation (:mod:`rca.models.classifier`) clusters
them into class centres.

Two update rules are offered:

* ``"fifo"`` (MoCo-style queue): each new embedding replaces the oldest entry of its class.
* ``"ema"`` (the released code, maeve07/RCA ``_dequeue_and_enqueue``): the embedding is blended
  into the slot at the class pointer, ``slot = m * slot + (1 - m) * e``, and the pointer advances.
  An empty slot simply takes ``e`` (the released code starts from random slots instead).

Under ``torch.distributed`` every rank writes the embeddings of all ranks, in rank order, so all
ranks hold the same bank without any broadcast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rca.engine.distributed import all_gather_rows

MEMORY_MODES = ("fifo", "ema")


class RegionalMemory(nn.Module):
    """Per-class ring buffers of L2-normalised region embeddings.

    The state lives in buffers, so it follows ``.to(device)`` and is saved in ``state_dict``
    (bank, write pointers and fill counts round-trip exactly).

    Buffers:
        bank: ``(num_classes, size, dim)`` float, unit-norm rows where filled, zeros elsewhere.
        ptr: ``(num_classes,)`` int64, the slot the next embedding of each class goes to.
        filled: ``(num_classes,)`` int64, how many slots of each class hold an embedding
            (slots ``0 .. filled - 1``; the bank fills from slot 0 and then wraps around).

    Args:
        num_classes: number of classes (foreground classes of the classifier).
        size: slots per class (the paper and released code use 500).
        dim: embedding dimension.
        mode: ``"fifo"`` or ``"ema"`` (see the module docstring).
        momentum: ``m`` of the ``"ema"`` rule, in [0, 1) (released code: 0.99).

    Raises:
        ValueError: on a non-positive size/dim/num_classes, an unknown mode or a momentum outside
            [0, 1).
    """

    def __init__(self, num_classes: int, size: int = 500, dim: int = 128, mode: str = "fifo",
                 momentum: float = 0.99):
        super().__init__()
        if num_classes < 1 or size < 1 or dim < 1:
            raise ValueError(f"RegionalMemory needs num_classes, size and dim >= 1, got "
                             f"{num_classes}, {size}, {dim}")
        if mode not in MEMORY_MODES:
            raise ValueError(f"memory mode must be one of {MEMORY_MODES}, got {mode!r} "
                             f"(config key cls.memory_mode)")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory momentum must be in [0, 1), got {momentum} "
                             f"(config key cls.memory_momentum)")
        self.num_classes, self.size, self.dim = num_classes, size, dim
        self.mode, self.momentum = mode, momentum
        self.register_buffer("bank", torch.zeros(num_classes, size, dim))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.long))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, size={self.size}, dim={self.dim}, "
                f"mode={self.mode!r}, momentum={self.momentum}")

    def __len__(self) -> int:
        """Total number of filled slots over all classes."""
        return int(self.filled.sum())

    @property
    def num_filled(self) -> torch.Tensor:
        """``(num_classes,)`` int64: filled slots per class (a copy, handy for logging)."""
        return self.filled.clone()

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Write region embeddings into the queues of their classes.

        Embeddings of one class are written in the order given, at consecutive slots from the
        class pointer, wrapping around the ring. Under an initialised process group with more than
        one rank, the embeddings of all ranks are gathered first (rank 0's first), so every rank
        performs the same writes.

        Args:
            embeddings: ``(N, dim)`` float, any norm (L2-normalised here); N may be 0.
            labels: ``(N,)`` integer class indices in ``[0, num_classes)``.

        Raises:
            ValueError: on wrong shapes or labels out of range.
        """
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"memory push expects embeddings of shape (N, {self.dim}), "
                             f"got {tuple(embeddings.shape)}")
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"memory push expects labels of shape ({embeddings.shape[0]},), "
                             f"got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"memory push expects integer labels, got {labels.dtype}")
        embeddings = F.normalize(embeddings.to(self.bank), dim=1)
        labels = labels.to(device=self.bank.device, dtype=torch.long)
        embeddings, labels = all_gather_rows(embeddings, labels)
        if labels.numel() == 0:
            return
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"memory push labels must lie in [0, {self.num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        # rank of each embedding among those of its class in this push: 0, 1, 2, ...
        one_hot = F.one_hot(labels, self.num_classes)
        rank = one_hot.cumsum(0).gather(1, labels[:, None]).squeeze(1) - 1
        counts = one_hot.sum(0)
        # A class with more than `size` embeddings laps its ring; each lap writes distinct slots,
        # so laps are applied in order and each one is a plain vectorised scatter.
        for lap in range(int(counts.max() - 1) // self.size + 1):
            sel = (rank >= lap * self.size) & (rank < (lap + 1) * self.size)
            cls, emb = labels[sel], embeddings[sel]
            slot = (self.ptr[cls] + rank[sel]) % self.size
            if self.mode == "ema":
                old = self.bank[cls, slot]
                empty = (slot >= self.filled[cls])[:, None]
                blended = F.normalize(self.momentum * old + (1 - self.momentum) * emb, dim=1)
                emb = torch.where(empty, emb, blended)
            self.bank[cls, slot] = emb
            n = torch.bincount(cls, minlength=self.num_classes)
            self.ptr.copy_((self.ptr + n) % self.size)
            self.filled.copy_((self.filled + n).clamp(max=self.size))

    @torch.no_grad()
    def fill_random(self, generator: torch.Generator | None = None) -> None:
        """Fill every slot of every class with a random unit vector (uniform on the sphere).

        The bank as it stands once training has filled it (``len(self) == num_classes * size``,
        every pointer back at slot 0, the oldest entry): ``scripts/benchmark.py`` times the steady
        state with it, where an empty bank would skip the contrast and the aggregation.
        Under ``torch.distributed`` give every rank the same ``generator`` seed to keep the banks
        identical.

        Args:
            generator: optional ``torch.Generator`` on the bank's device for the draws.
        """
        draws = torch.randn(self.bank.shape, generator=generator, device=self.bank.device)
        self.bank.copy_(F.normalize(draws, dim=2))
        self.ptr.zero_()
        self.filled.fill_(self.size)

    def keys(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled entries of the bank, class by class.

        Returns:
            ``keys`` ``(K, dim)`` float, L2-normalised, and ``labels`` ``(K,)`` int64 class indices,
            where K = ``len(self)``. Both are new tensors (not views of the bank).
        """
        slots = torch.arange(self.size, device=self.bank.device)
        mask = slots[None, :] < self.filled[:, None]
        classes = torch.arange(self.num_classes, device=self.bank.device)
        return self.bank[mask], classes[:, None].expand(-1, self.size)[mask]
