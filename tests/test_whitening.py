"""textcl.whitening: the fit is exact, the saved layer round-trips through sentence-transformers."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pytest
import torch

from tests._tiny import tiny_encoder
from textcl.embed import Embedder
from textcl.encoders import TextEncoder
from textcl.whitening import Whitening, main, read_texts, sample_texts, whiten_model

SUBJECTS = ["A man", "The woman", "A child", "Our teacher", "The old dog", "A young cat", "My neighbour"]
VERBS = ["reads", "plays", "cooks", "paints", "watches", "finds", "carries"]
OBJECTS = ["a book", "the guitar", "an onion", "the fence", "a movie", "the keys", "a heavy box"]
PLACES = ["at home.", "in the park.", "on the train.", "by the river."]
TEXTS = [" ".join(parts) for parts in itertools.product(SUBJECTS, VERBS, OBJECTS, PLACES)]  # 1372


def test_fit_on_a_hand_example():
    # Mean 0, covariance diag(2/3, 8/3): the y axis is the top component.
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    w = Whitening.fit(x)
    y = w(torch.tensor(x, dtype=torch.float32)).numpy()
    expected = np.array([[0, 1 / np.sqrt(2 / 3)], [0, -1 / np.sqrt(2 / 3)], [2 / np.sqrt(8 / 3), 0], [-2 / np.sqrt(8 / 3), 0]])
    np.testing.assert_allclose(np.abs(y), np.abs(expected), atol=1e-6)  # eigenvectors have a free sign
    np.testing.assert_allclose(w.explained, [0.8, 0.2], atol=1e-12)
    top = Whitening.fit(x, dim=1)
    np.testing.assert_allclose(np.abs(top(torch.tensor(x, dtype=torch.float32)).numpy()[:, 0]), np.abs(expected[:, 0]), atol=1e-6)


@pytest.mark.parametrize("dim", [None, 5])
def test_fitted_embeddings_have_zero_mean_and_identity_covariance(dim):
    rng = np.random.default_rng(0)
    # Anisotropic, shifted data: one direction dominates, as in untrained encoders.
    x = rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12)) * np.linspace(5, 0.5, 12) + 3.0
    w = Whitening.fit(x, dim)
    y = w(torch.tensor(x, dtype=torch.float32)).double().numpy()
    k = 12 if dim is None else dim
    assert y.shape == (500, k)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y.T), np.eye(k), atol=1e-4)
    assert np.all(np.diff(w.explained) <= 0) and w.explained.sum() <= 1 + 1e-12
    # The kept directions are the principal ones: same subspace as the top-k SVD of the centred data.
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    directions = w.linear.weight.double().numpy()
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    np.testing.assert_allclose(np.abs(directions @ vt[:k].T), np.eye(k), atol=1e-6)


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        Whitening.fit(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        Whitening.fit(np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 1.0]]))
    with pytest.raises(ValueError, match="dim must be in 1..2"):
        Whitening.fit(np.ones((5, 2)) + np.arange(5)[:, None], dim=3)
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        Whitening.fit(np.ones(5))


def _whitened(tmp_path, dim=16):
    src = tmp_path / "model"
    tiny_encoder(tmp_path, normalize=True).save(src, model_card="# tiny\n")
    facts = whiten_model(src, TEXTS, tmp_path / "white", dim=dim, max_texts=600, device="cpu")
    return src, tmp_path / "white", facts


def test_whitened_model_loads_in_textcl_and_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    src, out, facts = _whitened(tmp_path)
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert facts["texts"] == 600 and facts["dim"] == 16 and facts["in_dim"] == 128
    assert json.loads((out / "whitening.json").read_text())["dim"] == 16
    card = (out / "README.md").read_text()
    assert card.startswith("# tiny") and "## Whitening" in card and "600 unlabelled sentences" in card

    ours = Embedder.load(out, device="cpu")
    assert ours.dim == 16
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(ours.encode(TEXTS[:40], batch_size=7), st.encode(TEXTS[:40]), atol=1e-5, rtol=0)

    # On the sentences it was fitted to, the un-normalised output is white.
    fitted = sample_texts(TEXTS, 600, seed=0)
    y = ours.encode(fitted, normalize=False).astype(np.float64)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(np.cov(y.T), np.eye(16), atol=1e-3)

    # It is the source model's pooled vector through the saved affine map.
    pooled = Embedder.load(src, device="cpu").encode(TEXTS[:5], normalize=False)
    layer = Whitening.load(out / "2_Dense")
    expected = layer(torch.from_numpy(pooled)).numpy()
    np.testing.assert_allclose(ours.encode(TEXTS[:5], normalize=False), expected, atol=1e-4, rtol=1e-5)


def test_training_drops_the_layer_and_whitening_twice_is_refused(tmp_path, caplog):
    src, out, _ = _whitened(tmp_path, dim=8)
    with caplog.at_level(logging.WARNING, logger="textcl.encoders"):
        enc = TextEncoder.from_pretrained(out, output_layer=False)
    assert enc.output_layer is None and "dropped" in caplog.text
    np.testing.assert_allclose(
        Embedder(enc, device="cpu").encode(TEXTS[:4]), Embedder.load(src, device="cpu").encode(TEXTS[:4]), atol=1e-5
    )
    # What the text objectives build for training: no output layer.
    from textcl.objectives._encoder import EncoderSection, build_encoder

    assert build_encoder(EncoderSection(name_or_path=str(out))).output_layer is None
    with pytest.raises(ValueError, match="already ends with"):
        whiten_model(out, TEXTS, tmp_path / "again", device="cpu")


def test_non_affine_dense_is_an_error(tmp_path):
    _, out, _ = _whitened(tmp_path, dim=8)
    cfg = json.loads((out / "2_Dense" / "config.json").read_text())
    cfg["activation_function"] = "torch.nn.modules.activation.Tanh"
    (out / "2_Dense" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="activation torch.nn.modules.activation.Tanh"):
        TextEncoder.from_pretrained(out)


def test_cli_reads_a_text_file_and_reports_missing_corpus(tmp_path, capsys):
    src = tmp_path / "model"
    tiny_encoder(tmp_path).save(src)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS[:300]) + "\n\n", encoding="utf-8")
    assert read_texts(corpus) == TEXTS[:300]
    facts = main([str(src), "--corpus", str(corpus), "--out", str(tmp_path / "w"), "--dim", "4",
                  "--sentences", "250", "--device", "cpu"])
    assert facts["texts"] == 250 and Embedder.load(tmp_path / "w", device="cpu").dim == 4
    with pytest.raises(SystemExit) as exc:
        main([str(src), "--corpus", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x")])
    assert exc.value.code == 2 and "nope.txt not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
