"""DeCLUTR: the span sampler, short documents, and training a tiny BERT end to end."""

import json

import numpy as np
import pytest
import torch

from textcl.objectives.declutr import SpanSampler
from textcl.train import main


def test_span_lengths_and_positive_relation():
    s = SpanSampler(num_anchors=2, num_positives=3, min_len=10, max_len=50)
    rng = np.random.default_rng(0)
    a_lens, p_lens, kinds = [], [], set()
    for _ in range(2000):
        anchors, positives = s.sample(400, rng)
        assert len(anchors) == 2 and all(len(p) == 3 for p in positives)
        for (sa, ea), group in zip(anchors, positives):
            assert 10 <= ea - sa <= 50 and 0 <= sa and ea <= 400
            a_lens.append(ea - sa)
            for sp, ep in group:
                assert 10 <= ep - sp <= 50 and 0 <= sp and ep <= 400
                p_lens.append(ep - sp)
                # overlapping, adjacent or subsumed: the intervals touch or intersect
                assert sp <= ea and ep >= sa
                if sp >= sa and ep <= ea:
                    kinds.add("subsumed")
                elif ep == sa or sp == ea:
                    kinds.add("adjacent")
                else:
                    kinds.add("overlap")
    assert kinds == {"subsumed", "adjacent", "overlap"}
    # floor(Beta(4,2) * 40) + 10 has mean ~ 10 + 40 * 2/3 - 0.5; Beta(2,4): 10 + 40/3 - 0.5
    assert np.mean(a_lens) == pytest.approx(10 + 40 * 2 / 3 - 0.5, abs=0.6)
    assert np.mean(p_lens) == pytest.approx(10 + 40 / 3 - 0.5, abs=0.6)


def test_sampler_deterministic_and_min_length():
    s = SpanSampler(2, 2, 8, 16)
    assert s.min_document_length == 2 * 16 * 2
    a = s.sample(100, np.random.default_rng([1, 2, 3]))
    b = s.sample(100, np.random.default_rng([1, 2, 3]))
    assert a == b
    with pytest.raises(ValueError, match="needs >= 64"):
        s.sample(63, np.random.default_rng(0))


def _recipe(tmp_path, tiny_bert_dir, docs, **extra):
    text = f"""
method: declutr
output_dir: {tmp_path / 'run'}
seed: 3
model: {{name_or_path: {tiny_bert_dir}, max_seq_length: 32}}
data: {{documents: {docs}, held_out_fraction: 0.25, skip_short_documents: {extra.get('skip', False)}}}
objective: {{num_anchors: 2, num_positives: 2, min_span_len: 8, max_span_len: 24,
             temperature: 0.1, mlm_weight: {extra.get('mlm', 0.0)}}}
train: {{batch_size: 4, max_steps: {extra.get('steps', 30)}, lr: 0.001, warmup_steps: 3,
         log_every_n_steps: 5}}
"""
    path = tmp_path / "declutr.yaml"
    path.write_text(text)
    return str(path)


def test_short_document_error_names_document(tmp_path, tiny_bert_dir, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "long", "text": "word " * 300}) + "\n"
                    + json.dumps({"id": "tiny-doc", "text": "too short"}) + "\n")
    assert main([_recipe(tmp_path, tiny_bert_dir, docs)]) == 2
    err = capsys.readouterr().err
    assert "'tiny-doc'" in err and "needs at least 96" in err and "skip_short_documents" in err


def test_training_tiny_bert_lowers_heldout_loss_and_saves_st_dir(tmp_path, tiny_bert_dir, small_documents):
    from sentence_transformers import SentenceTransformer

    from textcl.embed import Embedder

    assert main([_recipe(tmp_path, tiny_bert_dir, small_documents)]) == 0
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["declutr_heldout_loss"] < metrics["initial/declutr_heldout_loss"] - 0.1
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "examples_per_sec", "top1"} <= set(log[0])
    card = (out / "README.md").read_text()
    assert "DeCLUTR" in card and "giorgi" in card.lower()
    texts = ["A short sentence.", "Another, somewhat longer sentence about the sea and ships."]
    ours = Embedder.load(str(out)).encode(texts)
    theirs = SentenceTransformer(str(out), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_skip_short_documents_and_mlm_variant(tmp_path, tiny_bert_dir, small_documents):
    docs = tmp_path / "docs.jsonl"
    lines = small_documents.read_text().splitlines()
    docs.write_text("\n".join(lines + [json.dumps({"id": "short", "text": "tiny"})]) + "\n")
    from transformers import BertForMaskedLM

    mlm_dir = tmp_path / "mlm"
    torch.manual_seed(0)
    BertForMaskedLM.from_pretrained(str(tiny_bert_dir)).save_pretrained(mlm_dir)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tiny_bert_dir)).save_pretrained(mlm_dir)
    assert main([_recipe(tmp_path, mlm_dir, docs, skip=True, mlm=0.5, steps=4)]) == 0
    out = tmp_path / "run"
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert "mlm_loss" in log[0] and np.isfinite(log[0]["mlm_loss"])
    assert "1 skipped as too short" in (out / "README.md").read_text()
