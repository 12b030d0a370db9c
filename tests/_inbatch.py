"""A minimal in-batch text method for GradCache tests: pairs of random token sequences,
a tiny BERT ``TextEncoder`` with dropout, InfoNCE against the gathered keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertModel

from textcl.core.distributed import batch_offset, gather_with_grad
from textcl.core.losses import info_nce
from textcl.core.method import Method, register_method
from textcl.encoders import TextEncoder

VOCAB = 1000  # ids < 1000; the WordPiece tokenizer's [PAD]=0, [CLS]=101, [SEP]=102 fit


def tiny_text_encoder(dropout: float = 0.1, hidden: int = 64, seed: int = 0) -> TextEncoder:
    """2-layer BERT with a 1000-id vocabulary, mean pooling and a 16-d projection head."""
    from _tiny import tiny_tokenizer

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=64,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    return TextEncoder(BertModel(config), tiny_tokenizer(), pooling="mean", max_seq_length=40, projection_dim=16)


class _Pairs(torch.utils.data.Dataset):
    """Pair i: a random sequence and a copy with a quarter of its tokens replaced."""

    def __init__(self, n: int, min_len: int, max_len: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
            a = torch.randint(200, VOCAB, (length,), generator=g)
            b = a.clone()
            swap = torch.rand(length, generator=g) < 0.25
            b[swap] = torch.randint(200, VOCAB, (int(swap.sum()),), generator=g)
            self.items.append((a.tolist(), b.tolist()))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.items[i]


@register_method("inbatch_pairs")
class InBatchPairs(Method):
    """Side "a" queries the gathered side "b"; ``chunk_rows`` gives each side the chunked
    form with chunks of exactly that many rows (longest first), else one padded dict."""

    name = "inbatch_pairs"

    def __init__(self, encoder: TextEncoder, n: int = 64, min_len: int = 4, max_len: int = 30,
                 chunk_rows: int | None = None, nan_at_call: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.data = _Pairs(n, min_len, max_len)
        self.chunk_rows = chunk_rows
        self.nan_at_call, self.calls = nan_at_call, 0

    def train_dataset(self) -> torch.utils.data.Dataset:
        return self.data

    def _features(self, seqs: list[list[int]]) -> dict[str, Any]:
        if self.chunk_rows is None:
            return self.encoder.pad_token_ids(seqs)
        by_length = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        chunks = [self.encoder.pad_token_ids([seqs[i] for i in by_length[s : s + self.chunk_rows]])
                  for s in range(0, len(seqs), self.chunk_rows)]
        order = torch.empty(len(seqs), dtype=torch.long)
        order[torch.tensor(by_length)] = torch.arange(len(seqs))
        return {"chunks": chunks, "order": order}

    def collate(self, examples: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
        return {"a": self._features([a for a, _ in examples]), "b": self._features([b for _, b in examples])}

    def examples_in(self, batch: dict[str, Any]) -> int:
        a = batch["a"]
        return len(a["order"]) if "chunks" in a else int(a["input_ids"].shape[0])

    def embedding_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"a": batch["a"], "b": batch["b"]}

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor], batch: Any) -> dict[str, torch.Tensor]:
        self.calls += 1
        q = embeddings["a"]
        keys = gather_with_grad(embeddings["b"])
        labels = torch.arange(q.shape[0]) + batch_offset(q.shape[0])
        loss = info_nce(q, keys, labels=labels, temperature=0.1)
        if self.nan_at_call is not None and self.calls == self.nan_at_call:
            loss = loss * float("nan")
        return {"loss": loss}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        emb = {side: self.encoder(f, project=True) for side, f in self.embedding_inputs(batch).items()}
        return self.loss_from_embeddings(emb, batch)

    def save_model(self, path: Path, card_info: dict[str, Any]) -> None:
        path.mkdir(parents=True, exist_ok=True)
