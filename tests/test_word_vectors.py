"""WordVectors: word2vec text/binary I/O (checked against gensim), lookups, errors."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest

from textcl.word_vectors import WordVectors

gensim_models = pytest.importorskip("gensim.models")
KeyedVectors = gensim_models.KeyedVectors


@pytest.fixture()
def wv() -> WordVectors:
    rng = np.random.default_rng(0)
    words = ["the", "cat", "dog", "Paris", "café", "naïve", "x", "don't"] + [
        f"w{i}" for i in range(42)
    ]
    vectors = rng.standard_normal((len(words), 7)).astype(np.float32)
    vectors[3] *= 1e-3
    vectors[4] *= 1e3
    return WordVectors(words, vectors)


def test_extreme_values_roundtrip_exactly(tmp_path: Path) -> None:
    values = np.array(
        [[1e-38, -3.4e38, 1.4e-45, 0.1], [np.pi, -0.0, 1 / 3, 16777217.0]], np.float32
    )
    wv = WordVectors(["tiny", "pi"], values)
    for name in ("v.txt", "v.bin"):
        np.testing.assert_array_equal(WordVectors.load(wv.save(tmp_path / name)).vectors, values)
        kv = KeyedVectors.load_word2vec_format(str(tmp_path / name), binary=name.endswith(".bin"))
        np.testing.assert_array_equal(kv.vectors, values)


def _gensim(wv: WordVectors) -> KeyedVectors:
    kv = KeyedVectors(wv.dim)
    kv.add_vectors(wv.words, wv.vectors)
    return kv


@pytest.mark.parametrize("name", ["v.txt", "v.bin", "v.txt.gz", "v.bin.gz"])
def test_save_load_roundtrip_and_gensim_reads_it(
    wv: WordVectors, tmp_path: Path, name: str
) -> None:
    path = wv.save(tmp_path / name)
    back = WordVectors.load(path)
    assert back.words == wv.words
    np.testing.assert_array_equal(back.vectors, wv.vectors)  # exact, text included
    kv = KeyedVectors.load_word2vec_format(str(path), binary=".bin" in name)
    assert kv.index_to_key == wv.words
    np.testing.assert_array_equal(kv.vectors, wv.vectors)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # temp file renamed away


@pytest.mark.parametrize("binary", [False, True])
def test_reads_gensim_output(wv: WordVectors, tmp_path: Path, binary: bool) -> None:
    path = tmp_path / ("g.bin" if binary else "g.txt")
    _gensim(wv).save_word2vec_format(str(path), binary=binary)  # gensim: no newline in binary
    back = WordVectors.load(path)
    assert back.words == wv.words
    np.testing.assert_array_equal(back.vectors, wv.vectors)


def test_format_from_argument_and_sniffing(wv: WordVectors, tmp_path: Path) -> None:
    wv.save(tmp_path / "a", binary=True)
    wv.save(tmp_path / "b", binary=False)
    for name in ("a", "b"):
        np.testing.assert_array_equal(WordVectors.load(tmp_path / name).vectors, wv.vectors)
    np.testing.assert_array_equal(WordVectors.load(tmp_path / "a", binary=True).vectors, wv.vectors)


def test_directory_prefers_bin(wv: WordVectors, tmp_path: Path) -> None:
    WordVectors(wv.words[:3], wv.vectors[:3]).save(tmp_path / "vectors.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"empty is a directory without vectors.bin or vectors.txt"
    ):
        WordVectors.load(tmp_path / "empty")
    assert len(WordVectors.load(tmp_path)) == 3
    wv.save(tmp_path / "vectors.bin")
    assert len(WordVectors.load(tmp_path)) == len(wv)


def test_limit(wv: WordVectors, tmp_path: Path) -> None:
    for name in ("v.txt", "v.bin"):
        back = WordVectors.load(wv.save(tmp_path / name), limit=5)
        assert back.words == wv.words[:5]
        np.testing.assert_array_equal(back.vectors, wv.vectors[:5])


def test_overwrite_is_atomic_and_bad_words_refused(wv: WordVectors, tmp_path: Path) -> None:
    path = wv.save(tmp_path / "v.txt")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="space"):
        WordVectors(["ok", "two words"], np.zeros((2, 2))).save(path)
    assert path.read_bytes() == before
    WordVectors(["a"], np.ones((1, 2))).save(path)
    assert WordVectors.load(path).words == ["a"]


def test_missing_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        WordVectors.load(tmp_path / "nope.bin")


@pytest.mark.parametrize(
    "text, match",
    [
        ("hello world\n", r"bad.txt, line 1: expected a word2vec header"),
        ("2 3\na 1 2 3\nb 1 2\n", r"bad.txt, line 3: expected a word and 3 values, got 2"),
        ("2 3\na 1 2 3\nb 1 2 3 4\n", r"bad.txt, line 3: expected a word and 3 values, got 4"),
        ("1 3\na 1 x 3\n", r"bad.txt, line 2: non-numeric"),
        ("3 3\na 1 2 3\n", r"bad.txt, line 3: file ends after 1 of 3"),
    ],
)
def test_malformed_text(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        WordVectors.load(path)


def test_truncated_binary(wv: WordVectors, tmp_path: Path) -> None:
    path = wv.save(tmp_path / "v.bin")
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=r"v.bin: binary file ends after 49 of 50"):
        WordVectors.load(path)


def test_duplicate_words_keep_first_like_gensim(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dup.txt"
    path.write_text("3 2\na 1 2\nb 3 4\na 5 6\n")
    with caplog.at_level(logging.WARNING):
        back = WordVectors.load(path)
    assert "duplicate word 'a'" in caplog.text
    kv = KeyedVectors.load_word2vec_format(str(path))
    # gensim 4.4 keeps a None placeholder row for the dropped duplicate at the end.
    assert back.words == [w for w in kv.index_to_key if w is not None] == ["a", "b"]
    np.testing.assert_array_equal(back.vectors, kv.vectors[:2])
    with pytest.raises(ValueError, match="duplicate"):
        WordVectors(["a", "a"], np.zeros((2, 2)))


def test_lookups_and_unknown_word(wv: WordVectors) -> None:
    assert len(wv) == 50 and wv.dim == 7 and "cat" in wv and "Cat" not in wv
    assert wv.index["dog"] == 2
    np.testing.assert_array_equal(wv["dog"], wv.vectors[2])
    with pytest.raises(KeyError, match="'unicorn'"):
        wv["unicorn"]
    with pytest.raises(KeyError, match="'unicorn'"):
        wv.similarity("cat", "unicorn")


def test_similarity_and_most_similar_match_gensim(wv: WordVectors) -> None:
    kv = _gensim(wv)
    assert wv.similarity("cat", "dog") == pytest.approx(
        float(kv.similarity("cat", "dog")), abs=1e-6
    )
    for query, kwargs in [
        ("cat", {}),
        ("w3", {"topn": 5, "restrict_vocab": 20}),
        (["cat", "dog"], {"topn": 4}),
    ]:
        ours = wv.most_similar(query, **kwargs)
        theirs = kv.most_similar(positive=query, **kwargs)
        assert [w for w, _ in ours] == [w for w, _ in theirs]
        np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-6)
        assert not {w for w, _ in ours} & set([query] if isinstance(query, str) else query)
    vec = wv["cat"]
    ours = wv.most_similar(vec, topn=3)
    assert ours[0][0] == "cat" and ours[0][1] == pytest.approx(
        1.0, abs=1e-6
    )  # vectors exclude nothing


def test_zero_vector_gives_zero_cosine() -> None:
    wv = WordVectors(["a", "b", "z"], np.array([[1, 0], [1, 1], [0, 0]], dtype=np.float32))
    assert wv.similarity("a", "z") == 0.0
    assert [w for w, _ in wv.most_similar("a")] == ["b", "z"]


def test_gzip_text_is_gzip(wv: WordVectors, tmp_path: Path) -> None:
    path = wv.save(tmp_path / "v.txt.gz")
    with gzip.open(path, "rt") as fh:
        assert fh.readline() == "50 7\n"
