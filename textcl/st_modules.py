"""sentence-transformers modules that textcl writes into saved models.

Imported by sentence-transformers when it loads a model whose ``modules.json`` names them
(``SentenceTransformer(path)`` imports ``textcl.st_modules.<Class>``), so textcl must be
installed where such a model is loaded, and sentence-transformers imports a class outside its
own namespace only with ``SentenceTransformer(path, trust_remote_code=True)``; textcl's own
loader (``Embedder.load``) reads the same files without that flag.
"""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers.base.modules import Module

from textcl.pooling import bow_mean

__all__ = ["BagOfWordsResidual", "bow_mean"]


class BagOfWordsResidual(Module):
    """``sentence_embedding = context_weight * sentence_embedding + weight * mean(input
    embeddings of the attended tokens)`` (``context_weight`` 1 unless saved otherwise).

    A residual bag-of-words path beside the contextual mean: the input-embedding table is
    the Transformer module's own (found in :meth:`on_model_ready`), so no weights are stored.
    """

    config_keys = ["weight", "context_weight"]

    def __init__(self, weight: float = 1.0, context_weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)
        # 0: the sentence vector is the bag of input embeddings alone (TextEncoder.context_weight).
        self.context_weight = float(context_weight)
        self._embedding: list[torch.nn.Embedding] = []  # a list: not a registered submodule

    def on_model_ready(self, model: Any) -> None:
        self._embedding = [model[0].auto_model.get_input_embeddings()]

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if not self._embedding:
            raise RuntimeError("BagOfWordsResidual needs the model's Transformer module (on_model_ready not called)")
        emb = self._embedding[0]
        bow = bow_mean(emb, features["input_ids"].to(emb.weight.device), features["attention_mask"])
        pooled = features["sentence_embedding"]
        features["sentence_embedding"] = self.context_weight * pooled + self.weight * bow.to(pooled.dtype)
        return features

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
