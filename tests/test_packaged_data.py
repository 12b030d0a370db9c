"""The small data files shipped in textcl/data/ match what their README documents."""

from __future__ import annotations

import collections
import gzip
import hashlib
import json
import pathlib
import re

import pytest

from textcl.data import DATA_DIR, available, data_path, resolve_path

README = DATA_DIR / "README.md"
GUTENBERG = "gutenberg_sample.jsonl.gz"
STS = "sts_sample.jsonl"
GUTENBERG_FIELDS = ["id", "title", "author", "chapter", "heading", "n_words", "text"]
STS_FIELDS = ["sentence1", "sentence2", "score", "genre", "source", "year", "split"]


def _readme_table() -> dict[str, tuple[int, int, str]]:
    """{file: (rows, bytes, sha256)} from the README's "Files" table."""
    row = re.compile(r"^\| `([^`]+)` \| (\d+) \| (\d+) \| `([0-9a-f]{64})` \|$", re.MULTILINE)
    table = {m[1]: (int(m[2]), int(m[3]), m[4]) for m in row.finditer(README.read_text("utf-8"))}
    assert set(table) == {GUTENBERG, STS}
    return table


@pytest.fixture(scope="module")
def chapters() -> list[dict]:
    with gzip.open(data_path(GUTENBERG), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    with data_path(STS).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("name", [GUTENBERG, STS])
def test_sha256_size_and_rows_match_readme(name: str) -> None:
    rows, size, sha = _readme_table()[name]
    blob = data_path(name).read_bytes()
    assert len(blob) == size
    assert hashlib.sha256(blob).hexdigest() == sha
    if name.endswith(".gz"):
        blob = gzip.decompress(blob)
    assert blob.endswith(b"\n") and blob.count(b"\n") == rows


def test_gutenberg_sample(chapters: list[dict]) -> None:
    assert data_path(GUTENBERG).stat().st_size <= 2_500_000
    # Reproducible gzip: no timestamp in the header.
    assert data_path(GUTENBERG).read_bytes()[4:8] == b"\0\0\0\0"
    assert len(chapters) == 500
    for r in chapters:
        assert list(r) == GUTENBERG_FIELDS
        assert isinstance(r["chapter"], int) and isinstance(r["heading"], str)
        assert 800 <= r["n_words"] <= 3000
        assert r["n_words"] == len(r["text"].split())
        assert "gutenberg" not in r["text"].lower()
    ids = [r["id"] for r in chapters]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    per_book = collections.Counter(i.split("-ch")[0] for i in ids)
    assert len(per_book) == 346 and max(per_book.values()) <= 2
    assert sum(r["n_words"] for r in chapters) == 996_404


def test_sts_sample(pairs: list[dict]) -> None:
    assert len(pairs) == 600
    for r in pairs:
        assert list(r) == STS_FIELDS
        assert isinstance(r["score"], float) and 0.0 <= r["score"] <= 5.0
        assert r["sentence1"].strip() and r["sentence2"].strip()
        assert r["genre"] == "main-captions"
    counts = collections.Counter((r["split"], r["source"]) for r in pairs)
    assert counts == {
        ("dev", "images"): 250,
        ("dev", "track5.en-en"): 125,
        ("train", "images"): 225,
    }
    assert len({(r["sentence1"], r["sentence2"]) for r in pairs}) == len(pairs)
    # A spread of scores: every unit band is well populated.
    bands = collections.Counter(min(int(r["score"]), 4) for r in pairs)
    assert min(bands[b] for b in range(5)) >= 100


def test_licence_file_is_shipped() -> None:
    text = data_path("licenses/stsb_LICENSE.txt").read_text("utf-8")
    assert "Attribution - Share Alike 4.0" in text and "Attribution-ShareAlike" in text


def test_every_packaged_file_is_documented() -> None:
    readme = README.read_text("utf-8")
    names = available()
    assert {GUTENBERG, STS, "licenses/stsb_LICENSE.txt"} <= set(names)
    for name in names:
        assert name in readme, name


def test_resolve_path() -> None:
    assert resolve_path(f"textcl://data/{STS}") == data_path(STS)
    assert resolve_path(f"textcl://data/{GUTENBERG}").is_file()
    assert resolve_path("some/dir/file.jsonl") == pathlib.Path("some/dir/file.jsonl")
    assert resolve_path("~/x.jsonl") == pathlib.Path.home() / "x.jsonl"
    assert resolve_path(pathlib.Path("a/b")) == pathlib.Path("a/b")
    with pytest.raises(FileNotFoundError, match="sts_sample.jsonl"):
        resolve_path("textcl://data/missing.jsonl")
    with pytest.raises(ValueError):
        resolve_path("textcl://models/x")


@pytest.mark.parametrize("name", ["missing.jsonl", "", "../__init__.py", "__init__.py", "licenses"])
def test_data_path_rejects_non_data(name: str) -> None:
    with pytest.raises(FileNotFoundError, match=GUTENBERG):
        data_path(name)
