"""CERT: exact momentum update, queue FIFO, key gradients, a hand-computed loss, learning on
synthetic pairs, and a tiny end-to-end `textcl.train` run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _tiny import tiny_encoder

from textcl.core.recipe import RecipeError, TrainConfig, load_recipe
from textcl.core.trainer import Trainer
from textcl.documents import DataError
from textcl.objectives.cert import CERT, CERTConfig, load_pairs
from textcl.train import main

# A toy "language": every source word has its own translation word, so a sentence and its
# translation share no token and a random encoder cannot match them (top-1 ~ chance).
SOURCE = ("red green blue black white brown pink gold silver grey "
          "cat dog horse cow bird fish lion wolf bear fox").split()
TARGET = ("house river mountain forest city garden bridge tower castle village "
          "apple bread cheese butter honey sugar salt pepper rice corn").split()


def _pairs_file(path, n=240, seed=0, identical=0):
    rng = np.random.default_rng(seed)
    rows, seen = [], set()
    while len(rows) < n:
        idx = rng.choice(len(SOURCE), size=4, replace=False)
        text = " ".join(SOURCE[i] for i in idx)
        if text in seen:
            continue
        seen.add(text)
        translations = [" ".join(TARGET[i] for i in idx)]
        if len(rows) < identical:
            translations.append(text)  # an identical "back-translation"
        rows.append({"id": f"p{len(rows)}", "text": text, "translations": translations})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cert(tmp_path, *, queue_size=8, momentum=0.9, temperature=0.5, in_batch=False, held_out=0.2,
          n=64, seed=0, **model):
    pairs_path = _pairs_file(tmp_path / "pairs.jsonl", n=n)
    cfg = CERTConfig.model_validate({
        "model": {"max_seq_length": 16, **model},
        "data": {"pairs": str(pairs_path), "held_out_fraction": held_out},
        "objective": {"queue_size": queue_size, "momentum": momentum, "temperature": temperature,
                      "in_batch_negatives": in_batch},
    })
    pairs, counts = load_pairs(str(pairs_path))
    torch.manual_seed(seed)
    enc = tiny_encoder(pooling="mean", max_seq_length=16, seed=seed,
                       projection_dim=model.get("projection_dim"))
    return CERT(enc, cfg, pairs, seed=seed, pair_counts=counts)


def _batch(cert, n=4, start=0):
    ds = cert.train_dataset()
    return cert.collate([ds[i] for i in range(start, start + n)])


def test_momentum_update_is_exact(tmp_path, one_thread):
    cert = _cert(tmp_path, momentum=0.75)
    with torch.no_grad():
        for p in cert.encoder.parameters():  # make query and key encoders differ
            p.add_(torch.randn_like(p) * 0.1)
    q_before = {n: p.detach().clone() for n, p in cert.encoder.named_parameters()}
    k_before = {n: p.detach().clone() for n, p in cert.key_encoder.named_parameters()}
    cert.after_optimizer_step(1)
    for name, k in cert.key_encoder.named_parameters():
        expected = k_before[name] * 0.75 + q_before[name] * (1 - 0.75)
        assert torch.equal(k, expected), name
        assert not k.requires_grad
    for name, q in cert.encoder.named_parameters():
        assert torch.equal(q, q_before[name])  # the query encoder is untouched


def test_queue_fifo_wraps_around_and_keys_carry_no_gradient(tmp_path, one_thread):
    cert = _cert(tmp_path, queue_size=5)
    cert.train()
    assert not cert.key_encoder.training  # no dropout on the keys (key_dropout: false)
    assert {"queue.queue", "queue.ptr"} <= set(cert.state_dict())  # checkpointed with the model
    enqueued = []
    for step in range(3):  # 3 batches of 2 keys through a queue of 5: the third wraps around
        out = cert(_batch(cert, n=2, start=2 * step))
        keys = cert._pending[-1]
        assert not keys.requires_grad and keys.grad_fn is None
        out["loss"].backward()
        assert all(p.grad is None for p in cert.key_encoder.parameters())
        assert all(p.grad is not None for p in cert.encoder.transformer.encoder.parameters())
        cert.zero_grad(set_to_none=True)
        cert.after_optimizer_step(step + 1)
        enqueued.append(keys)
        assert cert._pending == []
    newest = torch.cat(enqueued)[-5:]  # FIFO: the oldest key fell out
    assert torch.equal(cert.queue.ordered(), newest)
    assert int(cert.queue.ptr) == 1 and not cert.queue.queue.requires_grad
    # Storage order shows the wrap: slot 0 holds the 6th key, slots 1..4 keys 2..5.
    assert torch.equal(cert.queue.queue[0], torch.cat(enqueued)[5])
    cert.eval()
    cert(_batch(cert, n=2))
    assert cert._pending == []  # evaluation never enqueues


def test_loss_matches_hand_computed_logits(tmp_path, one_thread):
    cert = _cert(tmp_path, queue_size=2, temperature=0.5)
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    cert.queue = type(cert.queue)(2, 2)
    cert.queue.queue.copy_(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))
    cert.keys = lambda features: k  # fixed keys in place of the momentum encoder
    # MoCo: [l_pos, l_neg] / t. Query 1: cos(k1)=0.6, queue 0 and -1 -> logits 1.2, 0, -2;
    # query 2 (normalised to (0, 1)): cos(k2)=1, queue 1 and 0 -> logits 2, 2, 0.
    loss1 = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(0.0) + math.exp(-2.0)))
    loss2 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(2.0) + math.exp(0.0)))
    out = cert.loss_from_embeddings({"query": q}, {"key": None})
    assert float(out["loss"]) == pytest.approx((loss1 + loss2) / 2, abs=1e-6)
    # top-1: query 1's positive (1.2) beats the queue; query 2 ties with queue[0] and argmax
    # takes the first maximum, the positive.
    assert float(out["top1"]) == 1.0
    # With in-batch negatives, k2 (cos 0 -> logit 0) competes for query 1 and k1 (cos 0.8 ->
    # logit 1.6) for query 2.
    cert.cfg.objective.in_batch_negatives = True
    in1 = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(0.0) + math.exp(0.0) + math.exp(-2.0)))
    in2 = -math.log(math.exp(2.0) / (math.exp(1.6) + math.exp(2.0) + math.exp(2.0) + math.exp(0.0)))
    out = cert.loss_from_embeddings({"query": q}, {"key": None})
    assert float(out["loss"]) == pytest.approx((in1 + in2) / 2, abs=1e-6)


def test_forward_equals_loss_from_embeddings(tmp_path, one_thread):
    cert = _cert(tmp_path, projection_dim=8).eval()
    batch = _batch(cert, n=4)
    emb = {side: cert.encoder(f, project=True) for side, f in cert.embedding_inputs(batch).items()}
    assert set(emb) == {"query"} and emb["query"].shape == (4, 8) and cert.queue.queue.shape == (8, 8)
    assert torch.equal(cert(batch)["loss"], cert.loss_from_embeddings(emb, batch)["loss"])


def test_loss_falls_and_heldout_top1_rises(tmp_path, one_thread):
    # m=0.99: with m=0.9 the key encoder chased the query encoder so closely here that
    # training top-1 hit 1.0 on nearly collapsed embeddings while held-out top-1 stayed ~0.1.
    cert = _cert(tmp_path, n=240, queue_size=64, momentum=0.99, temperature=0.1, held_out=0.15)
    before = cert.evaluate()
    trainer = Trainer(cert, TrainConfig(batch_size=16, max_steps=40, lr=1e-3, log_every_n_steps=5),
                      tmp_path / "run", seed=0)
    after = trainer.fit()
    losses = [r["loss"] for r in trainer.history if "loss" in r]
    # Steps 1-4 see a queue still holding its random unit vectors, easy negatives far from
    # the real keys, so the loss is compared from steps 6-10 on, when only real keys remain.
    assert losses[-1] < losses[1] - 0.5, losses
    n_eval = len(cert.eval_pairs)
    assert n_eval >= 20
    assert before["cert_heldout_top1"] < 0.3, before
    assert after["cert_heldout_top1"] > before["cert_heldout_top1"] + 0.5, (before, after)
    assert after["cert_heldout_loss"] < before["cert_heldout_loss"]


class _KillAt:
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer):
        if trainer.state.step == self.step:
            raise KeyboardInterrupt


def test_resume_restores_queue_and_key_encoder(tmp_path, one_thread):
    """Queue, pointer and key encoder are in the checkpoint: kill + resume == uninterrupted."""
    cfg = TrainConfig(batch_size=4, max_steps=6, lr=1e-3, save_every_n_steps=3, log_every_n_steps=1)
    full = _cert(tmp_path, queue_size=6)
    Trainer(full, cfg, tmp_path / "full", seed=3).fit()
    killed = _cert(tmp_path, queue_size=6)
    with pytest.raises(KeyboardInterrupt):
        Trainer(killed, cfg, tmp_path / "resumed", seed=3, callbacks=[_KillAt(3)]).fit()
    resumed = _cert(tmp_path, queue_size=6)
    Trainer(resumed, cfg, tmp_path / "resumed", seed=3).fit(resume=True)
    theirs = resumed.state_dict()
    for name, value in full.state_dict().items():
        assert torch.equal(value, theirs[name]), name


def test_pairs_loading_drops_identical_and_explains_missing_file(tmp_path):
    path = _pairs_file(tmp_path / "p.jsonl", n=10, identical=4)
    pairs, counts = load_pairs(str(path))
    assert len(pairs) == 10 and all(len(p.translations) == 1 for p in pairs)
    assert counts["identical_dropped"] == 4
    kept, _ = load_pairs(str(path), drop_identical=False)
    assert sum(len(p.translations) for p in kept) == 14
    same_id = tmp_path / "same_id.jsonl"
    same_id.write_text("".join(json.dumps({"id": 7, "text": t, "translations": "x"}) + "\n" for t in "ab"))
    with pytest.raises(DataError, match=r"same_id.jsonl:2: id '7' repeats.*id_field: null"):
        load_pairs(str(same_id))
    assert [p.translations for p in load_pairs(str(same_id), id_field=None)[0]] == [["x"], ["x"]]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: cert\noutput_dir: {tmp_path / 'o'}\ndata: {{pairs: {tmp_path / 'nope.jsonl'}}}\n")
    with pytest.raises(RecipeError, match=r"data.pairs: pairs file not found.*textcl.augment.backtranslate"):
        load_recipe(str(recipe))


def test_train_cli_writes_a_sentence_transformers_model(tmp_path, tiny_bert_dir):
    from sentence_transformers import SentenceTransformer

    from textcl.embed import Embedder

    pairs = _pairs_file(tmp_path / "pairs.jsonl", n=80)
    recipe = tmp_path / "cert.yaml"
    recipe.write_text(f"""
method: cert
output_dir: {tmp_path / 'run'}
seed: 1
model: {{name_or_path: {tiny_bert_dir}, max_seq_length: 16, pooling: mean}}
data: {{pairs: {pairs}, held_out_fraction: 0.2}}
objective: {{queue_size: 32, momentum: 0.99, temperature: 0.05}}
train: {{batch_size: 8, max_steps: 6, lr: 1.0e-4, log_every_n_steps: 2, save_every_n_steps: 3, threads: 1}}
""")
    assert main([str(recipe)]) == 0
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"cert_heldout_top1", "cert_heldout_loss", "initial/cert_heldout_top1"} <= set(metrics)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "examples_per_sec", "top1"} <= set(log[0])
    card = (out / "README.md").read_text()
    assert "CERT" in card and "fang2020cert" in card
    texts = ["red cat blue dog", "house river apple"]
    ours = Embedder.load(str(out)).encode(texts)
    theirs = SentenceTransformer(str(out), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
