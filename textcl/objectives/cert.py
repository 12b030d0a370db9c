"""CERT (Fang et al. 2020): MoCo on sentences, with back-translations as positives.

Per training pair (sentence ``x``, back-translation ``x'``): the query ``q = f_q(x)``
comes from the trained encoder, the key ``k = f_k(x')`` from its momentum copy (no
gradient), and a queue holds the K most recent keys of earlier batches as negatives.
Logits are MoCo's ``[l_pos, l_neg] = [q.k, q.queue] / t`` (cosine similarities) with
cross-entropy on ``l_pos``, computed by the core ``info_nce``: the batch's keys are the
candidates with every other key of the batch masked out (``ignore_mask``), the queue
rides in ``extra_negatives``. ``objective.in_batch_negatives: true`` keeps the other
keys of the (all-gathered) batch as negatives too.

After each optimizer step (``after_optimizer_step``): ``theta_k <- m theta_k + (1 - m)
theta_q`` (``textcl.core.momentum``), then the step's keys, all-gathered across
processes, enter the queue (``textcl.core.queue``; FIFO, registered buffer + pointer,
so it is checkpointed and identical on every rank). The key encoder runs without
dropout by default (``key_dropout: false``): a transformer has no BatchNorm whose batch
statistics MoCo's train-mode key encoder needs, and dropout would only add noise to the
targets.

The pairs file comes from ``python -m textcl.augment.backtranslate`` (JSON lines
``{"id", "text", "translations": [...]}``); with several translations per sentence
each epoch draws one from (seed, epoch, index). Back-translations identical to their
source are dropped by default (a trivial positive), as are sentences left with none.

``forward`` = ``loss_from_embeddings({side: encoder(features, project=True) for side,
features in embedding_inputs(batch).items()}, batch)`` so a GradCache step can embed the
query side in chunks and replay it; the keys never need gradient.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from textcl.core.distributed import batch_offset, gather_no_grad
from textcl.core.losses import info_nce, retrieval_top1
from textcl.core.method import MethodConfig
from textcl.core.momentum import momentum_copy, update_momentum
from textcl.core.queue import FeatureQueue
from textcl.core.recipe_sections import existing_input
from textcl.data_files import json_object_lines
from textcl.documents import DataError, Document, held_out_split
from textcl.objectives._mlm import MLMOptions
from textcl.objectives.base import SeededDataset, TextConfig, TextMethod

__all__ = ["CERT", "CERTConfig", "Pair", "load_pairs"]

CITATION = """@article{fang2020cert,
  title = {{CERT}: Contrastive Self-supervised Learning for Language Understanding},
  author = {Fang, Hongchao and Wang, Sicheng and Zhou, Meng and Ding, Jiayuan and Xie, Pengtao},
  journal = {arXiv preprint arXiv:2005.12766},
  year = {2020}
}
@inproceedings{he2020moco,
  title = {Momentum Contrast for Unsupervised Visual Representation Learning},
  author = {He, Kaiming and Fan, Haoqi and Wu, Yuxin and Xie, Saining and Girshick, Ross},
  booktitle = {Proceedings of CVPR 2020},
  pages = {9729--9738},
  year = {2020}
}"""

_HOW_TO_MAKE = (
    "make it with: python -m textcl.augment.backtranslate --corpus SENTENCES.txt.gz --out {path}"
)


# --------------------------------------------------------------------- recipe sections
class PairsSection(MethodConfig):
    pairs: str = Field(description="pairs file written by python -m textcl.augment.backtranslate")
    text_field: str = "text"
    translations_field: str = "translations"
    id_field: str | None = Field("id", description="unique row id (held-out split); null: sentence hash")
    max_pairs: int | None = Field(None, ge=1)
    held_out_fraction: float = Field(0.02, ge=0, lt=1)
    max_eval_pairs: int = Field(512, ge=2)
    drop_identical: bool = Field(True, description="drop back-translations equal to their source")

    @field_validator("pairs")
    @classmethod
    def _exists(cls, value: str) -> str:
        missing = f"pairs file not found: {value} -- " + _HOW_TO_MAKE.format(path=value)
        return existing_input(value, file_only=True, missing=missing)


class CERTObjective(MLMOptions):
    queue_size: int = Field(4096, ge=1, description="K negatives in the queue")
    momentum: float = Field(0.999, ge=0, le=1, description="m of the key encoder's EMA")
    temperature: float = Field(0.05, gt=0)
    in_batch_negatives: bool = Field(False, description="also use the batch's other keys as negatives")
    key_dropout: bool = Field(False, description="run the key encoder with dropout (train mode)")


class CERTConfig(TextConfig):
    data: PairsSection
    objective: CERTObjective = CERTObjective()


# --------------------------------------------------------------------- data
@dataclass
class Pair:
    """A sentence and its back-translations."""

    id: str
    text: str
    translations: list[str]


def _norm(text: str) -> str:
    return " ".join(text.split())


def _rows(source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) of a local JSON-lines file or a hub dataset."""
    if source.startswith("hf://"):
        import datasets

        name, _, split = source[len("hf://") :].partition(":")
        for i, row in enumerate(datasets.load_dataset(name, split=split or "train")):
            yield f"{source}[{i}]", row
        return
    yield from json_object_lines(source, hint="; " + _HOW_TO_MAKE.format(path=source))


def load_pairs(
    source: str,
    *,
    text_field: str = "text",
    translations_field: str = "translations",
    id_field: str | None = "id",
    max_pairs: int | None = None,
    drop_identical: bool = True,
) -> tuple[list[Pair], dict[str, int]]:
    """Read (sentence, back-translations) pairs; ``translations_field`` may hold a string or
    a list of strings. Empty translations, identical ones (``drop_identical``), repeated
    sentences and sentences left without a translation are dropped and counted."""
    pairs: list[Pair] = []
    counts = {"rows": 0, "identical_dropped": 0, "empty_dropped": 0, "duplicates": 0, "no_translation": 0}
    seen: set[str] = set()
    ids: set[str] = set()
    for where, row in _rows(source):
        if max_pairs is not None and len(pairs) >= max_pairs:
            break
        counts["rows"] += 1
        for field in (text_field, translations_field):
            if field not in row:
                raise DataError(
                    f"{where}: no field {field!r} (fields: {', '.join(row)}); set data.text_field / "
                    "data.translations_field"
                )
        text, raw = row[text_field], row[translations_field]
        raw = [raw] if isinstance(raw, str) else raw
        if not isinstance(text, str) or not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
            raise DataError(f"{where}: {text_field!r} must be a string and {translations_field!r} a string or list of strings")
        text = _norm(text)
        if not text:
            continue
        key = hashlib.sha1(text.encode("utf-8")).hexdigest()
        if key in seen:
            counts["duplicates"] += 1
            continue
        seen.add(key)
        translations = []
        for t in map(_norm, raw):
            if not t:
                counts["empty_dropped"] += 1
            elif drop_identical and t == text:
                counts["identical_dropped"] += 1
            else:
                translations.append(t)
        if not translations:
            counts["no_translation"] += 1
            continue
        pid = str(row[id_field]) if id_field and row.get(id_field) is not None else key[:16]
        if pid in ids:
            raise DataError(
                f"{where}: id {pid!r} repeats an earlier row's (the held-out split goes by id); make "
                "ids unique or set data.id_field: null to use hashes of the sentences"
            )
        ids.add(pid)
        pairs.append(Pair(pid, text, translations))
    if not pairs:
        raise DataError(f"{source}: no usable (sentence, back-translation) pair ({counts})")
    return pairs, counts


class _PairDataset(SeededDataset):
    """Token ids of each sentence and its translations; an item draws one translation from
    (seed, stream, epoch, index)."""

    def __init__(self, queries: list[list[int]], keys: list[list[list[int]]], seed: int, stream: int = 0):
        super().__init__(seed, stream)
        self.queries, self.keys = queries, keys

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        options = self.keys[index]
        j = 0
        if len(options) > 1 and self.stream == 0:  # held-out pairs: always the first
            j = int(self.rng(index).integers(len(options)))
        return {"query": self.queries[index], "key": options[j]}


# --------------------------------------------------------------------- the method
class CERT(TextMethod):
    name = "cert"
    config_class = CERTConfig
    citation = CITATION

    def __init__(self, encoder: Any, config: CERTConfig, pairs: list[Pair], seed: int = 42,
                 pair_counts: dict[str, int] | None = None, mlm_model: torch.nn.Module | None = None):
        super().__init__(encoder, config, seed, mlm_model)  # objective.mlm_weight: MLM on the queries
        obj = config.objective
        self.pair_counts = dict(pair_counts or {})
        # The key encoder (the MLM head is the method's, not the encoder's: not in the copy)
        # shares the (parameter-free) tokenizer instead of deep-copying it.
        tokenizer, encoder.tokenizer = encoder.tokenizer, None
        try:
            self.key_encoder = momentum_copy(encoder)
        finally:
            encoder.tokenizer = tokenizer
        self.key_encoder.tokenizer = tokenizer
        self.queue = FeatureQueue(obj.queue_size, self.projected_dim, init="random")
        # Every rank writes the same gathered keys, so DDP need not broadcast the queue.
        self._ddp_params_and_buffers_to_ignore = [n for n, _ in self.named_buffers() if n.startswith("queue.")]
        self._pending: list[torch.Tensor] = []

        ids = {p.id: p for p in pairs}
        train_docs, held_docs = held_out_split([Document(p.id, p.text) for p in ids.values()],
                                               config.data.held_out_fraction)
        self.train_pairs = [ids[d.id] for d in train_docs]
        self.eval_pairs = [ids[d.id] for d in held_docs[: config.data.max_eval_pairs]]
        if not self.train_pairs:
            raise DataError(f"{config.data.pairs}: every pair fell into the held-out split; "
                            "lower data.held_out_fraction or add pairs")
        self.train_q, self.train_k = self._tokenize(self.train_pairs)
        self.eval_q, self.eval_k = self._tokenize(self.eval_pairs)

    def _tokenize(self, pairs: list[Pair]) -> tuple[list[list[int]], list[list[list[int]]]]:
        if not pairs:
            return [], []
        tok = self.encoder.tokenizer
        # Cut at max_seq_length here (memory); pad_token_ids makes room for the special tokens.
        room = self.encoder.max_seq_length
        texts = [p.text for p in pairs]
        flat = [t for p in pairs for t in p.translations]
        q = tok(texts, add_special_tokens=False, truncation=True, max_length=room, verbose=False)["input_ids"]
        k_flat = tok(flat, add_special_tokens=False, truncation=True, max_length=room, verbose=False)["input_ids"]
        keys, pos = [], 0
        for p in pairs:
            keys.append(k_flat[pos : pos + len(p.translations)])
            pos += len(p.translations)
        return q, keys

    @classmethod
    def load_data(cls, config: CERTConfig, tokenizer: Any) -> dict[str, Any]:
        d = config.data
        pairs, counts = load_pairs(
            d.pairs, text_field=d.text_field, translations_field=d.translations_field, id_field=d.id_field,
            max_pairs=d.max_pairs, drop_identical=d.drop_identical,
        )
        return {"pairs": pairs, "pair_counts": counts}

    # ---- modes
    def train(self, mode: bool = True) -> CERT:
        super().train(mode)
        if not self.cfg.objective.key_dropout:
            self.key_encoder.train(False)
        return self

    # ---- data
    def train_dataset(self) -> torch.utils.data.Dataset:
        return self.mlm_dataset(_PairDataset(self.train_q, self.train_k, self.seed))

    def collate(self, examples: list[dict[str, list[int]]]) -> dict[str, Any]:
        return self.add_mlm({
            "query": self.encoder.pad_token_ids([e["query"] for e in examples], chunk_tokens=self.chunk_tokens),
            "key": self.encoder.pad_token_ids([e["key"] for e in examples], chunk_tokens=self.chunk_tokens),
        }, [e["query"] for e in examples], examples)

    def examples_in(self, batch: dict[str, Any]) -> int:
        q = batch["query"]
        return int(len(q["order"]) if "chunks" in q else q["input_ids"].shape[0])

    # ---- loss
    @torch.no_grad()
    def keys(self, features: dict[str, Any]) -> torch.Tensor:
        """L2-normalised keys of the momentum encoder (never carry gradient)."""
        return F.normalize(self.key_encoder(features, project=True).float(), dim=1)

    def embedding_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Encoder inputs of the sides that receive gradient: only the queries."""
        return {"query": batch["query"]}

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """MoCo's InfoNCE of the queries against their keys and the queue; queues the keys
        for ``after_optimizer_step`` when training."""
        obj = self.cfg.objective
        q = embeddings["query"]
        k = self.keys(batch["key"])
        n = q.shape[0]
        queue = self.queue.features()
        if obj.in_batch_negatives:
            candidates = gather_no_grad(k)
            labels = torch.arange(n, device=q.device) + batch_offset(n)
            loss = info_nce(q, candidates, labels=labels, extra_negatives=queue, temperature=obj.temperature)
            ignore = None
        else:
            candidates, labels = k, torch.arange(n, device=q.device)
            ignore = ~torch.eye(n, dtype=torch.bool, device=q.device)  # [l_pos, l_neg] only
            loss = info_nce(q, k, ignore_mask=ignore, extra_negatives=queue, temperature=obj.temperature)
        if self.training:
            self._pending.append(k)
        acc = retrieval_top1(q, torch.cat([candidates, queue.to(candidates.dtype)]), labels=labels, ignore_mask=ignore)
        return {"loss": loss, "top1": acc}

    def after_optimizer_step(self, step: int) -> None:
        update_momentum(self.encoder, self.key_encoder, self.cfg.objective.momentum)
        # After the step: this step's logits used the queue without its own keys.
        for k in self._pending:
            self.queue.enqueue(k, gather=True)
        self._pending.clear()

    # ---- evaluation and output
    def heldout_metrics(self) -> dict[str, float]:
        """Held-out pairs: each sentence's query retrieves its back-translation's key among
        all held-out keys (first translation of each; no queue), so the numbers compare
        across evaluations and runs."""
        if len(self.eval_q) < 2:
            return {}
        qs, ks = [], []
        for batch in self.heldout_batches(_PairDataset(self.eval_q, self.eval_k, self.seed, stream=1), 64):
            qs.append(self.encoder(batch["query"], project=True).float())
            ks.append(self.keys(batch["key"]))
        q, k = torch.cat(qs), torch.cat(ks)
        labels = torch.arange(q.shape[0], device=q.device)
        loss = info_nce(q, k, temperature=self.cfg.objective.temperature)
        return {"top1": float(retrieval_top1(q, k, labels=labels)), "loss": float(loss)}

    def describe_objective(self) -> str:
        obj = self.cfg.objective
        return (f"CERT (MoCo on sentence / back-translation pairs: momentum key encoder m={obj.momentum}, "
                f"queue of {obj.queue_size} keys, InfoNCE t={obj.temperature})")

    def describe_data(self) -> str:
        d, c = self.cfg.data, self.pair_counts
        dropped = []
        if c.get("identical_dropped"):
            dropped.append(f"{c['identical_dropped']} back-translations identical to their source dropped")
        if c.get("no_translation"):
            dropped.append(f"{c['no_translation']} sentences without a usable back-translation dropped")
        if c.get("duplicates"):
            dropped.append(f"{c['duplicates']} repeated sentences dropped")
        return (f"{len(self.train_pairs)} training pairs from `{d.pairs}` ({len(self.eval_pairs)} held out "
                "for the pretext metric)" + (f"; {'; '.join(dropped)}" if dropped else ""))
