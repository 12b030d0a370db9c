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

from textcl.pooling import bow_mean, concat_start_bag

__all__ = ["BagOfWordsResidual", "StartBag", "bow_mean"]


class _OwnFolderModule(Module):
    """An ST module whose config (and, if :meth:`stores_weights`, ``model.safetensors``) sit in its own folder."""

    def stores_weights(self) -> bool:
        return True

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             **kwargs: Any) -> Any:
        hub = {"subfolder": subfolder, "token": token, "cache_folder": cache_folder, "revision": revision,
               "local_files_only": local_files_only}
        module = cls(**cls.load_config(model_name_or_path, **hub))
        if module.stores_weights():
            cls.load_torch_weights(model_name_or_path, model=module, **hub)
        return module

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
        if self.stores_weights():
            self.save_torch_weights(output_path, safe_serialization=True)  # never a pickle


class BagOfWordsResidual(_OwnFolderModule):
    """``sentence_embedding = context_weight * sentence_embedding + weight * mean(input
    embeddings of the attended tokens)`` (``context_weight`` 1 unless saved otherwise).

    A residual bag-of-words path beside the contextual mean: the input-embedding table is
    the Transformer module's own (found in :meth:`on_model_ready`). With ``token_weighted``
    the mean is weighted per token (SIF, :mod:`textcl.token_weights`), and those weights are
    this module's ``model.safetensors``; otherwise no weights are stored.
    """

    config_keys = ["weight", "context_weight", "token_weighted", "vocab_size"]

    def __init__(self, weight: float = 1.0, context_weight: float = 1.0, token_weighted: bool = False,
                 vocab_size: int = 0) -> None:
        super().__init__()
        self.weight = float(weight)
        # 0: the sentence vector is the bag of input embeddings alone (TextEncoder.context_weight).
        self.context_weight = float(context_weight)
        self.token_weighted, self.vocab_size = bool(token_weighted), int(vocab_size)
        self.register_buffer("token_weights", torch.ones(self.vocab_size) if token_weighted else None)
        self._embedding: list[torch.nn.Embedding] = []  # a list: not a registered submodule

    def stores_weights(self) -> bool:
        return self.token_weighted

    def on_model_ready(self, model: Any) -> None:
        self._embedding = [model[0].auto_model.get_input_embeddings()]

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if not self._embedding:
            raise RuntimeError("BagOfWordsResidual needs the model's Transformer module (on_model_ready not called)")
        emb = self._embedding[0]
        bow = bow_mean(emb, features["input_ids"].to(emb.weight.device), features["attention_mask"].to(emb.weight.device),
                       self.token_weights)
        pooled = features["sentence_embedding"]
        features["sentence_embedding"] = self.context_weight * pooled + self.weight * bow.to(pooled.dtype)
        return features



class StartBag(_OwnFolderModule):
    """``sentence_embedding = [normalize(sentence_embedding), weight * normalize(mean(start
    rows of the attended tokens))]`` (:func:`textcl.pooling.concat_start_bag`).

    ``table`` is a frozen copy of the input-embedding table as it was when training began
    (e.g. SGNS vectors): the trained vector decides similarity while the start's lexical
    features stay beside it for classifiers. Stored in this module's own ``model.safetensors``,
    with the per-token weights of the bag when ``token_weighted`` (SIF, :mod:`textcl.token_weights`).
    """

    config_keys = ["weight", "vocab_size", "dim", "pooled_dim", "token_weighted"]

    def __init__(self, weight: float = 1.0, vocab_size: int = 1, dim: int = 1, pooled_dim: int = 1,
                 token_weighted: bool = False) -> None:
        super().__init__()
        self.weight = float(weight)
        self.vocab_size, self.dim, self.pooled_dim = int(vocab_size), int(dim), int(pooled_dim)
        self.token_weighted = bool(token_weighted)
        self.table = torch.nn.Embedding(self.vocab_size, self.dim)
        self.table.requires_grad_(False)
        self.register_buffer("token_weights", torch.ones(self.vocab_size) if token_weighted else None)

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        ids = features["input_ids"].to(self.table.weight.device)
        start = bow_mean(self.table, ids, features["attention_mask"].to(ids.device), self.token_weights)
        pooled = features["sentence_embedding"]
        features["sentence_embedding"] = concat_start_bag(pooled, start.to(pooled.device), self.weight)
        return features

    def get_embedding_dimension(self) -> int:
        """Width of the output: the incoming sentence vector's plus the start table's."""
        return self.pooled_dim + self.dim
