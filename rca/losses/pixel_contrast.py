"""Pixel contrast: supervised pixel-to-pixel InfoNCE across the images of a batch, optionally
against a memory of pixel and segment embeddings.

Wang, Zhou, Yu, Dai, Konukoglu, Van Gool, "Exploring Cross-Image Pixel Contrast for Semantic
Segmentation", ICCV 2021, arXiv:2101.11939 (released code: tfzhou/ContrastiveSeg).

Loss (the paper's pixel-wise InfoNCE, with the released code's ``temperature / base_temperature`` scale): for an anchor
pixel embedding ``i`` with positives ``P_i`` (same label, ``p != i``) and negatives ``N_i``,

    L_i = -(t / t_b) 1/|P_i| sum_{p in P_i} log( exp(i.p/t) / (exp(i.p/t) + sum_{n in N_i} exp(i.n/t)) ),

averaged over anchors (t = 0.1, t_b = 0.07). Anchors come from the segmentation-aware hard anchor
sampler (:func:`hard_anchor_sampling`). The memory variant ("pixel-to-region"
and "pixel-to-pixel" memory) keeps one pixel queue and one segment queue per class and contrasts
the anchors with the memory only, as the released code does.

Choices where the released code differs from the paper or from itself, and what is done here:

* Memory update: the released ``_dequeue_and_enqueue`` skips class 0 (``x > 0``), advances the
  pixel pointer by 1 instead of by the number written, and overwrites the last slots on wrap-around.
  Here every class is kept (a background class is a real class) and the queues are
  :class:`rca.memory.RegionalMemory` rings (each push advances the pointer by the number written,
  wrapping around). Memories start empty rather than random: anchors with no positive or no
  negative in the memory are skipped.
* The released code removes "self" pairs from the memory contrast by position (a bug that drops
  arbitrary memory entries); here nothing is removed (an anchor is never in the memory it is
  contrasted with, because the batch is enqueued after the loss).
* When more than ``max_samples`` (image, class) pairs qualify, the released code's ``n_view`` is 0
  (no anchor); here it is clamped to 1.
* Under DDP each rank's anchors are contrasted with the anchors of all ranks (gathered, other ranks
  without gradient), and the memories receive the pixels of all ranks.
"""

from __future__ import annotations

import torch
from torch import nn

from rca.engine.distributed import all_gather_rows, is_distributed
from rca.losses.info_nce import info_nce, resize_labels
from rca.memory import RegionalMemory
from rca.models.heads import ProjectionHead


def pixel_contrast_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1,
                        base_temperature: float = 0.07) -> torch.Tensor:
    """Pixel-to-pixel supervised InfoNCE within a set of pixel embeddings (module docstring).

    Every row is an anchor; its positives are the other rows with its label, its negatives all rows
    with another label. Anchors with no positive or no negative are skipped (no NaN); if all are
    skipped the result is a graph-preserving zero.

    Args:
        embeddings: ``(N, D)`` float, L2-normalised rows.
        labels: ``(N,)`` integer class indices.
        temperature: ``t > 0``.
        base_temperature: ``t_b > 0``; the loss is scaled by ``t / t_b``.

    Returns:
        Scalar float32 >= 0. Known values: classes of ``m`` identical rows, orthogonal between
        classes, ``N`` rows in all: ``(t/t_b) log(1 + (N - m) exp(-1/t))``; all rows equal:
        ``(t/t_b) log(1 + N - m)``.

    Raises:
        ValueError: on mismatched shapes or a non-positive temperature.
    """
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"pixel_contrast_loss expects labels (N,) for embeddings (N, D), got "
                         f"{tuple(labels.shape)} and {tuple(embeddings.shape)}")
    if base_temperature <= 0:
        raise ValueError(f"base_temperature must be > 0, got {base_temperature}")
    same = labels[:, None] == labels[None, :]
    not_self = ~torch.eye(labels.numel(), dtype=torch.bool, device=labels.device)
    return temperature / base_temperature * info_nce(embeddings, embeddings, same & not_self, ~same, temperature)


def hard_anchor_sampling(embeddings: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
                         max_samples: int = 1024, max_views: int = 100, ignore_index: int = 255,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Segmentation-aware hard anchor sampling (Wang et al., ICCV 2021, arXiv:2101.11939).

    Per image, every class (not ``ignore_index``) with more than ``max_views`` pixels is a pair;
    with ``n_pairs`` pairs in the batch each pair gets ``n_view = min(max_samples // n_pairs,
    max_views)`` anchors (at least 1): half "hard" (label c, predicted not c) and half "easy"
    (label c, predicted c), the short set taken whole and the other filling the rest. Pixels are
    drawn uniformly without replacement.

    Args:
        embeddings: ``(B, D, h, w)`` float pixel embeddings.
        labels: ``(B, h, w)`` int64 labels at the embedding size (255 = ignore).
        predictions: ``(B, h, w)`` int64 predicted classes at the embedding size.
        max_samples, max_views: sampler budget (paper: 1024 and 100).
        generator: optional ``torch.Generator`` on the labels' device, for reproducible draws.

    Returns:
        ``anchors`` ``(n_pairs * n_view, D)`` (rows of ``embeddings``, gradients flow) and
        ``anchor_labels`` ``(n_pairs * n_view,)`` int64; both empty when no class qualifies.

    Raises:
        ValueError: on inconsistent shapes.
    """
    if labels.shape != predictions.shape or labels.shape != embeddings.shape[:1] + embeddings.shape[2:]:
        raise ValueError(f"hard_anchor_sampling expects labels and predictions (B, h, w) matching "
                         f"embeddings (B, D, h, w), got {tuple(labels.shape)}, {tuple(predictions.shape)} "
                         f"and {tuple(embeddings.shape)}")
    flat_labels, flat_preds = labels.flatten(1), predictions.flatten(1)
    pairs = []
    for b in range(labels.shape[0]):
        classes, counts = flat_labels[b].unique(return_counts=True)
        pairs += [(b, int(c)) for c, n in zip(classes, counts) if c != ignore_index and n > max_views]
    dim = embeddings.shape[1]
    if not pairs:
        return embeddings.new_zeros(0, dim), labels.new_zeros(0)
    n_view = max(1, min(max_samples // len(pairs), max_views))
    rows, anchor_labels = [], []
    for b, c in pairs:
        is_c = flat_labels[b] == c
        hard = (is_c & (flat_preds[b] != c)).nonzero().squeeze(1)
        easy = (is_c & (flat_preds[b] == c)).nonzero().squeeze(1)
        n_hard = min(len(hard), max(n_view // 2, n_view - len(easy)))
        n_easy = n_view - n_hard
        pick = lambda idx, n: idx[torch.randperm(len(idx), generator=generator, device=idx.device)[:n]]  # noqa: E731
        rows.append(b * flat_labels.shape[1] + torch.cat([pick(hard, n_hard), pick(easy, n_easy)]))
        anchor_labels.append(torch.full((n_view,), c, dtype=torch.long, device=labels.device))
    flat_embeddings = embeddings.permute(0, 2, 3, 1).reshape(-1, dim)
    return flat_embeddings[torch.cat(rows)], torch.cat(anchor_labels)


def memory_contrast_loss(anchors: torch.Tensor, anchor_labels: torch.Tensor, keys: torch.Tensor,
                         key_labels: torch.Tensor, temperature: float = 0.1,
                         base_temperature: float = 0.07) -> torch.Tensor:
    """Anchors against memory entries (Wang et al., memory variant): the pixel-wise InfoNCE with the memory's same-class
    entries as positives and all its other entries as negatives, scaled by ``t / t_b``.

    Args:
        anchors: ``(N, D)`` L2-normalised; ``anchor_labels``: ``(N,)``.
        keys: ``(K, D)`` L2-normalised memory entries (no gradient); ``key_labels``: ``(K,)``.

    Returns:
        Scalar float32 >= 0; a graph-preserving zero with an empty memory or no valid anchor.
    """
    same = anchor_labels[:, None] == key_labels[None, :]
    return temperature / base_temperature * info_nce(anchors, keys, same, ~same, temperature)


class PixelContrast(nn.Module):
    """Pixel contrast with its projection head, optionally with the pixel and segment memory.

    Args:
        in_channels: channels of the backbone's last features.
        num_classes: number of label classes (memory rows).
        dim: embedding dimension (paper: 256).
        temperature, base_temperature: ``t`` and ``t_b`` (paper: 0.1 and 0.07).
        max_samples, max_views: anchor sampler budget (paper: 1024 and 100).
        memory_size: slots per class of each queue; 0 = no memory (in-batch contrast). Paper: 5000
            (memory ``(num_classes, memory_size, dim)`` float32 per queue).
        pixels_per_image: pixels enqueued per class and image (paper: 10).
        ignore_index: label value to ignore.

    Forward: ``features`` ``(B, in_channels, h, w)``, ``labels`` ``(B, H, W)`` int64 and
    ``predictions`` ``(B, H', W')`` int64 (any size; both resized to ``(h, w)`` by nearest
    neighbour) -> scalar loss (unweighted). With a memory, the loss is computed against the memory
    as it was before this batch, then the batch is enqueued (without gradient).
    """

    def __init__(self, in_channels: int, num_classes: int, dim: int = 256, temperature: float = 0.1,
                 base_temperature: float = 0.07, max_samples: int = 1024, max_views: int = 100,
                 memory_size: int = 0, pixels_per_image: int = 10, ignore_index: int = 255) -> None:
        super().__init__()
        self.head = ProjectionHead(in_channels, dim)
        self.temperature, self.base_temperature = temperature, base_temperature
        self.max_samples, self.max_views = max_samples, max_views
        self.pixels_per_image, self.ignore_index = pixels_per_image, ignore_index
        self.pixel_memory = self.segment_memory = None
        if memory_size > 0:
            self.pixel_memory = RegionalMemory(num_classes, memory_size, dim, mode="fifo")
            self.segment_memory = RegionalMemory(num_classes, memory_size, dim, mode="fifo")

    def forward(self, features: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
        embeddings = self.head(features)
        size = embeddings.shape[-2:]
        labels, predictions = resize_labels(labels, size), resize_labels(predictions, size)
        anchors, anchor_labels = hard_anchor_sampling(embeddings, labels, predictions, self.max_samples,
                                                      self.max_views, self.ignore_index)
        if self.pixel_memory is None:
            loss = self._in_batch(anchors, anchor_labels)
        else:
            pixel_keys, pixel_labels = self.pixel_memory.keys()
            segment_keys, segment_labels = self.segment_memory.keys()
            loss = memory_contrast_loss(anchors, anchor_labels, torch.cat([pixel_keys, segment_keys]),
                                        torch.cat([pixel_labels, segment_labels]), self.temperature,
                                        self.base_temperature)
            self.enqueue(embeddings.detach(), labels)
        return loss + 0.0 * embeddings.sum()  # keeps every head parameter in the graph (DDP)

    def _in_batch(self, anchors: torch.Tensor, anchor_labels: torch.Tensor) -> torch.Tensor:
        """The pixel-wise InfoNCE over the anchors of all ranks (this rank's anchors are the queries)."""
        n = anchor_labels.numel()
        rank = torch.distributed.get_rank() if is_distributed() else 0
        owner = torch.full((n,), rank, dtype=torch.long, device=anchor_labels.device)
        index = torch.arange(n, device=anchor_labels.device)
        keys, key_labels, key_owner, key_index = all_gather_rows(anchors, anchor_labels, owner, index,
                                                                 keep_local_grad=True)
        same = anchor_labels[:, None] == key_labels[None, :]
        is_self = (key_owner[None, :] == rank) & (key_index[None, :] == index[:, None])
        loss = info_nce(anchors, keys, same & ~is_self, ~same, self.temperature)
        return self.temperature / self.base_temperature * loss

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Push, per image and class present, ``pixels_per_image`` random pixel embeddings (all if
        fewer) into the pixel queue and their mean embedding into the segment queue.

        Args:
            embeddings: ``(B, D, h, w)``; labels: ``(B, h, w)`` at the embedding size.
        """
        pixels, pixel_labels, segments, segment_labels = [], [], [], []
        flat = embeddings.flatten(2)  # (B, D, h*w)
        for b in range(labels.shape[0]):
            image_labels = labels[b].flatten()
            for c in image_labels.unique():
                if c == self.ignore_index:
                    continue
                where = (image_labels == c).nonzero().squeeze(1)
                chosen = where[torch.randperm(len(where), device=where.device)[:self.pixels_per_image]]
                pixels.append(flat[b, :, chosen].t())
                pixel_labels.append(c.repeat(len(chosen)))
                segments.append(flat[b, :, where].mean(1, keepdim=True).t())
                segment_labels.append(c.view(1))
        if pixels:
            self.pixel_memory.push(torch.cat(pixels), torch.cat(pixel_labels))
            self.segment_memory.push(torch.cat(segments), torch.cat(segment_labels))
        else:  # every rank must join the all-gather of a distributed push
            self.pixel_memory.push(embeddings.new_zeros(0, embeddings.shape[1]), labels.new_zeros(0))
            self.segment_memory.push(embeddings.new_zeros(0, embeddings.shape[1]), labels.new_zeros(0))
