"""SGNS on corpora with very long lines (a text8-style single line): chunk sizes and finite loss.

A line longer than ``data.max_sentence_length`` (10,000) is read as 10,000-word pieces; chunks
used to hold the whole pieces starting in them, so a single-line corpus gave steps of one or
two pieces whatever ``data.chunk_words`` was, and the torch backend (one SGD step on the
chunk's summed gradient) diverged until the float32 loss sum overflowed ("non-finite loss
(inf)", weights still finite). ``cut_at_chunk_grid`` cuts long sentences at the chunk grid.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import textcl.objectives.skipgram as skipgram
from textcl.core.recipe import load_recipe
from textcl.core.trainer import Trainer
from textcl.corpus import chunk_boundaries, cut_at_chunk_grid
from textcl.objectives.skipgram import SGNS
from textcl.train import run


def _zipf_words(n, vocab=2000, seed=0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1)
    return [f"w{i}" for i in rng.choice(vocab, size=n, p=p / p.sum())]


def _recipe(tmp_path, corpus, **overrides):
    text = f"""
method: sgns
output_dir: {tmp_path / 'run'}
seed: 3
model: {{dim: 50}}
data: {{corpus: {corpus}, min_count: 5}}
objective: {{window: 5, negative: 5, sample: 1.0e-4, threads: 1}}
train: {{batch_size: 1, epochs: 100, optimizer: sgd, lr: 0.025, min_lr_ratio: 1.0, cpu: true,
        momentum: 0.0, weight_decay: 0.0, max_grad_norm: null, log_every_n_steps: 10,
        save_every_n_steps: 1000}}
eval: {{before_training: false}}
"""
    path = tmp_path / "sgns.yaml"
    path.write_text(text)
    return str(path), [f"{k}={v}" for k, v in overrides.items()]


def _chunk_words(method):
    return np.diff(method.offsets[method.bounds])


# ----------------------------------------------------------------------------- the cut
def test_cut_at_chunk_grid_cuts_long_sentences_only():
    # Grid every 10 words; sentences longer than 10 // 4 = 2 words are cut where they cross it.
    offsets = np.array([0, 2, 4, 27, 29, 30])
    assert cut_at_chunk_grid(offsets, 10).tolist() == [0, 2, 4, 10, 20, 27, 29, 30]
    # Short sentences (at most a quarter chunk) are never cut: the same array comes back.
    short = np.array([0, 2, 4, 6, 9, 11, 13])
    assert cut_at_chunk_grid(short, 10) is short
    # Any line lengths: every chunk but the last holds 0.75-1.25 x chunk_words words.
    rng = np.random.default_rng(0)
    for _ in range(300):
        size = int(rng.integers(1, 50))
        lengths = rng.integers(1, rng.choice([3, 20, 500]), size=int(rng.integers(2, 60)))
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        cut = cut_at_chunk_grid(offsets, size)
        assert np.all(np.diff(cut) > 0) and set(offsets.tolist()) <= set(cut.tolist())
        words = np.diff(cut[chunk_boundaries(cut, size)])[:-1]
        assert np.all(words > 0.75 * size) and np.all(words < 1.25 * size), (size, lengths)


def test_single_line_chunks_hold_chunk_words(tmp_path):
    # The recipe's setting: chunk_words = max_sentence_length = 10,000. One line of 120k
    # words, every 10th one a hapax (dropped by min_count): 10,000-word pieces keep ~9,000
    # in-vocabulary words, so piece starts drift against the 10,000-word chunk grid.
    words = _zipf_words(120_000)
    for i in range(0, len(words), 10):
        words[i] = f"hapax{i}"
    corpus = tmp_path / "line.txt"
    corpus.write_text(" ".join(words) + "\n")
    recipe, overrides = _recipe(tmp_path, corpus, **{"data.chunk_words": 10_000})
    method = SGNS.from_recipe(load_recipe(recipe, overrides))
    assert method.corpus.raw_sentences == 12 and method.corpus.offsets[1] < 9_500
    # Whole pieces per chunk (before the fix): some chunks held two pieces, ~18,000 words.
    before = np.diff(method.corpus.offsets[chunk_boundaries(method.corpus.offsets, 10_000)])
    assert before.max() > 17_000
    words = _chunk_words(method)
    assert words[:-1].min() > 7_500 and words.max() < 12_500
    assert words.sum() == method.corpus.words


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_single_line_corpus_trains_with_finite_loss(tmp_path, backend):
    # One 20,000-word line = two 10,000-word pieces, chunk_words 2,000 (what the torch
    # backend wants). Before the cut every step was a whole piece, 5x the chunk: the torch
    # backend's summed-gradient steps diverged and the loss sum overflowed float32 to inf
    # at step ~37 (weights finite). Constant lr (min_lr_ratio 1), 300 steps = 600k words.
    corpus = tmp_path / "line.txt"
    corpus.write_text(" ".join(_zipf_words(20_000)) + "\n")
    recipe, overrides = _recipe(tmp_path, corpus, **{
        "data.chunk_words": 2000, "objective.backend": backend, "train.max_steps": 300})
    run(recipe, overrides)  # raises NonFiniteLossError on an inf loss
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["pair_loss"] for r in log if "pair_loss" in r]
    assert log[-1]["step"] == 300 and all(np.isfinite(losses))
    assert max(losses) < 4.2 and losses[-1] < 3.0  # 6 ln 2 = 4.16 at the start


def test_ordinary_sentences_train_as_before(tmp_path, monkeypatch):
    # Sentences far shorter than a quarter chunk: the offsets are the corpus's own, and the
    # training (losses, vectors) is bit-identical to chunking without the cut.
    rng = np.random.default_rng(1)
    words = _zipf_words(6_000, vocab=300)
    lines, i = [], 0
    while i < len(words):
        n = int(rng.integers(3, 30))
        lines.append(" ".join(words[i : i + n]))
        i += n
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(lines) + "\n")
    recipe, overrides = _recipe(tmp_path, corpus, **{
        "data.chunk_words": 500, "objective.backend": "torch", "train.epochs": 2,
        "train.min_lr_ratio": 0.004, "train.log_every_n_steps": 1})
    r = load_recipe(recipe, overrides)

    def train(name):
        method = SGNS.from_recipe(r)
        Trainer(method, r.train, tmp_path / name, seed=1).fit()
        log = [json.loads(x) for x in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        return method, [x["loss"] for x in log if "loss" in x]

    new, new_losses = train("new")
    assert new.offsets is new.corpus.offsets
    monkeypatch.setattr(skipgram, "cut_at_chunk_grid", lambda offsets, chunk_words: offsets)
    old, old_losses = train("old")
    assert new_losses == old_losses and len(new_losses) == 2 * (len(new.bounds) - 1) > 20
    assert torch.equal(new.input_vectors, old.input_vectors)
    assert torch.equal(new.output_vectors, old.output_vectors)
