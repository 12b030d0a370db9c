"""Baselines for the sentence benchmarks: averaged word vectors and a random-init encoder.

* :class:`AvgWordVectors` embeds a text as the mean of its words' vectors (word2vec files or
  a textcl SGNS output directory), the classic "bag of word vectors" baseline.
* :func:`random_init_embedder` is the given model's architecture, tokenizer and pooling
  with freshly initialised weights: what pre-training adds over the architecture alone.

Both have ``name`` and ``encode(texts, batch_size, normalize, show_progress)`` like
:class:`textcl.Embedder`, so a harness can run them side by side.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from textcl.word_vectors import WordVectors

if TYPE_CHECKING:  # pragma: no cover
    from textcl.embed import Embedder

__all__ = ["AvgWordVectors", "TOKEN_PATTERN", "random_init_embedder", "tokenize"]

#: Tokens: runs of word characters and apostrophes, so "don't" stays one token and
#: punctuation is dropped. Texts are lowercased first.
TOKEN_PATTERN = re.compile(r"[\w']+")


def tokenize(text: str) -> list[str]:
    """Lowercased ``[\\w']+`` tokens of ``text``."""
    return TOKEN_PATTERN.findall(text.lower())


class AvgWordVectors:
    """Mean of the vectors of a text's known words (see :func:`tokenize`).

    Tokens are matched case-insensitively: a token finds the first (most frequent) word in the
    vocabulary whose lowercase form it is. Unknown tokens are ignored; a text with no known
    token gets the zero vector (also after ``normalize``).
    """

    def __init__(self, vectors: WordVectors, name: str | None = None) -> None:
        self.vectors = vectors
        self.name: str = name or f"avg-word-vectors({len(vectors)} words)"
        self._lookup: dict[str, int] = {}
        for i, word in enumerate(vectors.words):
            self._lookup.setdefault(word.lower(), i)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AvgWordVectors:
        """From a word2vec text/binary file or a directory holding ``vectors.bin``/``.txt``."""
        return cls(WordVectors.load(path), name=f"avg-word-vectors:{os.fspath(path)}")

    @property
    def dim(self) -> int:
        """Width of the vectors."""
        return self.vectors.dim

    def encode(
        self,
        texts: Sequence[str] | str,
        batch_size: int = 64,
        normalize: bool = True,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """float32 ``(n, dim)`` means (``(dim,)`` for a single string); ``normalize`` -> unit length."""
        from scipy import sparse
        from tqdm.auto import tqdm

        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        for i, text in enumerate(items):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(items)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if show_progress is None:
            show_progress = -(-n // batch_size) >= 8
        matrix = self.vectors.vectors
        for start in tqdm(range(0, n, batch_size), disable=not show_progress, desc="Encoding"):
            rows: list[int] = []
            cols: list[int] = []
            weights: list[float] = []
            for r, text in enumerate(items[start : start + batch_size]):
                ids = [j for j in map(self._lookup.get, tokenize(text)) if j is not None]
                if ids:
                    rows += [r] * len(ids)
                    cols += ids
                    weights += [1.0 / len(ids)] * len(ids)
            if not rows:
                continue
            # Only the batch's words, in float64: a sparse (texts x words) averaging matrix
            # times their vectors is one product instead of a Python loop of means.
            used, col_of = np.unique(np.asarray(cols, dtype=np.int64), return_inverse=True)
            avg = sparse.csr_matrix(
                (weights, (rows, col_of)), shape=(min(batch_size, n - start), len(used))
            )
            out[start : start + avg.shape[0]] = avg @ matrix[used].astype(np.float64)
        if normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            # Zero rows (no known word) divide by 1 and stay zero rather than becoming NaN.
            out /= np.where(norms > 0, norms, 1.0)
        return out[0] if single else out


def random_init_embedder(name_or_path: str, seed: int = 0, device: str | None = None) -> Embedder:
    """The model's architecture, tokenizer and pooling with weights initialised from its config.

    ``name_or_path`` is a textcl / sentence-transformers directory, an HF model directory or
    a hub name. Its weights are loaded once (to get the exact config and settings), then
    replaced by ``AutoModel.from_config(config)`` built under ``torch.manual_seed(seed)``
    (inside ``torch.random.fork_rng``, so the caller's RNG state is untouched). The result's
    ``name`` is ``"random-init:<name_or_path>"``.
    """
    import torch
    from transformers import AutoModel

    from textcl.embed import Embedder, _default_device
    from textcl.encoders import TextEncoder

    encoder = TextEncoder.from_pretrained(name_or_path)
    config = copy.deepcopy(encoder.transformer.config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = AutoModel.from_config(config)
    encoder.transformer = transformer.to(torch.float32)
    embedder = Embedder(encoder, device=device or _default_device())
    embedder.name = f"random-init:{name_or_path}"  # type: ignore[attr-defined]
    return embedder
