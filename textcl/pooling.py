"""Pooling of token states into sentence vectors, as sentence-transformers' Pooling does.

Below every other text module: :mod:`textcl.st_folder` checks saved pooling modes against
:data:`POOLING_MODES`, :class:`textcl.encoders.TextEncoder` pools with :func:`pool`, and
:class:`textcl.st_modules.BagOfWordsResidual` uses :func:`bow_mean`, and
:class:`textcl.st_modules.StartBag` :func:`concat_start_bag`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOLING_MODES = ("mean", "cls", "max")


def pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``(B, T, d)`` token states to ``(B, d)`` exactly as sentence-transformers' Pooling does.

    ``mean`` averages over attended tokens, ``cls`` takes the first attended token, ``max``
    takes the element-wise maximum over attended tokens.
    """
    if mode == "cls":
        # First *attended* position rather than index 0, so left-padded batches work (as in ST).
        first = attention_mask.to(torch.int).argmax(dim=1)
        index = first.view(-1, 1, 1).expand(-1, 1, token_embeddings.shape[-1])
        return torch.gather(token_embeddings, 1, index).squeeze(1)
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    if mode == "mean":
        # Accumulate half precision in float32, like ST, so fp16/bf16 means do not overflow.
        half = token_embeddings.dtype in (torch.float16, torch.bfloat16)
        acc = torch.float32 if half else token_embeddings.dtype
        summed = (token_embeddings * mask).sum(dim=1, dtype=acc)
        count = mask.sum(dim=1, dtype=acc).clamp(min=1e-9)
        return (summed / count).to(token_embeddings.dtype)
    if mode == "max":
        return token_embeddings.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")


def bow_mean(embedding: nn.Embedding, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             token_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the input-embedding rows of the attended tokens: ``(B, T)`` ids -> ``(B, d)``
    (the residual bag-of-words path, ``TextEncoder.bow_weight``).

    ``token_weights`` (one per vocabulary id, e.g. SIF's ``a / (a + p(token))``,
    :mod:`textcl.token_weights`) makes it the weighted mean ``sum w_t e_t / sum w_t``.
    """
    # A plain table takes one fused gather-and-sum, 2-4x faster than gathering the (B, T, d) rows
    # on CPU, forward and backward; a model's own embedding class (e.g. one that scales its rows)
    # is called as it is.
    fused = type(embedding) is nn.Embedding and embedding.max_norm is None
    rows = None if fused else embedding(input_ids)
    ref = embedding.weight if fused else rows
    weights = attention_mask.to(ref.device, ref.dtype)  # padding has weight 0
    if token_weights is not None:
        weights = weights * token_weights.to(ref.device, ref.dtype)[input_ids]
    if fused:
        total = F.embedding_bag(input_ids, embedding.weight, per_sample_weights=weights, mode="sum")
    else:
        total = (rows * weights.unsqueeze(-1)).sum(dim=1)
    return total / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)


def concat_start_bag(pooled: torch.Tensor, start_bag: torch.Tensor, weight: float) -> torch.Tensor:
    """``[pooled / |pooled|, weight * start_bag / |start_bag|]``: ``(B, d)`` + ``(B, d')`` -> ``(B, d + d')``.

    Each half is unit-normalised first, so the cosine of two such vectors is the weighted mean
    of the two halves' cosines, ``(cos_trained + weight**2 * cos_start) / (1 + weight**2)``: the
    trained half decides similarity as much as the weight lets it, while a linear probe still
    sees every feature of the frozen start (``TextEncoder.start_bag_weight``).
    """
    return torch.cat([F.normalize(pooled, dim=-1), weight * F.normalize(start_bag.to(pooled.dtype), dim=-1)], dim=-1)
