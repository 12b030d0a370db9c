"""SGNS corpora on disk: the streamed corpus equals the in-memory one, token for token and
chunk for chunk; training is bit-identical; the cache; memory that does not grow with the corpus.

``load_corpus`` used to keep every token id in memory (``np.concatenate`` of the blocks); it
now writes them to disk in two streamed passes and the chunks read their slices back. The
reference hashes below were computed with the in-memory code (commit 4cd3cec, before the
change) on the same generated corpora: vocabulary, counts, ids, offsets, chunking and every
dataset item (pairs and noise words) of two epochs -- integers, the same on any machine.
Since the fused SGNS kernel (a chunk's windows and one SplitMix64 key per centre instead
of its expanded pairs and noise words) an item's hash is new; its pairs (``"pairs"``, the
expanded inputs and targets) still equal the pairs of the code before that change (d0108f9).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import pickle
import tracemalloc

import numpy as np
import pytest
import torch
import yaml

import textcl.corpus as corpus_module
import textcl.corpus_build as corpus_build
import textcl.token_store as token_store
from textcl.core.recipe import load_recipe
from textcl.core.trainer import Trainer
from textcl.corpus import (
    chunk_boundaries,
    cut_at_chunk_grid,
    iter_sentences,
    load_corpus,
    longest_sentence,
)
from textcl.documents import DataError
from textcl.objectives.skipgram import SGNS, expand_pairs
from textcl.token_store import ArrayWriter, DiskArray


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTCL_CACHE", str(tmp_path / "cache"))


def _small_blocks(monkeypatch, text_bytes=997, rows=7, pass_words=53, items=11):
    """Every block size tiny: long lines come in pieces, every pass takes many steps."""
    monkeypatch.setattr(corpus_module, "_BLOCK_BYTES", text_bytes)
    monkeypatch.setattr(corpus_module, "_BLOCK_ROWS", rows)
    monkeypatch.setattr(corpus_build, "PASS_WORDS", pass_words)
    monkeypatch.setattr(token_store, "BLOCK_ITEMS", items)


# ----------------------------------------------------------------------------- corpora
def _zipf_lines(path, n_words, vocab, seed, min_len=3, max_len=30, gz=False, hapax_every=0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1)
    words = [f"w{i}" for i in rng.choice(vocab, size=n_words, p=p / p.sum())]
    if hapax_every:
        for i in range(0, len(words), hapax_every):
            words[i] = f"hapax{i}"
    lines, i = [], 0
    while i < len(words):
        n = int(rng.integers(min_len, max_len + 1))
        lines.append(" ".join(words[i : i + n]))
        if rng.random() < 0.05:
            lines.append("")
        i += n
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def _jsonl(path, n_rows, seed):
    rng = np.random.default_rng(seed)
    vocab = ["The", "cat's", "DOG", "runs", "fast,", "42", "café", "river", "Bank", "and", "a", "the"]
    with open(path, "w") as fh:
        for r in range(n_rows):
            n = int(rng.integers(0, 40))
            fh.write(json.dumps({"id": r, "text": " ".join(rng.choice(vocab, n))}) + "\n")
    return path


#: name: corpus, data / objective / train settings, and the reference (the in-memory code's).
CASES = {
    "lines_numba": (
        lambda d: _zipf_lines(d / "a.txt", 30_000, 500, 0), {"chunk_words": 1000, "min_count": 2},
        {"backend": "numba", "sample": 1e-3}, {"epochs": 2},
        {"vocab": "393722c2938059d0", "counts": "caa4fbeaf2819bb8", "ids": "43080ca1d16930b6",
         "offsets": "3b6410c526050cb7", "raw": [30000, 1853, 30000, 1853, 500], "cut_offsets": "3b6410c526050cb7",
         "bounds": "1a2c9e80677b5022", "chunks": 30, "pairs": "64dfb957c4edc9c4",
         "items": "dd9d9845d9680119"}),
    "gz_torch": (
        lambda d: _zipf_lines(d / "b.txt.gz", 20_000, 300, 1, gz=True, hapax_every=7),
        {"chunk_words": 700, "min_count": 3, "max_vocab": 200, "max_sentences": 1500},
        {"backend": "torch", "sample": 1e-2}, {"epochs": 2},
        {"vocab": "b0ca75cd8eb96b5a", "counts": "53a7655afcfaf48a", "ids": "2d6582f391a0352b",
         "offsets": "ded2490fee376fbf", "raw": [20000, 1221, 16143, 1221, 200], "cut_offsets": "ded2490fee376fbf",
         "bounds": "b25dd1e8f82b8a48", "chunks": 24, "pairs": "7291c1e6eb99aaca",
         "items": "4309cb225d520c18"}),
    "long_line_numba": (  # lines of 9,000-25,000 words: pieces of 7,000, cut at the chunk grid
        lambda d: _zipf_lines(d / "c.txt", 40_000, 800, 2, min_len=9000, max_len=25000, hapax_every=10),
        {"chunk_words": 2000, "min_count": 5, "max_sentence_length": 7000},
        {"backend": "numba", "sample": 1e-4}, {"epochs": 2},
        {"vocab": "f8d6c31ce3ec4fa9", "counts": "0a6c11494e4ae9c3", "ids": "714594119e8bf58d",
         "offsets": "30ca0cb7a17972af", "raw": [40000, 7, 35881, 7, 763], "cut_offsets": "595392d1d0567bd3",
         "bounds": "8cc638d51464072c", "chunks": 18, "pairs": "d42e6684a99cfcb8",
         "items": "3c2e47683c0a3b7e"}),
    "jsonl_az": (
        lambda d: _jsonl(d / "d.jsonl", 2000, 3), {"chunk_words": 300, "min_count": 1, "normalize": "a-z"},
        {"backend": "numba", "sample": 0.0}, {"epochs": 2},
        {"vocab": "cbe0156ce36c7df7", "counts": "f0439c7c17667a71", "ids": "0227206c1c5447af",
         "offsets": "a9572117af2ad6f8", "raw": [38498, 1945, 38498, 1945, 11], "cut_offsets": "a9572117af2ad6f8",
         "bounds": "6f2dabd803203184", "chunks": 129, "pairs": "5e0fcf50c92e461a",
         "items": "93aab74613fd2466"}),
}


def _recipe(tmp_path, corpus, data, objective, train):
    recipe = {
        "method": "sgns", "output_dir": str(tmp_path / "run"), "seed": 7, "model": {"dim": 12, "save_text": False},
        "data": {"corpus": str(corpus), **data},
        "objective": {"window": 4, "negative": 4, "threads": 1, **objective},
        "train": {"batch_size": 1, "optimizer": "sgd", "lr": 0.025, "min_lr_ratio": 0.004, "cpu": True,
                  "momentum": 0.0, "weight_decay": 0.0, "max_grad_norm": None, "log_every_n_steps": 1000, **train},
        "eval": {"before_training": False},
    }
    path = tmp_path / "sgns.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return load_recipe(str(path), [])


def _hash(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str(a.dtype).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _summary(method):
    c = method.corpus
    out = {
        "vocab": hashlib.sha256("\n".join(c.vocab.words).encode()).hexdigest()[:16],
        "counts": _hash(c.vocab.counts), "ids": _hash(c.ids), "offsets": _hash(c.offsets),
        "raw": [c.raw_words, c.raw_sentences, c.words, c.sentences, len(c.vocab)],
        "cut_offsets": _hash(method.offsets), "bounds": _hash(method.bounds), "chunks": len(method.bounds) - 1,
    }
    ds, items, pairs = method.train_dataset(), [], []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            it = ds[i]
            items += [it["ids"], it["lo"], it["hi"], it["keys"], np.array([it["words"]])]
            context, centre, _ = expand_pairs(it["lo"], it["hi"])
            pairs += [it["ids"][context], it["ids"][centre], np.array([it["words"]])]
    out["pairs"], out["items"] = _hash(*pairs), _hash(*items)
    return out


def _in_memory(method):
    """The same method with its corpus (and cut offsets) read into numpy arrays."""
    corpus = dataclasses.replace(method.corpus, ids=np.asarray(method.corpus.ids),
                                 offsets=np.asarray(method.corpus.offsets))
    copy = SGNS(method.cfg, corpus, seed=method.seed, backend=method.backend, threads=method.threads)
    assert np.array_equal(copy.offsets, np.asarray(method.offsets)) and np.array_equal(copy.bounds, method.bounds)
    return copy


# ----------------------------------------------------------------------------- the arrays
def test_disk_array_reads_slices_items_and_pickles(tmp_path):
    values = np.arange(-5, 95, dtype=np.int64) * 3
    with ArrayWriter(tmp_path / "a.int64", np.int64) as out:
        out.write(values[:40])
        out.write(values[40:])
    assert not (tmp_path / "a.int64.partial").exists()
    a = DiskArray(tmp_path / "a.int64", np.int64, 100)
    assert len(a) == 100 and a.shape == (100,) and a[7] == values[7] and a[-1] == values[-1]
    assert np.array_equal(a[10:30], values[10:30]) and a[10:30].flags.writeable
    assert np.array_equal(a[::7], values[::7]) and len(a[120:130]) == 0 and np.array_equal(a[:], values)
    index = np.array([[99, 0], [13, 13]])
    assert np.array_equal(a[index], values[index]) and np.array_equal(np.asarray(a), values)
    assert a.tolist() == values.tolist()
    with pytest.raises(IndexError):
        a[100]
    b = pickle.loads(pickle.dumps(a))  # into a DataLoader worker: the file is opened again there
    assert b._fd is None and np.array_equal(b[90:], values[90:])
    with pytest.raises(ValueError, match="expected 101"):
        DiskArray(tmp_path / "a.int64", np.int64, 101)
    (tmp_path / "odd").write_bytes(b"12345")
    with pytest.raises(ValueError, match="not a whole number"):
        DiskArray(tmp_path / "odd", np.int32)
    with pytest.raises(RuntimeError), ArrayWriter(tmp_path / "gone.int32", np.int32) as out:
        out.write([1, 2])
        raise RuntimeError
    assert not list(tmp_path.glob("gone*"))


def test_chunk_functions_on_disk_equal_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(token_store, "BLOCK_ITEMS", 5)
    rng = np.random.default_rng(0)
    for trial in range(40):
        size = int(rng.integers(1, 50))
        lengths = rng.integers(1, rng.choice([3, 20, 500]), size=int(rng.integers(1, 60)))
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        with ArrayWriter(tmp_path / f"o{trial}.int64", np.int64) as out:
            out.write(offsets)
        disk = DiskArray(tmp_path / f"o{trial}.int64", np.int64)
        cut, disk_cut = cut_at_chunk_grid(offsets, size), cut_at_chunk_grid(disk, size)
        assert np.array_equal(np.asarray(disk_cut), cut)
        assert (disk_cut is disk) == (cut is offsets)  # nothing to cut: the same object back
        assert np.array_equal(chunk_boundaries(disk_cut, size), chunk_boundaries(cut, size))
        assert longest_sentence(disk) == lengths.max()
        if disk_cut is not disk:  # written once beside the offsets, then found again
            assert disk_cut.path.name == f"o{trial}.int64.cut{size}"
            assert cut_at_chunk_grid(disk, size).path == disk_cut.path


# ----------------------------------------------------------------------------- equal to before
@pytest.mark.parametrize("name", sorted(CASES))
def test_streamed_corpus_equals_the_in_memory_reference(tmp_path, name):
    build, data, objective, train, reference = CASES[name]
    method = SGNS.from_recipe(_recipe(tmp_path, build(tmp_path), data, objective, train))
    assert isinstance(method.corpus.ids, DiskArray) and isinstance(method.corpus.offsets, DiskArray)
    assert _summary(method) == reference


def test_small_blocks_give_the_same_tokens_and_chunks(tmp_path, monkeypatch):
    # Lines cut into many pieces by a 997-byte block, pass 2 in 53-word steps: same corpus.
    for name, (build, data, objective, train, reference) in CASES.items():
        directory = tmp_path / name
        directory.mkdir()
        r = _recipe(directory, build(directory), data, objective, train)
        with monkeypatch.context() as m:
            _small_blocks(m)
            m.setenv("TEXTCL_CACHE", str(directory / "small"))
            assert _summary(SGNS.from_recipe(r)) == reference, name


def _naive_sentences(text, max_len, max_lines=None):
    lines = text.split("\n")
    if lines and not lines[-1]:
        lines.pop()
    out = []
    for line in lines[:max_lines]:
        words = line.split()
        out += [words[i : i + max_len] for i in range(0, len(words), max_len)]
    return out


@pytest.mark.parametrize("max_lines", [None, 1, 2, 3, 4])
def test_long_lines_in_pieces_read_as_whole_lines(tmp_path, monkeypatch, max_lines):
    # Lines far longer than a block (text8 is one line): pieces of max_sentence_length words
    # counted from the line's start, whatever block a word arrives in; no final newline.
    rng = np.random.default_rng(1)
    lines = [" ".join(f"w{int(x)}" for x in rng.integers(0, 50, n)) for n in (3000, 7, 0, 2500, 40)]
    text = "\n".join(lines) + "  \t"
    path = tmp_path / "long.txt"
    path.write_text(text)
    _small_blocks(monkeypatch, text_bytes=300)
    for max_len in (7, 100, 10_000):
        got = list(iter_sentences(path, max_sentences=max_lines, max_sentence_length=max_len))
        assert got == _naive_sentences(text, max_len, max_lines)
    corpus = load_corpus(path, min_count=1, max_sentences=max_lines, max_sentence_length=100)
    assert corpus.raw_sentences == len(_naive_sentences(text, 100, max_lines))


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", ["lines_numba", "gz_torch", "long_line_numba"])
def test_training_from_disk_is_bit_identical_to_in_memory(tmp_path, name):
    build, data, objective, train, _ = CASES[name]
    r = _recipe(tmp_path, build(tmp_path), data, objective, train)
    disk = SGNS.from_recipe(r)
    memory = _in_memory(disk)
    losses = {}
    for label, method in (("disk", disk), ("memory", memory)):
        Trainer(method, r.train, tmp_path / label, seed=1).fit()
        log = [json.loads(x) for x in (tmp_path / label / "log.jsonl").read_text().splitlines()]
        losses[label] = [x["loss"] for x in log if "loss" in x]
    assert losses["disk"] == losses["memory"] and len(losses["disk"]) > 0
    assert torch.equal(disk.input_vectors, memory.input_vectors)
    assert torch.equal(disk.output_vectors, memory.output_vectors)


# ----------------------------------------------------------------------------- the cache
def test_corpus_is_written_once_and_found_again(tmp_path, monkeypatch):
    path = _zipf_lines(tmp_path / "a.txt", 3000, 100, 0)
    first = load_corpus(path, min_count=2)
    root = tmp_path / "cache" / "sgns"
    assert first.directory.parent == root and first.directory.name.startswith("a-")
    assert sorted(p.name for p in first.directory.iterdir()) == ["ids.int32", "meta.json", "offsets.int64",
                                                                  "vocab.json"]

    def no_reading(*args, **kwargs):
        raise AssertionError("read the text again")

    with monkeypatch.context() as m:
        m.setattr(corpus_module, "_sentence_blocks", no_reading)
        again = load_corpus(str(path), min_count=2)
    assert again.directory == first.directory and again.vocab.words == first.vocab.words
    assert np.array_equal(np.asarray(again.ids), np.asarray(first.ids))
    # Other settings, other content: other entries.
    assert load_corpus(path, min_count=3).directory != first.directory
    path.write_text(path.read_text() + "w1 w2\n")
    assert load_corpus(path, min_count=2).directory != first.directory
    # A damaged entry is read again.
    damaged = load_corpus(tmp_path / "a.txt", min_count=2).directory
    ids = damaged / "ids.int32"
    ids.write_bytes(ids.read_bytes()[:-4])
    rebuilt = load_corpus(tmp_path / "a.txt", min_count=2)
    assert rebuilt.directory == damaged and rebuilt.words == len(rebuilt.ids) == rebuilt.offsets[-1]
    # An explicit cache_dir; no scratch files or partial entries left anywhere.
    other = load_corpus(path, min_count=2, cache_dir=tmp_path / "elsewhere")
    assert other.directory.parent == tmp_path / "elsewhere"
    leftovers = [p for p in tmp_path.rglob("*") if p.suffix in (".tmp", ".partial") or ".partial" in p.name]
    assert leftovers == []


def test_errors_leave_no_cache_entry(tmp_path):
    rare = tmp_path / "rare.txt"
    rare.write_text("one two three\nfour\n")
    with pytest.raises(DataError, match="no word occurs at least data.min_count=5"):
        load_corpus(rare, min_count=5)
    bad = tmp_path / "bad.txt.gz"
    data = gzip.compress(b"one two three four five six\n" * 20000)
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="bad.txt.gz"):
        load_corpus(bad, min_count=1)
    root = tmp_path / "cache" / "sgns"
    assert not root.exists() or list(root.iterdir()) == []


# ----------------------------------------------------------------------------- memory
def _corpus_peak_bytes(path, cache_dir):
    """tracemalloc's peak while a corpus is read and written, then every chunk of an epoch
    made (its pairs and noise words) -- the corpus part of an SGNS run."""
    tracemalloc.start()
    try:
        corpus = load_corpus(path, min_count=1, cache_dir=cache_dir)
        offsets = cut_at_chunk_grid(corpus.offsets, 1000)
        bounds = chunk_boundaries(offsets, 1000)
        words = 0
        for c in range(len(bounds) - 1):
            edges = offsets[bounds[c] : bounds[c + 1] + 1]
            ids = corpus.ids[edges[0] : edges[-1]]
            words += len(ids)
        assert words == corpus.words
        return tracemalloc.get_traced_memory()[1], corpus
    finally:
        tracemalloc.stop()


def test_corpus_memory_does_not_grow_with_the_corpus(tmp_path, monkeypatch):
    # 1x and 16x copies of a corpus, read in 16 KiB blocks: the peak stays that of a block
    # and the word table. (Held in memory, the 16x corpus's ids alone are 16x those of 1x.)
    _small_blocks(monkeypatch, text_bytes=16 << 10, rows=256, pass_words=4096, items=4096)
    base = _zipf_lines(tmp_path / "x1.txt", 40_000, 2000, 0).read_text()
    _zipf_lines(tmp_path / "long.txt", 40_000, 2000, 1, min_len=20_000, max_len=20_000)
    peaks = {}
    for scale in (1, 16):
        for kind, text in (("lines", base), ("long", (tmp_path / "long.txt").read_text())):
            path = tmp_path / f"{kind}_x{scale}.txt"
            path.write_text(text * scale)
            peaks[kind, scale], corpus = _corpus_peak_bytes(path, tmp_path / f"cache{kind}{scale}")
            assert corpus.words >= scale * 39_000
    held_1x = 4 * 40_000  # bytes of the 1x corpus's int32 ids
    for kind in ("lines", "long"):
        assert peaks[kind, 16] < 1.25 * peaks[kind, 1] + 64 * 1024, (kind, peaks)
        assert peaks[kind, 16] - peaks[kind, 1] < held_1x, (kind, peaks)  # far below 15x held_1x
