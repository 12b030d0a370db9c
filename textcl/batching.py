"""Cutting texts sorted by length into batches for forward passes (token budget on CPU).

Used by :meth:`textcl.encoders.TextEncoder.collate` (chunked training batches) and by
:meth:`textcl.embed.Embedder.encode`.
"""

from __future__ import annotations

#: Padded tokens per forward pass on CPU for a 384-d model (scaled by 384/d); see cpu_token_budget.
CPU_TOKENS_PER_FORWARD = 2048


def cpu_token_budget(dim: int) -> int:
    """Padded tokens per forward pass that CPUs run fastest, for a model of width ``dim``.

    Measured with 2 threads: MiniLM (384-d) ran ~15k tokens/s at 1-2k tokens per forward
    but ~10k at 8-16k (cache effects), and a BERT-base-width model half as fast at 4k as
    at 1k. GPUs want the biggest batches, so callers use no budget there.
    """
    return min(max(CPU_TOKENS_PER_FORWARD * 384 // max(dim, 1), 256), 4096)


def plan_length_batches(lengths: list[int], max_items: int, token_budget: int | None) -> list[tuple[int, int]]:
    """Cut descending ``lengths`` into ``[start, end)`` batches of at most ``max_items`` items.

    With a ``token_budget``: a batch also stays within ``token_budget`` padded tokens, and
    once it holds half the budget it ends before a text shorter than 90% of its longest,
    so the padding in the long, sparse tail stays small.
    """
    batches = []
    start, n = 0, len(lengths)
    while start < n:
        longest = max(lengths[start], 1)
        cap = max_items if token_budget is None else max(1, min(max_items, token_budget // longest))
        end = min(start + cap, n)
        if token_budget is not None:
            for j in range(start + 1, end):
                if (j - start) * longest * 2 >= token_budget and lengths[j] < 0.9 * longest:
                    end = j
                    break
        batches.append((start, end))
        start = end
    return batches
