"""textcl.sentences: the splitter, skipped documents, the on-disk (Arrow) cache, tokenisation;
and the shared sampling helpers of textcl.objectives._sentence_common. The Arrow corpora
themselves (multi-process splitting, lazy views, memory): tests/test_arrow_corpora.py."""

import gzip
import json

import numpy as np
import pytest

import textcl.sentences as sentences
from textcl.documents import DataError
from textcl.objectives._sentence_common import SentenceCorpus, example_rng, heldout_positions
from textcl.sentences import (
    SentenceDocument,
    load_sentence_documents,
    split_sentences,
    tokenize_sentences,
)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_titles_initials_quotes_and_speech_tags():
    text = (
        'Mr. Smith and Mrs. Jones met Dr. J. H. Watson at St. Paul\'s. "Oh!" cried Neb, '
        '"suppose it\'s jam!" It cost 5.50 pounds. “Where has he gone?” said Lady Ker.'
    )
    assert split_sentences(text) == [
        "Mr. Smith and Mrs. Jones met Dr. J. H. Watson at St. Paul's.",
        '"Oh!" cried Neb, "suppose it\'s jam!"',
        "It cost 5.50 pounds.",
        "“Where has he gone?” said Lady Ker.",
    ]


def test_paragraphs_whitespace_and_repairs():
    text = (
        "A heading without a full stop\n\n  The next   paragraph\nwraps over lines.  \n \n"
        '"Then I\'ll go," said the voice; "you just see."\n\n'
        "We rode towards London--Mr. Romaine and I--in the chaise."
    )
    assert split_sentences(text) == [
        "A heading without a full stop",  # a sentence never spans two paragraphs
        "The next paragraph wraps over lines.",
        '"Then I\'ll go," said the voice; "you just see."',
        "We rode towards London--Mr. Romaine and I--in the chaise.",
    ]
    assert split_sentences("") == [] and split_sentences(" \n\n \t") == []


def test_empty_and_short_documents_are_counted_and_skipped(tmp_path):
    src = _jsonl(tmp_path / "docs.jsonl", [
        {"id": "a", "text": "One. Two. Three."},
        {"id": "empty", "text": ""},
        {"id": "blank", "text": "  \n\n  "},
        {"id": "one", "text": "Only one sentence here."},
        {"id": "b", "text": "First.\n\nSecond."},
    ])
    docs, stats = load_sentence_documents(str(src), cache_dir=tmp_path / "cache")
    assert [d.id for d in docs] == ["a", "b"]
    assert docs[1].sentences == ["First.", "Second."]
    assert (stats.documents, stats.kept, stats.empty, stats.too_few_sentences, stats.sentences) == (5, 2, 2, 1, 5)
    docs3, stats3 = load_sentence_documents(str(src), min_sentences=3, cache_dir=tmp_path / "cache")
    assert [d.id for d in docs3] == ["a"] and stats3.too_few_sentences == 2


def test_all_empty_corpus_raises_naming_the_file(tmp_path):
    src = _jsonl(tmp_path / "hollow.jsonl", [{"id": 1, "text": ""}, {"id": 2, "text": "   "}])
    with pytest.raises(DataError, match=r"hollow\.jsonl.*2 read: 2 empty"):
        load_sentence_documents(str(src), cache_dir=tmp_path / "cache")
    one = _jsonl(tmp_path / "single.jsonl", [{"id": 1, "text": "Just one."}])
    with pytest.raises(DataError, match=r"single\.jsonl.*min_sentences"):
        load_sentence_documents(str(one), cache_dir=tmp_path / "cache")


def test_cache_hit_skips_splitting_and_content_change_misses(tmp_path, monkeypatch):
    src = tmp_path / "docs.jsonl.gz"
    rows = [{"id": f"d{i}", "text": f"Sentence one of {i}. Sentence two of {i}."} for i in range(4)]
    with gzip.open(src, "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "cache"
    first = load_sentence_documents(str(src), cache_dir=cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].name.endswith(".arrow")  # no temp file left behind

    def no_split(text):
        raise AssertionError("split_sentences called on a cache hit")

    monkeypatch.setattr(sentences, "split_sentences", no_split)
    assert load_sentence_documents(str(src), cache_dir=cache) == first
    # Same content under another name and mtime: still a hit (the key is the content hash).
    copy = tmp_path / "copy.jsonl.gz"
    copy.write_bytes(src.read_bytes())
    assert load_sentence_documents(str(copy), cache_dir=cache)[0] == first[0]
    # Changed content: a miss, so the splitter runs again.
    with gzip.open(src, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "x", "text": "New. Text."}) + "\n")
    with pytest.raises(AssertionError, match="cache hit"):
        load_sentence_documents(str(src), cache_dir=cache)


def test_tokenize_sentences_truncates_without_special_tokens():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    docs = [SentenceDocument("a", ["hello world", "the cat sat on the mat today"]), SentenceDocument("b", ["yes"])]
    ids = tokenize_sentences(tok, docs, max_tokens=3)
    assert [len(d) for d in ids] == [2, 1]
    assert ids[0][0] == tok("hello world", add_special_tokens=False)["input_ids"]
    assert ids[0][1] == tok("the cat sat", add_special_tokens=False)["input_ids"]
    assert tok.cls_token_id not in ids[0][0] and tok.sep_token_id not in ids[0][0]


def test_sentence_corpus_ids_and_random_other_document():
    docs = [SentenceDocument(str(d), [f"s{s}" for s in range(n)]) for d, n in enumerate([3, 1, 4])]
    ids = [[[10 * d + s] for s in range(n)] for d, n in enumerate([3, 1, 4])]
    ids[2][3] = [0]  # same tokens as document 0's first sentence
    c = SentenceCorpus(docs, ids)
    assert c.num_sentences == 8 and c.gid(2, 1) == 5 and c.sentence(2, 2) == [22]
    assert c.text_key[c.gid(2, 3)] == c.text_key[c.gid(0, 0)] != c.text_key[c.gid(0, 1)]
    assert c.positions(lambda n, s: s + 1 < n).tolist() == [[0, 0], [0, 1], [2, 0], [2, 1], [2, 2]]
    rng = np.random.default_rng(0)
    draws = [c.random_other_sentence(rng, 0) for _ in range(300)]
    assert {d for d, _ in draws} == {1, 2}
    assert all(0 <= s < c.lengths[d] for d, s in draws)


def test_example_rng_and_heldout_positions_are_fixed():
    a = example_rng(1, 0, 2, 3).integers(0, 1 << 30, 4)
    assert (a == example_rng(1, 0, 2, 3).integers(0, 1 << 30, 4)).all()
    assert not (a == example_rng(1, 0, 3, 3).integers(0, 1 << 30, 4)).all()
    docs = [SentenceDocument(str(d), ["x"] * 10) for d in range(3)]
    c = SentenceCorpus(docs, [[[d, s] for s in range(10)] for d in range(3)])
    p = heldout_positions(c, lambda n, s: s + 1 < n, 4, seed=5)
    assert len(p) == 12 and (p[:, 1] < 9).all()
    assert (p == heldout_positions(c, lambda n, s: s + 1 < n, 4, seed=5)).all()
