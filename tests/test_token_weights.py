"""SIF token weights for the bag paths (``model.token_weights``): the weights equal their
analytic value, the bag is the weighted mean, and saved models give the same vectors in textcl
and sentence-transformers."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests._tiny import SENTENCES, tiny_encoder
from textcl.core.recipe import RecipeError
from textcl.embed import Embedder
from textcl.encoders import TextEncoder
from textcl.objectives._encoder import EncoderSection, build_encoder
from textcl.pooling import bow_mean
from textcl.token_weights import count_tokens, sif_weights
from textcl.whitening import whiten_model

TEXTS = [s for s in SENTENCES if s] + [f"the sentence number {i} about the topic {i % 7}" for i in range(40)]


def test_sif_weights_equal_a_over_a_plus_p():
    counts = torch.tensor([0, 1, 3])  # p = 0, 1/4, 3/4
    np.testing.assert_allclose(sif_weights(counts, 0.5).numpy(), [1.0, 0.5 / 0.75, 0.5 / 1.25], rtol=1e-6)
    with pytest.raises(ValueError, match="a must be > 0"):
        sif_weights(counts, 0.0)
    with pytest.raises(ValueError, match="empty"):
        sif_weights(torch.zeros(3, dtype=torch.int64), 1e-3)


def test_count_tokens_counts_the_ids_the_encoder_sees(tmp_path):
    enc = tiny_encoder(tmp_path)
    counts = count_tokens(enc.tokenizer, TEXTS, max_length=8, batch_size=7)  # batches split the texts
    manual = Counter(i for t in TEXTS for i in enc.tokenizer(t, truncation=True, max_length=8)["input_ids"])
    assert counts.shape == (len(enc.tokenizer),) and int(counts.sum()) == sum(manual.values())
    assert all(int(counts[i]) == n for i, n in manual.items())
    assert int(counts[enc.tokenizer.cls_token_id]) == len(TEXTS)  # special tokens count: the bag averages them


def _weighted_bag(table: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    out = []
    for row, m in zip(ids, mask):
        kept = row[m.bool()]
        out.append((table[kept] * w[kept, None]).sum(0) / w[kept].sum())
    return torch.stack(out)


def test_bag_paths_are_weighted_means(tmp_path):
    plain = tiny_encoder(tmp_path).eval()
    vocab = len(plain.tokenizer)
    w = torch.rand(vocab, generator=torch.Generator().manual_seed(0)) + 0.05
    enc = TextEncoder(plain.transformer, plain.tokenizer, max_seq_length=32, bow_weight=1.0, context_weight=0.0,
                      start_bag_weight=0.5, token_weights=w).eval()
    with torch.no_grad():  # the trained table moves away from the start copy
        enc.transformer.get_input_embeddings().weight.add_(0.1 * torch.randn(vocab, plain.dim))
    feats = enc.tokenize(TEXTS[:6])
    ids, mask = feats["input_ids"], feats["attention_mask"]
    trained = _weighted_bag(enc.transformer.get_input_embeddings().weight, ids, mask, w)
    start = _weighted_bag(enc.start_bag.weight, ids, mask, w)
    with torch.no_grad():
        np.testing.assert_allclose(enc(feats).numpy(), torch.cat([F.normalize(trained, dim=-1),
                                                                   0.5 * F.normalize(start, dim=-1)], 1).numpy(), atol=1e-5)
        # Uniform weights are the plain mean; the residual path with a contextual part is weighted too.
        ones = torch.ones(vocab)
        np.testing.assert_allclose(bow_mean(enc.start_bag, ids, mask, ones).numpy(),
                                   bow_mean(enc.start_bag, ids, mask).numpy(), atol=1e-6)
        residual = TextEncoder(plain.transformer, plain.tokenizer, max_seq_length=32, bow_weight=2.0, token_weights=w).eval()
        hidden = plain.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True) + 2.0 * trained
        np.testing.assert_allclose(residual(feats).numpy(), expected.numpy(), atol=1e-5)
    assert "token_weights" in dict(enc.named_buffers()) and not any(
        p is enc.token_weights for p in enc.parameters())
    with pytest.raises(ValueError, match="one weight per vocabulary id"):
        enc.set_token_weights(torch.ones(5))
    with pytest.raises(ValueError, match="bag paths"):
        TextEncoder(plain.transformer, plain.tokenizer, token_weights=w)


def test_weighted_model_saves_and_loads_in_textcl_and_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    plain = tiny_encoder(tmp_path)
    w = torch.rand(len(plain.tokenizer), generator=torch.Generator().manual_seed(1)) + 0.05
    for name, kwargs in {"bag": {"bow_weight": 1.0, "context_weight": 0.0, "start_bag_weight": 1.0},
                         "residual": {"bow_weight": 2.0}}.items():
        enc = TextEncoder(plain.transformer, plain.tokenizer, max_seq_length=32, token_weights=w, **kwargs)
        enc.save(tmp_path / name, model_card=f"# {name}\n")
        again = TextEncoder.from_pretrained(tmp_path / name)
        assert torch.equal(again.token_weights, w)
        ours = Embedder.load(tmp_path / name, device="cpu").encode(TEXTS, batch_size=8)
        st = SentenceTransformer(str(tmp_path / name), device="cpu", trust_remote_code=True).encode(TEXTS)
        np.testing.assert_allclose(ours, st, atol=1e-5, rtol=0)
        with torch.no_grad():
            np.testing.assert_allclose(ours, F.normalize(enc.eval()(enc.tokenize(TEXTS)), dim=-1).numpy(), atol=1e-5)
        # Training on from the saved model keeps its weights; a whitened copy keeps them too.
        assert torch.equal(build_encoder(EncoderSection(name_or_path=str(tmp_path / name))).token_weights, w)
    whiten_model(tmp_path / "bag", TEXTS, tmp_path / "bag-white", show_progress=False)
    assert torch.equal(TextEncoder.from_pretrained(tmp_path / "bag-white").token_weights, w)
    cfg = json.loads((tmp_path / "bag" / "3_StartBag" / "config.json").read_text())
    assert cfg["token_weighted"] is True
    # Without the flag (every model saved before weights existed) the bag is the plain mean.
    plain_bag = TextEncoder(plain.transformer, plain.tokenizer, max_seq_length=32, bow_weight=1.0, context_weight=0.0)
    plain_bag.save(tmp_path / "plain")
    assert TextEncoder.from_pretrained(tmp_path / "plain").token_weights is None


def test_recipe_counts_the_corpus_and_sets_sif_weights(tmp_path):
    src = tmp_path / "model"
    tiny_encoder(tmp_path).save(src)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    section = {"sif_a": 1e-2, "corpus": str(corpus), "max_texts": None}
    enc = build_encoder(EncoderSection(name_or_path=str(src), bow_weight=1.0, context_weight=0.0,
                                       start_bag_weight=1.0, token_weights=section))
    counts = Counter(i for t in dict.fromkeys(TEXTS) for i in enc.tokenizer(t, truncation=True, max_length=32)["input_ids"])
    total = sum(counts.values())
    the = enc.tokenizer.convert_tokens_to_ids("the")
    assert enc.token_weights[the].item() == pytest.approx(1e-2 / (1e-2 + counts[the] / total), rel=1e-5)
    unseen = enc.tokenizer.convert_tokens_to_ids("zebra")
    assert unseen not in counts and enc.token_weights[unseen].item() == 1.0
    with pytest.raises(RecipeError, match="model.token_weights.corpus: .* not found"):
        build_encoder(EncoderSection(name_or_path=str(src), bow_weight=1.0,
                                     token_weights={"corpus": str(tmp_path / "missing.txt")}))
    with pytest.raises(RecipeError, match="model.token_weights: .*bow_weight"):
        build_encoder(EncoderSection(name_or_path=str(src), token_weights={"corpus": str(corpus)}))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(RecipeError, match="model.token_weights.corpus: .*no sentences"):
        build_encoder(EncoderSection(name_or_path=str(src), bow_weight=1.0, token_weights={"corpus": str(empty)}))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"abc\x00\x01\x02\n" * 10)
    with pytest.raises(RecipeError, match="model.token_weights.corpus: .*binary"):
        build_encoder(EncoderSection(name_or_path=str(src), bow_weight=1.0, token_weights={"corpus": str(binary)}))
