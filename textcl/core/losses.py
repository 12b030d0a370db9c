"""Contrastive losses shared by every text objective and vision method.

``info_nce`` is *the* InfoNCE of textcl: objectives never re-implement it, they only
decide what the queries, keys and extra negatives are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["info_nce", "retrieval_top1", "similarity_logits"]


def similarity_logits(
    query: Tensor, keys: Tensor, temperature: float = 0.05, normalize: bool = True
) -> Tensor:
    """``(query @ keys.T) / temperature``, on L2-normalised vectors when ``normalize``."""
    if normalize:
        query = F.normalize(query, dim=-1)
        keys = F.normalize(keys, dim=-1)
    return query @ keys.transpose(-2, -1) / temperature


def info_nce(
    query: Tensor,
    keys: Tensor,
    *,
    temperature: float = 0.05,
    labels: Tensor | None = None,
    positive_mask: Tensor | None = None,
    extra_negatives: Tensor | None = None,
    ignore_mask: Tensor | None = None,
    symmetric: bool = False,
    normalize: bool = True,
    reduction: str = "mean",
) -> Tensor:
    r"""InfoNCE (NT-Xent / multiple-negatives ranking) loss.

    Protocol, exactly:

    * Scores ``s[i, j] = cos(q_i, k_j) / temperature`` (plain dot product when
      ``normalize=False``) for every query ``q_i`` (``query[i]``, shape ``(B, d)``) and
      every candidate ``k_j``. Candidates are ``keys`` (``(K, d)``) followed by
      ``extra_negatives`` (``(M, d)``: a queue, memory-bank samples, hard negatives),
      so ``s`` has shape ``(B, K + M)``. Extra negatives are never positives.
    * Positives. Default (``labels`` and ``positive_mask`` both ``None``): ``keys[i]``
      is the positive of ``query[i]`` (requires ``K >= B``) and every other key is an
      in-batch negative. ``labels`` (``(B,)`` long) names one positive key per query:
      under data parallelism, where ``keys`` is the all-gathered global batch, pass
      ``arange(B) + rank * B`` -- the label offset by rank. ``positive_mask``
      (``(B, K)`` bool) allows several positives per query.
    * Single positive: ``loss_i = -log softmax(s[i])[label_i]`` (cross-entropy).
    * Several positives ``P(i)``: ``loss_i = -1/|P(i)| * sum_{p in P(i)} log(exp(s[i,p]) /
      sum_j exp(s[i,j]))`` -- every positive competes with all candidates, including
      the other positives (SupCon's "L_out"). Rows without a positive raise.
    * ``ignore_mask`` (``(B, K)`` or ``(B, K + M)`` bool): candidates removed from query
      ``i``'s softmax -- neither positive nor negative (a view's own embedding in
      SimCLR's 2N x 2N logits; sentences of the query's own document that are likely
      false negatives). An ignored positive raises.
    * Duplicates: a key that equals the positive but sits at another index is treated
      as a negative (as in SimCLR / sentence-transformers). Deduplicate upstream, or
      mark duplicates in ``positive_mask``, if that matters for your data.
    * ``symmetric=True`` (single positive, no extra negatives on the key side) adds the
      key-to-query direction and averages: ``(L(q->k) + L(k->q)) / 2``; for the
      reverse direction the candidates are the queries, and key ``j`` with label ``j``
      -- this needs a square, label-free setup (``B == K``, ``labels`` unset).
    * ``reduction``: ``"mean"`` over queries (default), ``"sum"`` or ``"none"``.

    The loss is computed in float32 even under autocast, because low-precision
    logsumexp over thousands of candidates loses the small positive-logit differences.
    """
    if query.dim() != 2 or keys.dim() != 2:
        raise ValueError(f"query and keys must be 2-D, got {tuple(query.shape)} and {tuple(keys.shape)}")
    if query.shape[-1] != keys.shape[-1]:
        raise ValueError(f"query width {query.shape[-1]} != keys width {keys.shape[-1]}")
    if labels is not None and positive_mask is not None:
        raise ValueError("pass either labels or positive_mask, not both")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    query, keys = query.float(), keys.float()
    B, K = query.shape[0], keys.shape[0]

    candidates = keys
    if extra_negatives is not None:
        if extra_negatives.dim() != 2 or extra_negatives.shape[-1] != query.shape[-1]:
            raise ValueError(
                f"extra_negatives must be (M, {query.shape[-1]}), got {tuple(extra_negatives.shape)}"
            )
        candidates = torch.cat([keys, extra_negatives.float()], dim=0)
    # Autocast would run the matmul in bf16/fp16 again despite the float32 inputs.
    with torch.autocast(device_type=query.device.type, enabled=False):
        logits = similarity_logits(query, candidates, temperature, normalize)

    if ignore_mask is not None:
        total = candidates.shape[0]
        if ignore_mask.dim() != 2 or ignore_mask.shape[0] != B or ignore_mask.shape[1] not in (K, total):
            raise ValueError(f"ignore_mask must be ({B}, {K}) or ({B}, {total}), got {tuple(ignore_mask.shape)}")
        ignore = ignore_mask.to(device=logits.device, dtype=torch.bool)
        if ignore.shape[1] != total:
            ignore = torch.cat([ignore, ignore.new_zeros(B, total - K)], dim=1)
        logits = logits.masked_fill(ignore, float("-inf"))
        if symmetric:
            raise ValueError("ignore_mask cannot be combined with symmetric=True")
        if positive_mask is not None:
            if bool((ignore[:, :K] & positive_mask.to(ignore.device, torch.bool)).any()):
                raise ValueError("ignore_mask removes a positive (positive_mask and ignore_mask overlap)")
        else:
            pos = labels if labels is not None else torch.arange(B, device=logits.device)
            if bool(ignore.gather(1, pos.view(-1, 1).to(ignore.device)).any()):
                raise ValueError("ignore_mask removes a query's positive key")

    if positive_mask is not None:
        if positive_mask.shape != (B, K):
            raise ValueError(f"positive_mask must be ({B}, {K}), got {tuple(positive_mask.shape)}")
        mask = positive_mask.to(torch.bool)
        n_pos = mask.sum(dim=1)
        if bool((n_pos == 0).any()):
            raise ValueError("every query needs at least one positive in positive_mask")
        log_prob = logits.log_softmax(dim=1)[:, :K]
        # masked_fill, not a product: ignored candidates hold -inf and -inf * 0 is NaN.
        loss = -log_prob.masked_fill(~mask, 0.0).sum(dim=1) / n_pos
    else:
        if labels is None:
            if K < B:
                raise ValueError(f"default positives need len(keys) >= len(query), got {K} < {B}")
            labels = torch.arange(B, device=query.device)
        loss = F.cross_entropy(logits, labels, reduction="none")

    if symmetric:
        if positive_mask is not None or extra_negatives is not None or K != B:
            raise ValueError("symmetric=True needs square in-batch logits: B == K, no mask/extra negatives")
        if not torch.equal(labels.cpu(), torch.arange(B)):
            raise ValueError("symmetric=True needs the default labels arange(B)")
        loss_t = F.cross_entropy(logits.t(), labels, reduction="none")
        loss = (loss + loss_t) / 2

    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


@torch.no_grad()
def retrieval_top1(
    query: Tensor,
    candidates: Tensor,
    *,
    labels: Tensor | None = None,
    positive_mask: Tensor | None = None,
    ignore_mask: Tensor | None = None,
) -> Tensor:
    """Pretext accuracy with :func:`info_nce`'s candidate protocol: the share of queries whose
    most similar (cosine) non-ignored candidate is a positive. ``labels`` (one positive per
    query, default ``arange(B)``) or ``positive_mask`` (``(B, K')`` bool, ``K' <=`` number of
    candidates); ``ignore_mask`` (``(B, K')``) removes candidates, columns past ``K'`` are kept."""
    scores = F.normalize(query.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T
    width = scores.shape[1]

    def widen(mask: Tensor) -> Tensor:
        mask = mask.to(device=scores.device, dtype=torch.bool)
        return torch.cat([mask, mask.new_zeros(mask.shape[0], width - mask.shape[1])], 1) if mask.shape[1] < width else mask

    if ignore_mask is not None:
        scores = scores.masked_fill(widen(ignore_mask), float("-inf"))
    best = scores.argmax(dim=1)
    if positive_mask is not None:
        hit = widen(positive_mask).gather(1, best.view(-1, 1)).squeeze(1)
    else:
        if labels is None:
            labels = torch.arange(scores.shape[0], device=scores.device)
        hit = best == labels.to(scores.device)
    return hit.float().mean()
