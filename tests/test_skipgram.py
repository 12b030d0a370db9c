"""SGNS (word2vec skip-gram): sampling formulas, pairs, loss/gradients, training, I/O, errors."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from textcl.core.recipe import TrainConfig, load_recipe
from textcl.core.trainer import Trainer
from textcl.corpus import chunk_boundaries, load_corpus, normalize_text
from textcl.documents import DataError
from textcl.objectives.skipgram import (
    SGNS,
    SparseSGD,
    alias_table,
    context_ranges,
    expand_pairs,
    keep_probabilities,
    noise_distribution,
    noise_words,
    sgd_pairs,
    sgd_windows,
    sgns_loss,
    skipgram_windows,
)
from textcl.token_store import DiskArray
from textcl.train import main, run
from textcl.word_vectors import WordVectors, init_embeddings_from_word_vectors


@pytest.fixture(autouse=True)
def _corpus_cache(tmp_path, monkeypatch):
    """load_corpus writes the token ids under $TEXTCL_CACHE/sgns: keep them in tmp_path."""
    monkeypatch.setenv("TEXTCL_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- corpora
def _planted_corpus(path, groups=8, per_group=5, sentences=1500, length=8, seed=0):
    """Sentences each drawn from one group of words: a word's neighbours are its group."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(sentences):
        g = rng.integers(groups)
        words = [f"g{g}w{w}" for w in rng.integers(per_group, size=length)]
        lines.append(" ".join(words))
    path.write_text("\n".join(lines) + "\n")
    return path


def _recipe(tmp_path, corpus, **overrides):
    text = f"""
method: sgns
output_dir: {tmp_path / 'run'}
seed: 3
model: {{dim: 16}}
data: {{corpus: {corpus}, min_count: 1, chunk_words: 1000}}
objective: {{window: 3, negative: 5, sample: 0.0, threads: 1}}
train: {{batch_size: 1, epochs: 4, optimizer: sgd, lr: 0.025, min_lr_ratio: 0.004, cpu: true,
        momentum: 0.0, weight_decay: 0.0, max_grad_norm: null, log_every_n_steps: 5}}
eval: {{before_training: false}}
"""
    path = tmp_path / "sgns.yaml"
    path.write_text(text)
    return str(path), [f"{k}={v}" for k, v in overrides.items()]


# ----------------------------------------------------------------------------- formulas
def skipgram_pairs(ids, lengths, window, rng, keep_prob=None, shrink_windows=True):
    """(inputs, targets) word ids of a chunk's pairs: its windows, expanded."""
    kept, lo, hi = skipgram_windows(ids, lengths, window, rng, keep_prob, shrink_windows)
    context, centre, _ = expand_pairs(lo, hi)
    return kept[context], kept[centre]


def test_keep_probabilities_match_word2vec_formula_and_gensim():
    counts = np.array([1000, 300, 50, 10, 1])
    sample = 1e-2
    t = sample * counts.sum()
    expected = np.minimum(1.0, (np.sqrt(counts / t) + 1) * t / counts)
    assert np.allclose(keep_probabilities(counts, sample), expected)
    assert keep_probabilities(counts, 1e-2)[0] == pytest.approx((np.sqrt(1000 / 13.61) + 1) * 13.61 / 1000)
    assert np.all(keep_probabilities(counts, 0.0) == 1.0)

    gensim = pytest.importorskip("gensim.models")
    sentences = [[f"w{i}"] * c for i, c in enumerate(counts)]
    model = gensim.Word2Vec(min_count=1, sample=sample, vector_size=4)
    model.build_vocab(sentences)
    ours = keep_probabilities(counts, sample)
    for i in range(len(counts)):
        theirs = model.wv.get_vecattr(f"w{i}", "sample_int") / 2**32
        assert ours[i] == pytest.approx(min(theirs, 1.0), abs=1e-9)


def test_noise_distribution_and_alias_sampling():
    counts = np.array([5000, 1200, 700, 80, 9, 5, 5, 1])
    probs = noise_distribution(counts, 0.75)
    assert np.allclose(probs, counts**0.75 / np.sum(counts**0.75))
    accept, alias = alias_table(probs)
    # The table's implied distribution is the noise distribution exactly.
    implied = accept.copy()
    np.add.at(implied, alias, 1.0 - accept)
    assert np.allclose(implied / len(counts), probs, atol=1e-12)
    # Counter-based draws: one key, 80,000 slots of 5 draws each.
    draws = noise_words((accept, alias), np.full(80_000, 12345, np.uint64), np.arange(80_000), 5)
    assert draws.dtype == np.int32 and draws.shape == (80_000, 5)
    freq = np.bincount(draws.ravel(), minlength=len(counts)) / draws.size
    assert np.abs(freq - probs).max() < 3e-3
    # A pair's draws depend on its centre's key and its slot only: the same rows wherever
    # they are drawn, other keys give other words.
    keys = np.array([7, 7, 9], np.uint64)
    rows = noise_words((accept, alias), keys, np.array([0, 3, 3]), 5)
    again = noise_words((accept, alias), keys[[1]], np.array([3]), 5)
    assert np.array_equal(rows[1], again[0]) and not np.array_equal(rows[0], rows[1])
    assert not np.array_equal(rows[1], rows[2])
    # Draw n of SplitMix64 seeded with the key, by hand in Python integers: pair slot 3,
    # noise word d = 2 is draw 3 * 5 + 2 + 1; high bits pick the column, low bits accept.
    mask = 2**64 - 1
    z = (7 + (3 * 5 + 2 + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    column = ((z >> 32) * len(counts)) >> 32
    expected = column if (z & 0xFFFFFFFF) < min(int(accept[column] * 2**32), 2**32) else alias[column]
    assert rows[1, 2] == expected


def test_pairs_equal_hand_enumerated_list():
    # Two sentences; windows given: each centre i pairs with contexts within windows[i].
    sentence_of = np.array([0, 0, 0, 0, 1, 1])
    lo, hi = context_ranges(sentence_of, np.array([1, 2, 1, 2, 1, 2]))
    assert lo.tolist() == [0, 0, 1, 1, 4, 4] and hi.tolist() == [2, 4, 4, 4, 6, 6]
    ctx, centre, slot = expand_pairs(lo, hi)
    assert list(zip(centre.tolist(), ctx.tolist())) == [
        (0, 1), (1, 0), (1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2), (4, 5), (5, 4)]
    assert slot.tolist() == [0, 0, 1, 2, 0, 1, 0, 1, 0, 0]

    # Seeded: the window shrinks are rng.integers(0, 2) per token; seed 0 draws 1,1,1,0,0,0,0,0.
    ids = np.array([10, 11, 12, 13, 14, 20, 21, 22], np.int32)
    assert (2 - np.random.default_rng(0).integers(0, 2, 8)).tolist() == [1, 1, 1, 2, 2, 2, 2, 2]
    inputs, targets = skipgram_pairs(ids, np.array([5, 3]), 2, np.random.default_rng(0))
    # (target = centre word, input = context word), as word2vec.c and gensim.
    assert list(zip(targets.tolist(), inputs.tolist())) == [
        (10, 11),
        (11, 10), (11, 12),
        (12, 11), (12, 13),
        (13, 11), (13, 12), (13, 14),
        (14, 12), (14, 13),
        (20, 21), (20, 22),
        (21, 20), (21, 22),
        (22, 20), (22, 21),
    ]


def test_subsampling_drops_tokens_before_windowing():
    # keep_prob 0 for word 1: it disappears and its neighbours become adjacent.
    ids = np.array([0, 1, 2], np.int32)
    inputs, targets = skipgram_pairs(ids, np.array([3]), 1, np.random.default_rng(0),
                                     keep_prob=np.array([1.0, 0.0, 1.0]), shrink_windows=False)
    assert list(zip(targets.tolist(), inputs.tolist())) == [(0, 2), (2, 0)]


# ----------------------------------------------------------------------------- loss / gradients
def _naive_loss(v_table, u_table, inputs, targets, negatives):
    total = torch.zeros((), dtype=torch.float64)
    for c, t, negs in zip(inputs.tolist(), targets.tolist(), negatives.tolist()):
        total = total - torch.nn.functional.logsigmoid(u_table[t] @ v_table[c])
        for n in negs:
            if n != t:  # word2vec skips a noise word equal to the target
                total = total - torch.nn.functional.logsigmoid(-(u_table[n] @ v_table[c]))
    return total


def test_loss_and_gradients_equal_naive_implementation():
    g = torch.Generator().manual_seed(0)
    V, D, P, K = 12, 6, 20, 4
    v0, u0 = torch.randn(V, D, generator=g) * 0.5, torch.randn(V, D, generator=g) * 0.5
    inputs, targets = torch.randint(V, (P,), generator=g), torch.randint(V, (P,), generator=g)
    negatives = torch.randint(V, (P, K), generator=g)
    negatives[0, 1] = targets[0]  # one noise word equal to the target: left out
    v, u = v0.clone().requires_grad_(), u0.clone().requires_grad_()
    loss = sgns_loss(v, u, inputs, targets, negatives, sparse=True)
    loss.backward()
    vn, un = v0.double().requires_grad_(), u0.double().requires_grad_()
    naive = _naive_loss(vn, un, inputs, targets, negatives)
    naive.backward()
    assert float(loss.detach()) == pytest.approx(float(naive.detach()), rel=1e-5)
    assert torch.allclose(v.grad.to_dense().double(), vn.grad, atol=1e-5)
    assert torch.allclose(u.grad.to_dense().double(), un.grad, atol=1e-5)
    # SparseSGD applies the uncoalesced sparse rows (duplicates add up) = dense SGD.
    SparseSGD([v, u], lr=0.1).step()
    assert torch.allclose(v.detach().double(), v0.double() - 0.1 * vn.grad, atol=1e-6)
    assert torch.allclose(u.detach().double(), u0.double() - 0.1 * un.grad, atol=1e-6)


def test_numba_kernel_equals_autograd_sgd_step():
    # Pairs touching disjoint rows: word2vec's sequential per-pair SGD equals one SGD step
    # on the summed loss, and the kernel's loss equals the formula's.
    rng = np.random.default_rng(1)
    V, D, P, K = 40, 8, 6, 3
    syn0 = (rng.standard_normal((V, D)) * 0.3).astype(np.float32)
    syn1 = (rng.standard_normal((V, D)) * 0.3).astype(np.float32)
    inputs = np.arange(P, dtype=np.int32)
    rows = rng.permutation(V)[: P * (K + 1)].reshape(P, K + 1).astype(np.int32)
    targets, negatives = rows[:, 0].copy(), rows[:, 1:].copy()
    negatives[2, 0] = targets[2]  # skipped, as in word2vec
    v, u = torch.tensor(syn0, dtype=torch.float64, requires_grad=True), torch.tensor(
        syn1, dtype=torch.float64, requires_grad=True)
    naive = _naive_loss(v, u, torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(negatives))
    naive.backward()
    lr = 0.05
    loss = sgd_pairs(syn0, syn1, inputs, targets, negatives, lr, threads=1)
    assert loss == pytest.approx(float(naive.detach()), rel=1e-5)
    assert np.allclose(syn0, (v - lr * v.grad).detach().numpy(), atol=1e-5)
    assert np.allclose(syn1, (u - lr * u.grad).detach().numpy(), atol=1e-5)
    # Two threads (Hogwild) each run a slice of the pairs: on disjoint rows, the same result.
    V, P = 2000, 256
    a0 = (rng.standard_normal((V, D)) * 0.3).astype(np.float32)
    a1 = (rng.standard_normal((V, D)) * 0.3).astype(np.float32)
    b0, b1 = a0.copy(), a1.copy()
    inputs = rng.permutation(V)[:P].astype(np.int32)
    rows = rng.permutation(V)[: P * (K + 1)].reshape(P, K + 1).astype(np.int32)
    l1 = sgd_pairs(a0, a1, inputs, rows[:, 0].copy(), rows[:, 1:].copy(), lr, threads=1)
    l2 = sgd_pairs(b0, b1, inputs, rows[:, 0].copy(), rows[:, 1:].copy(), lr, threads=2)
    assert l1 == pytest.approx(l2) and np.array_equal(a0, b0) and np.array_equal(a1, b1)


def test_fused_kernel_equals_per_pair_kernel_on_the_expanded_pairs():
    # sgd_windows makes a chunk's pairs and noise words inside its threads: with one thread
    # it does bit for bit what sgd_pairs does on the arrays skipgram_windows / expand_pairs /
    # noise_words expand (those the torch backend trains on).
    rng = np.random.default_rng(4)
    V, D, K = 300, 16, 5
    counts = rng.integers(1, 1000, V)
    table = alias_table(noise_distribution(counts))
    ids = rng.integers(0, V, 5000).astype(np.int32)
    lengths = np.array([1000, 3, 1, 1996, 2000])
    kept, lo, hi = skipgram_windows(ids, lengths, 5, np.random.default_rng(1), keep_probabilities(counts, 1e-2))
    keys = rng.integers(0, 2**64, len(kept), dtype=np.uint64)
    context, centre, slot = expand_pairs(lo, hi)
    negatives = noise_words(table, keys[centre], slot, K)
    syn0 = (rng.standard_normal((V, D)) * 0.3).astype(np.float32)
    syn1 = (rng.standard_normal((V, D)) * 0.3).astype(np.float32)
    a0, a1, b0, b1 = syn0.copy(), syn1.copy(), syn0.copy(), syn1.copy()
    expanded = sgd_pairs(a0, a1, kept[context], kept[centre], negatives, 0.05, threads=1)
    fused = sgd_windows(b0, b1, kept, lo, hi, keys, table, K, 0.05, threads=1)
    assert len(context) > 10_000 and fused == expanded
    assert np.array_equal(a0, b0) and np.array_equal(a1, b1)
    # Two threads (Hogwild over runs of centres): same pairs, so a comparable loss.
    c0, c1 = syn0.copy(), syn1.copy()
    two = sgd_windows(c0, c1, kept, lo, hi, keys, table, K, 0.05, threads=2)
    assert two == pytest.approx(fused, rel=0.05) and not np.array_equal(c0, syn0)


# ----------------------------------------------------------------------------- corpus
def test_corpus_normalisation_vocabulary_and_chunks(tmp_path):
    assert normalize_text("Don't STOP-me, café 42x!", "a-z").split() == ["don", "t", "stop", "me", "caf", "x"]
    assert normalize_text("Don't STOP", "lowercase") == "don't stop"
    path = tmp_path / "c.txt.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("B b a\n\nc a B\na A!\n")
    c = load_corpus(path, normalize="a-z", min_count=2)
    assert isinstance(c.ids, DiskArray) and c.directory.parent == tmp_path / "cache" / "sgns"  # on disk
    assert c.vocab.words == ["a", "b"] and c.vocab.counts.tolist() == [4, 3]  # c dropped
    assert c.raw_words == 8 and c.raw_sentences == 3  # non-empty lines
    assert c.ids.tolist() == [1, 1, 0, 0, 1, 0, 0] and c.offsets.tolist() == [0, 3, 5, 7]
    c2 = load_corpus(path, normalize="none", min_count=1, max_vocab=4)
    # Ties (count 1: b, c, A! by first appearance) in gensim's order: the later one first.
    assert c2.vocab.words == ["a", "B", "A!", "c"]
    gensim = pytest.importorskip("gensim.models")
    model = gensim.Word2Vec(min_count=1, vector_size=4)
    model.build_vocab([line.split() for line in ["B b a", "c a B", "a A!"]])
    assert model.wv.index_to_key[:4] == c2.vocab.words
    # JSON lines go through datasets; same tokens.
    jl = tmp_path / "c.jsonl"
    jl.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["B b a", "", "c a B", "a A!"]))
    c3 = load_corpus(jl, normalize="a-z", min_count=2)
    assert c3.vocab.words == c.vocab.words and c3.ids.tolist() == c.ids.tolist()
    bounds = chunk_boundaries(np.array([0, 4, 8, 9, 15, 16]), 5)
    assert bounds.tolist() == [0, 2, 4, 5]  # sentences starting in words [0,5) [5,10) [15,20)


def test_empty_corpus_and_min_count_are_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.txt: the corpus has no words.*data\.corpus"):
        load_corpus(empty)
    rare = tmp_path / "rare.txt"
    rare.write_text("one two three\nfour\n")
    with pytest.raises(DataError, match=r"rare\.txt: no word occurs at least data\.min_count=5.*lower data\.min_count"):
        load_corpus(rare, min_count=5)
    recipe, overrides = _recipe(tmp_path, rare)
    assert main([recipe, "--set", "data.min_count=5"]) == 2
    err = capsys.readouterr().err
    assert "rare.txt" in err and "min_count" in err and "Traceback" not in err
    single = tmp_path / "single.txt"
    single.write_text("a\na\nb\n")
    assert main([recipe, "--set", f"data.corpus={single}"]) == 2
    assert "no sentence has two in-vocabulary words" in capsys.readouterr().err
    assert main([recipe, "--set", "train.optimizer=adamw", "--set", "train.max_grad_norm=1.0"]) == 2
    err = capsys.readouterr().err
    assert "train.optimizer" in err and "train.max_grad_norm" in err


# ----------------------------------------------------------------------------- training
def test_planted_neighbours_rank_first_and_outputs_load(tmp_path):
    corpus = _planted_corpus(tmp_path / "planted.txt")
    recipe, overrides = _recipe(tmp_path, corpus)
    metrics = run(recipe, overrides + [f"data.cache_dir={tmp_path / 'ids'}"])
    assert metrics == {}
    assert len(list((tmp_path / "ids").glob("planted-*/ids.int32"))) == 1  # data.cache_dir holds the corpus
    out = tmp_path / "run"
    for name in ("vectors.bin", "vectors.txt", "recipe.yaml", "log.jsonl", "metrics.json", "README.md"):
        assert (out / name).exists(), name
    wv = WordVectors.load(out)
    assert len(wv) == 40 and wv.dim == 16
    hits = 0
    for word in wv.words:
        group = word.split("w")[0]
        top = [w for w, _ in wv.most_similar(word, topn=4)]
        hits += sum(w.startswith(group + "w") for w in top)
    assert hits / (4 * len(wv)) > 0.95
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    # word2vec's linear decay alpha 0.025 -> 0.0001 (min_lr_ratio 0.004) over all steps.
    total = log[-1]["step"]
    for rec in log:
        assert rec["lr"] == pytest.approx(0.025 * (0.004 + 0.996 * (1 - (rec["step"] - 1) / total)))
    assert log[-1]["pair_loss"] < log[0]["pair_loss"]
    card = (out / "README.md").read_text()
    assert "SGNS" in card and "KeyedVectors" in card
    # word2vec formats: gensim reads both files to the same words and values.
    kv = pytest.importorskip("gensim.models").KeyedVectors
    for name, binary in (("vectors.bin", True), ("vectors.txt", False)):
        k = kv.load_word2vec_format(str(out / name), binary=binary)
        assert list(k.index_to_key) == wv.words
        assert np.array_equal(k.vectors, wv.vectors)


def test_torch_backend_trains_through_the_trainer(tmp_path):
    corpus = _planted_corpus(tmp_path / "planted.txt", sentences=600)
    recipe, overrides = _recipe(tmp_path, corpus, **{"objective.backend": "torch", "data.chunk_words": 300})
    r = load_recipe(recipe, overrides)
    torch.manual_seed(0)
    method = SGNS.from_recipe(r)
    assert method.backend == "torch" and not method.updates_in_forward
    Trainer(method, r.train, tmp_path / "run", seed=1).fit()
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["pair_loss"] < 0.8 * log[0]["pair_loss"]
    wv = method.word_vectors()
    top = [w for w, _ in wv.most_similar("g0w0", topn=4)]
    assert sum(w.startswith("g0w") for w in top) >= 3


class _Interrupt(Exception):
    pass


class _KillAt:
    def __init__(self, n):
        self.n = n

    def on_step_end(self, trainer):
        if trainer.state.step == self.n:
            raise _Interrupt


def test_resume_equals_uninterrupted(tmp_path):
    corpus = _planted_corpus(tmp_path / "planted.txt", sentences=400)
    recipe, overrides = _recipe(tmp_path, corpus, **{"data.chunk_words": 500, "train.epochs": 2,
                                                     "train.save_every_n_steps": 3})
    r = load_recipe(recipe, overrides)
    cfg = TrainConfig(**{**r.train.model_dump(), "save_every_n_steps": 3})
    full = SGNS.from_recipe(r)
    Trainer(full, cfg, tmp_path / "full", seed=5).fit()
    a = SGNS.from_recipe(r)
    with pytest.raises(_Interrupt):
        Trainer(a, cfg, tmp_path / "resumed", seed=5, callbacks=[_KillAt(5)]).fit()
    b = SGNS.from_recipe(r)  # a fresh process rebuilds the method from the recipe
    assert b.corpus.directory == a.corpus.directory  # its token ids from the cache, read again by slices
    Trainer(b, cfg, tmp_path / "resumed", seed=5).fit(resume=True)
    assert torch.equal(full.input_vectors, b.input_vectors)
    assert torch.equal(full.output_vectors, b.output_vectors)


# ----------------------------------------------------------------------------- transfer
def test_init_transformer_embeddings_from_word_vectors(tiny_bert_dir):
    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    model = BertModel.from_pretrained(str(tiny_bert_dir))
    before = model.get_input_embeddings().weight.detach().clone()
    rng = np.random.default_rng(0)
    words = ["house", "river", "Running", "zzzunknownzzz"]
    wv = WordVectors(words, rng.standard_normal((4, 64)).astype(np.float32) * 3)
    report = init_embeddings_from_word_vectors(model, tok, wv, scale="none")
    assert report["covered"] == 3  # house, river, running (lowercase fallback of "Running")
    assert report["vocab_size"] == len(tok) and report["coverage"] == pytest.approx(3 / len(tok))
    assert report["special"] >= 5 and report["subword"] > 1000
    after = model.get_input_embeddings().weight.detach()
    house, the = tok.convert_tokens_to_ids(["house", "the"])
    assert torch.allclose(after[house], torch.from_numpy(wv["house"]))
    assert torch.equal(after[the], before[the])  # no vector: keeps its initialisation
    assert int((after != before).any(dim=1).sum()) == 3
    with pytest.raises(ValueError, match="100-d.*64-d.*model.dim <= 64"):
        init_embeddings_from_word_vectors(model, tok, WordVectors(["house"], np.zeros((1, 100))))
