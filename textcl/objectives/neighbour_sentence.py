"""Neighbour-sentence prediction (Skip-Thought, Kiros et al. 2015) as a contrastive task.

The query is sentence *i* of a document; its positives are the sentences within
``window`` of it in the same document (``window: 1``: *i-1* and *i+1*). Skip-Thought
*generates* the neighbours with a decoder; here the query retrieves them among the
keys of the global batch (the contrastive form of Logeswaran & Lee's quick-thoughts).

* ``positives: multi`` -- each query brings all its neighbours (``2 * window`` key slots;
  near a document's edge the missing slots are filled with a copy of a neighbour and
  ignored, so every process encodes the same number of keys). Multi-positive InfoNCE
  with ``positive_mask`` over all keys of the global batch.
* ``positives: sample`` -- each query brings one neighbour, sampled per step from
  ``(seed, epoch, index)``; a plain InfoNCE with in-batch negatives.
* ``sampling: passages`` -- each item is a passage of ``passage_sentences`` consecutive
  sentences (documents tiled into whole passages), every sentence encoded *once* and used
  both as a query and as a key: each query's in-batch positives are its neighbours in its
  passage (quick-thoughts' contiguous batches). Per sentence encoded this gives up to
  ``2 * window`` positive pairs, where ``sampling: sentences`` gives ``2 * window / (2 *
  window + 1)`` (multi) and next-sentence prediction 1/2. With
  ``same_document_negatives: false`` the passage's other sentences are left out of each
  query's softmax (negatives then come from the other passages, as in NSP's batches).

In both modes positives are decided by *identity*, not by ownership: a key is a
positive of query *(d, i)* iff it is sentence *(d, j)* with ``0 < |i - j| <= window``,
whichever query brought it (two queries of one document share neighbours). Removed
from the softmax (``ignore_mask``): a key that *is* the query's sentence (brought by a
neighbouring query), a second copy of a sentence already among the keys, and -- with
``ignore_duplicate_text`` -- a non-positive whose text equals the query's or a
positive's ("Yes." in another chapter). Positives never cross a document boundary.

Pretext metric: on held-out documents, each query's nearest key among all neighbours
of the held-out queries must be one of its own neighbours (top-1).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from textcl.core.distributed import gather_no_grad, gather_with_grad
from textcl.core.losses import info_nce, retrieval_top1
from textcl.documents import DataError
from textcl.objectives._mlm import MLMOptions, add_mlm
from textcl.objectives._sentence_common import (
    PositionDataset,
    PositionIndex,
    SentenceCorpora,
    SentenceCorpus,
    SentenceObjective,
    duplicate_text_mask,
    heldout_positions,
)
from textcl.objectives.base import TextConfig
from textcl.sentences import SentenceDataSection

__all__ = ["NeighbourConfig", "NeighbourDataset", "NeighbourObjective", "NeighbourSentence", "neighbours"]

CITATION = """@inproceedings{kiros-etal-2015-skip,
  title = {Skip-Thought Vectors},
  author = {Kiros, Ryan and Zhu, Yukun and Salakhutdinov, Ruslan and Zemel, Richard S. and
            Torralba, Antonio and Urtasun, Raquel and Fidler, Sanja},
  booktitle = {Advances in Neural Information Processing Systems 28},
  pages = {3294--3302},
  year = {2015}
}"""


class NeighbourObjective(MLMOptions):
    window: int = Field(1, ge=1, description="positives: sentences at distance 1..window")
    positives: Literal["multi", "sample"] = "multi"
    sampling: Literal["sentences", "passages"] = Field(
        "sentences", description="items: a query sentence with its key slots, or a passage of consecutive sentences"
    )
    passage_sentences: int = Field(8, ge=2, description="sampling: passages -- sentences per passage")
    same_document_negatives: bool = Field(
        True, description="sampling: passages -- non-neighbour sentences of the query's document within "
        "passage_sentences positions are negatives (else ignored)"
    )
    temperature: float = Field(0.05, gt=0)
    ignore_duplicate_text: bool = True
    eval_queries_per_document: int = Field(8, ge=1)


class NeighbourConfig(TextConfig):
    data: SentenceDataSection
    objective: NeighbourObjective = NeighbourObjective()


def neighbours(n: int, s: int, window: int) -> list[int]:
    """Sentence indices within ``window`` of ``s`` in a document of ``n`` sentences."""
    return [t for t in range(max(0, s - window), min(n, s + window + 1)) if t != s]


def _has_neighbour(n: int, s: int) -> bool:
    return n >= 2


# --------------------------------------------------------------------- sampling
class NeighbourDataset(PositionDataset):
    """One item per sentence of a document with >= 2 sentences: the query and its key
    slots (``multi``: all neighbours, padded to ``2 * window`` slots with ignored copies;
    ``sample``: one neighbour drawn from the item's rng)."""

    def __init__(self, corpus: SentenceCorpus, seed: int, window: int, mode: str, stream: int = 0,
                 positions: np.ndarray | None = None):
        if positions is None:
            positions = corpus.positions(_has_neighbour)
        super().__init__(corpus, positions, seed, stream)
        self.window, self.mode = window, mode

    def example(self, d: int, s: int, rng: np.random.Generator) -> dict[str, Any]:
        c = self.corpus
        near = neighbours(int(c.lengths[d]), s, self.window)
        if self.mode == "sample":
            slots, valid = [near[int(rng.integers(0, len(near)))]], [True]
        else:
            pad = 2 * self.window - len(near)
            slots, valid = near + [near[0]] * pad, [True] * len(near) + [False] * pad
        return {
            "query": c.sentence(d, s),
            "keys": [c.sentence(d, t) for t in slots],
            "document": d,
            "position": s,
            "key_positions": slots,
            "key_valid": valid,
            "query_text": int(c.text_key[c.gid(d, s)]),
            "key_text": [int(c.text_key[c.gid(d, t)]) for t in slots],
        }


class PassageDataset(PositionDataset):
    """One item per whole passage of ``length`` consecutive sentences (each document tiled
    from its first sentence; a shorter tail is not used)."""

    def __init__(self, corpus: SentenceCorpus, seed: int, length: int, stream: int = 0):
        # Document d starts passages at 0, length, ... (n_d // length of them).
        starts = PositionIndex(corpus.lengths // length, np.zeros(len(corpus), dtype=np.int64), step=length)
        super().__init__(corpus, starts, seed, stream)
        self.length = length

    def example(self, d: int, s: int, rng: np.random.Generator) -> dict[str, Any]:
        c, span = self.corpus, range(s, s + self.length)
        return {
            "sentences": [c.sentence(d, t) for t in span],
            "document": d,
            "positions": list(span),
            "text": [int(c.text_key[c.gid(d, t)]) for t in span],
        }


def neighbour_masks(
    query_doc: torch.Tensor, query_pos: torch.Tensor, query_text: torch.Tensor,
    key_doc: torch.Tensor, key_pos: torch.Tensor, key_text: torch.Tensor, key_valid: torch.Tensor,
    window: int, ignore_duplicate_text: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positive_mask, ignore_mask)``, both ``(B, K)``, from sentence identities.

    Positive: valid key of the query's document at distance 1..window. Ignored: invalid
    (filler) slots, later copies of a sentence already among the keys, the query's own
    sentence, and (``ignore_duplicate_text``) non-positives with the query's or a
    positive's text.
    """
    same_doc = key_doc[None, :] == query_doc[:, None]
    distance = (key_pos[None, :] - query_pos[:, None]).abs()
    valid = key_valid.to(torch.bool)
    K = key_doc.shape[0]
    # Key j is a later copy of key i < j (same document and position).
    same_key = (key_doc[:, None] == key_doc[None, :]) & (key_pos[:, None] == key_pos[None, :])
    earlier = torch.ones(K, K, dtype=torch.bool, device=key_doc.device).tril(-1)
    copy = ((same_key & valid[None, :]) & earlier).any(dim=1)
    keep = valid & ~copy
    positive = same_doc & (distance >= 1) & (distance <= window) & keep[None, :]
    ignore = ~keep[None, :] | (same_doc & (distance == 0))
    ignore = ignore.expand(query_doc.shape[0], K).clone()
    if ignore_duplicate_text:
        ignore |= duplicate_text_mask(query_text, key_text, positive)
    return positive, ignore & ~positive


# --------------------------------------------------------------------- the method
class NeighbourSentence(SentenceObjective):
    name = "neighbour"
    config_class = NeighbourConfig
    citation = CITATION
    title = "Neighbour-sentence prediction (Skip-Thought style, contrastive)"

    def __init__(self, encoder: Any, config: NeighbourConfig, corpora: SentenceCorpora, seed: int = 42,
                 mlm_model: torch.nn.Module | None = None):
        super().__init__(encoder, config, corpora, seed, mlm_model)
        self.train_positions = self.train_corpus.positions(_has_neighbour)
        if len(self.train_positions) == 0:
            raise DataError(f"{config.data.documents}: no training document has two sentences")
        specials = encoder.tokenizer.num_special_tokens_to_add(pair=False)
        self.check_sequence_length(config.data.max_tokens, specials, "data.max_tokens")
        obj = config.objective
        how = {"multi": "all neighbours as positives", "sample": "one sampled neighbour per step"}[obj.positives]
        if obj.sampling == "passages":
            how = f"passages of {obj.passage_sentences} sentences, every sentence a query and a key"
        self.title = f"Neighbour-sentence prediction (Skip-Thought style, contrastive; window {obj.window}, {how})"
        if obj.sampling == "passages" and len(self.train_dataset()) == 0:
            raise DataError(
                f"{config.data.documents}: no training document has objective.passage_sentences "
                f"({obj.passage_sentences}) sentences; lower it"
            )

    # ---- data
    def train_dataset(self) -> torch.utils.data.Dataset:
        obj = self.cfg.objective
        if obj.sampling == "passages":
            return self.mlm_dataset(PassageDataset(self.train_corpus, self.seed, obj.passage_sentences))
        return self.mlm_dataset(NeighbourDataset(self.train_corpus, self.seed, obj.window, obj.positives,
                                                 positions=self.train_positions))

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        pad = self.encoder.pad_token_ids

        def longs(values: list[Any]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long)

        # objective.mlm_weight: add_mlm (the function: tests collate with a stand-in of the method)
        if "sentences" in examples[0]:  # passages: every sentence is a query and a key
            return add_mlm(self, {
                "query_doc": longs([ex["document"] for ex in examples for _ in ex["positions"]]),
                "query_pos": longs([p for ex in examples for p in ex["positions"]]),
                "query_text": longs([t for ex in examples for t in ex["text"]]),
                "sentences": pad([x for ex in examples for x in ex["sentences"]], chunk_tokens=self.chunk_tokens),
            }, [x for ex in examples for x in ex["sentences"]], examples)

        slots = len(examples[0]["keys"])
        return add_mlm(self, {
            "query_doc": longs([ex["document"] for ex in examples]),
            "query_pos": longs([ex["position"] for ex in examples]),
            "query_text": longs([ex["query_text"] for ex in examples]),
            "key_doc": longs([ex["document"] for ex in examples for _ in range(slots)]),
            "key_pos": longs([p for ex in examples for p in ex["key_positions"]]),
            "key_text": longs([t for ex in examples for t in ex["key_text"]]),
            "key_valid": torch.tensor([v for ex in examples for v in ex["key_valid"]], dtype=torch.bool),
            "queries": pad([ex["query"] for ex in examples], chunk_tokens=self.chunk_tokens),
            "keys": pad([k for ex in examples for k in ex["keys"]], chunk_tokens=self.chunk_tokens),
        }, [ex["query"] for ex in examples], examples)

    def examples_in(self, batch: dict[str, Any]) -> int:
        return int(batch["query_doc"].shape[0])

    # ---- loss
    def embedding_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Encoder inputs per side (what :meth:`forward` encodes)."""
        if "sentences" in batch:
            return {"sentences": batch["sentences"]}
        return {"queries": batch["queries"], "keys": batch["keys"]}

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """All the loss logic, given the embeddings of :meth:`embedding_inputs`."""
        obj = self.cfg.objective
        if "sentences" in embeddings:
            return self._passage_loss(embeddings["sentences"], batch)
        q = embeddings["queries"]
        keys = gather_with_grad(embeddings["keys"])
        # Identities of the global keys; documents are indices into the training corpus,
        # the same on every process.
        positive, ignore = neighbour_masks(
            batch["query_doc"], batch["query_pos"], batch["query_text"],
            gather_no_grad(batch["key_doc"]), gather_no_grad(batch["key_pos"]),
            gather_no_grad(batch["key_text"]), gather_no_grad(batch["key_valid"]),
            obj.window, obj.ignore_duplicate_text,
        )
        loss = info_nce(q, keys, positive_mask=positive, ignore_mask=ignore, temperature=obj.temperature)
        return {"loss": loss, "top1": retrieval_top1(q, keys, positive_mask=positive, ignore_mask=ignore)}

    def _passage_loss(self, q: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Passages: the local sentences query the global batch of the same sentences."""
        obj = self.cfg.objective
        keys = gather_with_grad(q)
        key_doc, key_pos = gather_no_grad(batch["query_doc"]), gather_no_grad(batch["query_pos"])
        positive, ignore = neighbour_masks(
            batch["query_doc"], batch["query_pos"], batch["query_text"],
            key_doc, key_pos, gather_no_grad(batch["query_text"]),
            torch.ones_like(key_doc, dtype=torch.bool), obj.window, obj.ignore_duplicate_text,
        )
        if not obj.same_document_negatives:
            # Same passage = same document within passage_sentences positions.
            near = (key_pos[None, :] - batch["query_pos"][:, None]).abs() < obj.passage_sentences
            ignore |= (key_doc[None, :] == batch["query_doc"][:, None]) & near & ~positive
        loss = info_nce(q, keys, positive_mask=positive, ignore_mask=ignore, temperature=obj.temperature)
        return {"loss": loss, "top1": retrieval_top1(q, keys, positive_mask=positive, ignore_mask=ignore)}

    # ---- evaluation
    def heldout_metrics(self) -> dict[str, float]:
        """Fixed held-out queries; candidates = every neighbour (within ``window``) of every
        held-out query, each sentence once. Top-1: the nearest candidate is a neighbour."""
        corpus, obj = self.eval_corpus, self.cfg.objective
        positions = heldout_positions(corpus, _has_neighbour, obj.eval_queries_per_document, self.seed)
        if len(positions) < 2:
            return {}
        keys = sorted({(int(d), t) for d, s in positions for t in neighbours(int(corpus.lengths[d]), int(s), obj.window)})
        if len(keys) < 2:
            return {}
        q = self.embed_ids([corpus.sentence(int(d), int(s)) for d, s in positions]).cpu()
        k = self.embed_ids([corpus.sentence(d, t) for d, t in keys]).cpu()

        def longs(values: Any) -> torch.Tensor:
            return torch.tensor(list(values), dtype=torch.long)

        positive, ignore = neighbour_masks(
            longs(positions[:, 0]), longs(positions[:, 1]),
            longs(corpus.text_key[corpus.gid(int(d), int(s))] for d, s in positions),
            longs(d for d, _ in keys), longs(t for _, t in keys),
            longs(corpus.text_key[corpus.gid(d, t)] for d, t in keys),
            torch.ones(len(keys), dtype=torch.bool), obj.window, obj.ignore_duplicate_text,
        )
        loss = info_nce(q, k, positive_mask=positive, ignore_mask=ignore, temperature=obj.temperature)
        return {
            "top1": float(retrieval_top1(q, k, positive_mask=positive, ignore_mask=ignore)),
            "loss": float(loss),
            "candidates": float(len(keys)),
        }
