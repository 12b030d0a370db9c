"""Arrow-backed corpora: multi-process splitting and its cache, lazy document / sentence views,
token ids read from Arrow, lazy positions, and the corpus-scale benchmark on a tiny corpus.

The same losses before and after the move to Arrow were checked with a 12-configuration
fingerprint (nsp, neighbour, permutation, declutr, simcse; 3 steps each, 8 digits); here
the pieces are compared with the list-based forms they replace."""

from __future__ import annotations

import gzip
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

import textcl.arrow_cache as arrow_cache
import textcl.sentences as sentences
from textcl.documents import ArrowLists, Document, held_out_split, load_documents, map_processes
from textcl.objectives._sentence_common import PositionIndex, SentenceCorpus, load_sentence_corpora
from textcl.sentences import (
    SentenceDataSection,
    load_sentence_documents,
    tokenize_sentence_dataset,
    tokenize_sentences,
)

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import tiny_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _corpus(path: Path, n: int = 40) -> Path:
    rows = []
    for i in range(n):
        k = 1 + (i * 7) % 9  # 1..9 sentences, some documents empty or one sentence long
        text = " ".join(f"Doc {i} says thing {j}." for j in range(k)) if i % 11 else ""
        rows.append({"id": f"d{i}", "text": text})
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_map_processes_keeps_small_inputs_in_this_process(monkeypatch):
    # Patched where map_processes reads them (textcl.arrow_cache; textcl.documents re-exports).
    monkeypatch.setattr(arrow_cache, "default_num_proc", lambda: 16)
    assert map_processes(None, 10) is None and map_processes(4, 2 * arrow_cache.MIN_ROWS_PER_PROCESS - 1) is None
    assert map_processes(None, 10_000) == 16 and map_processes(2, 10_000) == 2
    assert map_processes(None, 3 * arrow_cache.MIN_ROWS_PER_PROCESS) == 3  # >= MIN_ROWS_PER_PROCESS rows each


def test_multiprocess_split_equals_one_process_and_its_shards_are_reused(tmp_path, monkeypatch):
    src = _corpus(tmp_path / "docs.jsonl.gz")
    one, one_stats = load_sentence_documents(str(src), cache_dir=tmp_path / "one", num_proc=1)
    assert sorted(p.name for p in (tmp_path / "one").iterdir())[0].startswith("docs-")  # in this process: one file
    monkeypatch.setattr(arrow_cache, "MIN_ROWS_PER_PROCESS", 4)
    two, two_stats = load_sentence_documents(str(src), cache_dir=tmp_path / "two", num_proc=2)
    shards = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert len(shards) == 2 and shards[0].endswith("_00000_of_00002.arrow")
    assert list(two) == list(one) and two_stats == one_stats
    assert one_stats.empty == 4 and one_stats.too_few_sentences > 0
    # Token ids from two shard files, read by position, equal the list form.
    tok = tiny_tokenizer()
    tokens = tokenize_sentence_dataset(tok, two, max_tokens=5, num_proc=2)
    assert len(list((tmp_path / "two").glob("tokens-*_of_00002.arrow"))) == 2
    arrow, lists = SentenceCorpus(two, tokens), SentenceCorpus(list(two), tokenize_sentences(tok, list(two), 5))
    assert [arrow.sentence(d, s) for d, s in arrow.positions()] == [lists.sentence(d, s) for d, s in lists.positions()]
    assert [arrow.text_key[g] for g in range(arrow.num_sentences)] == lists.text_key.tolist()

    def no_split(text):
        raise AssertionError("split_sentences called on a cache hit")

    monkeypatch.setattr(sentences, "split_sentences", no_split)
    again, _ = load_sentence_documents(str(src), cache_dir=tmp_path / "two", num_proc=1, min_sentences=1)
    assert [d for d in again if len(d.sentences) >= 2] == list(one)


def test_an_unreadable_cache_file_is_split_again(tmp_path, caplog):
    src = _corpus(tmp_path / "docs.jsonl.gz", 12)
    first = list(load_sentence_documents(str(src), cache_dir=tmp_path / "cache")[0])  # read before the damage
    (cached,) = (tmp_path / "cache").iterdir()
    cached.write_bytes(b"not arrow")
    with caplog.at_level("WARNING", logger="textcl"):
        again, _ = load_sentence_documents(str(src), cache_dir=tmp_path / "cache")
    assert "unreadable" in caplog.text and list(again) == first


def test_views_split_like_lists_and_read_lazily(tmp_path):
    src = _corpus(tmp_path / "docs.jsonl.gz")
    docs, _ = load_sentence_documents(str(src), cache_dir=tmp_path / "cache")
    as_list = list(docs)
    train, held = held_out_split(docs, 0.3)
    list_train, list_held = held_out_split(as_list, 0.3)
    assert list(train) == list_train and list(held) == list_held and len(held) > 0
    assert held[1] == list_held[1] and list(held[:2]) == list_held[:2]
    assert list(held_out_split(docs, 0.0)[1]) == []
    assert docs == as_list and (docs.lengths == [len(d.sentences) for d in as_list]).all()

    raw = load_documents(str(src))
    expected = [Document(str(r["id"]), r["text"]) for r in map(json.loads, gzip.open(src, "rt")) if r["text"].strip()]
    assert list(raw) == expected and raw[3] == expected[3]
    assert [d.text for d in load_documents(str(src), keep_empty=True)].count("") == 4
    train_docs, held_docs = held_out_split(raw, 0.3)
    assert (list(train_docs), list(held_docs)) == held_out_split(expected, 0.3)


def test_sentence_corpus_from_arrow_equals_the_list_form(tmp_path):
    src = _corpus(tmp_path / "docs.jsonl.gz")
    docs, _ = load_sentence_documents(str(src), cache_dir=tmp_path / "cache")
    train, _ = held_out_split(docs, 0.25)
    tok = tiny_tokenizer()
    arrow = SentenceCorpus(train, tokenize_sentence_dataset(tok, docs, max_tokens=4))
    lists = SentenceCorpus(list(train), tokenize_sentences(tok, list(train), max_tokens=4))
    assert len(arrow) == len(lists) and arrow.num_sentences == lists.num_sentences
    assert (arrow.lengths == lists.lengths).all() and (arrow.offsets == lists.offsets).all()
    for d in range(len(arrow)):
        for s in range(int(arrow.lengths[d])):
            assert arrow.sentence(d, s) == lists.sentence(d, s)
            assert arrow.text_key[arrow.gid(d, s)] == lists.text_key[lists.gid(d, s)]
    assert arrow.ids[2] == lists.ids[2]
    for valid in (None, lambda n, s: s + 1 < n, lambda n, s: n >= 2, lambda n, s: s == 0):
        assert arrow.positions(valid).tolist() == lists.positions(valid).tolist()
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert [arrow.random_other_sentence(rng_a, 1) for _ in range(50)] == \
        [lists.random_other_sentence(rng_b, 1) for _ in range(50)]
    # The corpus holds a few numbers per document, nothing per sentence.
    arrays = [v for v in vars(arrow).values() if isinstance(v, np.ndarray)]
    assert arrays and all(a.size <= len(arrow) + 1 for a in arrays)
    assert not isinstance(arrow.text_key, np.ndarray)


def test_position_index_equals_the_explicit_positions():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 9, size=50)

    def explicit(valid):
        return [[d, s] for d, n in enumerate(lengths.tolist()) for s in range(n) if valid(n, s)]

    for valid in (lambda n, s: True, lambda n, s: s + 1 < n, lambda n, s: n >= 2, lambda n, s: s == 0):
        counts = np.array([sum(valid(int(n), s) for s in range(n)) for n in lengths])
        first = np.array([next((s for s in range(n) if valid(int(n), s)), 0) for n in lengths])
        idx = PositionIndex(counts, first)
        want = explicit(valid)
        assert len(idx) == len(want) and idx.tolist() == want
        assert [list(idx[i]) for i in range(len(idx))] == want and list(idx[-1]) == want[-1]
        assert (np.asarray(idx) == np.array(want).reshape(-1, 2)).all()
    with pytest.raises(IndexError):
        idx[len(idx)]
    # Every second sentence is not one run per document: the corpus lists the positions.
    toy = SentenceCorpus([None] * len(lengths), [[[1]] * int(n) for n in lengths])
    odd = toy.positions(lambda n, s: s % 2 == 1)
    assert isinstance(odd, np.ndarray) and odd.tolist() == explicit(lambda n, s: s % 2 == 1)
    starts = PositionIndex(lengths // 3, np.zeros(len(lengths)), step=3)  # passages of 3
    assert starts.tolist() == [[d, s] for d, n in enumerate(lengths.tolist()) for s in range(0, n - 2, 3)]


def test_arrow_lists_read_views_and_pickle_small(tmp_path):
    import datasets

    rows = [[i] * (i % 5) for i in range(300)]
    ds = datasets.Dataset.from_dict({"x": list(range(300))})
    mapped = ds.map(lambda b: {"ids": [[i] * (i % 5) for i in b["x"]]}, batched=True, batch_size=7,
                    writer_batch_size=7, remove_columns=["x"],
                    cache_file_name=str(tmp_path / "ids.arrow"),
                    features=datasets.Features({"ids": datasets.List(datasets.Value("int32"))}))
    mapped = datasets.Dataset.from_file(str(tmp_path / "ids.arrow"))
    lists = ArrowLists(mapped, "ids")
    assert len(mapped.data.column("ids").chunks) > 10  # several record batches
    assert [lists[i] for i in range(300)] == rows and lists[-1] == rows[-1]
    assert lists.lengths().tolist() == [len(r) for r in rows]
    blob = pickle.dumps(lists)
    assert len(blob) < 20_000  # the memory-mapped file goes by name, not by value
    assert pickle.loads(blob)[123] == rows[123]


def test_num_proc_is_a_data_option(tmp_path):
    from pydantic import ValidationError

    from textcl.objectives.declutr import DocumentSection

    src = _corpus(tmp_path / "docs.jsonl.gz")
    assert SentenceDataSection(documents=str(src)).num_proc is None
    assert DocumentSection(documents=str(src), num_proc=3).num_proc == 3
    with pytest.raises(ValidationError):
        SentenceDataSection(documents=str(src), num_proc=0)
    section = SentenceDataSection(documents=str(src), num_proc=1, max_tokens=4, held_out_fraction=0.25,
                                  cache_dir=str(tmp_path / "cache"))
    corpora = load_sentence_corpora(section, tiny_tokenizer())
    assert len(corpora.train) + corpora.held_out_documents == corpora.stats.kept


def test_corpus_scale_benchmark_on_a_tiny_corpus(tmp_path, small_documents, monkeypatch):
    sys.path.insert(0, str(ROOT))
    from benchmarks import corpus_scale

    src = tmp_path / "chapters.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as fh:
        fh.write(small_documents.read_text())
    scaled = corpus_scale.make_scaled_corpus(src, 2, tmp_path / "x2.jsonl.gz")
    ids = [json.loads(line)["id"] for line in gzip.open(scaled["path"], "rt")]
    assert scaled["documents"] == 48 and len(set(ids)) == 48 and ids[24] == f"{ids[0]}#r1"

    # One measurement as the benchmark takes it, in a fresh process: peak memory read at the last step.
    work = tmp_path / "one"
    work.mkdir()
    row = corpus_scale.train_run("nsp", str(src), 2, 1, str(corpus_scale.tiny_model(work / "tiny")), work)
    assert row["time_to_first_step_s"] > 0 and row["peak_rss_at_last_step"]["step"] == 2
    # The kernel syncs per-thread RSS counters lazily, so two VmHWM readings of one process can
    # be out of order by a few pages: allow 8 MiB.
    assert 100 < row["peak_rss_at_last_step"]["vm_hwm_mb"] <= row["peak_rss_at_exit"]["vm_hwm_mb"] + 8

    # The whole report (measured in this process: the test checks its fields, not its numbers).
    out = tmp_path / "corpus_scale.json"
    report = corpus_scale.main(["--corpus", str(src), "--scales", "1", "2", "--num-proc", "1", "--steps", "2",
                                "--work-dir", str(tmp_path / "work"), "--out", str(out), "--plot", "--in-process"])
    saved = json.loads(out.read_text())
    assert saved["command"].startswith("python -m benchmarks.corpus_scale --corpus")
    assert {"environment", "settings", "corpora", "results", "rss_ratio_largest_vs_smallest"} <= set(saved)
    assert [c["documents"] for c in saved["corpora"]] == [24, 48]
    for method in ("nsp", "declutr", "sgns"):
        rows = saved["results"][method]
        assert [r["scale"] for r in rows] == [1, 2]
        for r in rows:
            assert r["preprocess_s"]["1"] > 0 and r["time_to_first_step_s"] > 0 and r["peak_rss_mb"] > 50
            assert r["peak_rss_at_last_step"]["step"] == 2
        assert saved["rss_ratio_largest_vs_smallest"][method] > 0
    assert saved["results"]["nsp"][1]["preprocess"]["1"]["sentences"] > saved["results"]["nsp"][0]["preprocess"]["1"]["sentences"]
    assert out.with_suffix(".png").stat().st_size > 1000 and report["settings"]["steps"] == 2
