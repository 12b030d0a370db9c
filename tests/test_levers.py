"""Levers that keep the start's lexical signal: a residual bag-of-words path, an lr multiplier
for the input embeddings (0 freezes them), an L2-SP pull toward the start's embeddings, and a
whitening layer trained through instead of dropped."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests._tiny import SENTENCES, tiny_encoder
from textcl.core.method import Method
from textcl.core.optim import build_optimizer
from textcl.core.recipe import RecipeError
from textcl.embed import Embedder
from textcl.encoders import TextEncoder, pool
from textcl.objectives._encoder import EncoderSection, build_encoder
from textcl.whitening import whiten_model

TEXTS = [s for s in SENTENCES if s] + [f"sentence number {i} about topic {i % 7}" for i in range(40)]


class _Holder(Method):
    """The smallest Method around an encoder: what the trainer's optimizer sees."""

    def __init__(self, encoder: TextEncoder):
        super().__init__()
        self.encoder = encoder


def _cfg(lr=1e-2, optimizer="sgd"):
    return SimpleNamespace(optimizer=optimizer, lr=lr, momentum=0.0, weight_decay=0.0, betas=(0.9, 0.999))


def test_bow_residual_adds_the_mean_of_input_embeddings(tmp_path):
    plain = tiny_encoder(tmp_path).eval()
    bow = TextEncoder(plain.transformer, plain.tokenizer, max_seq_length=32, bow_weight=0.5).eval()
    feats = plain.tokenize(TEXTS[:5])
    with torch.no_grad():
        hidden = plain.transformer(input_ids=feats["input_ids"], attention_mask=feats["attention_mask"]).last_hidden_state
        rows = plain.transformer.get_input_embeddings().weight[feats["input_ids"]]
        mask = feats["attention_mask"].unsqueeze(-1).float()
        expected = pool(hidden, feats["attention_mask"], "mean") + 0.5 * (rows * mask).sum(1) / mask.sum(1)
        np.testing.assert_allclose(bow(feats).numpy(), expected.numpy(), atol=1e-5)
        assert not torch.allclose(bow(feats), plain(feats))


def test_bow_residual_saves_and_loads_in_textcl_and_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    enc = tiny_encoder(tmp_path)
    enc = TextEncoder(enc.transformer, enc.tokenizer, max_seq_length=32, bow_weight=2.0)
    enc.save(tmp_path / "m", model_card="# m\n")
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "BagOfWordsResidual", "Normalize"]
    assert TextEncoder.from_pretrained(tmp_path / "m").bow_weight == 2.0
    ours = Embedder.load(tmp_path / "m", device="cpu").encode(TEXTS, batch_size=8)
    # sentence-transformers imports classes outside its namespace only when trusted.
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(tmp_path / "m"), device="cpu")
    st = SentenceTransformer(str(tmp_path / "m"), device="cpu", trust_remote_code=True).encode(TEXTS)
    np.testing.assert_allclose(ours, st, atol=1e-5, rtol=0)
    # Whitening a bag-of-words model keeps the path and puts the Dense layer after it.
    whiten_model(tmp_path / "m", TEXTS * 10, tmp_path / "w", dim=16, max_texts=400, device="cpu")
    ours_w = Embedder.load(tmp_path / "w", device="cpu").encode(TEXTS, batch_size=8)
    st_w = SentenceTransformer(str(tmp_path / "w"), device="cpu", trust_remote_code=True).encode(TEXTS)
    np.testing.assert_allclose(ours_w, st_w, atol=1e-5, rtol=0)
    # The same from the plain model with the path set at whitening time (the CLI's --bow-weight).
    tiny_encoder(tmp_path).save(tmp_path / "plain")
    facts = whiten_model(tmp_path / "plain", TEXTS * 10, tmp_path / "w2", dim=16, max_texts=400, device="cpu",
                         bow_weight=2.0)
    assert facts["bow_weight"] == 2.0
    np.testing.assert_allclose(Embedder.load(tmp_path / "w2", device="cpu").encode(TEXTS, batch_size=8), ours_w,
                               atol=1e-5, rtol=0)


def test_default_groups_are_unchanged_by_per_parameter_options(tmp_path):
    groups = _Holder(tiny_encoder(tmp_path)).parameter_groups(0.01)
    assert [(g["weight_decay"], g["lars_exclude"]) for g in groups] == [(0.01, False), (0.0, True)]
    assert not any("lr_scale" in g or "anchor" in g for g in groups)


def test_embedding_lr_scale_sets_the_group_lr_and_zero_freezes(tmp_path):
    enc = tiny_encoder(tmp_path)
    enc.configure_training(embedding_lr_scale=0.1)
    method = _Holder(enc)
    opt = build_optimizer(method.parameter_groups(0.0), _cfg(lr=1e-2))
    emb = enc.transformer.get_input_embeddings().weight
    (group,) = [g for g in opt.param_groups if any(p is emb for p in g["params"])]
    assert group["lr"] == pytest.approx(1e-3) and group["params"] == [emb]
    assert all(g["lr"] == pytest.approx(1e-2) for g in opt.param_groups if g is not group)

    frozen = tiny_encoder(tmp_path)
    frozen.configure_training(embedding_lr_scale=0.0)
    method = _Holder(frozen).train()
    opt = build_optimizer(method.parameter_groups(0.0), _cfg(lr=1e-1))
    emb = frozen.transformer.get_input_embeddings().weight
    before, layer0 = emb.detach().clone(), frozen.transformer.encoder.layer[0].attention.self.query.weight.detach().clone()
    frozen(frozen.tokenize(TEXTS[:4])).pow(2).sum().backward()
    opt.step()
    assert torch.equal(emb, before) and emb.grad is None
    assert not torch.equal(frozen.transformer.encoder.layer[0].attention.self.query.weight, layer0)


def test_anchor_pulls_embeddings_toward_the_start_exactly(tmp_path):
    enc = tiny_encoder(tmp_path)
    enc.configure_training(anchor_weight=0.5)
    emb = enc.transformer.get_input_embeddings().weight
    start = emb.detach().clone()
    with torch.no_grad():  # move away from the start, as training would
        emb.add_(torch.randn_like(emb) * 0.1)
    moved = emb.detach().clone()
    method = _Holder(enc)
    opt = build_optimizer(method.parameter_groups(0.0), _cfg(lr=0.2))
    for p in method.parameters():  # no loss gradient: only the anchor acts
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()
    # SGD on 0.5/2 * ||p - p0||^2: p <- p - lr * 0.5 * (p - p0)
    torch.testing.assert_close(emb.detach(), moved - 0.2 * 0.5 * (moved - start))
    # The anchor is not in the optimizer's state dict (rebuilt from the start model on resume).
    assert all("anchor" not in g for g in opt.state_dict()["param_groups"])


def test_output_layer_train_keeps_and_trains_the_whitening_layer(tmp_path):
    src = tmp_path / "model"
    tiny_encoder(tmp_path).save(src, model_card="# tiny\n")
    # 32 components of 46 distinct texts: all 128 would whiten a singular covariance, whose
    # noise directions make the comparisons below depend on the BLAS build and thread count.
    whiten_model(src, TEXTS * 10, tmp_path / "white", max_texts=400, device="cpu", dim=32)
    section = EncoderSection(name_or_path=str(tmp_path / "white"), output_layer="train", output_layer_lr_scale=3.0)
    enc = build_encoder(section)
    assert enc.train_output_layer and all(p.requires_grad for p in enc.output_layer.parameters())
    feats = enc.tokenize(TEXTS[:6])
    with torch.no_grad():
        through = enc.output_layer(pool(
            enc.transformer(**{k: feats[k] for k in ("input_ids", "attention_mask")}).last_hidden_state,
            feats["attention_mask"], "mean"))
        np.testing.assert_allclose(enc.eval()(feats).numpy(), through.numpy(), atol=1e-5)
        np.testing.assert_allclose(enc.embed(feats).numpy(), through.numpy(), atol=1e-5)  # applied once
    groups = _Holder(enc).parameter_groups(0.0)
    layer_params = {id(p) for p in enc.output_layer.parameters()}
    assert {g.get("lr_scale") for g in groups if layer_params & {id(p) for p in g["params"]}} == {3.0}
    enc.train()(feats).sum().backward()
    assert enc.output_layer.linear.weight.grad is not None
    # Saved after training, the layer is the model's Dense module again, with the trained weights.
    with torch.no_grad():
        enc.output_layer.linear.weight.mul_(2.0)
    enc.save(tmp_path / "trained")
    again = Embedder.load(tmp_path / "trained", device="cpu").encode(TEXTS[:6], normalize=False)
    np.testing.assert_allclose(again, enc.eval().embed(feats).detach().numpy(), rtol=1e-4, atol=1e-3)

    # Default: the layer is dropped; asking to train a layer that is not there is a recipe error.
    assert build_encoder(EncoderSection(name_or_path=str(tmp_path / "white"))).output_layer is None
    with pytest.raises(RecipeError, match="no Dense"):
        build_encoder(EncoderSection(name_or_path=str(src), output_layer="train"))


def test_context_weight_zero_is_a_bag_of_input_embeddings_and_skips_the_transformer(tmp_path):
    plain = tiny_encoder(tmp_path).eval()
    bag = TextEncoder(plain.transformer, plain.tokenizer, max_seq_length=32, bow_weight=2.0, context_weight=0.0)
    feats = bag.tokenize(TEXTS[:6])
    rows = plain.transformer.get_input_embeddings().weight[feats["input_ids"]].detach()
    mask = feats["attention_mask"].unsqueeze(-1).float()
    expected = 2.0 * (rows * mask).sum(1) / mask.sum(1)
    calls = []
    hook = bag.transformer.register_forward_hook(lambda *a: calls.append(1))
    out = bag(feats)
    hook.remove()
    np.testing.assert_allclose(out.detach().numpy(), expected.numpy(), atol=1e-6)
    assert calls == []  # no transformer pass at all
    # Only the embedding table trains; the layers it skips are frozen (no DDP unused-parameter stall).
    trainable = [n for n, p in bag.named_parameters() if p.requires_grad]
    assert trainable == ["transformer.embeddings.word_embeddings.weight"]
    out.sum().backward()
    assert bag.transformer.get_input_embeddings().weight.grad is not None
    # A context weight between: the weighted sum of both parts.
    half = TextEncoder(plain.transformer, plain.tokenizer, max_seq_length=32, bow_weight=2.0, context_weight=0.5).eval()
    with torch.no_grad():
        hidden = plain.transformer(input_ids=feats["input_ids"], attention_mask=feats["attention_mask"]).last_hidden_state
        np.testing.assert_allclose(half(feats).numpy(), (0.5 * pool(hidden, feats["attention_mask"], "mean")
                                                         + expected).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="context_weight"):
        TextEncoder(plain.transformer, plain.tokenizer, context_weight=0.0)


def test_bow_mean_fused_path_equals_the_row_gather_in_value_and_gradient():
    from textcl.pooling import bow_mean

    class Scaled(torch.nn.Embedding):  # a model's own embedding class: called as it is
        def forward(self, ids):
            return 3.0 * super().forward(ids)

    torch.manual_seed(0)
    table = torch.nn.Embedding(50, 8)
    ids = torch.randint(0, 50, (4, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 2 + [0] * 5, [1] * 7])
    weights = torch.rand(50)
    rows = table.weight[ids]
    w = (mask * weights[ids]).unsqueeze(-1)
    expected = (rows * w).sum(1) / w.sum(1)
    out = bow_mean(table, ids, mask, weights)
    np.testing.assert_allclose(out.detach().numpy(), expected.detach().numpy(), atol=1e-6)
    (grad,) = torch.autograd.grad((out * torch.arange(8.0)).sum(), table.weight)
    (manual,) = torch.autograd.grad((expected * torch.arange(8.0)).sum(), table.weight)
    np.testing.assert_allclose(grad.numpy(), manual.numpy(), atol=1e-6)
    scaled = Scaled(50, 8)
    scaled.weight.data.copy_(table.weight.data)
    np.testing.assert_allclose(bow_mean(scaled, ids, mask, weights).detach().numpy(),
                               3.0 * expected.detach().numpy(), atol=1e-5)


def test_auto_forward_chunks_skip_a_bag_without_a_transformer_pass(tmp_path):
    from textcl.objectives._encoder import resolve_chunk_tokens

    plain = tiny_encoder(tmp_path)
    bag = TextEncoder(plain.transformer, plain.tokenizer, max_seq_length=32, bow_weight=1.0, context_weight=0.0)
    # Chunks only save transformer work; a bag would pay one dense table gradient per chunk.
    assert resolve_chunk_tokens(bag, "auto") is None
    assert resolve_chunk_tokens(bag, 64) == 64
    if not torch.cuda.is_available():
        assert isinstance(resolve_chunk_tokens(plain, "auto"), int)


def test_bag_model_saves_and_loads_in_textcl_and_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    enc = tiny_encoder(tmp_path)
    bag = TextEncoder(enc.transformer, enc.tokenizer, max_seq_length=32, bow_weight=1.0, context_weight=0.0)
    bag.save(tmp_path / "bag", model_card="# bag\n")
    again = TextEncoder.from_pretrained(tmp_path / "bag")
    assert (again.bow_weight, again.context_weight) == (1.0, 0.0)
    ours = Embedder.load(tmp_path / "bag", device="cpu").encode(TEXTS, batch_size=8)
    st = SentenceTransformer(str(tmp_path / "bag"), device="cpu", trust_remote_code=True).encode(TEXTS)
    np.testing.assert_allclose(ours, st, atol=1e-5, rtol=0)
    feats = bag.tokenize(TEXTS)
    with torch.no_grad():
        np.testing.assert_allclose(ours, torch.nn.functional.normalize(bag(feats), dim=-1).numpy(), atol=1e-5)
    # A model saved without the key (every model before it) keeps its contextual part.
    cfg = tmp_path / "bag" / "2_BagOfWordsResidual" / "config.json"
    assert json.loads(cfg.read_text()) == {"weight": 1.0, "context_weight": 0.0}
    cfg.write_text(json.dumps({"weight": 1.0}))
    assert TextEncoder.from_pretrained(tmp_path / "bag").context_weight == 1.0


def test_recipe_context_weight_zero_needs_a_bag_of_words_path(tmp_path):
    src = tmp_path / "model"
    tiny_encoder(tmp_path).save(src)
    with pytest.raises(RecipeError, match="model.context_weight.*bow_weight"):
        build_encoder(EncoderSection(name_or_path=str(src), context_weight=0.0))
    enc = build_encoder(EncoderSection(name_or_path=str(src), context_weight=0.0, bow_weight=1.0))
    assert enc.context_weight == 0.0 and enc.bow_weight == 1.0


def test_start_bag_concatenates_a_frozen_copy_of_the_start_table(tmp_path):
    """model.start_bag_weight: [normalize(trained), w * normalize(bag of the start table)];
    the copy never trains, and the cosine is the weighted mean of the two halves' cosines."""
    plain = tiny_encoder(tmp_path).eval()
    table0 = plain.transformer.get_input_embeddings().weight.detach().clone()
    enc = TextEncoder(plain.transformer, plain.tokenizer, max_seq_length=32, bow_weight=1.0, context_weight=0.0,
                      start_bag_weight=0.5)
    assert (enc.dim, enc.forward_dim, enc.output_dim) == (plain.dim, 2 * plain.dim, 2 * plain.dim)
    feats = enc.tokenize(TEXTS[:6])
    mask = feats["attention_mask"].unsqueeze(-1).float()
    n = torch.nn.functional.normalize
    out = enc(feats)
    bag_now = (enc.transformer.get_input_embeddings().weight[feats["input_ids"]] * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(out.detach().numpy(), torch.cat([n(bag_now, dim=-1), 0.5 * n(bag_now, dim=-1)], 1)
                               .detach().numpy(), atol=1e-6)
    # One SGD step moves the trained table, never the start copy.
    opt = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=1.0)
    (out[:, : enc.dim] * torch.randn(6, enc.dim)).sum().backward()
    opt.step()
    assert not torch.equal(enc.transformer.get_input_embeddings().weight, table0)
    assert torch.equal(enc.start_bag.weight, table0) and not enc.start_bag.weight.requires_grad
    with torch.no_grad():
        out = enc(feats)
        trained = (enc.transformer.get_input_embeddings().weight[feats["input_ids"]] * mask).sum(1) / mask.sum(1)
        start = (table0[feats["input_ids"]] * mask).sum(1) / mask.sum(1)
    cos = n(out, dim=-1) @ n(out, dim=-1).T
    cos_t, cos_0 = n(trained, dim=-1) @ n(trained, dim=-1).T, n(start, dim=-1) @ n(start, dim=-1).T
    np.testing.assert_allclose(cos.numpy(), ((cos_t + 0.25 * cos_0) / 1.25).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="start_bag_weight"):
        TextEncoder(plain.transformer, plain.tokenizer, start_bag_weight=1.0, projection_dim=8)


def test_start_bag_model_saves_and_loads_in_textcl_and_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    plain = tiny_encoder(tmp_path)
    table0 = plain.transformer.get_input_embeddings().weight.detach().clone()
    enc = TextEncoder(plain.transformer, plain.tokenizer, max_seq_length=32, bow_weight=1.0, context_weight=0.0,
                      start_bag_weight=2.0)
    with torch.no_grad():  # the trained table moves away from the saved start copy
        enc.transformer.get_input_embeddings().weight.add_(0.1 * torch.randn_like(table0))
    enc.save(tmp_path / "m", model_card="# m\n")
    again = TextEncoder.from_pretrained(tmp_path / "m")
    assert again.start_bag_weight == 2.0 and torch.equal(again.start_bag.weight, table0)
    ours = Embedder.load(tmp_path / "m", device="cpu").encode(TEXTS, batch_size=8)
    st = SentenceTransformer(str(tmp_path / "m"), device="cpu", trust_remote_code=True)
    assert st.get_embedding_dimension() == 2 * plain.dim
    np.testing.assert_allclose(ours, st.encode(TEXTS), atol=1e-5, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(ours, torch.nn.functional.normalize(enc(enc.tokenize(TEXTS)), dim=-1).numpy(),
                                   atol=1e-5)
    # Training on from a saved start-bag model keeps its start copy, not the trained table.
    resumed = build_encoder(EncoderSection(name_or_path=str(tmp_path / "m")))
    assert resumed.start_bag_weight == 2.0 and torch.equal(resumed.start_bag.weight, table0)


def test_recipe_start_bag_weight_rejects_a_projection_head(tmp_path):
    src = tmp_path / "model"
    tiny_encoder(tmp_path).save(src)
    with pytest.raises(RecipeError, match="model.start_bag_weight.*projection_dim"):
        build_encoder(EncoderSection(name_or_path=str(src), start_bag_weight=1.0, projection_dim=8))
    assert build_encoder(EncoderSection(name_or_path=str(src), start_bag_weight=1.0)).start_bag is not None
