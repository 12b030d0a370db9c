"""Per-token weights for the bag-of-words paths (``model.token_weights``): SIF's ``a / (a + p(t))``.

Arora et al. (2017, "A simple but tough-to-beat baseline for sentence embeddings") weight each
word of an averaged-vector sentence embedding by ``a / (a + p(w))``, with ``p`` the word's
unigram frequency in a corpus: frequent words (``the``, ``[CLS]``) count for little, rare ones
for about 1. Here ``p`` is counted over the tokenizer's ids (WordPiece pieces, special tokens
included, as the bag averages them), on unlabelled training sentences only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["count_tokens", "sif_weights"]


def count_tokens(tokenizer: Any, texts: Sequence[str], *, max_length: int, vocab_size: int | None = None,
                 batch_size: int = 10_000) -> torch.Tensor:
    """How often each token id occurs in ``texts`` tokenized as the encoder does (special
    tokens added, truncated to ``max_length``): an int64 vector of ``vocab_size`` (default: the tokenizer's)."""
    size = int(vocab_size if vocab_size is not None else len(tokenizer))
    counts = torch.zeros(size, dtype=torch.int64)
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(list(texts[start:start + batch_size]), truncation=True, max_length=max_length)
        ids = torch.tensor([i for row in encoded["input_ids"] for i in row], dtype=torch.int64)
        counts += torch.bincount(ids, minlength=size)[:size]
    return counts


def sif_weights(counts: torch.Tensor, a: float) -> torch.Tensor:
    """SIF weights ``a / (a + p)``, ``p = counts / counts.sum()``: float32, 1 for unseen tokens."""
    if a <= 0:
        raise ValueError(f"SIF's a must be > 0, got {a}")
    total = counts.sum()
    if total <= 0:
        raise ValueError("no tokens counted: the corpus is empty")
    p = counts.double() / total.double()
    return (a / (a + p)).float()
