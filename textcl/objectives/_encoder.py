"""The ``model:`` recipe section every text objective shares, and what it builds."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from textcl.core.method import MethodConfig

__all__ = ["EncoderSection", "TokenWeightsSection", "build_encoder", "encoder_card_facts", "resolve_chunk_tokens"]


class TokenWeightsSection(MethodConfig):
    """SIF weights ``a / (a + p(token))`` for the bag paths, ``p`` counted on unlabelled sentences."""

    sif_a: float = Field(1e-3, gt=0, description="SIF's a (Arora et al. 2017 use 1e-3 to 1e-4)")
    corpus: str = Field(description="sentences to count tokens on: .txt[.gz] (one per line) or documents .jsonl[.gz]")
    max_texts: int | None = Field(200_000, ge=1, description="distinct sentences counted (sampled with seed 0); null = all")


class EncoderSection(MethodConfig):
    """A Hugging Face / sentence-transformers encoder and how to pool it."""

    name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2"
    pooling: Literal["mean", "cls", "max"] | None = None
    max_seq_length: int | None = Field(None, ge=8)
    normalize: bool | None = None
    projection_dim: int | None = Field(None, ge=1)
    projection_hidden_dim: int | None = Field(None, ge=1)
    # Padded tokens per forward chunk (sequences bucketed by length, see TextEncoder.collate):
    # "auto" = a CPU-sized budget without CUDA, one forward per side with it; null = never.
    forward_chunk_tokens: int | Literal["auto"] | None = Field("auto", union_mode="left_to_right")
    # ---- levers that keep the start's lexical signal (all off by default)
    bow_weight: float | None = Field(
        None, ge=0, description="residual bag-of-words path: pooled += w * mean(input embeddings); "
        "null = what the start model has (0 for a plain model)",
    )
    context_weight: float | None = Field(
        None, ge=0, description="weight of the contextual (transformer) mean in the pooled vector; 0 = a bag "
        "of the input embeddings (Siamese CBOW: needs bow_weight, skips and freezes the transformer layers); "
        "null = what the start model has (1 for a plain model)",
    )
    start_bag_weight: float | None = Field(
        None, ge=0, description="concatenate a frozen copy of the start's bag of input embeddings, each half "
        "unit-normalised: [trained, w * start] (keeps the lexical start for classifiers); null = what the start "
        "model has (0 for a plain model)",
    )
    embedding_lr_scale: float = Field(1.0, ge=0, description="lr multiplier of the input embeddings (0 freezes)")
    anchor_weight: float = Field(0.0, ge=0, description="L2-SP pull of the input embeddings toward the start's")
    output_layer: Literal["drop", "train"] = Field(
        "drop", description="a Dense (whitening) layer of the start model: drop it, or train through it and keep it"
    )
    output_layer_lr_scale: float = Field(1.0, ge=0, description="lr multiplier of a trained output layer")
    token_weights: TokenWeightsSection | None = Field(
        None, description="weight each token of the bag paths (bow_weight, start_bag_weight) by SIF's a / (a + p); "
        "null = what the start model has (none for a plain model)",
    )


#: ``model:`` keys passed to TextEncoder.from_pretrained under the same name.
_FROM_PRETRAINED = ("pooling", "max_seq_length", "normalize", "projection_dim", "projection_hidden_dim",
                    "bow_weight", "context_weight", "start_bag_weight")


def build_encoder(m: EncoderSection, transformer: torch.nn.Module | None = None) -> Any:
    """The :class:`~textcl.encoders.TextEncoder` a ``model:`` section describes
    (``transformer``: an already loaded model to wrap, e.g. an MLM model's base)."""
    from textcl.core.recipe import RecipeError
    from textcl.encoders import TextEncoder

    try:
        encoder = TextEncoder.from_pretrained(
            m.name_or_path,
            transformer=transformer,
            # By default a whitening layer is dropped: it was fitted to the pre-training features.
            output_layer=m.output_layer == "train",
            **{key: getattr(m, key) for key in _FROM_PRETRAINED},
        )
    except ValueError as exc:  # context_weight 0 without a bag-of-words path (bow_weight 0)
        if "start_bag_weight" in str(exc):
            raise RecipeError(f"model.start_bag_weight: {exc} -- drop model.projection_dim") from None
        if "context_weight" not in str(exc):
            raise
        raise RecipeError(f"model.context_weight: {exc} -- set model.bow_weight > 0") from None
    if m.token_weights is not None:
        _set_token_weights(encoder, m.token_weights)
    if m.output_layer == "train":
        if encoder.output_layer is None:
            raise RecipeError(
                f"model.output_layer: train, but {m.name_or_path} has no Dense (whitening) module -- "
                "whiten it first (python -m textcl.whitening) or set model.output_layer: drop"
            )
        encoder.set_output_layer_trainable()
    encoder.configure_training(
        embedding_lr_scale=m.embedding_lr_scale,
        anchor_weight=m.anchor_weight,
        output_layer_lr_scale=m.output_layer_lr_scale,
    )
    return encoder


def _set_token_weights(encoder: Any, t: TokenWeightsSection) -> None:
    """Count the tokens of ``t.corpus`` with the encoder's tokenizer and set SIF weights."""
    from textcl.core.recipe import RecipeError
    from textcl.fit_texts import read_texts, sample_texts
    from textcl.token_weights import count_tokens, sif_weights

    # set_token_weights checks this too; here it fails before the corpus is read.
    if not encoder.bow_weight and encoder.start_bag is None:
        raise RecipeError("model.token_weights: they weight the bag paths, and this model has none "
                          "-- set model.bow_weight or model.start_bag_weight > 0")
    try:
        texts = sample_texts(read_texts(t.corpus), t.max_texts, seed=0)
    except FileNotFoundError:
        raise RecipeError(f"model.token_weights.corpus: {t.corpus} not found -- fix the path") from None
    except ValueError as exc:  # textcl.data_files.DataError: empty, binary, not UTF-8
        raise RecipeError(f"model.token_weights.corpus: {exc}") from None
    if not texts:
        raise RecipeError(f"model.token_weights.corpus: {t.corpus} holds no sentences -- point it at a text corpus")
    vocab = encoder.transformer.get_input_embeddings().num_embeddings
    counts = count_tokens(encoder.tokenizer, texts, max_length=encoder.max_seq_length, vocab_size=vocab)
    encoder.set_token_weights(sif_weights(counts, t.sif_a))


def resolve_chunk_tokens(encoder: Any, setting: int | str | None) -> int | None:
    """``forward_chunk_tokens`` -> a token budget (``"auto"``: CPU budget, none on CUDA)."""
    from textcl.encoders import cpu_token_budget

    if setting == "auto":
        # Chunks save transformer work on padding. A bag of input embeddings (context_weight 0)
        # runs no transformer, and each chunk would cost one dense embedding gradient of the
        # whole table: 28 per step made a 1,024-wide bag step 12x slower than a 256-wide one.
        if torch.cuda.is_available() or not getattr(encoder, "context_weight", 1.0):
            return None
        return cpu_token_budget(encoder.dim)
    return setting  # type: ignore[return-value]


def encoder_card_facts(encoder: Any, base_model: str) -> dict[str, Any]:
    """The encoder lines of a generated model card."""
    return {
        "base_model": base_model,
        "pooling": encoder.pooling,
        "dim": encoder.dim,
        "max_seq_length": encoder.max_seq_length,
    }
