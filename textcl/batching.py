"""Cutting texts sorted by length into batches for forward passes (token budget on CPU).

Used by :meth:`textcl.encoders.TextEncoder.collate` (chunked training batches) and by
:meth:`textcl.embed.Embedder.encode`.
"""

from __future__ import annotations

from typing import Any

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


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Special-token ids ``tokenizer`` puts before and after a single sequence."""
    if hasattr(tokenizer, "build_inputs_with_special_tokens"):
        # Slow tokenizers and transformers 4.x: ask directly, with a sentinel id.
        sentinel = -987654
        full = list(tokenizer.build_inputs_with_special_tokens([sentinel]))
        core = [sentinel]
    else:
        # transformers 5 tokenizers have no build_inputs_with_special_tokens: compare
        # one probe text encoded with and without special tokens.
        core = tokenizer("hello", add_special_tokens=False)["input_ids"]
        full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(core) + 1):
        if full[i : i + len(core)] == core:
            return full[:i], full[i + len(core) :]
    raise RuntimeError(f"cannot find where {type(tokenizer).__name__} puts its special tokens")  # pragma: no cover
