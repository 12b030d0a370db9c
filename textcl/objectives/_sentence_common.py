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

from collections.abc import Callable
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
    SentenceDocument,
    SplitStats,
    load_sentence_documents,
    splitter_version,
    tokenize_sentences,
)

__all__ = [
    "EVAL_STREAM",
    "TRAIN_STREAM",
    "PositionDataset",
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
class SentenceCorpus:
    """Tokenised sentence documents.

    ``ids[d][s]`` are the token ids (no special tokens) of sentence ``s`` of document
    ``d``; ``gid(d, s)`` is a corpus-wide sentence id; ``text_key[gid]`` a hash of the
    sentence's token ids (equal for equal sentences).
    """

    def __init__(self, docs: list[SentenceDocument], ids: list[list[list[int]]]):
        if len(docs) != len(ids):
            raise ValueError(f"{len(docs)} documents but {len(ids)} tokenised documents")
        self.docs = docs
        self.ids = ids
        self.lengths = np.array([len(d) for d in ids], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        # hash() of a tuple of ints is not salted per process (only str/bytes hashes are).
        self.text_key = np.array(
            [hash(tuple(s)) & 0x7FFFFFFFFFFFFFFF for d in ids for s in d], dtype=np.int64
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_sentences(self) -> int:
        return int(self.offsets[-1])

    def gid(self, d: int, s: int) -> int:
        return int(self.offsets[d] + s)

    def sentence(self, d: int, s: int) -> list[int]:
        return self.ids[d][s]

    def positions(self, valid: Callable[[int, int], bool] | None = None) -> np.ndarray:
        """``(N, 2)`` int64 array of the ``(document, sentence)`` positions where ``valid(n_d, s)``
        holds (every position when ``valid`` is None), in corpus order."""
        rows = [
            (d, s)
            for d, n in enumerate(self.lengths.tolist())
            for s in range(n)
            if valid is None or valid(n, s)
        ]
        return np.array(rows, dtype=np.int64).reshape(-1, 2)

    def random_other_sentence(self, rng: np.random.Generator, d: int) -> tuple[int, int]:
        """A uniformly random document other than ``d``, then a uniform sentence in it."""
        if len(self.ids) < 2:
            raise DataError("random sentences from other documents need at least 2 documents")
        other = int(rng.integers(0, len(self.ids) - 1))
        other += other >= d  # skip d without a rejection loop
        return other, int(rng.integers(0, self.lengths[other]))


@dataclass
class SentenceCorpora:
    train: SentenceCorpus
    eval: SentenceCorpus
    stats: SplitStats
    held_out_documents: int  # held-out documents before the max_eval_documents cap


def load_sentence_corpora(data: SentenceDataSection, tokenizer: Any) -> SentenceCorpora:
    """Read, split, tokenise and split by document (``held_out_split`` on the ids)."""
    docs, stats = load_sentence_documents(
        data.documents, text_field=data.text_field, id_field=data.id_field,
        max_documents=data.max_documents, min_sentences=data.min_sentences, cache_dir=data.cache_dir,
    )
    train_docs, held = held_out_split(docs, data.held_out_fraction)  # type: ignore[arg-type]
    if not train_docs:
        raise DataError(
            f"{data.documents}: all {len(docs)} usable documents fell into the held-out split; "
            "add documents or lower data.held_out_fraction"
        )
    held_docs = held[: data.max_eval_documents]
    train = SentenceCorpus(train_docs, tokenize_sentences(tokenizer, train_docs, data.max_tokens))
    evals = SentenceCorpus(held_docs, tokenize_sentences(tokenizer, held_docs, data.max_tokens))
    return SentenceCorpora(train, evals, stats, len(held))


# --------------------------------------------------------------------- datasets
class PositionDataset(SeededDataset):
    """Map-style dataset over ``positions`` (``(N, 2)`` rows of document, sentence).

    Subclasses implement :meth:`example`; its ``rng`` comes from
    ``(seed, stream, epoch, index)``, so items are reproducible and worker-independent.
    """

    def __init__(self, corpus: SentenceCorpus, positions: np.ndarray, seed: int, stream: int = TRAIN_STREAM):
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
