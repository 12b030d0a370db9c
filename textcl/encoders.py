"""Text encoders: any Hugging Face encoder + sentence-transformers-compatible pooling.

:class:`TextEncoder` is what text objectives train. It reads and writes the
sentence-transformers (ST) directory layout, so a trained model loads with
``SentenceTransformer(path)`` and gives the same vectors as :class:`textcl.Embedder`.

The text stack, lowest first (a module imports only from modules listed before it)::

    textcl.core.io          files (INSTALL_MARKER, atomic writes)
    textcl.pooling          pool, bow_mean, POOLING_MODES
    textcl.fit_texts        unlabelled training sentences to fit on (whitening, token weights)
    textcl.batching         cpu_token_budget, plan_length_batches, special_affixes
    textcl.model_location   hub probe, offline fallback, locate_model, ModelLoadError
    textcl.whitening_layer  Whitening (the ST Dense layer a whitened model ends with)
    textcl.st_folder        reading / writing the ST directory layout
    textcl.encoder_levers   the training levers TextEncoder mixes in (token weights, lr scale, anchor)
    textcl.encoders         TextEncoder (this module)
    textcl.st_modules       BagOfWordsResidual, StartBag (loaded by sentence-transformers)
    textcl.embed            Embedder
    textcl.whitening        whiten_model and its command line (imported by nothing in textcl)

tests/test_text_layers.py checks this order and that there is no import circle, lazy
imports included. Every name these lower modules took over from this one is re-exported below, so
``from textcl.encoders import ModelLoadError, locate_model, pool, ...`` keeps working.
``transformers`` is imported inside the loading functions, for speed: it takes seconds,
and tokenizing, pooling or saving an encoder already built does not need it.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# Re-exported: these names lived here before the split, and callers import them from here.
from textcl.batching import (  # noqa: F401
    CPU_TOKENS_PER_FORWARD,
    cpu_token_budget,
    plan_length_batches,
    special_affixes,
)
from textcl.encoder_levers import EncoderLevers
from textcl.model_location import (  # noqa: F401
    _HUB_ALIASES,
    _HUB_PROBE_TIMEOUT_S,
    _ST_FILES,
    PACKAGED_MODELS,
    ModelLoadError,
    _cached_snapshot,
    _explain_load_error,
    _first_line,
    _hub_reachable,
    _in_hub_cache,
    _length_limit,
    _load_errors,
    _load_transformer,
    _looks_like_path,
    _offline_env,
    _packaged_path,
    check_model_dir,
    locate_model,
    resolve_model_path,
)
from textcl.pooling import POOLING_MODES, bow_mean, concat_start_bag, pool
from textcl.st_folder import (  # noqa: F401
    _LEGACY_POOLING_KEYS,
    _ST_TRANSFORMER_CONFIGS,
    _Location,
    _module_dir,
    _package_version,
    _pooling_from_config,
    _read_st_layout,
    _STLayout,
    _write_json,
    read_start_table,
    read_token_weights,
    write_st_folder,
)
from textcl.whitening_layer import Whitening

logger = logging.getLogger("textcl")

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
_DEFAULT_MAX_SEQ_LENGTH = 256


# --------------------------------------------------------------------------- the encoder


class TextEncoder(EncoderLevers, nn.Module):
    """Any HF encoder + pooling (mean|cls|max) + optional projection head used only in training.

    ``forward`` returns pooled, un-normalized vectors; ``normalize`` only records whether the
    saved sentence-transformers model ends with a Normalize module. The projection head
    (SimCLR-style) is applied only with ``forward(..., project=True)`` and is never saved:
    the exported model gives the pooled representation, which transfers better.
    """

    def __init__(
        self,
        transformer: nn.Module,
        tokenizer: Any,
        pooling: str = "mean",
        max_seq_length: int = _DEFAULT_MAX_SEQ_LENGTH,
        normalize: bool = True,
        projection_dim: int | None = None,
        projection_hidden_dim: int | None = None,
        bow_weight: float = 0.0,
        context_weight: float = 1.0,
        start_bag_weight: float = 0.0,
        start_table: torch.Tensor | None = None,
        token_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        if projection_hidden_dim is not None and projection_dim is None:
            raise ValueError("projection_hidden_dim needs projection_dim")
        limit = _length_limit(transformer)
        if limit is not None and max_seq_length > limit:
            logger.warning("max_seq_length %d exceeds what the model takes; using %d", max_seq_length, limit)
            max_seq_length = limit
        self.transformer = transformer
        # Pooling runs over the token embeddings, so a pooler head (BERT's dense + tanh over
        # [CLS]) never gets a gradient. Frozen, DDP does not wait for its gradient (with
        # find_unused_parameters off it raised at the second step); weights still saved.
        pooler = getattr(transformer, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_seq_length = int(max_seq_length)
        self.normalize = bool(normalize)
        self.projection: nn.Module | None = None
        #: Affine map after pooling (whitening); saved as an ST Dense module. Inference-only
        #: unless :attr:`train_output_layer` (then ``forward`` applies it and it trains).
        self.output_layer: nn.Module | None = None
        self.train_output_layer = False
        #: Weight of the residual bag-of-words path: ``pooled += bow_weight * mean(input
        #: embeddings)`` (saved as :class:`textcl.st_modules.BagOfWordsResidual`). It keeps the
        #: lexical signal of the input embeddings (e.g. SGNS vectors) in the sentence vector
        #: while the contextual layers train.
        if bow_weight < 0:
            raise ValueError(f"bow_weight must be >= 0, got {bow_weight}")
        self.bow_weight = float(bow_weight)
        #: Weight of the contextual (pooled transformer) part. 0 makes the encoder a bag of its
        #: input embeddings (Siamese CBOW): the transformer layers are skipped and frozen.
        if context_weight < 0 or (context_weight == 0 and not bow_weight):
            raise ValueError(f"context_weight must be >= 0, and > 0 without bow_weight; got {context_weight}")
        self.context_weight = float(context_weight)
        if not context_weight:
            transformer.requires_grad_(False)
            transformer.get_input_embeddings().requires_grad_(True)
        #: Weight of a frozen copy of the start's input-embedding table (``start_table``, default: the table
        #: now) whose bag is concatenated to the sentence vector (textcl.pooling.concat_start_bag).
        self.start_bag_weight = float(start_bag_weight)
        self.start_bag: nn.Embedding | None = None
        if start_bag_weight < 0 or (start_bag_weight and projection_dim is not None):
            raise ValueError(f"start_bag_weight must be >= 0 and needs no projection head; got {start_bag_weight}")
        if start_bag_weight:
            table = transformer.get_input_embeddings().weight if start_table is None else start_table
            self.start_bag = nn.Embedding.from_pretrained(table.detach().clone().float(), freeze=True)
        #: Per-token weights of the bag paths (SIF, :mod:`textcl.token_weights`): a buffer, never trained.
        self.register_buffer("token_weights", None)
        if token_weights is not None:
            self.set_token_weights(token_weights)
        # Optimizer options (configure_training): defaults = no lever.
        self.embedding_lr_scale = self.output_layer_lr_scale = 1.0
        self.anchor_weight = 0.0
        self._anchor: torch.Tensor | None = None
        if projection_dim is not None:
            d = self.dim
            if projection_hidden_dim is not None:
                self.projection = nn.Sequential(
                    nn.Linear(d, projection_hidden_dim),
                    nn.ReLU(),
                    nn.Linear(projection_hidden_dim, projection_dim),
                )
            else:
                self.projection = nn.Linear(d, projection_dim)
        params = inspect.signature(transformer.forward).parameters
        self._model_inputs = tuple(k for k in _MODEL_INPUTS if k in params)
        # Give token_type_ids only to models whose tokenizer produces them (BERT-likes), as ST does.
        self._uses_token_types = "token_type_ids" in self._model_inputs and "token_type_ids" in getattr(
            tokenizer, "model_input_names", ()
        )
        self._affixes: tuple[list[int], list[int]] | None = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        pooling: str | None = None,
        max_seq_length: int | None = None,
        normalize: bool | None = None,
        projection_dim: int | None = None,
        projection_hidden_dim: int | None = None,
        transformer: nn.Module | None = None,
        output_layer: bool = True,
        bow_weight: float | None = None,
        context_weight: float | None = None,
        start_bag_weight: float | None = None,
    ) -> TextEncoder:
        """Load from a sentence-transformers / textcl directory, a plain HF model dir or a hub name.

        ST directories give pooling, max_seq_length and normalize; plain HF models default to
        mean pooling, max_seq_length 256 (capped by the model) and normalize=True. Explicit
        arguments override. With ``transformer=`` (e.g. the base model of an MLM model, so the
        heads share weights) no weights are loaded: ``name_or_path`` gives the tokenizer and,
        if it is an ST directory, its settings. An affine ``Dense`` module after Pooling (a
        whitening layer, :mod:`textcl.whitening`) becomes :attr:`output_layer` unless
        ``output_layer=False`` (training: the layer was fitted to the features before training).
        ``bow_weight`` overrides the saved residual bag-of-words weight (0 without one),
        ``context_weight`` the saved weight of the contextual part (1 without one),
        ``start_bag_weight`` the saved StartBag weight (0 without one; a new one copies the table).
        Saved per-token weights of the bag paths are kept while a bag path is.
        Raises :class:`ModelLoadError` (a one-line message) when the model cannot be loaded.
        """
        from transformers import AutoTokenizer

        name = str(name_or_path)
        loc = _Location(locate_model(name))
        with _load_errors(name):
            layout = _read_st_layout(loc)
            ref, kwargs = loc.hf_kwargs(layout.transformer_subfolder if layout else "")
            tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
            if transformer is None:
                transformer = _load_transformer(ref, **kwargs)
            start_table = read_start_table(loc, layout)
            saved_weights = read_token_weights(loc, layout)
        if max_seq_length is None:
            if layout is not None and layout.max_seq_length is not None:
                max_seq_length = int(layout.max_seq_length)
            elif layout is not None:
                # ST >= 6 keeps max_seq_length as the tokenizer's model_max_length.
                max_seq_length = _length_limit(transformer, tokenizer) or _DEFAULT_MAX_SEQ_LENGTH
            else:
                limit = _length_limit(transformer, tokenizer)
                max_seq_length = min(_DEFAULT_MAX_SEQ_LENGTH, limit or _DEFAULT_MAX_SEQ_LENGTH)
        encoder = cls(
            transformer,
            tokenizer,
            pooling=pooling or (layout.pooling if layout else "mean"),
            max_seq_length=max_seq_length,
            normalize=normalize if normalize is not None else (layout.normalize if layout else True),
            projection_dim=projection_dim,
            projection_hidden_dim=projection_hidden_dim,
            bow_weight=bow_weight if bow_weight is not None else (layout.bow_weight if layout else 0.0),
            context_weight=context_weight if context_weight is not None else (layout.context_weight if layout else 1.0),
            start_bag_weight=start_bag_weight if start_bag_weight is not None else (layout.start_bag_weight if layout else 0.0),
            start_table=start_table,
        )
        if saved_weights is not None and (encoder.bow_weight or encoder.start_bag is not None):
            encoder.set_token_weights(saved_weights)  # unless the overrides removed every bag path
        if layout is not None and layout.dense_subfolder is not None:
            if output_layer:
                with _load_errors(name):
                    encoder.output_layer = Whitening.load(_module_dir(loc, layout.dense_subfolder))
            else:
                logger.warning(
                    "%s ends with a whitening/Dense layer fitted to its features before training; "
                    "it is dropped (fit it again on the trained model: python -m textcl.whitening)",
                    loc.ref,
                )
        # We own this tokenizer, so make its default agree with ours for direct callers.
        tokenizer.model_max_length = encoder.max_seq_length
        return encoder

    @property
    def dim(self) -> int:
        """Width of the pooled embedding (before any projection head)."""
        return int(self.transformer.config.hidden_size)

    @property
    def forward_dim(self) -> int:
        """Width of :meth:`forward` without the head: :attr:`dim`, plus the start bag's, or a trained output layer's."""
        if self.train_output_layer:
            return int(self.output_layer.out_features)  # type: ignore[union-attr]
        return self.dim + (self.start_bag.embedding_dim if self.start_bag is not None else 0)

    @property
    def output_dim(self) -> int:
        """Width of the exported embedding: :attr:`forward_dim`, or the output layer's width."""
        return self.forward_dim if self.output_layer is None else int(self.output_layer.out_features)

    def embed(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The exported (inference) embedding: pooled, then :attr:`output_layer` if any; not normalized."""
        pooled = self.forward(features)
        if self.output_layer is None or self.train_output_layer:  # forward applied it already
            return pooled
        return self.output_layer(pooled)

    @property
    def device(self) -> torch.device:
        """Device of the transformer's parameters."""
        return next(self.transformer.parameters()).device

    # ---- inputs

    def tokenize(self, texts: list[str], chunk_tokens: int | None = None) -> dict[str, Any]:
        """Tokenize texts, truncated to ``max_seq_length``.

        Without ``chunk_tokens``: padded to the longest. With it: length-bucketed chunks,
        as :meth:`collate` with ``chunk_tokens`` gives.
        """
        if isinstance(texts, str):
            texts = [texts]
        if chunk_tokens is not None:
            ids = self.tokenizer(
                list(texts),
                truncation="longest_first",
                max_length=self.max_seq_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
            return self.collate(ids, chunk_tokens=chunk_tokens)
        batch = self.tokenizer(
            list(texts),
            padding="longest",
            truncation="longest_first",
            max_length=self.max_seq_length,
            return_tensors="pt",
        )
        return dict(batch)

    def _special_affixes(self) -> tuple[list[int], list[int]]:
        """Special-token ids the tokenizer puts before and after a single sequence."""
        self._affixes = self._affixes or special_affixes(self.tokenizer)
        return self._affixes

    def pad_token_ids(self, ids: list[list[int]], chunk_tokens: int | None = None) -> dict[str, Any]:
        """Batch token-id lists that have no special tokens (e.g. spans cut from a document).

        Adds the tokenizer's special tokens, truncates the content so the total is at most
        ``max_seq_length``, then :meth:`collate` (padding, attention mask, optional chunks).
        """
        prefix, suffix = self._special_affixes()
        room = max(self.max_seq_length - len(prefix) - len(suffix), 0)
        seqs = []
        for x in ids:
            x = x.tolist() if hasattr(x, "tolist") else list(x)
            seqs.append(prefix + x[:room] + suffix)
        return self.collate(seqs, chunk_tokens=chunk_tokens)

    def collate(self, seqs: list[list[int]], chunk_tokens: int | None = None) -> dict[str, Any]:
        """Pad complete token-id sequences (special tokens included) into model inputs.

        With ``chunk_tokens``, the sequences are sorted by length and cut into chunks of at
        most ``chunk_tokens`` padded tokens, each padded only to its own longest:
        ``{"chunks": [features, ...], "order": LongTensor}``. :meth:`forward` runs the chunks
        and returns rows in the original order, so the result (and its gradient) is the same
        as one padded batch up to float rounding, with less padding: a training step with
        varied lengths runs faster on CPU (``benchmarks/speed.py train``).
        """
        if chunk_tokens is not None:
            by_length = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
            lengths = [len(seqs[i]) for i in by_length]
            chunks = [
                self.collate([seqs[i] for i in by_length[b:e]])
                for b, e in plan_length_batches(lengths, len(seqs), chunk_tokens)
            ]
            # order[i] = row of the concatenated chunk outputs that holds sequence i.
            order = torch.empty(len(seqs), dtype=torch.long)
            order[torch.tensor(by_length, dtype=torch.long)] = torch.arange(len(seqs))
            return {"chunks": chunks, "order": order}
        n = len(seqs)
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=n)
        width = int(lengths.max()) if n else 0
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = 0  # masked out anyway; some decoder tokenizers define no pad token
        # Filled in numpy, one slice per row, then shared with torch without a copy: 0.08 ms
        # per 64-text batch vs 1.3 ms for tokenizer.pad() (measured); it runs once per batch.
        input_ids = np.full((n, width), pad_id, dtype=np.int64)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for row, s in enumerate(seqs):
            if left:
                input_ids[row, width - len(s) :] = s
            else:
                input_ids[row, : len(s)] = s
        positions = np.arange(width)
        if left:
            attention_mask = positions[None, :] >= (width - lengths)[:, None]
        else:
            attention_mask = positions[None, :] < lengths[:, None]
        features = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask.astype(np.int64)),
        }
        if self._uses_token_types:
            features["token_type_ids"] = torch.zeros((n, width), dtype=torch.long)
        return features

    # ---- forward

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``torch.compile`` the transformer in place (``train.compile``). The chunk loop and
        pooling stay eager: compiled, every new number of chunks would recompile."""
        self.transformer.compile(*args, **kwargs)

    def forward(self, features: dict[str, torch.Tensor], project: bool = False) -> torch.Tensor:
        """Pooled ``(B, d)`` embeddings, not normalized; through the projection head if ``project``.

        ``features`` is one padded batch or the chunked form of :meth:`collate`.
        """
        if "chunks" in features:
            parts = [self.forward(chunk, project=project) for chunk in features["chunks"]]
            return torch.cat(parts).index_select(0, features["order"].to(parts[0].device))
        inputs = {k: features[k] for k in self._model_inputs if k in features}
        attention_mask = features.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(features["input_ids"])
        bow = None
        if self.bow_weight:
            emb = self.transformer.get_input_embeddings()
            bow = self.bow_weight * bow_mean(emb, features["input_ids"], attention_mask, self.token_weights)
        if self.context_weight:
            out = self.transformer(**inputs, return_dict=True)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            pooled = pool(hidden, attention_mask, self.pooling)
            if self.context_weight != 1.0:
                pooled = self.context_weight * pooled
            if bow is not None:
                pooled = pooled + bow.to(pooled.dtype)
        else:  # a bag of input embeddings: no transformer pass at all
            pooled = bow
        if self.start_bag is not None:
            start = bow_mean(self.start_bag, features["input_ids"], attention_mask, self.token_weights)
            pooled = concat_start_bag(pooled, start, self.start_bag_weight)
        if self.train_output_layer:
            pooled = self.output_layer(pooled)  # type: ignore[misc]
        if project and self.projection is not None:
            return self.projection(pooled)
        return pooled

    # ---- saving

    def save(self, path: str | Path, model_card: str | None = None) -> None:
        """Write a sentence-transformers model directory into ``path`` (created if needed).

        Files: safetensors weights + config.json, tokenizer files, modules.json,
        sentence_bert_config.json, 1_Pooling/config.json, 2_Dense iff :attr:`output_layer`, a
        Normalize module iff ``normalize``, config_sentence_transformers.json and README.md (= ``model_card``).
        The projection head is not saved. The caller handles atomicity (temp dir + rename).
        """
        write_st_folder(
            path,
            transformer=self.transformer,
            tokenizer=self.tokenizer,
            max_seq_length=self.max_seq_length,
            pooling=self.pooling,
            dim=self.dim,
            normalize=self.normalize,
            bow_weight=self.bow_weight,
            context_weight=self.context_weight,
            output_layer=self.output_layer,
            model_card=model_card,
            start_bag=None if self.start_bag is None else (self.start_bag_weight, self.start_bag.weight),
            token_weights=self.token_weights,
        )

