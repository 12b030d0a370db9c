"""DeCLUTR (Giorgi et al., ACL 2021): contrastive learning of spans from documents.

Per document, ``num_anchors`` anchor spans with lengths ``floor(p * (max - min)) + min``
tokens, ``p ~ Beta(4, 2)`` (long anchors); for each anchor ``num_positives`` positive
spans with ``p ~ Beta(2, 4)`` (shorter), whose start is uniform in
``[anchor_start - len_pos, anchor_end]`` -- so a positive may overlap the anchor, be
adjacent to it, or be subsumed by it. A document must hold
``num_anchors * max_span_len * 2`` tokens (the paper's requirement). Positives of
an anchor are averaged into one key (the paper's choice; ``positive_aggregation:
multi`` uses multi-positive InfoNCE instead). Loss: InfoNCE of each anchor against
the positives of every anchor in the global batch; optional MLM on the anchors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from textcl.core.distributed import batch_offset, gather_with_grad
from textcl.core.losses import info_nce, retrieval_top1
from textcl.core.method import MethodConfig
from textcl.core.recipe import InputFile
from textcl.documents import (
    ArrowLists,
    DataError,
    Document,
    DocumentCorpus,
    as_document_corpus,
    held_out_split,
    load_documents,
)
from textcl.objectives._mlm import MLMOptions
from textcl.objectives.base import SeededDataset, TextConfig, TextMethod

__all__ = ["DeCLUTR", "DeCLUTRConfig", "SpanSampler"]

CITATION = """@inproceedings{giorgi-etal-2021-declutr,
  title = {{DeCLUTR}: Deep Contrastive Learning for Unsupervised Textual Representations},
  author = {Giorgi, John and Nitski, Osvald and Wang, Bo and Bader, Gary},
  booktitle = {Proceedings of ACL-IJCNLP 2021},
  pages = {879--895},
  year = {2021}
}"""


# --------------------------------------------------------------------- recipe sections
class DocumentSection(MethodConfig):
    documents: InputFile
    text_field: str = "text"
    id_field: str = "id"
    max_documents: int | None = Field(None, ge=1)
    held_out_fraction: float = Field(0.05, ge=0, lt=1)
    max_eval_documents: int = Field(128, ge=2)
    skip_short_documents: bool = False
    num_proc: int | None = Field(
        None, ge=1, description="processes for indexing and tokenising the documents (datasets map); "
        "default: the CPUs available"
    )


class DeCLUTRObjective(MLMOptions):
    num_anchors: int = Field(2, ge=1)
    num_positives: int = Field(2, ge=1)
    min_span_len: int = Field(32, ge=1)
    max_span_len: int = Field(128, ge=1)
    temperature: float = Field(0.05, gt=0)
    positive_aggregation: Literal["mean", "multi"] = "mean"
    # mlm_weight, mlm_probability: MLMOptions (textcl.objectives._mlm)

    @model_validator(mode="after")
    def _spans(self) -> DeCLUTRObjective:
        if self.min_span_len > self.max_span_len:
            raise ValueError(
                f"min_span_len ({self.min_span_len}) must be <= max_span_len ({self.max_span_len})"
            )
        return self


class DeCLUTRConfig(TextConfig):
    data: DocumentSection
    objective: DeCLUTRObjective = DeCLUTRObjective()


# --------------------------------------------------------------------- span sampling
class SpanSampler:
    """Samples DeCLUTR anchor/positive spans from a tokenised document.

    Spans are ``(start, end)`` token offsets (end exclusive) into the document.
    """

    def __init__(self, num_anchors: int, num_positives: int, min_len: int, max_len: int):
        self.num_anchors, self.num_positives = num_anchors, num_positives
        self.min_len, self.max_len = min_len, max_len

    @property
    def min_document_length(self) -> int:
        return self.num_anchors * self.max_len * 2

    def _length(self, rng: np.random.Generator, a: float, b: float) -> int:
        return int(rng.beta(a, b) * (self.max_len - self.min_len)) + self.min_len

    def sample(
        self, n_tokens: int, rng: np.random.Generator
    ) -> tuple[list[tuple[int, int]], list[list[tuple[int, int]]]]:
        """Anchors and, per anchor, its positives. Raises ``ValueError`` if too short."""
        if n_tokens < self.min_document_length:
            raise ValueError(f"document has {n_tokens} tokens, needs >= {self.min_document_length}")
        anchors, positives = [], []
        for _ in range(self.num_anchors):
            la = self._length(rng, 4, 2)
            sa = int(rng.integers(0, n_tokens - la + 1))
            anchors.append((sa, sa + la))
            pos = []
            for _ in range(self.num_positives):
                lp = self._length(rng, 2, 4)
                lo, hi = max(0, sa - lp), min(sa + la, n_tokens - lp)
                sp = int(rng.integers(lo, hi + 1))
                pos.append((sp, sp + lp))
            positives.append(pos)
        return anchors, positives


class _TokenRows(Sequence[list[int]]):
    """Token ids of some documents: item ``i`` is row ``rows[i]`` of the Arrow token column."""

    def __init__(self, tokens: ArrowLists, rows: np.ndarray):
        self.tokens, self.rows = tokens, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.tokens[int(self.rows[i])]


class _SpanDataset(SeededDataset):
    """Tokenised documents (lists, or rows read from Arrow on demand); each item samples
    fresh spans from (seed, epoch, index)."""

    def __init__(self, token_ids: Sequence[list[int]], sampler: SpanSampler, seed: int, stream: int = 0):
        super().__init__(seed, stream)  # stream 0: training, 1: fixed held-out spans
        self.token_ids, self.sampler = token_ids, sampler

    def __len__(self) -> int:
        return len(self.token_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = self.rng(index)
        ids = self.token_ids[index]
        anchors, positives = self.sampler.sample(len(ids), rng)
        return {
            "anchors": [ids[s:e] for s, e in anchors],
            "positives": [ids[s:e] for group in positives for s, e in group],
            "mlm_seed": int(rng.integers(0, 2**31 - 1)),
        }


# --------------------------------------------------------------------- the method
class DeCLUTR(TextMethod):
    name = "declutr"
    config_class = DeCLUTRConfig
    citation = CITATION
    title = "DeCLUTR (contrastive span prediction from documents, InfoNCE)"

    def __init__(self, encoder: Any, config: DeCLUTRConfig, documents: Sequence[Document], seed: int = 42,
                 mlm_model: torch.nn.Module | None = None):
        super().__init__(encoder, config, seed, mlm_model)
        obj = config.objective
        self.sampler = SpanSampler(obj.num_anchors, obj.num_positives, obj.min_span_len, obj.max_span_len)
        specials = encoder.tokenizer.num_special_tokens_to_add(pair=False)
        if obj.max_span_len + specials > encoder.max_seq_length:
            raise DataError(
                f"objective.max_span_len ({obj.max_span_len}) + {specials} special tokens exceeds the "
                f"encoder's max_seq_length ({encoder.max_seq_length}); lower max_span_len or raise "
                "model.max_seq_length"
            )
        corpus = as_document_corpus(documents)  # Arrow; a list goes into an in-memory dataset
        train_docs, held = held_out_split(corpus, config.data.held_out_fraction)
        # Token ids of every document, a cached Arrow map; the method keeps row numbers.
        tokens = corpus.token_ids(encoder.tokenizer, config.data.num_proc)
        lengths = tokens.lengths()  # one number per document
        self.train_ids, self.skipped_train = self._long_enough(train_docs, tokens, lengths)
        self.eval_ids, self.skipped_eval = self._long_enough(held[: config.data.max_eval_documents], tokens, lengths)
        if not len(self.train_ids):
            raise DataError(
                f"{config.data.documents}: no training document has the {self.sampler.min_document_length} "
                "tokens DeCLUTR needs (num_anchors * max_span_len * 2)"
            )

    def _long_enough(self, docs: DocumentCorpus, tokens: ArrowLists,
                     token_counts: np.ndarray) -> tuple[_TokenRows, int]:
        """The token rows of ``docs`` with the tokens DeCLUTR needs, and how many were skipped
        (``data.skip_short_documents``; else the first short document raises)."""
        need = self.sampler.min_document_length
        lengths = token_counts[docs.rows]
        short = lengths < need
        if short.any() and not self.cfg.data.skip_short_documents:
            first = int(np.flatnonzero(short)[0])
            (doc_id,) = docs.ids([first])
            raise DataError(
                f"{self.cfg.data.documents}: document {doc_id!r} has {int(lengths[first])} tokens; DeCLUTR "
                f"needs at least {need} (num_anchors * max_span_len * 2). Set "
                "data.skip_short_documents: true to skip such documents, or lower "
                "objective.max_span_len / objective.num_anchors"
            )
        return _TokenRows(tokens, docs.rows[~short]), int(short.sum())

    @classmethod
    def load_data(cls, config: DeCLUTRConfig, tokenizer: Any) -> dict[str, Any]:
        d = config.data
        return {"documents": load_documents(d.documents, text_field=d.text_field, id_field=d.id_field,
                                            max_documents=d.max_documents, num_proc=d.num_proc)}

    # ---- data
    def train_dataset(self) -> torch.utils.data.Dataset:
        return _SpanDataset(self.train_ids, self.sampler, self.seed)

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        anchors = [a for ex in examples for a in ex["anchors"]]
        positives = [p for ex in examples for p in ex["positives"]]
        batch: dict[str, Any] = {
            "anchors": self.encoder.pad_token_ids(anchors, chunk_tokens=self.chunk_tokens),
            "positives": self.encoder.pad_token_ids(positives, chunk_tokens=self.chunk_tokens),
        }
        # MLM on the anchors, masked with the first item's mlm_seed (drawn from its generator).
        return self.add_mlm(batch, anchors, examples)

    def examples_in(self, batch: dict[str, Any]) -> int:
        anchors = batch["anchors"]
        rows = len(anchors["order"]) if "chunks" in anchors else anchors["input_ids"].shape[0]
        return int(rows) // self.cfg.objective.num_anchors

    # ---- loss
    def _loss(self, anchors: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE of anchors (local) vs gathered positives; returns (loss, top-1 acc)."""
        obj = self.cfg.objective
        n = anchors.shape[0]
        p = positives.view(n, obj.num_positives, -1)
        if obj.positive_aggregation == "mean":
            keys = gather_with_grad(p.mean(dim=1))
            labels = torch.arange(n, device=anchors.device) + batch_offset(n)
            loss = info_nce(anchors, keys, labels=labels, temperature=obj.temperature)
            pred_ok = retrieval_top1(anchors, keys, labels=labels)
        else:
            keys = gather_with_grad(positives)
            owner = torch.arange(keys.shape[0], device=keys.device) // obj.num_positives
            labels = torch.arange(n, device=anchors.device) + batch_offset(n)
            mask = owner[None, :] == labels[:, None]
            loss = info_nce(anchors, keys, positive_mask=mask, temperature=obj.temperature)
            pred_ok = retrieval_top1(anchors, keys, positive_mask=mask)
        return loss, pred_ok

    # GradCache protocol (textcl.core.gradcache, train.mini_batch_size): forward ==
    # loss_from_embeddings(encoder(embedding_inputs)) + auxiliary_loss.
    def embedding_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Encoder inputs per side, in the order forward encodes them."""
        return {"anchors": batch["anchors"], "positives": batch["positives"]}

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The contrastive loss from projected anchor and positive embeddings."""
        loss, acc = self._loss(embeddings["anchors"], embeddings["positives"])
        return {"contrastive_loss": loss.detach(), "top1": acc, "loss": loss}

    # auxiliary_loss (the MLM term on the anchors): MLMAuxiliary; forward: TextMethod.

    # ---- evaluation and output
    def heldout_metrics(self) -> dict[str, float]:
        """Held-out documents: each anchor retrieves its (averaged) positive among all
        held-out anchors' positives; fixed spans (their own seed stream) so numbers are
        comparable across evaluations."""
        if len(self.eval_ids) < 2:
            return {}
        anchors, positives = [], []
        for batch in self.heldout_batches(_SpanDataset(self.eval_ids, self.sampler, self.seed, stream=1), 16):
            anchors.append(self.encoder(batch["anchors"]))
            positives.append(self.encoder(batch["positives"]))
        a, p = torch.cat(anchors), torch.cat(positives)
        n, obj = a.shape[0], self.cfg.objective
        keys = p.view(n, obj.num_positives, -1).mean(dim=1)
        labels = torch.arange(n, device=a.device)
        loss = info_nce(a, keys, labels=labels, temperature=obj.temperature)
        return {"top1": float(retrieval_top1(a, keys, labels=labels)), "loss": float(loss)}

    def describe_data(self) -> str:
        skipped = self.skipped_train + self.skipped_eval
        return (f"{len(self.train_ids)} training documents from `{self.cfg.data.documents}` "
                f"({len(self.eval_ids)} held out for the pretext metric; {skipped} skipped as too short)")

