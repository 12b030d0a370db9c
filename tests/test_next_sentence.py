"""Next-sentence prediction: the sampler on toy documents, the exact loss, and training a
tiny BERT end to end (contrastive and binary heads)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _sentence_toy import topic_documents, toy_corpus, where

from textcl.documents import DataError
from textcl.objectives._sentence_common import SentenceCorpora
from textcl.objectives.next_sentence import (
    NextSentence,
    NextSentenceDataset,
    NSPConfig,
    NSPObjective,
)
from textcl.sentences import SplitStats
from textcl.train import main

REPO = Path(__file__).resolve().parents[1]
LENGTHS = [4, 1, 3, 5]  # document 1 has a single sentence: no query, never a positive


def test_positives_are_exactly_the_next_sentence_of_the_same_document():
    ds = NextSentenceDataset(toy_corpus(LENGTHS), seed=0, objective=NSPObjective(random_negatives=3))
    queries = []
    for i in range(len(ds)):
        ex = ds[i]
        d, s = where(ex["query"])
        queries.append((d, s))
        assert where(ex["positive"]) == (d, s + 1)
        assert len(ex["negatives"]) == 3 and all(where(n)[0] != d for n in ex["negatives"])
    # Every sentence with a successor is a query once; last sentences and doc1 never are.
    assert sorted(queries) == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2), (3, 3)]


def test_seeded_determinism():
    corpus, obj = toy_corpus(LENGTHS), NSPObjective(random_negatives=4)
    a, b = NextSentenceDataset(corpus, 7, obj), NextSentenceDataset(corpus, 7, obj)
    assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]
    b.set_epoch(1)
    changed = sum(a[i]["negatives"] != b[i]["negatives"] for i in range(len(a)))
    assert changed >= len(a) - 1  # a new epoch draws new negatives
    b.set_epoch(0)
    assert a[3] == b[3]


def test_binary_pairs_half_random_from_other_documents():
    obj = NSPObjective(head="binary")
    ds = NextSentenceDataset(toy_corpus(LENGTHS), seed=1, objective=obj)
    labels = []
    for epoch in range(60):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            ex = ds[i]
            (d, s), (bd, bs) = where(ex["a"]), where(ex["b"])
            if ex["label"] == 1:
                assert (bd, bs) == (d, s + 1)
            else:
                assert bd != d
            labels.append(ex["label"])
    assert np.mean(labels) == pytest.approx(0.5, abs=0.05)


def _method(tmp_path, max_tokens: int = 8, **objective) -> NextSentence:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _tiny import tiny_encoder

    corpus = toy_corpus(LENGTHS)
    stats = SplitStats(len(LENGTHS), len(LENGTHS), 0, 0, corpus.num_sentences)
    cfg = NSPConfig.model_validate({
        "data": {"documents": str(REPO / "textcl/data/gutenberg_sample.jsonl.gz"), "max_tokens": max_tokens},
        "objective": objective,
    })
    return NextSentence(tiny_encoder(), cfg, SentenceCorpora(corpus, corpus, stats, len(LENGTHS)), seed=0)


def test_loss_equals_hand_computed_infonce(tmp_path):
    m = _method(tmp_path, temperature=0.5)
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    r = math.sqrt(2)  # cosine 1/sqrt(2) divided by temperature 0.5; cosine 1 -> 2, 0 -> 0
    batch = {"query_text": torch.tensor([1, 2, 3]), "positive_text": torch.tensor([10, 11, 12])}
    rows = [
        -2 + math.log(math.exp(2) + math.exp(r) + 1),
        -r + math.log(1 + math.exp(r) + math.exp(2)),
        -r + math.log(math.exp(r) + math.exp(2) + math.exp(r)),
    ]
    out = m.loss_from_embeddings({"queries": q, "positives": p}, batch)
    assert float(out["loss"]) == pytest.approx(sum(rows) / 3, rel=1e-6)
    # Queries 1 and 2 have next sentences with the same text: neither is a negative of
    # the other (ignored), so rows 1 and 2 lose one candidate each.
    batch["positive_text"] = torch.tensor([10, 11, 11])
    rows[1] = -r + math.log(1 + math.exp(r))  # s11 = 1/sqrt(2), candidate 2 dropped
    rows[2] = -r + math.log(math.exp(r) + math.exp(r))  # s22 = 1/sqrt(2), candidate 1 dropped
    out = m.loss_from_embeddings({"queries": q, "positives": p}, batch)
    assert float(out["loss"]) == pytest.approx(sum(rows) / 3, rel=1e-6)


def test_forward_is_loss_of_embedding_inputs_and_symmetric_variant(tmp_path, one_thread):
    m = _method(tmp_path, random_negatives=2, symmetric=True)
    ds = m.train_dataset()
    batch = m.collate([ds[i] for i in range(4)])
    assert set(m.embedding_inputs(batch)) == {"queries", "positives", "negatives"}
    m.eval()
    with torch.no_grad():
        out = m(batch)
        emb = {k: m.encoder(v, project=True) for k, v in m.embedding_inputs(batch).items()}
        again = m.loss_from_embeddings(emb, batch)
    assert float(out["loss"]) == pytest.approx(float(again["loss"]), rel=1e-6)
    assert float(out["loss"]) == pytest.approx((float(out["nsp_loss"]) + float(out["reverse_loss"])) / 2, rel=1e-6)
    assert m.examples_in(batch) == 4


def test_too_long_sentences_for_the_encoder_raise(tmp_path):
    # The tiny encoder takes 32 tokens: 31 + [CLS] + [SEP] do not fit, nor do two 15-token
    # sentences + 3 special tokens for the binary head.
    with pytest.raises(DataError, match="data.max_tokens"):
        _method(tmp_path, max_tokens=31)
    with pytest.raises(DataError, match="head: binary"):
        _method(tmp_path, max_tokens=15, head="binary")
    _method(tmp_path, max_tokens=14, head="binary")


# --------------------------------------------------------------------- end to end
def _recipe(tmp_path, model_dir, docs, objective, steps, lr, batch_size=16, scheduler="linear"):
    path = tmp_path / "nsp.yaml"
    path.write_text(f"""
method: nsp
output_dir: {tmp_path / 'run'}
seed: 3
model: {{name_or_path: {model_dir}, max_seq_length: 32}}
data: {{documents: {docs}, held_out_fraction: 0.25, max_tokens: 12, cache_dir: {tmp_path / 'cache'}}}
objective: {objective}
train: {{batch_size: {batch_size}, max_steps: {steps}, lr: {lr}, warmup_steps: 3, log_every_n_steps: 5,
         scheduler: {scheduler}}}
""")
    return str(path)


def _log(out):
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def test_contrastive_training_learns_and_saves_st_model(tmp_path, tiny_bert_dir, one_thread):
    from sentence_transformers import SentenceTransformer

    from textcl.embed import Embedder

    docs = topic_documents(tmp_path / "docs.jsonl")
    assert main([_recipe(tmp_path, tiny_bert_dir, docs, "{eval_queries_per_document: 1}", 40, 1e-3)]) == 0
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nsp_heldout_top1"] >= metrics["initial/nsp_heldout_top1"] + 0.2
    assert metrics["nsp_heldout_loss"] < metrics["initial/nsp_heldout_loss"] - 0.5
    log = [r for r in _log(out) if "loss" in r]
    assert {"step", "loss", "lr", "examples_per_sec", "top1"} <= set(log[0])
    assert log[-1]["loss"] < log[0]["loss"] - 0.5
    card = (out / "README.md").read_text()
    assert "Next-sentence prediction" in card and "devlin" in card.lower() and "syntok" in card
    texts = ["Red blue green.", "The king and the queen."]
    ours = Embedder.load(str(out)).encode(texts)
    theirs = SentenceTransformer(str(out), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_binary_head_learns(tmp_path, tiny_bert_dir, one_thread):
    # A linear classifier on the mean of both segments cannot tell "same topic" from
    # "different topics": the 2-layer random BERT must first learn cross-segment attention,
    # which takes it ~100 steps (loss flat at ln 2 until then; measured). Two topics, a high
    # constant lr and 200 steps keep that to a few seconds.
    docs = topic_documents(tmp_path / "docs.jsonl", n_docs=160, n_topics=2)
    recipe = _recipe(tmp_path, tiny_bert_dir, docs, "{head: binary}", 200, 2e-3, batch_size=32, scheduler="constant")
    assert main([recipe]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["nsp_heldout_accuracy"] >= metrics["initial/nsp_heldout_accuracy"] + 0.1
    assert metrics["nsp_heldout_loss"] < metrics["initial/nsp_heldout_loss"] - 0.05
    log = [r for r in _log(tmp_path / "run") if "loss" in r]
    assert {"accuracy", "loss"} <= set(log[0])
    assert np.mean([r["loss"] for r in log[-5:]]) < np.mean([r["loss"] for r in log[:5]]) - 0.05
