"""The auxiliary MLM term every text objective shares (textcl.objectives._mlm, objective.mlm_weight)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from textcl.core.gradcache import GradCache
from textcl.core.method import get_method_class
from textcl.core.recipe import load_recipe
from textcl.objectives import _mlm

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
REPO = Path(__file__).resolve().parent.parent
WEIGHT = 0.5
#: The batch key of each objective's query / anchor side and the item key it is built from.
QUERY_SIDE = {"nsp": ("queries", "query"), "neighbour": ("queries", "query"),
              "permutation": ("sentences", "sentences"), "cert": ("query", "query")}


def _objective(name: str, tmp_path: Path, tiny_bert_dir: Path, documents: Path, mlm: float = WEIGHT):
    """An objective from its shipped recipe on the tiny BERT (no MLM head in the checkpoint)."""
    sets = [f"model.name_or_path={tiny_bert_dir}", "model.max_seq_length=32", "eval.evaluators=[]",
            f"objective.mlm_weight={mlm}", "objective.mlm_probability=0.3"]
    if name == "cert":
        pairs = tmp_path / "pairs.jsonl"
        words = "the cat sat on a mat while rain fell over quiet hills and old roads".split()
        rows = [{"id": str(i), "text": " ".join(words[i % 7 : i % 7 + 6]) + f" {i}",
                 "translations": [" ".join(reversed(words[i % 7 : i % 7 + 6])) + f" {i}"]} for i in range(40)]
        pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
        sets += [f"data.pairs={pairs}", "objective.queue_size=16"]
    else:
        sets += [f"data.documents={documents}", "data.max_tokens=12", f"data.cache_dir={tmp_path / 'cache'}"]
    recipe = load_recipe(REPO / "recipes" / "text" / f"{name}.yaml", sets)
    torch.manual_seed(0)
    return get_method_class(name).from_recipe(recipe)


def _batch(method, n: int = 6, start: int = 0):
    ds = method.train_dataset()
    return method.collate([ds[i] for i in range(start, start + n)])


def _mlm_by_hand(method, mlm: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of the MLM model's logits over the selected tokens."""
    logits = method.mlm_model(input_ids=mlm["input_ids"], attention_mask=mlm["attention_mask"]).logits
    selected = mlm["labels"] != -100
    return F.cross_entropy(logits[selected].float(), mlm["labels"][selected])


@pytest.mark.parametrize("name", ["nsp", "neighbour", "permutation", "cert"])
def test_total_loss_is_contrastive_plus_weighted_mlm(name, tmp_path, tiny_bert_dir, small_documents):
    method = _objective(name, tmp_path, tiny_bert_dir, small_documents)
    # One set of weights: the MLM model's base model is the contrastive encoder's transformer.
    assert method.mlm_model.base_model is method.encoder.transformer
    batch = _batch(method)
    mlm = batch["mlm"]
    # The masked rows are the query / anchor side: un-masking gives back exactly those ids.
    side, item_key = QUERY_SIDE[name]
    ds = method.train_dataset()
    items = [ds[i] for i in range(6)]
    seqs = [s for ex in items for s in (ex[item_key] if item_key == "sentences" else [ex[item_key]])]
    plain = method.encoder.pad_token_ids(seqs)["input_ids"]
    selected = mlm["labels"] != -100
    assert selected.any() and torch.equal(torch.where(selected, mlm["labels"], mlm["input_ids"]), plain)
    assert (mlm["input_ids"][selected] == method.encoder.tokenizer.mask_token_id).any()
    assert side in batch

    method.eval()  # no dropout: the two forwards below compute the same function
    with torch.no_grad():
        out = method(batch)
        embeddings = {k: method.encoder(v, project=True) for k, v in method.embedding_inputs(batch).items()}
        contrastive = method.loss_from_embeddings(embeddings, batch)["loss"]
        by_hand = _mlm_by_hand(method, mlm)
    assert float(out["mlm_loss"]) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(contrastive + WEIGHT * by_hand), rel=1e-5, abs=1e-6)


def test_masking_is_reproducible_and_resume_safe(tmp_path, tiny_bert_dir, small_documents):
    a = _objective("nsp", tmp_path, tiny_bert_dir, small_documents)
    b = _objective("nsp", tmp_path, tiny_bert_dir, small_documents)  # a "resumed" process
    ds_a, ds_b = a.train_dataset(), b.train_dataset()
    assert ds_a[3]["mlm_seed"] == ds_b[3]["mlm_seed"] == _mlm.mlm_seed(a.seed, 0, 0, 3)
    assert ds_a[3]["mlm_seed"] != ds_a[4]["mlm_seed"]
    first = a.collate([ds_a[i] for i in range(6)])["mlm"]
    for other in (a.collate([ds_a[i] for i in range(6)])["mlm"], b.collate([ds_b[i] for i in range(6)])["mlm"]):
        assert all(torch.equal(first[k], other[k]) for k in first)
    ds_b.set_epoch(1)  # another epoch: other masks for the same sentences
    assert ds_b[3]["mlm_seed"] != ds_a[3]["mlm_seed"]
    assert not torch.equal(b.collate([ds_b[i] for i in range(6)])["mlm"]["labels"], first["labels"])
    # The items themselves are those of the dataset without MLM (the seed is an extra key).
    plain = _objective("nsp", tmp_path, tiny_bert_dir, small_documents, mlm=0.0).train_dataset()
    assert {k: v for k, v in ds_a[3].items() if k != "mlm_seed"} == plain[3]


def test_mask_tokens_rule():
    from _tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    ids = [[2000 + (i * 7 + j) % 500 for j in range(40)] for i in range(50)]
    features = {"input_ids": torch.tensor([[tok.cls_token_id, *r, tok.sep_token_id, 0, 0] for r in ids]),
                "attention_mask": torch.tensor([[1] * 42 + [0, 0]] * 50)}
    out = _mlm.mask_tokens(features, tok, 0.15, seed=7)
    again = _mlm.mask_tokens(features, tok, 0.15, seed=7)
    assert all(torch.equal(out[k], again[k]) for k in out)
    selected = out["labels"] != -100
    assert not selected[:, 0].any() and not selected[:, 41:].any()  # [CLS], [SEP], padding never
    assert 0.11 < float(selected[:, 1:41].float().mean()) < 0.19
    masked = (out["input_ids"] == tok.mask_token_id) & selected
    kept = (out["input_ids"] == features["input_ids"]) & selected
    assert 0.74 < float(masked.sum() / selected.sum()) < 0.86
    assert 0.05 < float(kept.sum() / selected.sum()) < 0.16  # 10 % unchanged (+ lucky random picks)
    assert torch.equal(out["input_ids"][~selected], features["input_ids"][~selected])


def test_mlm_weight_zero_loads_no_mlm_model(tmp_path, tiny_bert_dir, small_documents, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an MLM model was loaded with mlm_weight 0")

    monkeypatch.setattr(_mlm, "load_mlm", refuse)
    monkeypatch.setattr(_mlm, "mlm_around", refuse)
    for name in ("nsp", "neighbour"):
        method = _objective(name, tmp_path, tiny_bert_dir, small_documents, mlm=0.0)
        assert method.mlm_model is None
        assert not any(n.startswith("mlm_model.") for n, _ in method.named_parameters())
        batch = _batch(method)
        assert "mlm" not in batch and method.auxiliary_loss(batch) == {}
        assert "mlm_loss" not in method(batch)


def test_mlm_gradient_reaches_the_shared_transformer_and_head_is_not_saved(tmp_path, tiny_bert_dir,
                                                                           small_documents):
    method = _objective("neighbour", tmp_path, tiny_bert_dir, small_documents)
    batch = _batch(method)
    method.train()
    method.zero_grad(set_to_none=True)
    method.auxiliary_loss(batch)["loss"].backward()  # the MLM term alone
    layer = method.encoder.transformer.encoder.layer[0].attention.self.query.weight
    assert layer.grad is not None and float(layer.grad.abs().sum()) > 0
    emb = method.encoder.transformer.embeddings.word_embeddings.weight
    assert emb.grad is not None and float(emb.grad.abs().sum()) > 0
    # The method's parameters hold each shared weight once (head + transformer, no copy).
    names = {n for n, _ in method.named_parameters()}
    assert any(n.startswith("mlm_model.cls.") for n in names)
    assert len(list(method.parameters())) == len(names)

    # GradCache: the MLM term joins as the auxiliary loss; same loss and gradients as forward.
    method.eval()
    method.zero_grad(set_to_none=True)
    method(batch)["loss"].backward()
    ref = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    method.zero_grad(set_to_none=True)
    out = GradCache(method, 2).step(batch)
    assert "mlm_loss" in out
    for n, g in ref.items():
        assert torch.allclose(method.get_parameter(n).grad, g, atol=1e-5), n

    # The saved sentence-transformers directory holds the transformer only.
    from safetensors.torch import load_file

    out_dir = tmp_path / "saved"
    method.save_model(out_dir, method.card_info())
    keys = set(load_file(out_dir / "model.safetensors"))
    assert keys and not any("cls." in k or "predictions" in k for k in keys)
    assert keys == set(method.encoder.transformer.state_dict())


def test_direct_construction_builds_a_head_around_the_encoder():
    """A method built from an encoder (no recipe) gets a fresh MLM head on that encoder."""
    from _sentence_toy import toy_corpus
    from _tiny import tiny_encoder

    from textcl.objectives._sentence_common import SentenceCorpora
    from textcl.objectives.next_sentence import NextSentence, NSPConfig
    from textcl.sentences import SplitStats

    cfg = NSPConfig.model_validate({
        "data": {"documents": str(REPO / "textcl/data/gutenberg_sample.jsonl.gz"), "max_tokens": 8},
        "objective": {"mlm_weight": 1.0, "mlm_probability": 0.5},
    })
    corpus = toy_corpus([4, 5, 6])
    stats = SplitStats(3, 3, 0, 0, corpus.num_sentences)
    encoder = tiny_encoder()
    state = torch.get_rng_state()
    method = NextSentence(encoder, cfg, SentenceCorpora(corpus, corpus, stats, 3), seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # building the head does not move the stream
    assert method.mlm_model.base_model is encoder.transformer
    assert method.mlm_model.get_output_embeddings().weight is encoder.transformer.embeddings.word_embeddings.weight
    batch = _batch(method, n=8)
    assert torch.isfinite(method(batch)["mlm_loss"])
    # A batch with no selected token (possible for short queries) gives a zero, finite term.
    batch["mlm"]["labels"].fill_(-100)
    aux = method.auxiliary_loss(batch)
    assert float(aux["loss"].detach()) == 0.0
    aux["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)
