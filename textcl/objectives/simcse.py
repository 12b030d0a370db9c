"""SimCSE (Gao, Yao and Chen, EMNLP 2021): contrastive sentence embeddings.

``mode: unsupervised`` (default): each example is one sentence of the sentence-split
document corpus. The batch encodes the same sentences twice (sides ``queries`` and
``positives``, two forward passes), so dropout is the only augmentation: a sentence's
second view is its positive and the other sentences' second views of the global batch
(gathered across processes with gradient) are its negatives. The model needs dropout
(BERT's ``hidden_dropout_prob: 0.1``): without it both views are equal and the task is void.
``objective.token_deletion: p`` adds the paper's deletion augmentation (its Table 2 ablation,
here on tokens): each view drops every token with probability ``p`` independently (at least
one kept), drawn from the example's keyed RNG. Why: a from-scratch encoder solves the
dropout-only task through lexical identity from step 0 (held-out top-1 1.000), so its
gradient carries almost nothing; two different token subsets are not matched for free.

``mode: supervised``: ``data.pairs`` is a JSON-lines file of ``{"anchor": ..., "positive":
..., "negative": ...}`` rows (SimCSE's NLI triplets: entailment = positive, contradiction
= hard negative), or CERT's back-translation file (``{"text": ..., "translations": [...]}``
rows: each sentence's first back-translation is its positive, identical round trips
dropped). Each anchor retrieves its positive among the positives of the global batch plus,
when the file has them, every row's hard negative (extra candidates). A file gives a
``negative`` on every row or on none (so every process encodes the same number of
candidates). Rows are split train / held-out by a hash of the anchor text
(``data.held_out_fraction``; all rows of one premise on one side), ``data.max_eval_documents``
caps the held-out rows.

With ``ignore_duplicate_text`` a candidate whose text equals the query's or its positive's
(the same line at another position: "Yes.") is dropped from the softmax, not a negative.

Pretext metric (``evaluate``): ``simcse_heldout_loss`` and ``simcse_heldout_top1`` on a
fixed held-out sample, every query against all held-out positives (chance = 1 /
``simcse_heldout_candidates``). Unsupervised, the trainer evaluates in eval mode, where
both views are the same vector (top-1 trivially 1.0); so both views are encoded with
dropout on (the encoder in train mode under ``no_grad``, its RNG seeded from the run's
seed so every evaluation draws the same masks, the training RNG and mode restored after)
and, with ``token_deletion``, with tokens deleted by a fixed evaluation RNG.
Supervised, the views differ by text and the encoder stays in eval mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from textcl.core.distributed import batch_offset, gather_no_grad, gather_with_grad
from textcl.core.losses import info_nce, retrieval_top1
from textcl.core.recipe import InputFile
from textcl.data_files import json_object_lines
from textcl.documents import DataError, held_out_split
from textcl.objectives._mlm import MLMOptions
from textcl.objectives._sentence_common import (
    EVAL_STREAM,
    PositionDataset,
    SentenceCorpora,
    SentenceCorpus,
    SentenceObjective,
    duplicate_text_mask,
    example_rng,
    heldout_positions,
)
from textcl.objectives.base import TextConfig
from textcl.sentences import SentenceDataSection, SentenceDocument, SplitStats, tokenize_sentences

__all__ = ["SimCSE", "SimCSEConfig", "SimCSEData", "SimCSEDataset", "SimCSEObjective", "delete_tokens", "load_pair_corpora",
           "read_pairs"]

CITATION = """@inproceedings{gao-etal-2021-simcse,
  title = {{SimCSE}: Simple Contrastive Learning of Sentence Embeddings},
  author = {Gao, Tianyu and Yao, Xingcheng and Chen, Danqi},
  booktitle = {Proceedings of EMNLP 2021},
  pages = {6894--6910},
  year = {2021}
}"""


class SimCSEObjective(MLMOptions):
    mode: Literal["unsupervised", "supervised"] = "unsupervised"
    temperature: float = Field(0.05, gt=0)
    ignore_duplicate_text: bool = True
    eval_sentences_per_document: int = Field(8, ge=1, description="unsupervised held-out sample")
    token_deletion: float = Field(0.0, ge=0, lt=1, description="unsupervised: each view drops each token "
                                  "with this probability (at least one kept); 0 = dropout views only")


class SimCSEData(SentenceDataSection):
    """:class:`~textcl.sentences.SentenceDataSection` with ``documents`` (unsupervised) or
    ``pairs`` (supervised JSON lines)."""

    documents: InputFile | None = None  # type: ignore[assignment]
    pairs: InputFile | None = None


class SimCSEConfig(TextConfig):
    data: SimCSEData
    objective: SimCSEObjective = SimCSEObjective()

    @model_validator(mode="after")
    def _one_source(self) -> SimCSEConfig:
        want, other = ("pairs", "documents") if self.objective.mode == "supervised" else ("documents", "pairs")
        if getattr(self.data, want) is None or getattr(self.data, other) is not None:
            raise ValueError(f"objective.mode: {self.objective.mode} reads data.{want}: set it and remove data.{other}")
        if self.objective.mode == "supervised" and self.objective.token_deletion:
            raise ValueError("objective.token_deletion: applies to unsupervised views only — remove it or set "
                             "objective.mode: unsupervised")
        return self


# --------------------------------------------------------------------- supervised data
def read_pairs(path: str) -> tuple[list[SentenceDocument], int]:
    """Rows of a pairs file as documents ``[anchor, positive(, negative)]`` (id = the anchor
    text), and the number of sentences per row (2 or 3)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: pairs file not found — fix data.pairs")
    if _is_backtranslation_file(p):
        return _backtranslation_rows(path), 2
    rows: list[SentenceDocument] = []
    places: list[str] = []
    try:
        for where, row in json_object_lines(p, hint=" — write one JSON object per line"):
            texts = []
            for field in ("anchor", "positive", "negative"):
                value = row.get(field)
                if field == "negative" and value is None:
                    continue
                if not isinstance(value, str) or not value.strip():
                    raise DataError(f"{where}: missing or empty {field!r} — every row needs non-empty "
                                    "\"anchor\" and \"positive\" strings (\"negative\" optional)")
                texts.append(value)
            rows.append(SentenceDocument(texts[0], texts))
            places.append(where)
    except (UnicodeDecodeError, OSError, EOFError) as exc:  # binary, latin-1, truncated or non-gzip
        raise DataError(f"{path}: not a UTF-8 JSONL file ({type(exc).__name__}) — write UTF-8 JSON lines, "
                        "one object per line") from None
    if not rows:
        raise DataError(f"{path}: the pairs file is empty — write one {{\"anchor\": ..., \"positive\": ...}} per line")
    width = len(rows[0].sentences)
    for doc, where in zip(rows, places):
        if len(doc.sentences) != width:
            raise DataError(f"{where}: {'no' if width == 3 else 'a'} \"negative\" unlike {places[0]} "
                            "— give every row a hard negative or none")
    return rows, width


def _is_backtranslation_file(path: Path) -> bool:
    """Whether the file's first row is CERT's back-translation form (``text`` + ``translations``,
    no ``anchor``); any reading error is left to the triplet reader, which names it."""
    try:
        for _, row in json_object_lines(path, hint=""):
            return "anchor" not in row and "text" in row and "translations" in row
    except (DataError, UnicodeDecodeError, OSError, EOFError):
        return False
    return False


def _backtranslation_rows(path: str) -> list[SentenceDocument]:
    """A back-translation file (the one CERT reads) as ``[sentence, its first back-translation]``
    rows: SimCSE with a positive that differs in words, not only in dropout. Identical round
    trips and repeated sentences are dropped as CERT drops them."""
    from textcl.objectives.cert import load_pairs

    pairs, _ = load_pairs(path, id_field=None)
    return [SentenceDocument(p.text, [p.text, p.translations[0]]) for p in pairs]


def load_pair_corpora(data: SimCSEData, tokenizer: Any) -> SentenceCorpora:
    """Read, split (by anchor text) and tokenise ``data.pairs``: one 2- or 3-sentence
    "document" per row, so the sentence machinery (text keys, datasets) applies as is."""
    assert data.pairs is not None
    rows, _ = read_pairs(data.pairs)
    train_rows, held = held_out_split(rows, data.held_out_fraction)  # type: ignore[arg-type]
    if not train_rows:
        raise DataError(f"{data.pairs}: all {len(rows)} rows fell into the held-out split; add rows or lower "
                        "data.held_out_fraction")
    held_rows = held[: data.max_eval_documents]
    stats = SplitStats(len(rows), len(rows), 0, 0, sum(len(r.sentences) for r in rows))
    train = SentenceCorpus(train_rows, tokenize_sentences(tokenizer, train_rows, data.max_tokens))  # type: ignore[arg-type]
    evals = SentenceCorpus(held_rows, tokenize_sentences(tokenizer, held_rows, data.max_tokens))  # type: ignore[arg-type]
    return SentenceCorpora(train, evals, stats, len(held))


# --------------------------------------------------------------------- sampling
def delete_tokens(ids: list[int], p: float, rng: np.random.Generator) -> list[int]:
    """``ids`` with each token dropped with probability ``p`` (one uniform draw per token, in
    order); if every token drew a deletion, one of them (drawn next) is kept."""
    if p <= 0 or not ids:
        return list(ids)
    keep = rng.random(len(ids)) >= p
    if not keep.any():
        keep[int(rng.integers(len(ids)))] = True
    return [t for t, k in zip(ids, keep.tolist()) if k]


class SimCSEDataset(PositionDataset):
    """Unsupervised: one item per sentence (``query`` only: both views come from it; with
    ``deletion`` > 0, ``query`` and ``positive`` are two token-deleted copies and ``sentence``
    the whole one, for the auxiliary MLM term). Supervised: one item per pair row (positions
    ``(row, 0)``), ``query`` = anchor, ``positive`` and optional ``negative``."""

    def __init__(self, corpus: SentenceCorpus, seed: int, supervised: bool, deletion: float = 0.0):
        positions = corpus.positions((lambda n, s: s == 0) if supervised else None)
        super().__init__(corpus, positions, seed)
        self.supervised, self.deletion = supervised, deletion

    def example(self, d: int, s: int, rng: np.random.Generator) -> dict[str, Any]:
        c = self.corpus
        ex = {"query": c.sentence(d, s), "query_text": int(c.text_key[c.gid(d, s)]), "position": (d, s)}
        if self.deletion > 0 and not self.supervised:
            ids = ex["sentence"] = ex["query"]
            ex["query"], ex["positive"] = (delete_tokens(ids, self.deletion, rng) for _ in range(2))
        if self.supervised:
            for i, side in enumerate(("positive", "negative"), 1):
                if i < c.lengths[d]:
                    ex[side], ex[f"{side}_text"] = c.sentence(d, i), int(c.text_key[c.gid(d, i)])
        return ex


def _loss_and_top1(q: torch.Tensor, keys: torch.Tensor, extra: torch.Tensor | None, query_text: torch.Tensor,
                   candidate_text: torch.Tensor, labels: torch.Tensor, temperature: float,
                   ignore_duplicates: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of ``q`` against ``keys`` (+ ``extra``) and top-1, no cross-process gathering."""
    ignore = None
    if ignore_duplicates:
        pos = torch.zeros(len(q), len(candidate_text), dtype=torch.bool, device=candidate_text.device)
        pos[torch.arange(len(q), device=pos.device), labels.to(pos.device)] = True
        ignore = duplicate_text_mask(query_text.to(pos.device), candidate_text, pos)
    loss = info_nce(q, keys, labels=labels, extra_negatives=extra, ignore_mask=ignore, temperature=temperature)
    top1 = retrieval_top1(q, keys if extra is None else torch.cat([keys, extra]), labels=labels, ignore_mask=ignore)
    return loss, top1


# --------------------------------------------------------------------- the method
class SimCSE(SentenceObjective):
    name = "simcse"
    config_class = SimCSEConfig
    citation = CITATION
    title = "SimCSE"

    def __init__(self, encoder: Any, config: SimCSEConfig, corpora: SentenceCorpora, seed: int = 42,
                 mlm_model: torch.nn.Module | None = None):
        super().__init__(encoder, config, corpora, seed, mlm_model)
        self.supervised = config.objective.mode == "supervised"
        if self.train_corpus.num_sentences == 0:
            raise DataError(f"{config.data.documents or config.data.pairs}: no training sentence")
        specials = encoder.tokenizer.num_special_tokens_to_add(pair=False)
        self.check_sequence_length(config.data.max_tokens, specials, "data.max_tokens")
        self.title = "SimCSE, " + ("supervised (pairs + hard negatives)" if self.supervised
                                   else "unsupervised (dropout views)")

    @classmethod
    def load_data(cls, config: Any, tokenizer: Any) -> dict[str, Any]:
        if config.objective.mode == "unsupervised":
            return super().load_data(config, tokenizer)
        return {"corpora": load_pair_corpora(config.data, tokenizer)}

    # ---- data
    def train_dataset(self) -> torch.utils.data.Dataset:
        return self.mlm_dataset(SimCSEDataset(self.train_corpus, self.seed, self.supervised,
                                              self.cfg.objective.token_deletion))

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        pad = self.encoder.pad_token_ids
        query_text = torch.tensor([ex["query_text"] for ex in examples], dtype=torch.long)
        batch: dict[str, Any] = {"query_text": query_text, "queries": pad([ex["query"] for ex in examples],
                                                                          chunk_tokens=self.chunk_tokens)}
        if not self.supervised:  # the positive is the query itself, encoded again (or its other deletion)
            batch["positive_text"] = query_text
            if "positive" in examples[0]:
                batch["positives"] = pad([ex["positive"] for ex in examples], chunk_tokens=self.chunk_tokens)
        else:
            for side in ("positive", "negative"):
                if side in examples[0]:
                    batch[f"{side}s"] = pad([ex[side] for ex in examples], chunk_tokens=self.chunk_tokens)
                    batch[f"{side}_text"] = torch.tensor([ex[f"{side}_text"] for ex in examples], dtype=torch.long)
        return self.add_mlm(batch, [ex.get("sentence", ex["query"]) for ex in examples], examples)  # objective.mlm_weight

    def examples_in(self, batch: dict[str, Any]) -> int:
        return int(batch["query_text"].shape[0])

    # ---- loss
    def embedding_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Encoder inputs per side. Unsupervised: the same features twice -- two forward
        passes, two dropout masks (GradCache replays each pass's RNG state); with
        ``token_deletion``, the two deleted copies."""
        if not self.supervised:
            return {"queries": batch["queries"], "positives": batch.get("positives", batch["queries"])}
        return {k: batch[k] for k in ("queries", "positives", "negatives") if k in batch}

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """All the loss logic, given the embeddings of :meth:`embedding_inputs`."""
        obj = self.cfg.objective
        q = embeddings["queries"]
        n = q.shape[0]
        keys = gather_with_grad(embeddings["positives"])
        labels = torch.arange(n, device=q.device) + batch_offset(n)
        candidate_text = gather_no_grad(batch["positive_text"])
        extra = None
        if "negatives" in embeddings:
            extra = gather_with_grad(embeddings["negatives"])
            candidate_text = torch.cat([candidate_text, gather_no_grad(batch["negative_text"])])
        loss, top1 = _loss_and_top1(q, keys, extra, batch["query_text"], candidate_text, labels,
                                    obj.temperature, obj.ignore_duplicate_text)
        return {"loss": loss, "top1": top1}

    # ---- evaluation
    def heldout_metrics(self) -> dict[str, float]:
        """Held-out loss and top-1 on a fixed sample (see the module docstring)."""
        c, obj = self.eval_corpus, self.cfg.objective
        if self.supervised:
            positions = c.positions(lambda n, s: s == 0)
        else:
            positions = heldout_positions(c, lambda n, s: True, obj.eval_sentences_per_document, self.seed)
        if len(positions) < 2:
            return {}
        rows = [(int(d), int(s)) for d, s in positions]

        def side(i: int) -> tuple[list[list[int]], torch.Tensor]:  # sentence s + i of each row
            return ([c.sentence(d, s + i) for d, s in rows],
                    torch.tensor([int(c.text_key[c.gid(d, s + i)]) for d, s in rows]))

        (queries, query_text), extra = side(0), None
        if self.supervised:
            (positives, candidate_text), width = side(1), int(c.lengths[rows[0][0]])
            q, k = (self.embed_ids(x).cpu() for x in (queries, positives))
            if width == 3:
                negatives, negative_text = side(2)
                extra = self.embed_ids(negatives).cpu()
                candidate_text = torch.cat([candidate_text, negative_text])
        else:
            candidate_text = query_text
            p = obj.token_deletion
            rng = example_rng(self.seed, EVAL_STREAM, 1, 0)  # the same deletions at every evaluation
            views = [[delete_tokens(x, p, rng) for x in queries] for _ in range(2)] if p > 0 else [queries, queries]
            q, k = self._dropout_views(*views)
        labels = torch.arange(len(rows))
        loss, top1 = _loss_and_top1(q, k, extra, query_text, candidate_text, labels, obj.temperature,
                                    obj.ignore_duplicate_text)
        return {"loss": float(loss), "top1": float(top1), "candidates": float(len(candidate_text))}

    def _dropout_views(self, *views_ids: list[list[int]]) -> tuple[torch.Tensor, ...]:
        """Dropout views of the token-id lists ``views_ids`` (train mode, no gradient), the same
        masks at every evaluation; the global RNG and the encoder's mode are left as they were."""
        device, was_training = self.encoder.device, self.encoder.training
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.seed)
            self.encoder.train()
            try:
                views = tuple(self.embed_ids(v).cpu() for v in views_ids)
            finally:
                self.encoder.train(was_training)
        return views  # type: ignore[return-value]

    def describe_data(self) -> str:
        if not self.supervised:
            return super().describe_data()
        return (f"{len(self.train_corpus)} training pairs from `{self.cfg.data.pairs}`; "
                f"{len(self.eval_corpus)} of {self.held_out_documents} held-out pairs used for the pretext metric")
