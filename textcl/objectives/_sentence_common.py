"""Shared parts of the sentence-level objectives (next-sentence, neighbour, SimCSE).

* :class:`SentenceCorpus` -- tokenised sentence documents with a global id per sentence
  (``gid``) and a hash of each sentence's token ids (``text_key``, to spot the same
  sentence text at another position: "Yes." occurs in many chapters).
* :func:`load_sentence_corpora` -- recipe ``data:`` section -> train / held-out corpora
  (document-level split), split statistics.
* :class:`PositionDataset` -- map-style dataset over ``(document, sentence)`` positions
  whose randomness derives from ``(seed, stream, epoch, index)`` only.
* Held-out helpers: :func:`heldout_positions`, :func:`duplicate_text_mask` (embeddings:
  :meth:`textcl.objectives.base.TextMethod.embed_ids`; top-1: :func:`textcl.core.losses.retrieval_top1`).
* :class:`SentenceObjective` -- the :class:`~textcl.objectives.base.TextMethod` of an
  objective trained on a :class:`SentenceCorpora`.

Private to ``textcl.objectives``: the public sentence API is :mod:`textcl.sentences`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from textcl.documents import DataError, held_out_split
from textcl.objectives.base import (
    EVAL_STREAM,
    TRAIN_STREAM,
    SeededDataset,
    TextMethod,
    embed_token_ids,
    example_rng,
)
from textcl.sentences import (
    SentenceDataSection,
    SentenceTokens,
    SplitStats,
    load_sentence_documents,
    splitter_version,
    text_key,
    tokenize_sentence_dataset,
)

__all__ = [
    "EVAL_STREAM",
    "TRAIN_STREAM",
    "PositionDataset",
    "PositionIndex",
    "SentenceCorpora",
    "SentenceCorpus",
    "SentenceObjective",
    "duplicate_text_mask",
    "embed_token_ids",
    "example_rng",
    "heldout_positions",
    "load_sentence_corpora",
]

# --------------------------------------------------------------------- corpus
class PositionIndex:
    """``(document, sentence)`` positions in corpus order without a row per position:
    document ``d`` holds ``counts[d]`` of them, ``first[d]``, ``first[d] + step``, ...
    Item ``i`` is found by a binary search over the per-document running counts, so the
    memory is a few numbers per document whatever the number of sentences."""

    def __init__(self, counts: Any, first: Any, step: int = 1):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.first = np.asarray(first, dtype=np.int64)
        self.step = int(step)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return np.array([self[i] for i in range(*index.indices(len(self)))], dtype=np.int64).reshape(-1, 2)
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(index)
        d = int(np.searchsorted(self.starts, i, side="right")) - 1
        return d, int(self.first[d] + self.step * (i - self.starts[d]))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for d in np.flatnonzero(self.counts).tolist():
            first = int(self.first[d])
            for j in range(int(self.counts[d])):
                yield d, first + self.step * j

    def tolist(self) -> list[list[int]]:
        return [[d, s] for d, s in self]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.array(self.tolist(), dtype=dtype or np.int64).reshape(-1, 2)


class _TextKeys:
    """``text_key[gid]`` of a corpus whose keys stay in Arrow."""

    def __init__(self, corpus: SentenceCorpus):
        self.corpus = corpus

    def __len__(self) -> int:
        return self.corpus.num_sentences

    def __getitem__(self, gid: Any) -> int:
        c = self.corpus
        gid = int(gid)
        if not 0 <= gid < c.num_sentences:
            raise IndexError(gid)
        d = int(np.searchsorted(c.offsets, gid, side="right")) - 1
        return int(c.tokens.keys[int(c.first[d]) + gid - int(c.offsets[d])])


class _DocumentSentences(Sequence[list[list[int]]]):
    """``ids[d][s]`` of a corpus whose tokens stay in Arrow (a document's sentences, read on demand)."""

    def __init__(self, corpus: SentenceCorpus):
        self.corpus = corpus

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, d: Any) -> Any:
        if isinstance(d, slice):
            return [self[i] for i in range(*d.indices(len(self)))]
        c = self.corpus
        return [c.sentence(int(d), s) for s in range(int(c.lengths[d]))]


class SentenceCorpus:
    """Tokenised sentence documents.

    ``sentence(d, s)`` (also ``ids[d][s]``) are the token ids (no special tokens) of sentence
    ``s`` of document ``d``; ``gid(d, s)`` is a corpus-wide sentence id; ``text_key[gid]`` a
    hash of the sentence's token ids (equal for equal sentences).

    Built from :class:`~textcl.sentences.SentenceDocuments` and their
    :class:`~textcl.sentences.SentenceTokens`, the token ids and keys stay in the
    memory-mapped Arrow cache (read per sentence) and the corpus holds a few numbers per
    document. Built from lists (``ids[d][s]``, small inputs and tests), it holds them.
    """

    def __init__(self, docs: Any, ids: Any):
        self.docs = docs
        self.tokens: SentenceTokens | None = None
        self._lists: list[list[list[int]]] | None = None
        self.text_key: Any
        if isinstance(ids, SentenceTokens):
            rows = docs.rows
            self.tokens = ids
            self.first = ids.sentence_start[rows]
            self.lengths = (ids.sentence_start[rows + 1] - self.first).astype(np.int64)
            self.text_key = _TextKeys(self)
        else:
            if len(docs) != len(ids):
                raise ValueError(f"{len(docs)} documents but {len(ids)} tokenised documents")
            self._lists = ids
            self.lengths = np.array([len(d) for d in ids], dtype=np.int64)
            self.text_key = np.array([text_key(s) for d in ids for s in d], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    @property
    def ids(self) -> Sequence[list[list[int]]]:
        return self._lists if self._lists is not None else _DocumentSentences(self)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_sentences(self) -> int:
        return int(self.offsets[-1])

    def gid(self, d: int, s: int) -> int:
        return int(self.offsets[d] + s)

    def sentence(self, d: int, s: int) -> list[int]:
        if self._lists is not None:
            return self._lists[d][s]
        assert self.tokens is not None
        return self.tokens.ids[int(self.first[d]) + int(s)]

    def positions(self, valid: Callable[[int, int], bool] | None = None) -> Any:
        """The ``(document, sentence)`` positions where ``valid(n_d, s)`` holds (every position
        when ``valid`` is None), in corpus order: a :class:`PositionIndex` (indexable,
        ``len``, iterable, ``tolist()``, ``np.asarray`` gives the ``(N, 2)`` array).
        ``valid`` is called once per distinct document length."""
        if valid is None:
            return PositionIndex(self.lengths, np.zeros(len(self), dtype=np.int64))
        counts = np.zeros(len(self), dtype=np.int64)
        first = np.zeros(len(self), dtype=np.int64)
        for n in np.unique(self.lengths).tolist():
            ok = [s for s in range(n) if valid(n, s)]
            if ok and ok != list(range(ok[0], ok[0] + len(ok))):  # not one run: list them all
                return self._position_array(valid)
            same = self.lengths == n
            counts[same], first[same] = len(ok), (ok[0] if ok else 0)
        return PositionIndex(counts, first)

    def _position_array(self, valid: Callable[[int, int], bool]) -> np.ndarray:
        rows = [(d, s) for d, n in enumerate(self.lengths.tolist()) for s in range(n) if valid(n, s)]
        return np.array(rows, dtype=np.int64).reshape(-1, 2)

    def random_other_sentence(self, rng: np.random.Generator, d: int) -> tuple[int, int]:
        """A uniformly random document other than ``d``, then a uniform sentence in it."""
        if len(self) < 2:
            raise DataError("random sentences from other documents need at least 2 documents")
        other = int(rng.integers(0, len(self) - 1))
        other += other >= d  # skip d without a rejection loop
        return other, int(rng.integers(0, self.lengths[other]))


@dataclass
class SentenceCorpora:
    train: SentenceCorpus
    eval: SentenceCorpus
    stats: SplitStats
    held_out_documents: int  # held-out documents before the max_eval_documents cap


def load_sentence_corpora(data: SentenceDataSection, tokenizer: Any) -> SentenceCorpora:
    """Read, split, tokenise and split by document (``held_out_split`` on the ids). The
    sentences and token ids stay in the Arrow caches (``data.num_proc`` processes make them)."""
    docs, stats = load_sentence_documents(
        data.documents, text_field=data.text_field, id_field=data.id_field,
        max_documents=data.max_documents, min_sentences=data.min_sentences, cache_dir=data.cache_dir,
        num_proc=data.num_proc,
    )
    train_docs, held = held_out_split(docs, data.held_out_fraction)
    if not len(train_docs):
        raise DataError(
            f"{data.documents}: all {len(docs)} usable documents fell into the held-out split; "
            "add documents or lower data.held_out_fraction"
        )
    held_docs = held[: data.max_eval_documents]
    tokens = tokenize_sentence_dataset(tokenizer, docs, data.max_tokens, data.num_proc)
    return SentenceCorpora(SentenceCorpus(train_docs, tokens), SentenceCorpus(held_docs, tokens), stats, len(held))


# --------------------------------------------------------------------- datasets
class PositionDataset(SeededDataset):
    """Map-style dataset over ``positions`` (``(N, 2)`` rows of document, sentence: an array
    or a :class:`PositionIndex`).

    Subclasses implement :meth:`example`; its ``rng`` comes from
    ``(seed, stream, epoch, index)``, so items are reproducible and worker-independent.
    """

    def __init__(self, corpus: SentenceCorpus, positions: Any, seed: int, stream: int = TRAIN_STREAM):
        super().__init__(seed, stream)
        self.corpus, self.positions = corpus, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        d, s = (int(x) for x in self.positions[index])
        return self.example(d, s, self.rng(index))

    def example(self, d: int, s: int, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError


# --------------------------------------------------------------------- held-out evaluation
def heldout_positions(corpus: SentenceCorpus, valid: Callable[[int, int], bool], per_document: int,
                      seed: int) -> np.ndarray:
    """Up to ``per_document`` valid positions per held-out document, drawn once from ``seed``
    (fixed across evaluations so the numbers are comparable), in corpus order."""
    rng = example_rng(seed, EVAL_STREAM, 0, 0)
    rows = []
    for d, n in enumerate(corpus.lengths.tolist()):
        ok = [s for s in range(n) if valid(n, s)]
        if len(ok) > per_document:
            ok = sorted(rng.choice(ok, size=per_document, replace=False).tolist())
        rows.extend((d, s) for s in ok)
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def duplicate_text_mask(query_keys: torch.Tensor, candidate_keys: torch.Tensor,
                        positive_mask: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` bool: candidates that are not positives but whose text equals the query's
    or one of its positives' (likely false negatives: "Yes." in another chapter)."""
    pos = positive_mask.to(torch.bool)
    same_as_query = candidate_keys[None, :] == query_keys[:, None]
    # (B, K) @ (K, K): does any positive of row i have candidate j's text?
    equal_text = (candidate_keys[:, None] == candidate_keys[None, :]).float()
    same_as_positive = (pos.float() @ equal_text) > 0
    return (same_as_query | same_as_positive) & ~pos


# --------------------------------------------------------------------- base method
class SentenceObjective(TextMethod):
    """Base of the objectives trained on sentence corpora: train / held-out
    :class:`SentenceCorpora` from the ``data:`` section
    (:class:`~textcl.sentences.SentenceDataSection`), the model card's data line and the
    sequence-length check. Subclasses set ``name``, ``config_class``, ``citation``, ``title``.
    """

    def __init__(self, encoder: Any, config: Any, corpora: SentenceCorpora, seed: int = 42,
                 mlm_model: torch.nn.Module | None = None):
        super().__init__(encoder, config, seed, mlm_model)
        self.train_corpus, self.eval_corpus = corpora.train, corpora.eval
        self.stats = corpora.stats
        self.held_out_documents = corpora.held_out_documents

    @classmethod
    def load_data(cls, config: Any, tokenizer: Any) -> dict[str, Any]:
        return {"corpora": load_sentence_corpora(config.data, tokenizer)}

    def check_sequence_length(self, content_tokens: int, specials: int, what: str) -> None:
        """Raise a ``DataError`` naming the keys to change when inputs would be cut."""
        if content_tokens + specials > self.encoder.max_seq_length:
            raise DataError(
                f"{what}: {content_tokens} tokens + {specials} special tokens exceed the encoder's "
                f"max_seq_length ({self.encoder.max_seq_length}); lower data.max_tokens or raise "
                "model.max_seq_length"
            )

    def describe_data(self) -> str:
        return (
            f"{len(self.train_corpus)} training documents ({self.train_corpus.num_sentences} sentences, "
            f"split with {splitter_version()}) from `{self.cfg.data.documents}`; "
            f"{len(self.eval_corpus)} of {self.held_out_documents} held-out documents used for the "
            f"pretext metric; {self.stats.empty} empty and {self.stats.too_few_sentences} documents "
            f"with fewer than {self.cfg.data.min_sentences} sentences skipped"
        )
