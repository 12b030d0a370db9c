"""A word corpus's sentence offsets cut into SGNS chunks, a block of offsets at a time.

The functions take the offsets in memory (``np.ndarray``) or on disk
(:class:`~textcl.token_store.DiskArray`, as :func:`textcl.corpus.load_corpus` leaves them)
and walk them :data:`~textcl.token_store.BLOCK_ITEMS` at a time, so that the memory they
use does not grow with the corpus: only the chunk boundaries (one per ``chunk_words``
words) are kept. Offsets on disk that need cutting are written beside their file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from textcl.token_store import ArrayWriter, DiskArray, blocks, scratch_dir

__all__ = ["chunk_boundaries", "cut_at_chunk_grid", "longest_sentence"]


def _sentences(offsets: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(starts, ends)`` of the sentences, a block at a time."""
    previous = None
    for _, block in blocks(offsets):
        block = np.asarray(block, dtype=np.int64)
        edges = block if previous is None else np.r_[previous, block]
        if len(edges) > 1:
            yield edges[:-1], edges[1:]
        previous = block[-1:]


def _grid_cuts(starts: np.ndarray, ends: np.ndarray, size: int) -> np.ndarray:
    """The grid positions strictly inside the sentences longer than ``size // 4`` (sorted)."""
    first = starts // size + 1  # first grid line after the sentence's first word
    last = (ends - 1) // size  # last grid line before its end
    cuts = np.where(ends - starts > size // 4, np.maximum(last - first + 1, 0), 0)
    total = int(cuts.sum())
    # Grid line indices first[i], first[i] + 1, ... (cuts[i] of them) per sentence i.
    step = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(cuts) - cuts, cuts)
    return (np.repeat(first, cuts) + step) * size


def cut_at_chunk_grid(offsets: Any, chunk_words: int) -> Any:
    """``offsets`` with the long sentences cut where they cross the chunk grid.

    The grid is the word positions ``k * chunk_words`` of the token stream. A sentence
    longer than ``chunk_words // 4`` words is cut at every grid position strictly inside
    it; shorter sentences are left whole (so a corpus of ordinary sentences -- all shorter
    than a quarter chunk -- comes back unchanged, as the same object). With the result,
    :func:`chunk_boundaries` gives chunks of more than ``0.75 * chunk_words`` and less than
    ``1.25 * chunk_words`` words (the last may be shorter), whatever the line lengths.
    Without the cut a chunk holds up to ``chunk_words + max_sentence_length - 1`` words: two
    ~10,000-word pieces of a single-line corpus fell into one 10,000-word chunk, a step of
    twice the pairs. Each cut loses the pairs that would cross it (at most ``window *
    (window + 1)``), as any sentence end does.

    Offsets in memory give an array in memory; offsets on disk (a ``DiskArray``) that need
    cuts give a ``DiskArray`` of the cut offsets, written once beside their file
    (``<name>.cut<chunk_words>``) and reused.
    """
    size = max(1, int(chunk_words))
    if not isinstance(offsets, DiskArray):
        offsets = np.asarray(offsets, dtype=np.int64)
        grid = _grid_cuts(offsets[:-1], offsets[1:], size)
        if len(grid) == 0:
            return offsets
        return np.sort(np.concatenate([offsets, grid]))  # grid lines lie strictly inside sentences
    target = offsets.path.with_name(f"{offsets.path.name}.cut{size}")
    if target.exists():
        return DiskArray(target, np.int64)
    if not any(len(_grid_cuts(s, e, size)) for s, e in _sentences(offsets)):
        return offsets
    if not os.access(target.parent, os.W_OK):  # a shared, read-only cache
        target = scratch_dir() / target.name
    with ArrayWriter(target, np.int64) as out:
        for starts, ends in _sentences(offsets):
            # A block's sentence starts and the grid lines inside its sentences, in order.
            out.write(np.sort(np.concatenate([starts, _grid_cuts(starts, ends, size)])))
        out.write(offsets[len(offsets) - 1 :])
        return out.close()


def chunk_boundaries(offsets: Any, chunk_words: int) -> np.ndarray:
    """Sentence indices cutting a corpus into chunks of about ``chunk_words`` words.

    Chunk ``k`` holds the sentences starting in words ``[k * chunk_words, (k + 1) *
    chunk_words)``, so every chunk (except the last) has ``chunk_words`` words give or
    take one sentence, and sentences are never cut here (:func:`cut_at_chunk_grid` first
    cuts the long ones, so "one sentence" stays under a quarter chunk). Returns ``bounds``
    with chunk ``c`` = sentences ``bounds[c]:bounds[c + 1]``.
    """
    size = max(1, int(chunk_words))
    firsts, previous, index = [], None, 0
    for starts, _ in _sentences(offsets):
        grid = starts // size
        before = np.r_[grid[:1] - 1 if previous is None else previous, grid[:-1]]
        firsts.append(index + np.flatnonzero(grid != before))
        previous, index = grid[-1:], index + len(grid)
    return np.concatenate([*firsts, [len(offsets) - 1]]).astype(np.int64)


def longest_sentence(offsets: Any) -> int:
    """The most words in one sentence (0 for a corpus without sentences)."""
    return max((int((ends - starts).max()) for starts, ends in _sentences(offsets)), default=0)
