"""Semantic contrast of RCA: region embeddings against the regional memory (InfoNCE).

Zhou et al., "Regional Semantic Contrast and Aggregation for Weakly Supervised Semantic
Segmentation", CVPR 2022, arXiv:2203.09653, Sec. 3.2 (Eq. 3). For a region embedding ``q`` (the anchor) of class
``c``, each memory entry ``k+`` of class ``c`` is a positive and every entry ``k-`` of another
class is a negative; the term of one positive is

    -log( exp(q.k+ / t) / (exp(q.k+ / t) + sum_{k-} exp(q.k- / t)) ),

averaged over the anchor's positives and then over anchors. This is the released code's rule
(maeve07/RCA ``models/rca.py``): one positive at a time in the numerator and denominator, all
negatives in the denominator.

Region mix-up (released code): an anchor embedding is mixed with another region's embedding,
``lam * e_a + (1 - lam) * e_b`` with ``lam ~ Beta(8, 8)``, and the loss is the same mix of the
losses under either label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    valid = positive.any(1) & ~positive.all(1)
    if not bool(valid.any()):
        return queries.sum() * 0.0
    positive = positive[valid]
    q = F.normalize(queries[valid].float(), dim=1)
    k = F.normalize(keys.float(), dim=1)
    logits = q @ k.t() / temperature  # (N', K)
    # log sum_{k-} exp(q.k-/t) per query; finite because every kept query has a negative
    negative_lse = logits.masked_fill(positive, float("-inf")).logsumexp(1, keepdim=True)
    # -log(e^l / (e^l + e^lse)) = log(1 + e^(lse - l)) = softplus(lse - l), stable for any l
    terms = F.softplus(negative_lse - logits)
    per_query = (terms * positive).sum(1) / positive.sum(1)
    return per_query.mean()


def mix_regions(embeddings: torch.Tensor, labels: torch.Tensor, alpha: int = 8,
                generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Region mix-up: mix each region embedding with a randomly chosen region of the batch.

    ``mixed_i = lam * e_i + (1 - lam) * e_perm(i)`` on L2-normalised embeddings, with one
    ``lam ~ Beta(alpha, alpha)`` per call and ``perm`` a random permutation (a region may be paired
    with itself or with a region of the same class). The released code draws ``lam ~ Beta(8, 8)``
    and a partner per region; one ``lam`` per batch keeps the loss a single weighted sum (see
    :func:`mixed_semantic_contrast_loss`). ``lam`` is drawn exactly as the ``alpha``-th smallest of
    ``2 * alpha - 1`` uniforms (the Beta(alpha, alpha) order statistic), which lets ``generator``
    make it reproducible.

    Args:
        embeddings: ``(N, D)`` float region embeddings (gradients flow through the mix).
        labels: ``(N,)`` integer class indices.
        alpha: positive integer Beta parameter (released code: 8).
        generator: optional ``torch.Generator`` on ``embeddings.device``.

    Returns:
        ``mixed`` ``(N, D)`` (not re-normalised), ``labels_a`` ``(N,)`` (= ``labels``),
        ``labels_b`` ``(N,)`` (the partners' labels) and ``lam`` (float in (0, 1)).

    Raises:
        ValueError: on mismatched shapes or ``alpha`` not a positive integer.
    """
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"mix_regions expects embeddings (N, D) and labels (N,), got "
                         f"{tuple(embeddings.shape)} and {tuple(labels.shape)}")
    if isinstance(alpha, bool) or not isinstance(alpha, int) or alpha < 1:
        raise ValueError(f"mix_regions alpha must be a positive integer, got {alpha!r}")
    device = embeddings.device
    uniforms = torch.rand(2 * alpha - 1, generator=generator, device=device)
    lam = float(uniforms.sort().values[alpha - 1])
    perm = torch.randperm(labels.numel(), generator=generator, device=device)
    unit = F.normalize(embeddings, dim=1)
    return lam * unit + (1.0 - lam) * unit[perm], labels, labels[perm], lam


def mixed_semantic_contrast_loss(embeddings: torch.Tensor, labels: torch.Tensor,
                                 keys: torch.Tensor, key_labels: torch.Tensor,
                                 temperature: float = 0.07, alpha: int = 8,
                                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Semantic contrast with region mix-up (released code's ``loss_cl_mixup``).

    ``lam * L(mixed, labels_a) + (1 - lam) * L(mixed, labels_b)`` with ``L`` =
    :func:`semantic_contrast_loss` and ``(mixed, labels_a, labels_b, lam)`` from
    :func:`mix_regions`. Shapes, skip rules and errors as in those two functions.

    Returns:
        Scalar float32 tensor, >= 0.
    """
    mixed, labels_a, labels_b, lam = mix_regions(embeddings, labels, alpha, generator)
    return (lam * semantic_contrast_loss(mixed, labels_a, keys, key_labels, temperature)
            + (1.0 - lam) * semantic_contrast_loss(mixed, labels_b, keys, key_labels, temperature))
