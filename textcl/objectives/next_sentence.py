"""Next-sentence prediction (BERT's NSP, Devlin et al. 2019) as a contrastive task.

``head: contrastive`` (default): the query is sentence *i* of a document, its positive
is sentence *i+1* of the same document, and the negatives are the other queries'
positives in the global batch (gathered across processes with gradient), plus
``random_negatives`` sentences per query drawn from random *other* documents (passed
to ``info_nce`` as extra negatives). Candidates whose text equals the query's or its
positive's (short lines such as "Yes." recur across chapters) are dropped from the
softmax (``ignore_duplicate_text``), since they are not real negatives.
``symmetric: true`` adds the reverse direction (each positive retrieves its query:
previous-sentence prediction). Pretext metric: top-1 retrieval of the true next
sentence among the held-out queries' next sentences.

``head: binary``: BERT's original form. The pair is encoded as
``[CLS] A [SEP] B [SEP]`` (segment ids 0/1 where the model has them); B is the true
next sentence with probability ``1 - random_next_probability`` (IsNext), else a random
sentence of another document (NotNext); a linear classifier on the pooled output,
cross-entropy. Pretext metric: binary accuracy on fixed held-out pairs.

Positives never cross a document boundary: examples are only built at positions
``(d, i)`` with ``i + 1 < len(d)``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from textcl.core.distributed import batch_offset, gather_no_grad, gather_with_grad
from textcl.core.losses import info_nce, retrieval_top1
from textcl.documents import DataError
from textcl.objectives._mlm import MLMOptions
from textcl.objectives._sentence_common import (
    EVAL_STREAM,
    PositionDataset,
    SentenceCorpora,
    SentenceCorpus,
    SentenceObjective,
    heldout_positions,
)
from textcl.objectives.base import TextConfig
from textcl.sentences import SentenceDataSection

__all__ = ["NSPConfig", "NSPObjective", "NextSentence", "NextSentenceDataset", "PairTemplate"]

CITATION = """@inproceedings{devlin-etal-2019-bert,
  title = {{BERT}: Pre-training of Deep Bidirectional Transformers for Language Understanding},
  author = {Devlin, Jacob and Chang, Ming-Wei and Lee, Kenton and Toutanova, Kristina},
  booktitle = {Proceedings of NAACL-HLT 2019},
  pages = {4171--4186},
  year = {2019}
}"""


class NSPObjective(MLMOptions):
    head: Literal["contrastive", "binary"] = "contrastive"
    temperature: float = Field(0.05, gt=0)
    random_negatives: int = Field(0, ge=0, description="extra negatives per query from other documents")
    symmetric: bool = Field(False, description="also predict the previous sentence from the next")
    ignore_duplicate_text: bool = True
    random_next_probability: float = Field(0.5, gt=0, lt=1, description="binary head: share of NotNext pairs")
    eval_queries_per_document: int = Field(8, ge=1)


class NSPConfig(TextConfig):
    data: SentenceDataSection
    objective: NSPObjective = NSPObjective()


def _has_next(n: int, s: int) -> bool:
    return s + 1 < n


# --------------------------------------------------------------------- sampling
class NextSentenceDataset(PositionDataset):
    """One item per position ``(d, i)`` with a next sentence.

    Contrastive: ``query`` = sentence i, ``positive`` = sentence i+1, ``negatives`` =
    ``random_negatives`` sentences of other documents. Binary: ``a`` = sentence i, ``b``
    = sentence i+1 (``label`` 1) or, with ``random_next_probability``, a sentence of
    another document (``label`` 0).
    """

    def __init__(self, corpus: SentenceCorpus, seed: int, objective: NSPObjective, stream: int = 0,
                 positions: np.ndarray | None = None):
        if positions is None:
            positions = corpus.positions(_has_next)
        super().__init__(corpus, positions, seed, stream)
        self.objective = objective

    def example(self, d: int, s: int, rng: np.random.Generator) -> dict[str, Any]:
        c, obj = self.corpus, self.objective
        if obj.head == "binary":
            is_next = rng.random() >= obj.random_next_probability
            bd, bs = (d, s + 1) if is_next else c.random_other_sentence(rng, d)
            return {"a": c.sentence(d, s), "b": c.sentence(bd, bs), "label": int(is_next),
                    "position": (d, s), "b_position": (bd, bs)}
        negatives = [c.random_other_sentence(rng, d) for _ in range(obj.random_negatives)]
        return {
            "query": c.sentence(d, s),
            "positive": c.sentence(d, s + 1),
            "query_text": int(c.text_key[c.gid(d, s)]),
            "positive_text": int(c.text_key[c.gid(d, s + 1)]),
            "negatives": [c.sentence(nd, ns) for nd, ns in negatives],
            "negative_text": [int(c.text_key[c.gid(nd, ns)]) for nd, ns in negatives],
            "position": (d, s),
            "negative_positions": negatives,
        }


class PairTemplate:
    """Where a tokenizer puts its special tokens and segment ids around a sentence pair,
    found by encoding one probe pair (works for BERT's ``[CLS] A [SEP] B [SEP]`` and
    RoBERTa's ``<s> A </s></s> B </s>`` alike)."""

    def __init__(self, tokenizer: Any):
        a = tokenizer("hello", add_special_tokens=False)["input_ids"]
        b = tokenizer("world", add_special_tokens=False)["input_ids"]
        enc = tokenizer("hello", "world", return_token_type_ids=True)
        full, types = list(enc["input_ids"]), list(enc.get("token_type_ids") or [0] * len(enc["input_ids"]))
        i = _find(full, a, 0)
        j = _find(full, b, i + len(a))
        if i < 0 or j < 0:  # pragma: no cover - no known tokenizer does this
            raise RuntimeError(f"cannot find where {type(tokenizer).__name__} puts a pair's special tokens")
        self.prefix, self.middle, self.suffix = full[:i], full[i + len(a) : j], full[j + len(b) :]
        self.prefix_types, self.middle_types = types[:i], types[i + len(a) : j]
        self.suffix_types = types[j + len(b) :]
        self.a_type, self.b_type = types[i], types[j]

    @property
    def num_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def build(self, a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
        ids = self.prefix + list(a) + self.middle + list(b) + self.suffix
        types = (self.prefix_types + [self.a_type] * len(a) + self.middle_types + [self.b_type] * len(b)
                 + self.suffix_types)
        return ids, types


def _find(seq: list[int], part: list[int], start: int) -> int:
    for k in range(start, len(seq) - len(part) + 1):
        if seq[k : k + len(part)] == part:
            return k
    return -1


# --------------------------------------------------------------------- the method
class NextSentence(SentenceObjective):
    name = "nsp"
    config_class = NSPConfig
    citation = CITATION
    title = "Next-sentence prediction (BERT NSP)"

    def __init__(self, encoder: Any, config: NSPConfig, corpora: SentenceCorpora, seed: int = 42,
                 mlm_model: torch.nn.Module | None = None):
        super().__init__(encoder, config, corpora, seed, mlm_model)
        obj = config.objective
        self.train_positions = self.train_corpus.positions(_has_next)
        if len(self.train_positions) == 0:
            raise DataError(f"{config.data.documents}: no training document has two sentences")
        if (obj.random_negatives or obj.head == "binary") and len(self.train_corpus) < 2:
            what = "objective.head: binary" if obj.head == "binary" else "objective.random_negatives"
            raise DataError(
                f"{config.data.documents}: {what} draws sentences from other documents and needs at "
                "least 2 training documents"
            )
        self.classifier: torch.nn.Linear | None = None
        if obj.head == "binary":
            self.pair = PairTemplate(encoder.tokenizer)
            self.check_sequence_length(2 * config.data.max_tokens, self.pair.num_special,
                                       "objective.head: binary (two sentences of data.max_tokens)")
            width = config.model.projection_dim or encoder.dim  # the classifier reads project=True output
            self.classifier = torch.nn.Linear(width, 2)
        else:
            specials = encoder.tokenizer.num_special_tokens_to_add(pair=False)
            self.check_sequence_length(config.data.max_tokens, specials, "data.max_tokens")
        self.title = (
            "Next-sentence prediction (BERT NSP), "
            + ("binary IsNext/NotNext head" if obj.head == "binary" else "contrastive (InfoNCE)")
        )

    # ---- data
    def train_dataset(self) -> torch.utils.data.Dataset:
        return self.mlm_dataset(NextSentenceDataset(self.train_corpus, self.seed, self.cfg.objective,
                                                    positions=self.train_positions))

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if self.cfg.objective.head == "binary":  # MLM (objective.mlm_weight) on the first sentences
            return self.add_mlm(self._collate_pairs(examples), [ex["a"] for ex in examples], examples)
        pad = self.encoder.pad_token_ids
        batch: dict[str, Any] = {
            "query_text": torch.tensor([ex["query_text"] for ex in examples], dtype=torch.long),
            "positive_text": torch.tensor([ex["positive_text"] for ex in examples], dtype=torch.long),
            "queries": pad([ex["query"] for ex in examples], chunk_tokens=self.chunk_tokens),
            "positives": pad([ex["positive"] for ex in examples], chunk_tokens=self.chunk_tokens),
        }
        if self.cfg.objective.random_negatives:
            negatives = [n for ex in examples for n in ex["negatives"]]
            batch["negatives"] = pad(negatives, chunk_tokens=self.chunk_tokens)
            batch["negative_text"] = torch.tensor(
                [t for ex in examples for t in ex["negative_text"]], dtype=torch.long
            )
        return self.add_mlm(batch, [ex["query"] for ex in examples], examples)

    def _collate_pairs(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        built = [self.pair.build(ex["a"], ex["b"]) for ex in examples]
        features = self.encoder.collate([ids for ids, _ in built])
        if "token_type_ids" in features:
            types = features["token_type_ids"]
            width = types.shape[1]
            left = getattr(self.encoder.tokenizer, "padding_side", "right") == "left"
            for row, (_, tt) in enumerate(built):
                start = width - len(tt) if left else 0
                types[row, start : start + len(tt)] = torch.tensor(tt, dtype=torch.long)
        return {"labels": torch.tensor([ex["label"] for ex in examples], dtype=torch.long), "pairs": features}

    def examples_in(self, batch: dict[str, Any]) -> int:
        key = "labels" if "labels" in batch else "query_text"
        return int(batch[key].shape[0])

    # ---- loss
    def embedding_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Encoder inputs per side (what :meth:`forward` encodes)."""
        if self.cfg.objective.head == "binary":
            return {"pairs": batch["pairs"]}
        sides = {"queries": batch["queries"], "positives": batch["positives"]}
        if "negatives" in batch:
            sides["negatives"] = batch["negatives"]
        return sides

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """All the loss logic, given the embeddings of :meth:`embedding_inputs`."""
        if self.cfg.objective.head == "binary":
            assert self.classifier is not None
            logits = self.classifier(embeddings["pairs"])
            loss = F.cross_entropy(logits.float(), batch["labels"])
            acc = (logits.argmax(dim=1) == batch["labels"]).float().mean().detach()
            return {"loss": loss, "accuracy": acc}

        obj = self.cfg.objective
        q, p = embeddings["queries"], embeddings["positives"]
        n = q.shape[0]
        keys = gather_with_grad(p)
        labels = torch.arange(n, device=q.device) + batch_offset(n)
        key_text = gather_no_grad(batch["positive_text"])
        extra = extra_text = None
        if "negatives" in embeddings:
            extra = gather_with_grad(embeddings["negatives"])
            extra_text = gather_no_grad(batch["negative_text"])
        ignore = None
        if obj.ignore_duplicate_text:
            candidate_text = key_text if extra_text is None else torch.cat([key_text, extra_text])
            ignore = _duplicates(batch["query_text"], batch["positive_text"], candidate_text, labels)
        loss = info_nce(q, keys, labels=labels, extra_negatives=extra, ignore_mask=ignore,
                        temperature=obj.temperature)
        top1 = retrieval_top1(q, keys if extra is None else torch.cat([keys, extra]), labels=labels, ignore_mask=ignore)
        out = {"nsp_loss": loss.detach(), "top1": top1}
        if obj.symmetric:
            # Reverse direction: each (local) next sentence retrieves its query among the
            # global batch's queries.
            queries = gather_with_grad(q)
            query_text = gather_no_grad(batch["query_text"])
            ignore_rev = None
            if obj.ignore_duplicate_text:
                ignore_rev = _duplicates(batch["positive_text"], batch["query_text"], query_text, labels)
            reverse = info_nce(p, queries, labels=labels, ignore_mask=ignore_rev, temperature=obj.temperature)
            out["reverse_loss"] = reverse.detach()
            loss = (loss + reverse) / 2
        out["loss"] = loss
        return out

    # ---- evaluation
    def heldout_metrics(self) -> dict[str, float]:
        """Held-out documents, fixed examples (their own seed stream). Contrastive: every
        query retrieves its next sentence among all held-out queries' next sentences
        (``nsp_heldout_candidates`` of them; chance = 1 / that). Binary: accuracy."""
        corpus, obj = self.eval_corpus, self.cfg.objective
        positions = heldout_positions(corpus, _has_next, obj.eval_queries_per_document, self.seed)
        if len(positions) < 2:
            return {}
        if obj.head == "binary":
            return self._evaluate_binary(corpus, positions)
        queries = [corpus.sentence(int(d), int(s)) for d, s in positions]
        nexts = [corpus.sentence(int(d), int(s) + 1) for d, s in positions]
        q, k = self.embed_ids(queries), self.embed_ids(nexts)
        text = torch.tensor([int(corpus.text_key[corpus.gid(int(d), int(s))]) for d, s in positions])
        next_text = torch.tensor([int(corpus.text_key[corpus.gid(int(d), int(s) + 1)]) for d, s in positions])
        labels = torch.arange(len(positions))
        ignore = _duplicates(text, next_text, next_text, labels) if obj.ignore_duplicate_text else None
        q, k = q.cpu(), k.cpu()
        loss = info_nce(q, k, labels=labels, ignore_mask=ignore, temperature=obj.temperature)
        return {
            "top1": float(retrieval_top1(q, k, labels=labels, ignore_mask=ignore)),
            "loss": float(loss),
            "candidates": float(len(positions)),
        }

    def _evaluate_binary(self, corpus: SentenceCorpus, positions: np.ndarray) -> dict[str, float]:
        from accelerate.utils import send_to_device

        ds = NextSentenceDataset(corpus, self.seed, self.cfg.objective, stream=EVAL_STREAM, positions=positions)
        if len(corpus) < 2:
            return {}
        assert self.classifier is not None
        losses, hits, total = 0.0, 0, 0
        for start in range(0, len(ds), 64):
            batch = self._collate_pairs([ds[i] for i in range(start, min(start + 64, len(ds)))])
            batch = send_to_device(batch, self.encoder.device)
            logits = self.classifier(self.encoder(batch["pairs"], project=True)).float()
            losses += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
            hits += int((logits.argmax(dim=1) == batch["labels"]).sum())
            total += len(batch["labels"])
        return {"accuracy": hits / total, "loss": losses / total}


def _duplicates(query_text: torch.Tensor, positive_text: torch.Tensor, candidate_text: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    """``(B, K)``: candidates other than the label whose text equals the query's or the
    positive's -- not real negatives."""
    candidate_text = candidate_text.to(query_text.device)
    same = (candidate_text[None, :] == query_text[:, None]) | (candidate_text[None, :] == positive_text[:, None])
    same[torch.arange(len(labels), device=same.device), labels.to(same.device)] = False
    return same
