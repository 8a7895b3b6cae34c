"""Region contrast: per-image class region centres contrasted with a memory of region centres.

Hu, Cui, Wang, "Region-Aware Contrastive Learning for Semantic Segmentation", ICCV 2021,
pp. 16291-16301 (CVF open access; no arXiv version was found; released code: hzhupku/RegionContrast).

Per image and class ``c`` present in the (downsampled) label, the region centre is the mean of the
projected pixel embeddings under the label, L2-normalised. A per-class FIFO memory holds
the centres of past images. Each current centre ``q`` of class ``c`` is contrasted with
the memory in the paper's InfoNCE form,

    L(q) = -1/|P| sum_{k+ in P} log( exp(q.k+/t) / (exp(q.k+/t) + sum_{k- in N} exp(q.k-/t)) ),

``P`` the memory entries of class ``c``, ``N`` those of every other class, t = 0.2, averaged over
centres. The released code's element-wise variant (a per-pair binary score, not a softmax over the
memory) is not a valid InfoNCE and is not used.

Choices: the loss reads the memory as it was before the batch, then the batch's centres are pushed
(detached); memories start empty (centres without a positive or negative are skipped); the memory
size defaults to the number of training images (one centre per class and image fills a class's
ring in one epoch); under DDP the memory receives the centres of all ranks.
"""

from __future__ import annotations

import torch
from torch import nn

from rca.losses.info_nce import resize_labels
from rca.losses.semantic_contrast import semantic_contrast_loss
from rca.memory import RegionalMemory
from rca.models.heads import ProjectionHead


def region_centres(embeddings: torch.Tensor, labels: torch.Tensor,
                   ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """One L2-normalised region centre per (image, class present), as in Hu et al.

    Args:
        embeddings: ``(B, D, h, w)`` float pixel embeddings.
        labels: ``(B, h, w)`` int64 labels at the embedding size; ``ignore_index`` pixels are left out.

    Returns:
        ``centres`` ``(R, D)`` float32 (unit rows; gradients flow to the embeddings) and
        ``centre_labels`` ``(R,)`` int64, ordered by image then class; ``R = 0`` when every pixel is
        ignored.

    Raises:
        ValueError: on inconsistent shapes.
    """
    if labels.shape != embeddings.shape[:1] + embeddings.shape[2:]:
        raise ValueError(f"region_centres expects labels (B, h, w) matching embeddings (B, D, h, w), got "
                         f"{tuple(labels.shape)} and {tuple(embeddings.shape)}")
    batch, dim = embeddings.shape[:2]
    flat_labels = labels.flatten(1)
    valid = flat_labels != ignore_index
    classes, inverse = flat_labels[valid].unique(return_inverse=True)
    image = torch.arange(batch, device=labels.device)[:, None].expand_as(flat_labels)[valid]
    group = image * len(classes) + inverse  # (image, class) id of every valid pixel
    pixels = embeddings.permute(0, 2, 3, 1).reshape(-1, dim)[valid.flatten()].float()  # fp32 sums under AMP
    sums = pixels.new_zeros(batch * len(classes), dim).index_add_(0, group, pixels)
    counts = torch.bincount(group, minlength=batch * len(classes))
    present = counts > 0
    centres = torch.nn.functional.normalize(sums[present] / counts[present, None], dim=1)
    return centres, classes.repeat(batch)[present]


def region_contrast_loss(centres: torch.Tensor, centre_labels: torch.Tensor, keys: torch.Tensor,
                         key_labels: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE of region centres against the memory of region centres (module docstring).

    The same multi-positive InfoNCE as RCA's semantic contrast
    (:func:`rca.losses.semantic_contrast.semantic_contrast_loss`), with Hu et al.'s t = 0.2.

    Args:
        centres: ``(R, D)`` float; centre_labels: ``(R,)`` int.
        keys: ``(K, D)`` memory entries; key_labels: ``(K,)``.

    Returns:
        Scalar float32 >= 0; a graph-preserving zero with an empty memory or no valid centre.
    """
    return semantic_contrast_loss(centres, centre_labels, keys, key_labels, temperature)


class RegionContrast(nn.Module):
    """Region contrast with its projection head and its memory of region centres.

    Args:
        in_channels: channels of the backbone's last features.
        num_classes: number of label classes.
        memory_size: centres kept per class (default in the config: the number of training images).
        dim: embedding dimension (256).
        temperature: t (paper: 0.2).
        ignore_index: label value to ignore.

    Forward: ``features`` ``(B, in_channels, h, w)`` and ``labels`` ``(B, H, W)`` int64 (resized to
    ``(h, w)`` by nearest neighbour) -> scalar loss (unweighted) against the memory before this
    batch; the batch's centres are then pushed (all ranks' under DDP).
    """

    def __init__(self, in_channels: int, num_classes: int, memory_size: int, dim: int = 256,
                 temperature: float = 0.2, ignore_index: int = 255) -> None:
        super().__init__()
        self.head = ProjectionHead(in_channels, dim)
        self.memory = RegionalMemory(num_classes, memory_size, dim, mode="fifo")
        self.temperature, self.ignore_index = temperature, ignore_index

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = self.head(features)
        centres, centre_labels = region_centres(embeddings, resize_labels(labels, embeddings.shape[-2:]),
                                                self.ignore_index)
        keys, key_labels = self.memory.keys()
        loss = region_contrast_loss(centres, centre_labels, keys, key_labels, self.temperature)
        self.memory.push(centres.detach(), centre_labels)
        return loss + 0.0 * embeddings.sum()  # keeps every head parameter in the graph (DDP)
