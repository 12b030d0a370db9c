"""Neighbour-sentence prediction: the sampler and identity masks on toy documents, the
exact multi-positive loss, and training a tiny BERT end to end (both positive modes)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _sentence_toy import topic_documents, toy_corpus, where

from textcl.objectives._sentence_common import SentenceCorpora
from textcl.objectives.neighbour_sentence import (
    NeighbourConfig,
    NeighbourDataset,
    NeighbourSentence,
    PassageDataset,
    neighbour_masks,
    neighbours,
)
from textcl.sentences import SplitStats
from textcl.train import main

REPO = Path(__file__).resolve().parents[1]
LENGTHS = [5, 1, 2, 4]  # document 1 has a single sentence: never a query, never a key


def test_neighbours_helper():
    assert neighbours(5, 0, 1) == [1] and neighbours(5, 2, 1) == [1, 3] and neighbours(5, 4, 2) == [2, 3]
    assert neighbours(1, 0, 3) == []


@pytest.mark.parametrize("window", [1, 2])
def test_multi_keys_are_exactly_the_neighbours_in_the_same_document(window):
    ds = NeighbourDataset(toy_corpus(LENGTHS), seed=0, window=window, mode="multi")
    seen = set()
    for i in range(len(ds)):
        ex = ds[i]
        d, s = where(ex["query"])
        seen.add((d, s))
        assert len(ex["keys"]) == 2 * window  # fixed slots: equal shapes on every process
        valid = [where(k) for k, v in zip(ex["keys"], ex["key_valid"]) if v]
        assert valid == [(d, t) for t in neighbours(LENGTHS[d], s, window)]
        assert all(where(k)[0] == d for k in ex["keys"])  # fillers are copies, never another document
    assert seen == {(d, s) for d, n in enumerate(LENGTHS) if n >= 2 for s in range(n)}


def test_sample_mode_draws_one_neighbour_seeded_by_seed_epoch_index():
    corpus = toy_corpus(LENGTHS)
    a, b = NeighbourDataset(corpus, 4, 1, "sample"), NeighbourDataset(corpus, 4, 1, "sample")
    assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]
    drawn = {}
    for epoch in range(30):
        a.set_epoch(epoch)
        for i in range(len(a)):
            ex = a[i]
            (d, s), (kd, ks) = where(ex["query"]), where(ex["keys"][0])
            assert len(ex["keys"]) == 1 and kd == d and abs(ks - s) == 1
            drawn.setdefault((d, s), set()).add(ks)
    # Over epochs an interior sentence gets both neighbours; an edge sentence its only one.
    assert drawn[(0, 2)] == {1, 3} and drawn[(0, 0)] == {1} and drawn[(2, 1)] == {0}
    a.set_epoch(1)
    b.set_epoch(2)
    assert [a[i]["keys"] for i in range(len(a))] != [b[i]["keys"] for i in range(len(b))]


def _masks(examples, window, ignore_text=True):
    m = NeighbourSentence.collate(_Collator(), examples)
    return neighbour_masks(m["query_doc"], m["query_pos"], m["query_text"], m["key_doc"], m["key_pos"],
                           m["key_text"], m["key_valid"], window, ignore_text)


class _Collator:
    """Just enough of a NeighbourSentence for ``collate`` (no encoder needed)."""

    chunk_tokens = None

    class encoder:  # noqa: N801
        @staticmethod
        def pad_token_ids(ids, chunk_tokens=None):
            return {"input_ids": torch.tensor([[i[0]] for i in ids])}


def test_identity_masks_no_positive_crosses_a_document():
    ds = NeighbourDataset(toy_corpus(LENGTHS), seed=0, window=1, mode="multi")
    examples = [ds[i] for i in range(len(ds))]  # every query of the corpus in one batch
    pos, ignore = _masks(examples, 1)
    keys = [(ex["document"], p) for ex in examples for p in ex["key_positions"]]
    valid = [v for ex in examples for v in ex["key_valid"]]
    first = {}
    for j, k in enumerate(keys):
        if valid[j]:
            first.setdefault(k, j)
    for i, ex in enumerate(examples):
        d, s = ex["document"], ex["position"]
        expected = {first[(d, t)] for t in neighbours(LENGTHS[d], s, 1)}
        assert set(torch.nonzero(pos[i]).flatten().tolist()) == expected
        for j, (kd, ks) in enumerate(keys):
            if (kd, ks) == (d, s) or not valid[j] or first.get((kd, ks)) != j:
                assert ignore[i, j]  # own sentence, filler slot, or a second copy
    assert not (pos & ignore).any()


def test_duplicate_text_is_ignored_not_negative():
    corpus = toy_corpus(LENGTHS)
    corpus.text_key[corpus.gid(3, 3)] = corpus.text_key[corpus.gid(0, 1)]  # same words elsewhere
    ds = NeighbourDataset(corpus, seed=0, window=1, mode="multi")
    q0 = next(ex for ex in (ds[i] for i in range(len(ds))) if ex["document"] == 0 and ex["position"] == 0)
    q3 = next(ex for ex in (ds[i] for i in range(len(ds))) if ex["document"] == 3 and ex["position"] == 2)
    pos, ignore = _masks([q0, q3], 1)
    # q0's positive (0,1) has the text of q3's key (3,3): that key is ignored for q0.
    assert pos[0].tolist() == [True, False, False, False] and ignore[0, 3]
    _, kept = _masks([q0, q3], 1, ignore_text=False)
    assert not kept[0, 3]


def _method(**objective) -> NeighbourSentence:
    from _tiny import tiny_encoder

    corpus = toy_corpus(LENGTHS)
    cfg = NeighbourConfig.model_validate({
        "data": {"documents": str(REPO / "textcl/data/gutenberg_sample.jsonl.gz"), "max_tokens": 8},
        "objective": objective,
    })
    stats = SplitStats(len(LENGTHS), len(LENGTHS) - 1, 0, 1, corpus.num_sentences)
    return NeighbourSentence(tiny_encoder(), cfg, SentenceCorpora(corpus, corpus, stats, len(LENGTHS)), seed=0)


def test_multi_positive_loss_equals_hand_computed_value():
    m = _method(temperature=0.5)
    # Query A = (0, 1) with keys (0, 0), (0, 2); query B = (2, 0) with key (2, 1) + a filler.
    batch = {
        "query_doc": torch.tensor([0, 2]), "query_pos": torch.tensor([1, 0]), "query_text": torch.tensor([1, 2]),
        "key_doc": torch.tensor([0, 0, 2, 2]), "key_pos": torch.tensor([0, 2, 1, 1]),
        "key_text": torch.tensor([10, 11, 12, 12]), "key_valid": torch.tensor([True, True, True, False]),
    }
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    r = math.sqrt(2)  # cosine 1/sqrt(2) / temperature 0.5; cosine 1 -> 2, 0 -> 0
    lse = math.log(math.exp(2) + math.exp(r) + 1)  # the filler (4th key) is not a candidate
    loss_a = -((2 - lse) + (r - lse)) / 2
    loss_b = -(2 - lse)
    out = m.loss_from_embeddings({"queries": q, "keys": k}, batch)
    assert float(out["loss"]) == pytest.approx((loss_a + loss_b) / 2, rel=1e-6)
    assert float(out["top1"]) == 1.0


def test_forward_is_loss_of_embedding_inputs(one_thread):
    m = _method(window=2).eval()
    ds = m.train_dataset()
    batch = m.collate([ds[i] for i in range(5)])
    out = m(batch)
    emb = {k: m.encoder(v, project=True) for k, v in m.embedding_inputs(batch).items()}
    assert float(out["loss"].detach()) == pytest.approx(float(m.loss_from_embeddings(emb, batch)["loss"].detach()), rel=1e-6)
    assert m.examples_in(batch) == 5 and batch["key_doc"].shape[0] == 5 * 4


# --------------------------------------------------------------------- passages
def test_passages_tile_documents_into_whole_passages():
    ds = PassageDataset(toy_corpus(LENGTHS), seed=0, length=2)
    items = [ds[i] for i in range(len(ds))]
    assert [(ex["document"], ex["positions"]) for ex in items] == [(0, [0, 1]), (0, [2, 3]), (2, [0, 1]), (3, [0, 1]), (3, [2, 3])]
    assert all([where(x) for x in ex["sentences"]] == [(ex["document"], p) for p in ex["positions"]] for ex in items)


@pytest.mark.parametrize("same_document_negatives", [True, False])
def test_passage_loss_equals_reference_loop(same_document_negatives):
    m = _method(sampling="passages", passage_sentences=3, temperature=0.5,
                same_document_negatives=same_document_negatives)
    ids = [(0, 0), (0, 1), (0, 2), (3, 0), (3, 1), (3, 2)]  # two passages of 3
    batch = {"query_doc": torch.tensor([d for d, _ in ids]), "query_pos": torch.tensor([p for _, p in ids]),
             "query_text": torch.arange(6)}
    q = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    sim = (q @ q.T / 0.5).tolist()
    losses = []
    for i, (d, p) in enumerate(ids):
        positives = [j for j, (e, r) in enumerate(ids) if e == d and abs(r - p) == 1]
        candidates = [j for j, (e, r) in enumerate(ids) if j != i and (same_document_negatives or e != d or j in positives)]
        lse = math.log(sum(math.exp(sim[i][j]) for j in candidates))
        losses.append(-sum(sim[i][j] - lse for j in positives) / len(positives))
    out = m.loss_from_embeddings({"sentences": q}, batch)
    assert float(out["loss"]) == pytest.approx(sum(losses) / len(losses), rel=1e-6)


def test_passages_every_sentence_encoded_once(one_thread):
    m = _method(sampling="passages", passage_sentences=2).eval()
    ds = m.train_dataset()
    batch = m.collate([ds[i] for i in range(3)])
    out = m(batch)
    emb = {k: m.encoder(v, project=True) for k, v in m.embedding_inputs(batch).items()}
    assert list(emb) == ["sentences"] and emb["sentences"].shape[0] == 6 == m.examples_in(batch)
    assert float(out["loss"].detach()) == pytest.approx(float(m.loss_from_embeddings(emb, batch)["loss"].detach()), rel=1e-6)
    with pytest.raises(Exception, match="passage_sentences"):
        _method(sampling="passages", passage_sentences=9)


# --------------------------------------------------------------------- end to end
@pytest.mark.parametrize("mode", ["multi", "sample", "passages"])
def test_training_learns_and_saves_st_model(tmp_path, tiny_bert_dir, mode, one_thread):
    docs = topic_documents(tmp_path / "docs.jsonl")
    if mode == "passages":
        objective, batch = "{sampling: passages, passage_sentences: 4, eval_queries_per_document: 1}", 4
    else:
        objective, batch = f"{{positives: {mode}, eval_queries_per_document: 1}}", 16
    recipe = tmp_path / "neighbour.yaml"
    recipe.write_text(f"""
method: neighbour
output_dir: {tmp_path / 'run'}
seed: 3
model: {{name_or_path: {tiny_bert_dir}, max_seq_length: 32}}
data: {{documents: {docs}, held_out_fraction: 0.25, max_tokens: 12, cache_dir: {tmp_path / 'cache'}}}
objective: {objective}
train: {{batch_size: {batch}, max_steps: 40, lr: 0.001, warmup_steps: 3, log_every_n_steps: 5}}
""")
    assert main([str(recipe)]) == 0
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["neighbour_heldout_top1"] >= metrics["initial/neighbour_heldout_top1"] + 0.2
    assert metrics["neighbour_heldout_loss"] < metrics["initial/neighbour_heldout_loss"] - 0.5
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    log = [r for r in log if "loss" in r]
    assert {"step", "loss", "lr", "examples_per_sec", "top1"} <= set(log[0])
    assert log[-1]["loss"] < log[0]["loss"] - 0.3
    assert "Skip-Thought" in (out / "README.md").read_text()
    if mode == "multi":
        from sentence_transformers import SentenceTransformer

        from textcl.embed import Embedder

        texts = ["Red blue green.", "The king and the queen."]
        np.testing.assert_allclose(Embedder.load(str(out)).encode(texts),
                                   SentenceTransformer(str(out), device="cpu").encode(texts), atol=1e-5)


def test_bag_of_embeddings_encoder_learns_and_only_its_table_moves(tmp_path, tiny_bert_dir, one_thread):
    """model.context_weight 0 (Siamese CBOW): the objective trains the input-embedding table of a
    bag-of-embeddings encoder; held-out neighbour metrics beat the untrained start, the skipped
    transformer layers are bit-identical, and the saved model is the same bag."""
    from safetensors.torch import load_file

    from textcl.embed import Embedder
    from textcl.encoders import TextEncoder

    docs = topic_documents(tmp_path / "docs.jsonl")
    recipe = tmp_path / "bag.yaml"
    recipe.write_text(f"""
method: neighbour
output_dir: {tmp_path / 'run'}
seed: 3
model: {{name_or_path: {tiny_bert_dir}, max_seq_length: 32, bow_weight: 1.0, context_weight: 0.0}}
data: {{documents: {docs}, held_out_fraction: 0.25, max_tokens: 12, cache_dir: {tmp_path / 'cache'}}}
objective: {{positives: sample, eval_queries_per_document: 1}}
train: {{batch_size: 16, max_steps: 40, lr: 0.01, warmup_steps: 3, log_every_n_steps: 5}}
""")
    assert main([str(recipe)]) == 0
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["neighbour_heldout_loss"] < metrics["initial/neighbour_heldout_loss"] - 0.3
    start, trained = load_file(str(tiny_bert_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    moved = {k for k in start if not torch.equal(start[k], trained[k])}
    assert moved and all("word_embeddings" in k for k in moved), moved
    enc = TextEncoder.from_pretrained(out)
    assert (enc.context_weight, enc.bow_weight) == (0.0, 1.0)
    texts = ["the cat sat on the mat", "a ship at sea"]
    feats = enc.tokenize(texts)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(enc(feats), dim=-1).numpy()
    np.testing.assert_allclose(Embedder.load(out, device="cpu").encode(texts), expected, atol=1e-5)
