"""Semantic contrast of RCA: region embeddings against the regional memory (InfoNCE).

Zhou et al., "Regional Semantic Contrast and Aggregation for Weakly Supervised Semantic
Segmentation", CVPR 2022, arXiv:2203.09653, Sec. 3.2 (Eq. 3). For a region embedding ``q`` (the anchor) of class
``c``, each memory entry ``k+`` of class ``c`` is a positive and every entry ``k-`` of another
class is a negative; the term of one positive is

    -log( exp(q.k+ / t) / (exp(q.k+ / t) + sum_{k-} exp(q.k- / t)) ),

averaged over the anchor's positives and then over anchors. This is the released code's rule
(maeve07/RCA ``models/rca.py``): one positive at a time in the numerator and denominator, all
negatives in the denominator.

Region mix-up (the paper's L^RM-NCE; released code ``loss_cl_mixup``, always on there): each region
embedding is mixed with a partner region's, ``lam * e_a + (1 - lam) * e_b`` with one
``lam ~ Beta(8, 8)`` per region, and the region's loss is the same mix of the losses under either
label. Choices where the paper is silent (see :func:`mix_regions`): the partner is a region of a
different class, from another image of the batch where one exists; embeddings are L2-normalised
before mixing, so ``lam`` is the share of each direction whatever the pooled norms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rca.losses.info_nce import info_nce_per_query


def _per_query_loss(queries: torch.Tensor, query_labels: torch.Tensor, keys: torch.Tensor,
                    key_labels: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's InfoNCE term (mean over its positives) and whether it has a positive and a
    negative; shapes and errors as in :func:`semantic_contrast_loss`. Returns ``(loss (N,) float32,
    0 where not valid; valid (N,) bool)``."""
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"semantic_contrast_loss expects queries (N, D) and keys (K, D) with the "
                         f"same D, got {tuple(queries.shape)} and {tuple(keys.shape)}")
    if query_labels.shape != queries.shape[:1] or key_labels.shape != keys.shape[:1]:
        raise ValueError(f"semantic_contrast_loss expects one label per row: queries "
                         f"{tuple(queries.shape)} vs labels {tuple(query_labels.shape)}, keys "
                         f"{tuple(keys.shape)} vs labels {tuple(key_labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature} (config key cls.temperature)")
    positive = query_labels[:, None] == key_labels[None, :]  # (N, K)
    return info_nce_per_query(F.normalize(queries, dim=1), F.normalize(keys, dim=1), positive, ~positive,
                              temperature)


def semantic_contrast_loss(queries: torch.Tensor, query_labels: torch.Tensor, keys: torch.Tensor,
                           key_labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Mean InfoNCE loss of region embeddings against the memory, one positive at a time.

    Queries and keys are L2-normalised here. A query with no positive (its class is absent from
    the memory) or no negative (the memory holds only its class) is skipped; when every query is
    skipped the result is ``0 * queries.sum()``, a zero that keeps the autograd graph. Computed in
    float32 with a log-sum-exp over negatives, vectorised over queries and keys (memory
    ``O(N * K)``).

    Args:
        queries: ``(N, D)`` float region embeddings (anchors), any norm; gradients flow to them.
        query_labels: ``(N,)`` integer class indices.
        keys: ``(K, D)`` float memory embeddings (usually :meth:`rca.memory.RegionalMemory.keys`,
            which carry no grad).
        key_labels: ``(K,)`` integer class indices.
        temperature: ``t > 0`` (paper and released code: 0.07).

    Returns:
        Scalar float32 tensor, >= 0. Known values: a query equal to its positives and orthogonal to
        P negatives contributes ``log(1 + P exp(-1/t))``; orthogonal to all keys, ``log(1 + P)``.

    Raises:
        ValueError: on mismatched shapes or a non-positive temperature.
    """
    losses, valid = _per_query_loss(queries, query_labels, keys, key_labels, temperature)
    if not bool(valid.any()):
        return losses.sum()
    return losses[valid].mean()


def mix_regions(embeddings: torch.Tensor, labels: torch.Tensor,
                image_index: torch.Tensor | None = None, alpha: int = 8,
                generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Region mix-up: mix each region embedding with a region of another class.

    ``mixed_i = lam_i * e_i + (1 - lam_i) * e_p(i)`` on L2-normalised embeddings ``e``, with one
    ``lam_i ~ Beta(alpha, alpha)`` per region (released code: ``np.random.beta(8, 8)`` per region).
    The partner ``p(i)`` is drawn uniformly among the regions of a *different class* in *other
    images* (``image_index``), else among the different-class regions of the same image; a region
    with no different-class region in the batch is not mixed (``p(i) = i``, ``lam_i = 1``). The
    released code draws a random image and a random tag of it, which can be the region itself or
    its own class, where the mix teaches nothing; the paper does not say how partners are chosen.
    ``lam_i`` is the ``alpha``-th smallest of ``2 * alpha - 1`` uniforms (the Beta(alpha, alpha)
    order statistic, exact for integer ``alpha``), so ``generator`` makes every draw reproducible.

    Args:
        embeddings: ``(N, D)`` float region embeddings (gradients flow through the mix).
        labels: ``(N,)`` integer class indices.
        image_index: optional ``(N,)`` integer image of each region in the batch; ``None`` treats
            every region as coming from a different image.
        alpha: positive integer Beta parameter (released code: 8).
        generator: optional ``torch.Generator`` on ``embeddings.device``.

    Returns:
        ``mixed`` ``(N, D)`` (not re-normalised), ``labels_a`` ``(N,)`` (= ``labels``),
        ``labels_b`` ``(N,)`` (the partners' labels) and ``lam`` ``(N,)`` float32 in (0, 1], 1
        exactly for the unmixed regions.

    Raises:
        ValueError: on mismatched shapes or ``alpha`` not a positive integer.
    """
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"mix_regions expects embeddings (N, D) and labels (N,), got "
                         f"{tuple(embeddings.shape)} and {tuple(labels.shape)}")
    if image_index is not None and image_index.shape != labels.shape:
        raise ValueError(f"mix_regions expects one image index per region: labels "
                         f"{tuple(labels.shape)}, image_index {tuple(image_index.shape)}")
    if isinstance(alpha, bool) or not isinstance(alpha, int) or alpha < 1:
        raise ValueError(f"mix_regions alpha must be a positive integer, got {alpha!r}")
    n, device = labels.numel(), embeddings.device
    uniforms = torch.rand(n, 2 * alpha - 1, generator=generator, device=device)
    lam = uniforms.sort(1).values[:, alpha - 1]
    candidates = labels[:, None] != labels[None, :]  # (N, N) different class
    if image_index is not None:
        other_image = candidates & (image_index[:, None] != image_index[None, :])
        candidates = torch.where(other_image.any(1, keepdim=True), other_image, candidates)
    draws = torch.rand(n, n, generator=generator, device=device).masked_fill(~candidates, -1.0)
    has_partner = candidates.any(1)
    partner = torch.where(has_partner, draws.argmax(1), torch.arange(n, device=device))
    lam = torch.where(has_partner, lam, torch.ones_like(lam))
    unit = F.normalize(embeddings, dim=1)
    weight = lam.to(unit.dtype)[:, None]
    return weight * unit + (1.0 - weight) * unit[partner], labels, labels[partner], lam


def mixed_semantic_contrast_loss(embeddings: torch.Tensor, labels: torch.Tensor,
                                 keys: torch.Tensor, key_labels: torch.Tensor,
                                 temperature: float = 0.07, alpha: int = 8,
                                 generator: torch.Generator | None = None,
                                 image_index: torch.Tensor | None = None) -> torch.Tensor:
    """Semantic contrast with region mix-up (the paper's L^RM-NCE; released ``loss_cl_mixup``).

    Per region ``i``: ``lam_i * L_i(mixed_i, labels_a[i]) + (1 - lam_i) * L_i(mixed_i,
    labels_b[i])``, averaged over regions, with ``L_i`` the per-query term of
    :func:`semantic_contrast_loss` and ``(mixed, labels_a, labels_b, lam)`` from
    :func:`mix_regions`. A term whose class has no positive or no negative in the memory is
    dropped and the region's two weights renormalised; a region with neither term is skipped (all
    skipped: a zero that keeps the graph). Shapes and errors as in those two functions.

    Returns:
        Scalar float32 tensor, >= 0.
    """
    mixed, labels_a, labels_b, lam = mix_regions(embeddings, labels, image_index, alpha, generator)
    loss_a, valid_a = _per_query_loss(mixed, labels_a, keys, key_labels, temperature)
    loss_b, valid_b = _per_query_loss(mixed, labels_b, keys, key_labels, temperature)
    weight_a, weight_b = lam * valid_a, (1.0 - lam) * valid_b
    total = weight_a + weight_b
    keep = total > 0
    if not bool(keep.any()):
        return loss_a.sum() * 0.0
    return ((weight_a * loss_a + weight_b * loss_b)[keep] / total[keep]).mean()
