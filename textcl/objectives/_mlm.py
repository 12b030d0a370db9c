"""The auxiliary masked-LM term every text objective can add (``objective.mlm_weight``).

Total loss = contrastive loss + ``mlm_weight`` * MLM loss on the query / anchor side of the
batch (DeCLUTR adds it in the paper; here any objective may). The pieces:

* :class:`MLMOptions` -- the two recipe keys, a base class of each objective's
  ``objective:`` section: ``mlm_weight`` (default 0: no MLM model is even loaded) and
  ``mlm_probability`` (0.15).
* :func:`build_encoder_and_mlm` -- with ``mlm_weight > 0``, an ``AutoModelForMaskedLM``
  loaded from ``model.name_or_path`` (its head's weights too when the checkpoint has them)
  whose *base model* becomes the contrastive encoder's transformer: one set of weights,
  trained by both terms. :func:`mlm_around` builds a fresh head around an existing
  transformer instead (a method constructed directly from an encoder).
* :func:`mask_tokens` -- BERT's rule, as ``DataCollatorForLanguageModeling``: each
  non-special, non-padding token is selected with ``mlm_probability``; of those 80 % become
  ``[MASK]``, 10 % a random token, 10 % stay; labels are -100 elsewhere. One
  ``torch.Generator`` seeded by the batch, so a batch is masked the same way in every run,
  resumed run and dataloader worker.
* :class:`MLMSeeded` -- a dataset wrapper giving every item an ``mlm_seed`` drawn from
  ``(seed, stream, epoch, index)`` -- the key of the item's own generator
  (:func:`textcl.objectives.base.example_rng`) with a trailing tag, so it is
  independent of the item's own draws. DeCLUTR draws its ``mlm_seed`` from the item's
  generator itself (kept as it was).
* :class:`MLMAuxiliary` -- the method mixin: ``init_mlm``, ``mlm_dataset``, ``add_mlm``
  (the end of ``collate``; also a function, for stand-ins of a method in tests),
  ``auxiliary_loss`` (the GradCache hook, :mod:`textcl.core.gradcache`) and
  ``with_auxiliary`` (``forward``).

The MLM head is a submodule of the method (so it is optimised and checkpointed) but not of
the encoder: ``TextEncoder.save`` writes the transformer only, so no MLM weight reaches the
saved sentence-transformers directory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from textcl.core.gradcache import merge_auxiliary
from textcl.core.method import MethodConfig

__all__ = [
    "MLMAuxiliary",
    "MLMOptions",
    "MLMSeeded",
    "add_mlm",
    "build_encoder_and_mlm",
    "load_mlm",
    "mask_tokens",
    "mlm_around",
    "mlm_seed",
]

#: Trailing element of the MLM seed key: ``[seed, stream, epoch, index, MLM_SEED_TAG]``
#: (example_rng uses 4 numbers, the permutation passages' document offsets a trailing 1).
MLM_SEED_TAG = 2


class MLMOptions(MethodConfig):
    """Base of an ``objective:`` section: the auxiliary MLM term's keys."""

    mlm_weight: float = Field(0.0, ge=0, description="weight of the auxiliary MLM loss on the queries (0: off)")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="share of tokens selected for MLM (80/10/10)")


# --------------------------------------------------------------------- models
def load_mlm(name_or_path: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """An MLM model loaded from ``name_or_path`` and its base model (the shared transformer)."""
    from transformers import AutoModelForMaskedLM

    from textcl.encoders import resolve_model_path

    model = AutoModelForMaskedLM.from_pretrained(str(resolve_model_path(name_or_path)))
    return model, model.base_model


def mlm_around(transformer: torch.nn.Module) -> torch.nn.Module:
    """A freshly initialised MLM head of ``transformer``'s architecture whose base model *is*
    ``transformer`` (output embeddings re-tied to its input embeddings where the config ties them)."""
    from transformers import AutoModelForMaskedLM

    with torch.random.fork_rng(devices=[]):  # building a head must not move the caller's stream
        model = AutoModelForMaskedLM.from_config(transformer.config)
    setattr(model, model.base_model_prefix, transformer)
    model.tie_weights()
    model.train(transformer.training)
    return model


def build_encoder_and_mlm(model: Any, objective: MLMOptions) -> tuple[Any, torch.nn.Module | None]:
    """The encoder of a ``model:`` section and, with ``objective.mlm_weight > 0``, the MLM
    model whose base model is that encoder's transformer (else ``None``: nothing loaded)."""
    from textcl.objectives._encoder import build_encoder

    if objective.mlm_weight <= 0:
        return build_encoder(model), None
    mlm, transformer = load_mlm(model.name_or_path)
    return build_encoder(model, transformer=transformer), mlm


# --------------------------------------------------------------------- masking
def mlm_seed(seed: int, stream: int, epoch: int, index: int) -> int:
    """The masking seed of item ``index``: a function of (seed, stream, epoch, index) only."""
    rng = np.random.default_rng([seed, stream, epoch, index, MLM_SEED_TAG])
    return int(rng.integers(0, 2**31 - 1))


def mask_tokens(features: dict[str, torch.Tensor], tokenizer: Any, probability: float,
                seed: int) -> dict[str, torch.Tensor]:
    """BERT masking (80/10/10) of the non-special, non-padding tokens of a padded batch,
    from a generator seeded with ``seed``; returns ``input_ids``, ``attention_mask``, ``labels``."""
    g = torch.Generator().manual_seed(int(seed))
    ids = features["input_ids"].clone()
    special = torch.tensor(
        [tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True) for row in ids.tolist()],
        dtype=torch.bool,
    ).reshape(ids.shape) | (features["attention_mask"] == 0)
    masked = torch.bernoulli(torch.full(ids.shape, float(probability)), generator=g).bool() & ~special
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    replace = torch.bernoulli(torch.full(ids.shape, 0.8), generator=g).bool() & masked
    ids[replace] = tokenizer.mask_token_id
    rand = torch.bernoulli(torch.full(ids.shape, 0.5), generator=g).bool() & masked & ~replace
    ids[rand] = torch.randint(len(tokenizer), ids.shape, generator=g)[rand]
    return {"input_ids": ids, "attention_mask": features["attention_mask"], "labels": labels}


class MLMSeeded(torch.utils.data.Dataset):
    """``dataset`` (items: dicts; attributes ``seed``, ``stream``, ``epoch``) with an
    ``mlm_seed`` added to every item (:func:`mlm_seed`); ``set_epoch`` is passed on."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        d = self.dataset
        item = dict(d[index])
        item["mlm_seed"] = mlm_seed(d.seed, d.stream, d.epoch, index)
        return item

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def add_mlm(method: Any, batch: dict[str, Any], sequences: list[list[int]],
            examples: list[dict[str, Any]]) -> dict[str, Any]:
    """``batch`` plus ``batch["mlm"]``: ``sequences`` (token ids without special tokens: the
    query / anchor side) padded and masked with the first example's ``mlm_seed``. The end of
    a ``collate``. Nothing without an MLM model (``method.mlm_model``), or for items without
    a seed (held-out evaluation). A function rather than a method, so that ``collate`` also
    runs on objects that are not full methods (tests)."""
    if getattr(method, "mlm_model", None) is not None and examples and "mlm_seed" in examples[0]:
        features = method.encoder.pad_token_ids(sequences)
        batch["mlm"] = mask_tokens(features, method.encoder.tokenizer, method.cfg.objective.mlm_probability,
                                   examples[0]["mlm_seed"])
    return batch


# --------------------------------------------------------------------- the method mixin
class MLMAuxiliary:
    """Mixin of a ``Method`` with ``self.encoder`` (a ``TextEncoder``) and ``self.cfg.objective``
    (an :class:`MLMOptions`). Call :meth:`init_mlm` in ``__init__``; wrap ``train_dataset``'s
    dataset in :meth:`mlm_dataset` (unless its items carry their own ``mlm_seed``); end
    ``collate`` with :meth:`add_mlm` (the query / anchor token ids) and ``forward`` with
    :meth:`with_auxiliary`. :class:`textcl.objectives.base.TextMethod` does the ``__init__``
    and ``forward`` parts."""

    encoder: Any
    cfg: Any

    def init_mlm(self, mlm_model: torch.nn.Module | None = None) -> None:
        """Register the MLM model (a submodule of the method, not of the encoder).
        ``mlm_weight > 0`` without one: a fresh head around the encoder's transformer."""
        if self.cfg.objective.mlm_weight <= 0:
            mlm_model = None
        elif mlm_model is None:
            mlm_model = mlm_around(self.encoder.transformer)
        elif mlm_model.base_model is not self.encoder.transformer:
            raise ValueError("the MLM model's base model must be the encoder's transformer (shared weights)")
        self.mlm_model = mlm_model

    def mlm_dataset(self, dataset: Any) -> Any:
        """``dataset`` with an ``mlm_seed`` per item when the MLM term is on."""
        return MLMSeeded(dataset) if self.mlm_model is not None else dataset

    def add_mlm(self, batch: dict[str, Any], sequences: list[list[int]],
                examples: list[dict[str, Any]]) -> dict[str, Any]:
        """:func:`add_mlm` -- the end of ``collate``: ``batch["mlm"]`` from the query / anchor side."""
        return add_mlm(self, batch, sequences, examples)

    def auxiliary_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The weighted MLM term (none without ``mlm_weight``); under GradCache it runs on the
        whole batch, outside the mini-batches."""
        if self.mlm_model is None or "mlm" not in batch:
            return {}
        if (batch["mlm"]["labels"] != -100).any():
            mlm = self.mlm_model(**batch["mlm"]).loss
        else:  # no token selected (a few short queries): a zero term, not the NaN of 0 / 0
            inputs = {k: v for k, v in batch["mlm"].items() if k != "labels"}
            mlm = self.mlm_model(**inputs).logits.sum() * 0.0
        return {"mlm_loss": mlm.detach(), "loss": self.cfg.objective.mlm_weight * mlm}

    def with_auxiliary(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``forward``'s result: the contrastive ``out`` plus :meth:`auxiliary_loss`."""
        return merge_auxiliary(out, self.auxiliary_loss(batch))
