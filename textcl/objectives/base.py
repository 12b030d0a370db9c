"""What every transformer text objective shares: the encoder, recipe plumbing, the auxiliary
MLM term, the GradCache-shaped ``forward``, held-out metrics and the saved model.

A text objective (as :class:`textcl.vision.methods.common.VisionMethod` is for vision) subclasses
:class:`TextMethod` and keeps only what is its own:

* ``name`` (registry name), ``citation``, ``title`` (model-card line) and ``config_class``:
  a :class:`TextConfig` subclass adding ``data`` and ``objective`` (an
  :class:`~textcl.objectives._mlm.MLMOptions` subclass: ``mlm_weight`` comes with it);
* :meth:`TextMethod.load_data` -- the ``data:`` section -> constructor keyword arguments;
* ``__init__(encoder, config, <data>, seed=42, mlm_model=None)`` calling
  ``super().__init__(encoder, config, seed, mlm_model)`` first;
* sampling: ``train_dataset`` (wrapped in :meth:`mlm_dataset`) and ``collate`` (ending with
  :meth:`add_mlm` on the query / anchor side);
* the loss: ``embedding_inputs`` (encoder inputs per side) and ``loss_from_embeddings`` --
  the GradCache protocol (:mod:`textcl.core.gradcache`); the shared ``forward`` encodes each
  side with ``project=True`` and adds the MLM term;
* optionally :meth:`TextMethod.heldout_metrics` (reported as ``<prefix>_heldout_<key>``) and
  :meth:`TextMethod.describe_data` (the model card's data line).

Datasets derive from :class:`SeededDataset`: an item's randomness comes from ``(seed, stream,
epoch, index)`` only (:func:`example_rng`), so a resumed run and any number of dataloader
workers see the same items.

The ``model:`` section (:class:`~textcl.objectives._encoder.EncoderSection`) builds the
encoder, its levers included (``bow_weight``, ``output_layer``; ``embedding_lr_scale`` and
``anchor_weight`` reach the optimizer through ``TextEncoder.parameter_options``, which the
inherited :meth:`Method.parameter_groups` reads).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from textcl.core.method import Method, MethodConfig
from textcl.objectives._encoder import EncoderSection, encoder_card_facts, resolve_chunk_tokens
from textcl.objectives._mlm import MLMAuxiliary, build_encoder_and_mlm

if TYPE_CHECKING:  # pragma: no cover
    from textcl.encoders import TextEncoder

__all__ = ["EVAL_STREAM", "TRAIN_STREAM", "SeededDataset", "TextConfig", "TextMethod", "embed_token_ids",
           "example_rng"]

#: Streams of :func:`example_rng`: training examples vs the fixed held-out examples.
TRAIN_STREAM, EVAL_STREAM = 0, 1


def example_rng(seed: int, stream: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one example: a function of (seed, stream, epoch, index) only, so a
    resumed run and any number of dataloader workers draw the same examples."""
    return np.random.default_rng([seed, stream, epoch, index])


class SeededDataset(torch.utils.data.Dataset):
    """Base of a map-style training dataset: ``seed``, ``stream`` and ``epoch`` (the trainer
    calls ``set_epoch``); :meth:`rng` is item ``index``'s generator (:func:`example_rng`)."""

    def __init__(self, seed: int, stream: int = TRAIN_STREAM):
        self.seed, self.stream = seed, stream
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self, index: int) -> np.random.Generator:
        return example_rng(self.seed, self.stream, self.epoch, index)


class TextConfig(MethodConfig):
    """Base of a text objective's recipe sections: ``model``; subclasses add ``data`` and
    ``objective`` (in that order: the order of the keys in recipe messages)."""

    model: EncoderSection = EncoderSection()


@torch.no_grad()
def embed_token_ids(encoder: Any, ids: Sequence[list[int]], *, batch_size: int = 64,
                    chunk_tokens: int | None = None, project: bool = True) -> torch.Tensor:
    """Embeddings ``(len(ids), d)`` of token-id lists (no special tokens), no gradient."""
    from accelerate.utils import send_to_device

    device = encoder.device
    out = []
    for start in range(0, len(ids), batch_size):
        features = encoder.pad_token_ids(list(ids[start : start + batch_size]), chunk_tokens=chunk_tokens)
        out.append(encoder(send_to_device(features, device), project=project))
    if not out:
        return torch.empty(0, encoder.forward_dim, device=device)
    return torch.cat(out)


class TextMethod(MLMAuxiliary, Method):
    """A :class:`~textcl.encoders.TextEncoder` trained by a contrastive objective (see the
    module docstring for what a subclass supplies)."""

    config_class: ClassVar[type[MethodConfig]] = TextConfig
    #: The model card's objective line (an instance may set its own); default: ``name``.
    title: ClassVar[str] = ""
    #: Held-out metrics are ``<metric_prefix>_heldout_<key>``; default: ``name``.
    metric_prefix: ClassVar[str] = ""

    encoder: TextEncoder

    def __init__(self, encoder: TextEncoder, config: Any, seed: int = 42, mlm_model: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.cfg = config
        self.seed = seed
        self.init_mlm(mlm_model)  # objective.mlm_weight (textcl.objectives._mlm)
        self.chunk_tokens = resolve_chunk_tokens(encoder, config.model.forward_chunk_tokens)

    # ---- construction
    @classmethod
    def from_recipe(cls, recipe: Any) -> TextMethod:
        cfg = recipe.config
        encoder, mlm_model = build_encoder_and_mlm(cfg.model, cfg.objective)
        return cls(encoder, cfg, **cls.load_data(cfg, encoder.tokenizer), seed=recipe.seed, mlm_model=mlm_model)

    @classmethod
    def load_data(cls, config: Any, tokenizer: Any) -> dict[str, Any]:
        """The training data the recipe names, as keyword arguments of ``__init__``."""
        raise NotImplementedError

    @property
    def projected_dim(self) -> int:
        """Width of ``encoder(..., project=True)``: the projection head's output, else ``encoder.forward_dim``."""
        proj = self.encoder.projection
        if proj is None:
            return int(self.encoder.forward_dim)
        last = [m for m in proj.modules() if isinstance(m, nn.Linear)][-1]
        return int(last.out_features)

    # ---- loss (GradCache protocol, textcl.core.gradcache)
    def embedding_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Encoder inputs per side, in the order ``forward`` encodes them."""
        raise NotImplementedError

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """All the loss logic, given the projected embeddings of :meth:`embedding_inputs`."""
        raise NotImplementedError

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        embeddings = {side: self.encoder(f, project=True) for side, f in self.embedding_inputs(batch).items()}
        return self.with_auxiliary(self.loss_from_embeddings(embeddings, batch), batch)

    # ---- held-out evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """:meth:`heldout_metrics`, each key as ``<metric_prefix>_heldout_<key>``."""
        prefix = self.metric_prefix or self.name
        return {f"{prefix}_heldout_{k}": v for k, v in self.heldout_metrics().items()}

    def heldout_metrics(self) -> dict[str, float]:
        """Pretext metrics on the fixed held-out data (none by default); runs without gradient."""
        return {}

    def heldout_batches(self, dataset: Any, batch_size: int) -> Iterator[dict[str, Any]]:
        """``collate`` of consecutive items of ``dataset``, on the encoder's device."""
        from accelerate.utils import send_to_device

        device = self.encoder.device
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            yield send_to_device(self.collate(items), device)

    def embed_ids(self, ids: Sequence[list[int]]) -> torch.Tensor:
        """Projected embeddings of token-id lists (:func:`embed_token_ids`, no gradient)."""
        return embed_token_ids(self.encoder, ids, chunk_tokens=self.chunk_tokens)

    # ---- output
    def describe_objective(self) -> str:
        """The model card's objective line."""
        return self.title or self.name

    def describe_data(self) -> str:
        """The model card's training-data line."""
        return ""

    def card_info(self) -> dict[str, Any]:
        return {
            "objective": self.describe_objective(),
            "objective_citation": self.citation,
            **encoder_card_facts(self.encoder, self.cfg.model.name_or_path),
            "data": self.describe_data(),
        }

    def save_model(self, path: Path, card_info: dict[str, Any]) -> None:
        """The encoder as a sentence-transformers directory (heads, markers, momentum copies
        and the MLM head are training machinery and stay out), with its model card."""
        from textcl.card import render_model_card

        self.encoder.save(path, model_card=render_model_card(card_info))
