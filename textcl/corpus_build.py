"""Writing a word corpus to disk in two streamed passes (:func:`textcl.corpus.load_corpus`).

Pass 1 reads the tokenised sentences a block at a time, gives each word a provisional id in
order of first appearance, adds the block's counts to the count table and appends the
provisional ids (``int32``) and sentence lengths (``int64``) to two scratch files. The
vocabulary is then chosen from the counts. Pass 2 reads the scratch files back
:data:`PASS_WORDS` words at a time, maps the provisional ids to vocabulary ids, drops the
words outside the vocabulary (and the sentences left empty) and writes the corpus's
``ids.int32`` and ``offsets.int64`` (see :class:`~textcl.token_store.DiskArray`).

What stays in memory is what the vocabulary needs -- the provisional word table and the
counts of every distinct word -- plus one block; none of it grows with the number of tokens.
The arrays written equal, bit for bit, the ones the in-memory reader built before
(``np.concatenate`` of the blocks, one ``bincount``, the same vocabulary order).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterable
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from textcl.data_files import DataError
from textcl.token_store import ArrayWriter, DiskArray, blocks

__all__ = ["FORMAT", "PASS_WORDS", "write_corpus"]

#: Version of the files written (part of the cache key).
FORMAT = 1
#: Words per step of pass 2 (at least one sentence).
PASS_WORDS = 1 << 20


def _first_pass(sentence_blocks: Iterable[tuple[list[list[str]], int]], directory: Path
                ) -> tuple[dict[str, int], np.ndarray, int]:
    """Provisional ids (scratch files ``tokens.tmp``, ``lengths.tmp``), the word table, the
    counts and the number of lines read."""
    provisional: dict[str, int] = {}
    counts = np.zeros(0, np.int64)
    lines_read = 0
    # Millions of short-lived lists and strings: the cyclic GC would rescan them over and
    # over (5x the reading time measured); none of them can form a cycle.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with ArrayWriter(directory / "tokens.tmp", np.int32) as tokens, \
                ArrayWriter(directory / "lengths.tmp", np.int64) as lengths:
            for sentences, n_lines in sentence_blocks:
                lines_read += n_lines
                if not sentences:
                    continue
                flat = list(chain.from_iterable(sentences))
                for word in dict.fromkeys(flat):  # unique, in order of appearance
                    if word not in provisional:
                        provisional[word] = len(provisional)
                ids = np.fromiter(map(provisional.__getitem__, flat), np.int32, len(flat))
                tokens.write(ids)
                lengths.write(np.fromiter(map(len, sentences), np.int64, len(sentences)))
                block_counts = np.bincount(ids, minlength=len(provisional)).astype(np.int64)
                block_counts[: len(counts)] += counts
                counts = block_counts
                del flat, sentences, ids
    finally:
        if gc_was_enabled:
            gc.enable()
    return provisional, counts, lines_read


def _vocabulary_order(source: str, provisional: dict[str, int], counts: np.ndarray, lines_read: int,
                      normalize: str, min_count: int, max_vocab: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The provisional ids of the vocabulary's words, most frequent first, and the words."""
    if not provisional:
        raise DataError(
            f"{source}: the corpus has no words ({lines_read} lines read, normalize={normalize!r}); "
            "point data.corpus at a text file with one sentence per line"
            + (" or check data.normalize" if normalize == "a-z" else "")
        )
    prov_words = np.array(list(provisional), dtype=object)
    eligible = np.flatnonzero(counts >= min_count)
    if len(eligible) == 0:
        top = int(counts.argmax())
        raise DataError(
            f"{source}: no word occurs at least data.min_count={min_count} times "
            f"({len(provisional)} distinct words, {int(counts.sum())} tokens; the most frequent, "
            f"{prov_words[top]!r}, occurs {int(counts[top])} times); lower data.min_count or "
            "use a larger corpus"
        )
    # Most frequent first; ties as gensim's sort_by_descending_frequency orders them (the
    # word that appeared later first), so both keep the same words in the top N.
    order = eligible[np.lexsort((-eligible, -counts[eligible]))]
    if max_vocab is not None:
        order = order[:max_vocab]
    return order, prov_words


def _second_pass(directory: Path, final: np.ndarray) -> dict[str, int]:
    """``ids.int32`` and ``offsets.int64`` from the scratch files (removed after)."""
    tokens = DiskArray(directory / "tokens.tmp", np.int32)
    lengths = DiskArray(directory / "lengths.tmp", np.int64)
    word = end = sentences = longest = 0
    with ArrayWriter(directory / "ids.int32", np.int32) as ids_out, \
            ArrayWriter(directory / "offsets.int64", np.int64) as offsets_out:
        offsets_out.write(np.zeros(1, np.int64))
        for _, lens in blocks(lengths):
            cum = np.cumsum(lens)
            i = 0
            while i < len(lens):
                base = int(cum[i - 1]) if i else 0
                j = max(i + 1, int(np.searchsorted(cum, base + PASS_WORDS, side="right")))
                n_words = int(cum[j - 1]) - base
                ids = final[tokens.read(word, word + n_words)]
                keep = ids >= 0
                sentence_of = np.repeat(np.arange(j - i, dtype=np.int64), lens[i:j])
                kept = np.bincount(sentence_of[keep], minlength=j - i)
                kept = kept[kept > 0]
                offsets_out.write(end + np.cumsum(kept))
                ids_out.write(ids[keep])
                end += int(kept.sum())
                sentences += len(kept)
                longest = max(longest, int(kept.max(initial=0)))
                word, i = word + n_words, j
    total = len(tokens)
    del tokens, lengths
    (directory / "tokens.tmp").unlink()
    (directory / "lengths.tmp").unlink()
    return {"raw_words": total, "words": end, "sentences": sentences, "longest_sentence": longest}


def write_corpus(sentence_blocks: Iterable[tuple[list[list[str]], int]], directory: str | Path, *,
                 source: str, normalize: str, min_count: int, max_vocab: int | None) -> dict[str, Any]:
    """Write the corpus of ``sentence_blocks`` (blocks of tokenised sentences, and the lines
    they came from) to ``directory``: ``ids.int32``, ``offsets.int64``, ``vocab.json``
    (words most frequent first, their counts). Returns the corpus's numbers (``raw_words``,
    ``raw_sentences``, ``words``, ``sentences``, ``longest_sentence``, ``vocabulary``).

    Raises ``DataError`` when the corpus has no words or no word reaches ``min_count``.
    """
    directory = Path(directory)
    provisional, counts, lines_read = _first_pass(sentence_blocks, directory)
    order, prov_words = _vocabulary_order(source, provisional, counts, lines_read, normalize, min_count, max_vocab)
    final = np.full(len(provisional), -1, np.int32)
    final[order] = np.arange(len(order), dtype=np.int32)
    del provisional
    raw_sentences = (directory / "lengths.tmp").stat().st_size // np.dtype(np.int64).itemsize
    stats = _second_pass(directory, final)
    words = [str(w) for w in prov_words[order]]
    with open(directory / "vocab.json", "w", encoding="utf-8") as fh:
        json.dump({"words": words, "counts": counts[order].tolist()}, fh)
    return {**stats, "raw_sentences": int(raw_sentences), "vocabulary": len(words)}
