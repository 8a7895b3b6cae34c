"""Supervised InfoNCE with several positives per query, one positive at a time: the core that the
contrastive losses (RCA semantic contrast, pixel contrast, region contrast, Contextrast) share.

For a query ``q`` with positive keys ``P(q)`` and negative keys ``N(q)`` (all L2-normalised) and a
temperature ``t``, the loss of ``q`` is

    l(q) = -1/|P(q)| sum_{p in P(q)} log( exp(q.p/t) / (exp(q.p/t) + sum_{n in N(q)} exp(q.n/t)) ),

i.e. each positive is contrasted with all negatives, the other positives staying out of its
denominator (Wang et al., ICCV 2021, arXiv:2101.11939; Zhou et al., CVPR 2022, Eq. 3). The
loss is the mean of ``l(q)`` over the queries that have at least one positive and one negative.

Also here: nearest-neighbour resizing of label maps to an embedding grid, which every dense loss
needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce_per_query(queries: torch.Tensor, keys: torch.Tensor, positive: torch.Tensor,
                       negative: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's multi-positive InfoNCE term (the mean over its positives), see :func:`info_nce`.

    Args: as :func:`info_nce`.

    Returns:
        ``(loss, valid)``: ``loss`` ``(Q,)`` float32 >= 0, 0 (graph kept) where the query has no
        positive or no negative; ``valid`` ``(Q,)`` bool marks the queries that have both.

    Raises:
        ValueError: on inconsistent shapes, or a non-positive temperature.
    """
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"info_nce expects queries (Q, D) and keys (K, D) with the same D, got "
                         f"{tuple(queries.shape)} and {tuple(keys.shape)}")
    expected = (queries.shape[0], keys.shape[0])
    if positive.shape != expected or negative.shape != expected:
        raise ValueError(f"info_nce expects (Q, K) = {expected} masks, got {tuple(positive.shape)} and "
                         f"{tuple(negative.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    valid = positive.any(1) & negative.any(1)
    losses = (queries.sum() + keys.sum()).float() * 0.0 + queries.new_zeros(queries.shape[0], dtype=torch.float32)
    if not bool(valid.any()):
        return losses, valid
    positive, negative = positive[valid], negative[valid]
    logits = queries[valid].float() @ keys.float().t() / temperature  # (Q', K)
    negative_lse = logits.masked_fill(~negative, float("-inf")).logsumexp(1, keepdim=True)
    terms = F.softplus(negative_lse - logits)  # -log(e^l / (e^l + sum_n e^n)) per key
    return losses.masked_scatter(valid, (terms * positive).sum(1) / positive.sum(1)), valid


def info_nce(queries: torch.Tensor, keys: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """Mean multi-positive InfoNCE of ``queries`` against ``keys`` (see the module docstring).

    Computed in float32 with a log-sum-exp over the negatives, ``-log(e^a / (e^a + e^b)) =
    softplus(b - a)``, so it is finite for any temperature. Queries without a positive or without a
    negative are skipped; when all are skipped the result is ``0 * (queries.sum() + keys.sum())``, a
    zero that keeps the autograd graph (so every parameter upstream still gets a (zero) gradient,
    as DDP requires).

    Args:
        queries: ``(Q, D)`` float, L2-normalised rows (not normalised here).
        keys: ``(K, D)`` float, L2-normalised rows.
        positive: ``(Q, K)`` bool, ``positive[q, k]``: key ``k`` is a positive of query ``q``.
        negative: ``(Q, K)`` bool, negatives (a key may be neither, e.g. the query itself).
        temperature: ``t > 0``.

    Returns:
        Scalar float32 tensor >= 0. Known values: a query equal to its positives and orthogonal to
        ``n`` negatives gives ``log(1 + n exp(-1/t))``; all keys equal to the query, ``log(1 + n)``.

    Raises:
        ValueError: on inconsistent shapes, or a non-positive temperature.
    """
    losses, valid = info_nce_per_query(queries, keys, positive, negative, temperature)
    return losses[valid].mean() if bool(valid.any()) else losses.sum()


def resize_labels(labels: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Nearest-neighbour resize of ``(B, H, W)`` integer label maps to ``size`` = ``(h, w)``.

    ``F.interpolate(mode="nearest")`` picks source pixel ``floor(i * H / h)``, as the released code of
    Wang et al. does; values (255 = ignore included) are kept exactly. Returns ``(B, h, w)`` int64.
    """
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()
