"""What the two sentence-permutation objectives share (``permutation``: successor
prediction, :mod:`textcl.objectives.permutation`; ``permutation-pirl``: order invariance,
:mod:`textcl.objectives.permutation_pirl`): shuffled ``k``-sentence passages of tokenised
documents and the method base that loads, splits and batches them.

A *passage* is ``k = objective.passage_sentences`` consecutive sentences of one document
(never across a document boundary). Documents with fewer than ``k`` sentences are skipped
and counted (they appear in the model card), rather than giving shorter passages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from textcl.documents import DataError, held_out_split
from textcl.objectives._sentence_common import PositionIndex, SentenceCorpus
from textcl.objectives.base import EVAL_STREAM, TRAIN_STREAM, SeededDataset, TextMethod, example_rng
from textcl.sentences import (
    SentenceDocument,
    as_sentence_documents,
    load_sentence_documents,
    tokenize_sentence_dataset,
)

__all__ = ["BART_CITATION", "PassageObjective", "ShuffledPassageDataset"]

BART_CITATION = """@inproceedings{lewis-etal-2020-bart,
  title = {{BART}: Denoising Sequence-to-Sequence Pre-training for Natural Language Generation,
           Translation, and Comprehension},
  author = {Lewis, Mike and Liu, Yinhan and Goyal, Naman and Ghazvininejad, Marjan and
            Mohamed, Abdelrahman and Levy, Omer and Stoyanov, Veselin and Zettlemoyer, Luke},
  booktitle = {Proceedings of ACL 2020},
  pages = {7871--7880},
  year = {2020}
}"""


class ShuffledPassageDataset(SeededDataset):
    """Shuffled ``k``-sentence passages of tokenised documents (a
    :class:`~textcl.objectives._sentence_common.SentenceCorpus`, or ``ids[d][s]`` lists).

    Item ``index`` is a fixed window slot (document, j-th window). In each epoch a
    document's windows shift by an offset in ``[0, n mod k]`` drawn from
    (seed, stream, epoch, document), so passage boundaries vary between epochs while
    the dataset length stays fixed. The shuffle comes from (seed, stream, epoch, index).
    """

    def __init__(self, token_ids: Any, k: int, seed: int, stream: int = TRAIN_STREAM, slots: Any = None):
        super().__init__(seed, stream)
        self.token_ids, self.k = token_ids, k
        if isinstance(token_ids, SentenceCorpus):
            self.lengths = token_ids.lengths
        else:
            self.lengths = np.array([len(doc) for doc in token_ids], dtype=np.int64)
        if slots is None:  # (d, j) for j < n_d // k, a few numbers per document
            slots = PositionIndex(self.lengths // k, np.zeros(len(self.lengths), dtype=np.int64))
        self.slots = slots

    def __len__(self) -> int:
        return len(self.slots)

    def passage(self, index: int) -> tuple[int, int]:
        """(document, first sentence) of item ``index`` in the current epoch."""
        doc, j = self.slots[index]
        n = int(self.lengths[doc])
        slack = n - (n // self.k) * self.k
        # A 5-number seed (trailing 1) never collides with example_rng's 4-number seeds.
        doc_rng = np.random.default_rng([self.seed, self.stream, self.epoch, doc, 1])
        offset = int(doc_rng.integers(0, slack + 1))
        return doc, offset + j * self.k

    def __getitem__(self, index: int) -> dict[str, Any]:
        doc, start = self.passage(index)
        perm = self.rng(index).permutation(self.k)  # shuffled[j] = original[perm[j]]
        if isinstance(self.token_ids, SentenceCorpus):
            sentences = [self.token_ids.sentence(doc, s) for s in range(start, start + self.k)]
        else:
            sentences = self.token_ids[doc][start : start + self.k]
        return {
            "sentences": [sentences[p] for p in perm],
            "order": np.argsort(perm).tolist(),  # order[i] = shuffled position of original i
            "doc": doc,
            "start": start,
        }


class PassageObjective(TextMethod):
    """Base of the permutation objectives: documents with at least ``k`` sentences, split by
    document into training and held-out token ids, fixed held-out passages
    (``objective.max_eval_passages``), batches of shuffled passages and the card's data line.
    The ``objective:`` section has ``passage_sentences``, ``temperature`` and ``max_eval_passages``."""

    def __init__(self, encoder: Any, config: Any, documents: Sequence[SentenceDocument], seed: int = 42,
                 skipped: dict[str, int] | None = None, mlm_model: torch.nn.Module | None = None):
        super().__init__(encoder, config, seed, mlm_model)  # objective.mlm_weight: MLM on every sentence
        self.skipped = dict(skipped or {})
        obj = config.objective
        self.k = obj.passage_sentences
        documents = as_sentence_documents(documents)  # SentenceDocuments (Arrow); a list goes into memory
        train_docs, held = held_out_split(documents, config.data.held_out_fraction)
        short = int((documents.lengths < self.k).sum())
        if short:
            # load_sentence_documents already drops them when min_sentences >= k; count any left.
            self.skipped["too_few_sentences"] = self.skipped.get("too_few_sentences", 0) + short
            train_docs = train_docs.take(train_docs.lengths >= self.k)
            held = held.take(held.lengths >= self.k)
        held = held[: config.data.max_eval_documents]
        tokens = tokenize_sentence_dataset(encoder.tokenizer, documents, config.data.max_tokens,
                                           getattr(config.data, "num_proc", None))
        self.train_ids = SentenceCorpus(train_docs, tokens)
        self.eval_ids = SentenceCorpus(held, tokens)
        if not len(self.train_ids):
            raise DataError(
                f"{config.data.documents}: no training document has the {self.k} sentences a passage needs "
                "(objective.passage_sentences); lower passage_sentences or add longer documents"
            )
        slots = ShuffledPassageDataset(self.eval_ids, self.k, seed, stream=EVAL_STREAM).slots
        if len(slots) > obj.max_eval_passages:
            pick = example_rng(seed, EVAL_STREAM, 0, 0).choice(len(slots), obj.max_eval_passages, replace=False)
            slots = [slots[i] for i in sorted(pick.tolist())]
        else:
            slots = list(slots)
        self.eval_slots = slots

    @classmethod
    def load_data(cls, config: Any, tokenizer: Any) -> dict[str, Any]:
        d = config.data
        docs, stats = load_sentence_documents(
            d.documents, text_field=d.text_field, id_field=d.id_field, max_documents=d.max_documents,
            min_sentences=max(d.min_sentences, config.objective.passage_sentences), cache_dir=d.cache_dir,
            num_proc=d.num_proc,
        )
        return {"documents": docs, "skipped": {"empty": stats.empty, "too_few_sentences": stats.too_few_sentences}}

    # ---- data
    def train_dataset(self) -> torch.utils.data.Dataset:
        return self.mlm_dataset(ShuffledPassageDataset(self.train_ids, self.k, self.seed))

    def heldout_passages(self) -> ShuffledPassageDataset:
        """The fixed held-out passages (own seed stream, epoch 0)."""
        return ShuffledPassageDataset(self.eval_ids, self.k, self.seed, stream=EVAL_STREAM, slots=self.eval_slots)

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """Flattened sentences (passage-major, shuffled order inside a passage) +
        ``order`` (``(N, k)``) + ``doc`` (``(N,)`` document index) + ``text_key``."""
        seqs = [s for ex in examples for s in ex["sentences"]]
        batch = {
            "sentences": self.encoder.pad_token_ids(seqs, chunk_tokens=self.chunk_tokens),
            "order": torch.tensor([ex["order"] for ex in examples], dtype=torch.long),
            "doc": torch.tensor([ex["doc"] for ex in examples], dtype=torch.long),
            # hash() of a tuple of ints is the same in every process (no per-process salt).
            "text_key": torch.tensor([hash(tuple(s)) & 0x7FFFFFFFFFFFFFFF for s in seqs], dtype=torch.long),
        }
        batch.update(self.passage_views(examples))
        return self.add_mlm(batch, seqs, examples)

    def passage_views(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """Further encoder inputs of a batch (none here)."""
        return {}

    def examples_in(self, batch: dict[str, Any]) -> int:
        return int(batch["order"].shape[0])

    # ---- output
    def describe_data(self) -> str:
        n_train = int((self.train_ids.lengths // self.k).sum())
        skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.skipped.items() if v) or "none"
        return (
            f"{len(self.train_ids)} training documents ({n_train} passages of {self.k} sentences) from "
            f"`{self.cfg.data.documents}`; {len(self.eval_ids)} held out for the pretext metric "
            f"({len(self.eval_slots)} passages); documents skipped: {skipped}"
        )
