"""Contextrast: contextual contrastive learning over the backbone's stages with boundary-aware
negative (BANE) sampling.

Sung, Kim, An, Lee, Lim, Myung, "Contextrast: Contextual Contrastive Learning for Semantic
Segmentation", CVPR 2024, arXiv:2404.10633. No public code exists; the authors' follow-up
(Contextrast++) restates the equations but was not available here, so the formulas below follow the
CVPR paper (anchor update, ``L_a``, ``L_PA``, the BANE distance map) and the project's issue.

Contextual contrastive learning (CCL). Each of the ``I = 4`` backbone stages gets its own
projection head to D = 256 (L2-normalised). At stage ``i`` the representative anchor of class ``n``
is the mean of that stage's embeddings whose label, downsampled (nearest) to the stage, is ``n``
(mini-batch, ground truth), ``A_i = {a_i^n}``. Every stage's anchors are updated with the
deepest stage's,

    A^_i = w_l A_i + w_h A_I,   w_l + w_h = 1,

and the pixel-anchor loss ``L_PA`` takes each updated anchor as the query, the stage's pixel
embeddings of its class as positives and the BANE-sampled pixels of the other classes as
negatives:

    L_a(a^) = -1/|P| sum_{v+ in P} log( exp(a^.v+/t) / (exp(a^.v+/t) + sum_{v- in N} exp(a^.v-/t)) ),
    L_PA = sum_i lambda_i (1/N_i) sum_{a^ in A^_i} L_a(a^).

BANE sampling (boundary-aware negatives): per class ``n`` the error map ``E_n`` = (label = n and
prediction != n), the prediction downsampled to the stage; a Euclidean distance transform inside
``E_n`` gives each error pixel its distance to the nearest pixel outside ``E_n``; the pixels in
the lowest ``K`` percent of these distances are the negatives of class ``n`` (hard negatives on
the error boundaries), contrasted with the anchors of every other class.

Choices the paper leaves open, and the values used here:

* ``w_l, w_h`` not given: exposed, default 0.5 / 0.5; the update is applied only to classes present
  at both stage ``i`` and the deepest stage (the others keep ``A_i``), and the updated anchors are
  L2-normalised (embeddings are unit vectors, so the loss uses cosine similarity throughout).
* Gradients flow through the anchors (they are means of embeddings) into every stage's head.
* Temperature not given: exposed, default 0.1 (the value of Wang et al.'s pixel contrast).
* Stage weights ``lambda_i`` = 0.1, 0.3, 0.7, 1.0 (shallow to deep) and total weight 0.1 against
  the cross-entropy (applied by :class:`rca.losses.ContrastLoss`).
* "Lowest K percent": all error pixels whose distance is at most the ``ceil(K * |E_n|)``-th
  smallest distance (ties kept, so at least ``K`` percent; no raster-order bias). Distances use
  OpenCV ``distanceTransform(DIST_L2, DIST_MASK_PRECISE)`` (exact Euclidean, equal to SciPy's
  ``distance_transform_edt``); the image border does not count as a boundary.
* An anchor whose class has no pixel at the stage, or which has no negative (no other class has
  errors), is skipped; the loss of a stage is the mean over the remaining anchors (0 if none).
* Under DDP the anchors are the means over the whole global batch (sums and counts all-reduced,
  gradients to the local part); positives and negatives are the local pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rca.engine.distributed import all_reduce_sum
from rca.losses.info_nce import info_nce, resize_labels
from rca.models.heads import ProjectionHead


def class_anchors(embeddings: torch.Tensor, labels: torch.Tensor,
                  num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean embedding (Contextrast's representative anchors) over the batch, and over all ranks under DDP.

    Args:
        embeddings: ``(B, D, h, w)`` float.
        labels: ``(B, h, w)`` int64 at the embedding size; values outside ``[0, num_classes)``
            (255 = ignore) are left out.

    Returns:
        ``anchors`` ``(num_classes, D)`` float (zero rows for absent classes; not normalised;
        gradients flow to this rank's embeddings) and ``present`` ``(num_classes,)`` bool.
    """
    dim = embeddings.shape[1]
    flat_labels = labels.flatten()
    valid = (flat_labels >= 0) & (flat_labels < num_classes)
    pixels = embeddings.permute(0, 2, 3, 1).reshape(-1, dim)[valid].float()
    sums = pixels.new_zeros(num_classes, dim).index_add_(0, flat_labels[valid], pixels)
    counts = torch.bincount(flat_labels[valid], minlength=num_classes).to(pixels)
    sums, counts = all_reduce_sum(sums, keep_local_grad=True), all_reduce_sum(counts)
    present = counts > 0
    return sums / counts.clamp(min=1)[:, None], present


def update_anchors(anchors: torch.Tensor, present: torch.Tensor, top_anchors: torch.Tensor,
                   top_present: torch.Tensor, weights: tuple[float, float] = (0.5, 0.5)) -> torch.Tensor:
    """Contextrast's anchor update ``A^_i = w_l A_i + w_h A_I`` for classes present at both stages, ``A_i``
    elsewhere, then L2-normalised rows.

    Args:
        anchors, top_anchors: ``(C, D)`` anchors of stage ``i`` and of the deepest stage.
        present, top_present: ``(C,)`` bool.
        weights: ``(w_l, w_h)``, non-negative, summing to 1.

    Returns:
        ``(C, D)`` float, unit rows where ``present`` (zero rows elsewhere).
    """
    w_low, w_high = weights
    both = (present & top_present)[:, None]
    return F.normalize(torch.where(both, w_low * anchors + w_high * top_anchors, anchors), dim=1)


def boundary_negatives(errors: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """BANE sampling of one error map (Contextrast's distance map ``D_n``): the error pixels whose Euclidean
    distance to the nearest non-error pixel is among the lowest ``fraction`` of the region's.

    Args:
        errors: ``(h, w)`` bool error map ``E_n``.
        fraction: ``K`` in (0, 1] (paper: 0.5).

    Returns:
        ``(h, w)`` bool, a subset of ``errors``: every error pixel with distance <= the
        ``ceil(fraction * |E_n|)``-th smallest distance (ties kept). Empty for an empty map.
    """
    if not errors.any():
        return np.zeros_like(errors, dtype=bool)
    distance = cv2.distanceTransform(errors.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    inside = distance[errors]
    kth = int(np.ceil(fraction * inside.size)) - 1
    threshold = np.partition(inside, kth)[kth]
    return errors & (distance <= threshold)


def bane_sampling(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int,
                  fraction: float = 0.5) -> torch.Tensor:
    """BANE negatives of a batch: the union over images and classes ``n`` of
    :func:`boundary_negatives` of ``E_n = (label == n) & (prediction != n)``.

    A selected pixel is a negative of class ``labels[pixel]`` for the anchors of the other classes.
    The distance transform runs on the CPU (OpenCV), one call per (image, class with errors).

    Args:
        labels: ``(B, h, w)`` int64 (values outside ``[0, num_classes)`` are never negatives).
        predictions: ``(B, h, w)`` int64 at the same size.
        num_classes: number of classes.
        fraction: ``K`` in (0, 1].

    Returns:
        ``(B, h, w)`` bool on the labels' device.
    """
    labels_np, predictions_np = labels.cpu().numpy(), predictions.cpu().numpy()
    negatives = np.zeros(labels_np.shape, dtype=bool)
    wrong = (labels_np != predictions_np) & (labels_np >= 0) & (labels_np < num_classes)
    for b in range(labels_np.shape[0]):
        for n in np.unique(labels_np[b][wrong[b]]):
            negatives[b] |= boundary_negatives(wrong[b] & (labels_np[b] == n), fraction)
    return torch.from_numpy(negatives).to(labels.device)


def pixel_anchor_loss(anchors: torch.Tensor, present: torch.Tensor, embeddings: torch.Tensor,
                      labels: torch.Tensor, negatives: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Pixel-anchor loss of one stage (Contextrast's ``L_a`` averaged over anchors, before the stage weight).

    Args:
        anchors: ``(C, D)`` updated anchors (unit rows); ``present``: ``(C,)`` bool.
        embeddings: ``(N, D)`` unit pixel embeddings of the stage; ``labels``: ``(N,)`` int64.
        negatives: ``(N,)`` bool, the BANE-sampled pixels.
        temperature: ``t > 0``.

    Returns:
        Scalar float32 >= 0: mean over the present anchors that have a positive and a negative of
        the mean over their positives of the InfoNCE term; a graph-preserving zero if there are none.
    """
    classes = torch.arange(anchors.shape[0], device=labels.device)
    same = labels[None, :] == classes[:, None]  # (C, N)
    positive = same & present[:, None]
    negative = negatives[None, :] & ~same
    return info_nce(anchors, embeddings, positive, negative, temperature)


class Contextrast(nn.Module):
    """Contextrast loss with one projection head per backbone stage (module docstring).

    Args:
        stage_channels: channels of the 4 stages, shallow to deep (``backbone.stage_channels``).
        num_classes: number of label classes.
        dim: embedding dimension (paper: 256).
        temperature: ``t`` (default 0.1, not given by the paper).
        layer_weights: ``lambda_i`` per stage (paper: 0.1, 0.3, 0.7, 1.0).
        anchor_weights: ``(w_l, w_h)`` of the anchor update (default 0.5, 0.5).
        negative_fraction: BANE ``K`` (paper: 0.5).

    Forward: ``stages`` (list of 4 ``(B, stage_channels[i], h_i, w_i)`` maps), ``labels``
    ``(B, H, W)`` int64 (255 = ignore) and ``predictions`` ``(B, H', W')`` int64 (both resized to
    every stage by nearest neighbour) -> scalar ``L_PA`` (unweighted by the total weight).

    Raises:
        ValueError: ``layer_weights`` and ``stage_channels`` differ in length, or ``anchor_weights``
            are negative or do not sum to 1.
    """

    def __init__(self, stage_channels: Sequence[int], num_classes: int, dim: int = 256,
                 temperature: float = 0.1, layer_weights: Sequence[float] = (0.1, 0.3, 0.7, 1.0),
                 anchor_weights: tuple[float, float] = (0.5, 0.5), negative_fraction: float = 0.5) -> None:
        super().__init__()
        if len(layer_weights) != len(stage_channels):
            raise ValueError(f"Contextrast needs one layer weight per stage: {len(stage_channels)} stages, "
                             f"layer_weights={list(layer_weights)} (config key seg.contrast.contextrast.layer_weights)")
        if min(anchor_weights) < 0 or abs(sum(anchor_weights) - 1) > 1e-6:
            raise ValueError(f"Contextrast anchor_weights (w_l, w_h) must be >= 0 and sum to 1, got "
                             f"{anchor_weights} (config key seg.contrast.contextrast.anchor_weights)")
        if not 0 < negative_fraction <= 1:
            raise ValueError(f"Contextrast negative_fraction must lie in (0, 1], got {negative_fraction}")
        self.heads = nn.ModuleList(ProjectionHead(c, dim) for c in stage_channels)
        self.num_classes, self.temperature = num_classes, temperature
        self.layer_weights, self.anchor_weights = tuple(layer_weights), tuple(anchor_weights)
        self.negative_fraction = negative_fraction

    def forward(self, stages: Sequence[torch.Tensor], labels: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
        embeddings = [head(x) for head, x in zip(self.heads, stages)]
        stage_labels = [resize_labels(labels, e.shape[-2:]) for e in embeddings]
        anchors = [class_anchors(e, lab, self.num_classes) for e, lab in zip(embeddings, stage_labels)]
        top_anchors, top_present = anchors[-1]
        loss = sum(0.0 * e.sum() for e in embeddings)  # keeps every head in the graph (DDP)
        for weight, emb, lab, (anc, present) in zip(self.layer_weights, embeddings, stage_labels, anchors):
            updated = update_anchors(anc, present, top_anchors, top_present, self.anchor_weights)
            negatives = bane_sampling(lab, resize_labels(predictions, lab.shape[-2:]), self.num_classes,
                                      self.negative_fraction)
            pixels = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
            loss = loss + weight * pixel_anchor_loss(updated, present, pixels, lab.flatten(), negatives.flatten(),
                                                     self.temperature)
        return loss
