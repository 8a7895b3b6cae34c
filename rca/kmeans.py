"""Spherical (cosine) k-means in torch, for clustering L2-normalised memory embeddings.

RCA's semantic aggregation (Zhou et al., CVPR 2022, arXiv:2203.09653, Sec. 3.3) summarises each class of the regional
memory by k-means centres (released code: scikit-learn ``KMeans(n_clusters=10)`` per class, run
at the start of every epoch). The memory holds unit vectors, so this module clusters by cosine
similarity: points are assigned to the centre with the largest dot product and a centre is the
re-normalised mean of its points (spherical k-means, Dhillon & Modha, Machine Learning 2001).
Initialisation is k-means++ (Arthur & Vassilvitskii, SODA 2007) with cosine distance ``1 - cos``,
drawn from ``generator``, so the result is deterministic given the data and the generator state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kmeans(x: torch.Tensor, k: int, iters: int = 20,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of ``x`` into at most ``k`` groups by cosine similarity.

    Args:
        x: ``(N, D)`` float points (normalised here; zero rows stay zero and join cluster 0).
        k: number of centres, >= 1.
        iters: maximum Lloyd iterations; stops early once assignments no longer change.
        generator: optional ``torch.Generator`` on ``x.device`` for the k-means++ draws.

    Returns:
        ``centres`` ``(k', D)`` float, unit-norm, with ``k' = min(k, N)``, and ``assign`` ``(N,)``
        int64 in ``[0, k')``. With ``N <= k`` the centres are the normalised points themselves and
        ``assign = arange(N)``. A centre that loses all its points keeps its previous position.

    Raises:
        ValueError: if ``x`` is not 2-D or ``k < 1``.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans expects points of shape (N, D), got {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"kmeans needs k >= 1, got {k}")
    x = F.normalize(x.float(), dim=1)
    n = x.shape[0]
    if n <= k:
        return x, torch.arange(n, device=x.device)
    centres = _kmeans_plus_plus(x, k, generator)
    assign = (x @ centres.t()).argmax(1)
    for _ in range(iters):
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        centres = torch.where((counts > 0)[:, None], F.normalize(sums, dim=1), centres)
        new_assign = (x @ centres.t()).argmax(1)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return centres, assign


def _kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k-means++ seeding on unit vectors with distance ``1 - cos``: ``(k, D)`` centres."""
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=generator, device=x.device)
    chosen = [first]
    distance = (1.0 - x @ x[first].t()).squeeze(1).clamp_min(0)
    for _ in range(1, k):
        weights = distance if float(distance.sum()) > 0 else torch.ones_like(distance)
        nxt = torch.multinomial(weights, 1, generator=generator)
        chosen.append(nxt)
        distance = torch.minimum(distance, (1.0 - x @ x[nxt].t()).squeeze(1).clamp_min(0))
    return x[torch.cat(chosen)]
