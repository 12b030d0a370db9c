"""The ``model:`` recipe section every text objective shares, and what it builds."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from textcl.core.method import MethodConfig

__all__ = ["EncoderSection", "build_encoder", "encoder_card_facts", "resolve_chunk_tokens"]


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


def build_encoder(m: EncoderSection, transformer: torch.nn.Module | None = None) -> Any:
    """The :class:`~textcl.encoders.TextEncoder` a ``model:`` section describes
    (``transformer``: an already loaded model to wrap, e.g. an MLM model's base)."""
    from textcl.encoders import TextEncoder

    return TextEncoder.from_pretrained(
        m.name_or_path,
        pooling=m.pooling,
        max_seq_length=m.max_seq_length,
        normalize=m.normalize,
        projection_dim=m.projection_dim,
        projection_hidden_dim=m.projection_hidden_dim,
        transformer=transformer,
        output_layer=False,  # a whitening layer was fitted to the pre-training features
    )


def resolve_chunk_tokens(encoder: Any, setting: int | str | None) -> int | None:
    """``forward_chunk_tokens`` -> a token budget (``"auto"``: CPU budget, none on CUDA)."""
    from textcl.encoders import cpu_token_budget

    if setting == "auto":
        return None if torch.cuda.is_available() else cpu_token_budget(encoder.dim)
    return setting  # type: ignore[return-value]


def encoder_card_facts(encoder: Any, base_model: str) -> dict[str, Any]:
    """The encoder lines of a generated model card."""
    return {
        "base_model": base_model,
        "pooling": encoder.pooling,
        "dim": encoder.dim,
        "max_seq_length": encoder.max_seq_length,
    }
