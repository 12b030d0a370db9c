"""textcl.scratch: WordPiece tokenizer, random BERT, SGNS embedding init, the resumable pipeline."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from textcl.scratch import (
    build_bert,
    load_pipeline_config,
    main,
    run_pipeline,
    train_wordpiece_tokenizer,
)
from textcl.word_vectors import WordVectors, init_embeddings_from_word_vectors

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """~1,500 lines of English from the packaged Gutenberg sample, one paragraph per line."""
    from textcl.data import data_path

    lines = []
    with gzip.open(data_path("gutenberg_sample.jsonl.gz"), "rt", encoding="utf-8") as fh:
        for row in fh:
            lines += [" ".join(p.split()) for p in json.loads(row)["text"].split("\n\n") if p.strip()]
            if len(lines) >= 1500:
                break
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines[:1500]) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_wordpiece_tokenizer([corpus], vocab_size=600, out_dir=out, show_progress=False)
    return out


TINY = {"layers": 2, "hidden": 32, "heads": 2, "intermediate": 64, "max_position": 64}


def test_tokenizer_has_the_vocab_size_and_round_trips(tokenizer_dir):
    from transformers import AutoTokenizer, BertTokenizerFast

    for tok in (AutoTokenizer.from_pretrained(str(tokenizer_dir)), BertTokenizerFast.from_pretrained(str(tokenizer_dir))):
        assert len(tok) == 600
        assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        text = "The old man walked to the door and looked out at the Strange sea"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text.lower()  # uncased: lowercased, otherwise the same text
        # Rare words split into ## pieces that join back.
        pieces = tok.convert_ids_to_tokens(tok("unbelievably", add_special_tokens=False)["input_ids"])
        assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])
    # vocab.txt agrees with the tokenizer (for tools that only read it).
    assert len((tokenizer_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()) == 600


def test_build_bert_loads_through_text_encoder_and_benchmarks(tokenizer_dir, tmp_path):
    from benchmarks.models import load_model
    from textcl.encoders import TextEncoder

    a = build_bert(tokenizer_dir, tmp_path / "a", seed=0, **TINY)
    b = build_bert(tokenizer_dir, tmp_path / "b", seed=0, **TINY)
    c = build_bert(tokenizer_dir, tmp_path / "c", seed=1, **TINY)
    enc = TextEncoder.from_pretrained(a, pooling="mean")
    cfg = enc.transformer.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.max_position_embeddings, cfg.vocab_size) == (2, 32, 2, 64, 64, 600)
    assert enc.pooling == "mean" and enc.max_seq_length == 64 and len(enc.tokenizer) == 600
    wa = enc.transformer.embeddings.word_embeddings.weight
    wb = TextEncoder.from_pretrained(b).transformer.embeddings.word_embeddings.weight
    wc = TextEncoder.from_pretrained(c).transformer.embeddings.word_embeddings.weight
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)  # seeded
    vecs = load_model(str(a)).encode(["a man walked", "the sea"])
    assert vecs.shape == (2, 32) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())  # temp dirs renamed


def test_embedding_init_copies_exactly_the_whole_word_rows(tokenizer_dir, tmp_path):
    from textcl.encoders import TextEncoder

    build_bert(tokenizer_dir, tmp_path / "m", **TINY)
    enc = TextEncoder.from_pretrained(tmp_path / "m")
    tok = enc.tokenizer
    vocab = tok.get_vocab()
    words = ["the", "Man", "man", "said", "notinvocab", "##r"]  # "Man" is more frequent: listed first
    vectors = np.arange(len(words) * 4, dtype=np.float32).reshape(len(words), 4) - 10
    wv = WordVectors(words, vectors)
    assert "##r" in vocab and "man" in vocab and "said" in vocab
    weight = enc.transformer.get_input_embeddings().weight
    before = weight.detach().clone()
    stats = init_embeddings_from_word_vectors(enc, tok, wv, scale=0.5)
    after = weight.detach()
    # token -> vector row: an exact match ("man", row 2) wins over the lowercase fallback ("Man").
    covered = {vocab["the"]: 0, vocab["man"]: 2, vocab["said"]: 3}
    for row, src in covered.items():
        assert torch.equal(after[row, :4], torch.from_numpy(vectors[src] * 0.5))
        assert torch.equal(after[row, 4:], before[row, 4:])  # rest="keep"
    others = [i for i in range(len(vocab)) if i not in covered]
    assert torch.equal(after[others], before[others])  # ##r, specials, missing words untouched
    assert stats["covered"] == 3 and stats["vocab_size"] == 600
    assert stats["coverage"] == pytest.approx(3 / 600)
    assert stats["special"] == 5 and stats["dims_copied"] == 4 and stats["scale"] == 0.5
    assert stats["special"] + stats["subword"] + stats["missing"] + stats["covered"] == 600

    # scale="match": the copied block gets the std of the values it replaced; rest="zero".
    enc2 = TextEncoder.from_pretrained(tmp_path / "m")
    w2 = enc2.transformer.get_input_embeddings().weight
    rows = torch.tensor(sorted(covered))
    old_std = float(w2.detach()[rows, :4].std())
    stats = init_embeddings_from_word_vectors(enc2.transformer, enc2.tokenizer, wv, rest="zero")
    assert float(w2.detach()[rows, :4].std()) == pytest.approx(old_std, rel=1e-5)
    assert stats["scale"] == pytest.approx(old_std / float(torch.from_numpy(vectors[[0, 2, 3]]).std()), rel=1e-5)
    assert torch.count_nonzero(w2.detach()[rows, 4:]) == 0

    with pytest.raises(ValueError, match="model.dim <= 32"):
        init_embeddings_from_word_vectors(enc, tok, WordVectors(["the"], np.ones((1, 40))))


def _pipeline_yaml(tmp_path: Path, corpus: Path, vectors: Path | None, extra: str = "") -> Path:
    sgns = f"  vectors: {vectors}\n" if vectors else (
        "  overrides: [data.corpus=" + str(corpus) + ", train.epochs=1, model.dim=8, data.min_count=2, "
        "'data.similarity_files=[]', data.analogy_file=null, objective.threads=1]\n"
    )
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'out'}\n"
        f"tokenizer: {{files: [{corpus}], vocab_size: 500}}\n"
        f"sgns:\n{sgns}"
        "model: {layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 32}\n" + extra
    )
    return path


def test_pipeline_runs_skips_and_resumes(corpus, tmp_path, small_documents):
    cfg = load_pipeline_config(_pipeline_yaml(tmp_path, corpus, None))
    summary = run_pipeline(cfg)
    out = tmp_path / "out"
    assert {k: v["status"] for k, v in summary["stages"].items()} == {
        "tokenizer": "done", "sgns": "done", "base-random": "done", "base-sgns": "done"}
    assert (out / "sgns" / "vectors.bin").is_file() and not (out / "sgns" / "checkpoints").exists()
    init = json.loads((out / "base-sgns" / "embedding_init.json").read_text())
    assert init["covered"] > 50 and init["dims_copied"] == 8 and init["vocab_size"] == 500
    assert json.loads((out / "pipeline.json").read_text())["stages"]["base-sgns"]["covered"] == init["covered"]
    # base-sgns = base-random except for the covered embedding rows.
    from safetensors.torch import load_file

    r = load_file(out / "base-random" / "model.safetensors")
    s = load_file(out / "base-sgns" / "model.safetensors")
    changed = [k for k in r if not torch.equal(r[k], s[k])]
    assert changed == ["embeddings.word_embeddings.weight"]
    rows_changed = (r[changed[0]] != s[changed[0]]).any(dim=1).sum().item()
    assert rows_changed == init["covered"]

    # Second run: everything exists, nothing is rebuilt.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    summary = run_pipeline(cfg)
    assert all(summary["stages"][k]["status"] == "skipped" for k in ("tokenizer", "sgns", "base-random", "base-sgns"))
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}

    # A killed stage leaves only its temp dir: the next run redoes that stage alone.
    (out / "base-sgns").rename(out / ".tmp-base-sgns")
    summary = run_pipeline(cfg)
    assert summary["stages"]["base-sgns"]["status"] == "done"
    assert summary["stages"]["base-random"]["status"] == "skipped"
    assert not (out / ".tmp-base-sgns").exists()
    assert torch.equal(load_file(out / "base-sgns" / "model.safetensors")[changed[0]], s[changed[0]])

    # The optional last stage trains a recipe from base-sgns (TEXTCL_SCRATCH_BASE), once.
    recipe = tmp_path / "declutr.yaml"
    recipe.write_text(
        f"method: declutr\noutput_dir: {tmp_path / 'trained'}\n"
        "model: {name_or_path: '${TEXTCL_SCRATCH_BASE}', max_seq_length: 32}\n"
        f"data: {{documents: {small_documents}, held_out_fraction: 0.2}}\n"
        "objective: {num_anchors: 1, num_positives: 1, min_span_len: 4, max_span_len: 8}\n"
        "train: {batch_size: 4, max_steps: 2, threads: 1}\neval: {before_training: false}\n"
    )
    with_train = load_pipeline_config(_pipeline_yaml(tmp_path, corpus, None), [f"train.recipe={recipe}"])
    summary = run_pipeline(with_train)
    assert summary["stages"]["train"]["status"] == "done"
    assert summary["stages"]["base-sgns"]["status"] == "skipped"
    card = (tmp_path / "trained" / "README.md").read_text()
    assert "`base-sgns/ (local directory" in card  # trained from the pipeline's base-sgns, named portably
    assert str(out) not in card
    assert run_pipeline(with_train)["stages"]["train"]["status"] == "skipped"


def test_pipeline_config_errors_name_the_key(corpus, tmp_path, capsys, monkeypatch):
    from textcl.core.recipe import RecipeError

    vectors = tmp_path / "vectors.txt"  # never read: validation fails first
    bad = _pipeline_yaml(tmp_path, corpus, vectors, extra="embeddings: {scal: match}\n")
    with pytest.raises(RecipeError, match=r"embeddings\.scal: unknown key; did you mean 'scale'"):
        load_pipeline_config(bad)
    assert main([str(bad)]) == 2
    assert "embeddings.scal: unknown key" in capsys.readouterr().err
    missing = _pipeline_yaml(tmp_path, tmp_path / "nope.txt", vectors)
    with pytest.raises(RecipeError, match="tokenizer.files: .*file not found"):
        load_pipeline_config(missing)
    monkeypatch.delenv("TEXTCL_DATA", raising=False)
    no_files = tmp_path / "nofiles.yaml"
    no_files.write_text(f"output_dir: {tmp_path}\n")
    with pytest.raises(RecipeError, match="TEXTCL_DATA is not set"):
        load_pipeline_config(no_files)


# --------------------------------------------------------------------------- base-mlm


@pytest.fixture(scope="module")
def repetitive(tmp_path_factory) -> Path:
    """24 short sentences, each 25 times: little to learn, learnt in a few dozen steps."""
    words = ("the old man walked to the door and looked out at the sea while his dog slept by the fire "
             "in a small house on the hill").split()
    sentences = [" ".join(words[i : i + 6 + i % 5]).capitalize() + "." for i in range(24)]
    path = tmp_path_factory.mktemp("mlm") / "sentences.txt"
    path.write_text("".join(s + "\n" for s in sentences * 25))
    return path


MLM_TINY = dict(enabled=True, max_minutes=None, batch_size=16, max_length=24, lr=2e-3, heldout_sentences=48,
                threads=1, warmup_ratio=0.1)


def _mlm_cfg(files: Path, **over):
    from textcl.scratch import MLMStage

    return MLMStage.model_validate({**MLM_TINY, "files": [str(files)], **over})


def _vectors(tmp_path: Path, tokenizer_dir: Path) -> Path:
    """A few SGNS-like vectors (skips training SGNS in the pipeline)."""
    words = ["the", "old", "man", "door", "sea", "dog", "house", "hill"]
    rng = np.random.default_rng(0)
    path = tmp_path / "vectors.txt"
    WordVectors(words, rng.standard_normal((len(words), 8)).astype(np.float32)).save(path)
    return path


def test_mlm_stage_trains_saves_an_st_dir_and_feeds_train(corpus, repetitive, tmp_path, monkeypatch, tokenizer_dir):
    from safetensors.torch import load_file

    import textcl.scratch as scratch
    from textcl.encoders import TextEncoder

    extra = ("mlm: {enabled: true, max_minutes: null, max_steps: 60, batch_size: 16, max_length: 24, lr: 5.0e-3, "
             f"heldout_sentences: 48, eval_every_steps: 20, threads: 1, files: [{repetitive}]}}\n")
    # The default pipeline has no base-mlm stage; enabled, it comes after base-sgns.
    assert not load_pipeline_config(_pipeline_yaml(tmp_path, corpus, None)).mlm.enabled
    path = _pipeline_yaml(tmp_path, corpus, _vectors(tmp_path, tokenizer_dir), extra=extra)
    summary = run_pipeline(load_pipeline_config(path))
    out = tmp_path / "out"
    assert list(summary["stages"]) == ["tokenizer", "sgns", "base-random", "base-sgns", "base-mlm"]
    assert summary["stages"]["base-mlm"]["status"] == "done"
    mlm_dir = out / "base-mlm"
    assert not (out / ".tmp-base-mlm").exists() and not (mlm_dir / "checkpoint").exists()

    metrics = json.loads((mlm_dir / "mlm_metrics.json").read_text())
    curve = metrics["curve"]
    assert [r["step"] for r in curve] == [0, 20, 40, 60] and metrics["steps"] == 60
    assert set(curve[0]) == {"step", "train_seconds", "heldout_loss", "heldout_accuracy"}
    assert curve[-1]["heldout_loss"] < 0.8 * curve[0]["heldout_loss"]
    assert curve[-1]["heldout_loss"] < curve[1]["heldout_loss"] < curve[0]["heldout_loss"]
    assert curve[-1]["heldout_accuracy"] > curve[0]["heldout_accuracy"]
    recorded = json.loads((out / "pipeline.json").read_text())["stages"]["base-mlm"]
    assert recorded["curve"] == curve and recorded["heldout_loss"] == curve[-1]["heldout_loss"]

    # Same layout as base-sgns (an ST dir, no MLM head), loadable, with trained weights.
    sgns_files = {p.name for p in (out / "base-sgns").iterdir()}
    assert sgns_files <= {p.name for p in mlm_dir.iterdir()}
    weights = load_file(mlm_dir / "model.safetensors")
    before = load_file(out / "base-sgns" / "model.safetensors")
    assert set(weights) == set(before)  # no cls.* / predictions.* keys
    assert not torch.equal(weights["encoder.layer.0.attention.self.query.weight"],
                           before["encoder.layer.0.attention.self.query.weight"])
    enc = TextEncoder.from_pretrained(str(mlm_dir))
    with torch.no_grad():
        assert enc.pooling == "mean" and enc(enc.tokenize(["the old man walked"])).shape == (1, 16)

    # The train stage starts from base-mlm (TEXTCL_SCRATCH_BASE); base-mlm is not rebuilt.
    seen = {}

    def fake_train(cfg, forced):
        seen["base"] = os.environ[scratch.BASE_ENV]
        return {}

    monkeypatch.setattr(scratch, "_stage_train", fake_train)
    monkeypatch.setattr(scratch, "_train_done", lambda cfg: None)
    summary = run_pipeline(load_pipeline_config(path, ["train.recipe=unused.yaml"]))
    assert seen["base"] == str(mlm_dir)
    assert summary["stages"]["base-mlm"]["status"] == "skipped"
    assert summary["stages"]["train"]["start_model"] == str(mlm_dir)


def test_mlm_stage_resumes_bitwise_from_its_checkpoint(tokenizer_dir, repetitive, tmp_path, monkeypatch, caplog):
    import logging

    from safetensors.torch import load_file

    import textcl.scratch_mlm as scratch_mlm
    from textcl.scratch import train_mlm

    start = build_bert(tokenizer_dir, tmp_path / "base", **TINY)
    cfg = _mlm_cfg(repetitive, max_steps=10, eval_every_steps=5, checkpoint_every_steps=5)
    straight = train_mlm(start, tmp_path / "straight", cfg, cfg.files)

    # A run killed right after its step-5 checkpoint ...
    save = scratch_mlm._save_mlm_checkpoint

    def save_then_die(directory, state):
        save(directory, state)
        if state["step"] == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(scratch_mlm, "_save_mlm_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_mlm(start, tmp_path / "killed", cfg, cfg.files)
    assert (tmp_path / "killed" / "checkpoint" / "state.pt").is_file()
    assert not (tmp_path / "killed" / "modules.json").exists()
    state = torch.load(tmp_path / "killed" / "checkpoint" / "state.pt", weights_only=True)
    assert int(state["step"]) == 5 and {"model", "optimizer", "rng", "curve"} <= set(state)
    monkeypatch.setattr(scratch_mlm, "_save_mlm_checkpoint", save)
    # ... continues from step 5 and ends where the uninterrupted run ended, bit for bit.
    with caplog.at_level(logging.INFO, logger="textcl.scratch"):
        resumed = train_mlm(start, tmp_path / "killed", cfg, cfg.files)
    assert "resuming at step 5" in caplog.text
    assert resumed["steps"] == straight["steps"] == 10
    strip = lambda c: [{k: v for k, v in r.items() if k != "train_seconds"} for r in c]  # noqa: E731
    assert strip(resumed["curve"]) == strip(straight["curve"]) and len(straight["curve"]) == 3
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "killed" / "checkpoint").exists()

    # resume=False (--force base-mlm) starts over instead.
    with caplog.at_level(logging.INFO, logger="textcl.scratch"):
        caplog.clear()
        train_mlm(start, tmp_path / "straight", cfg, cfg.files, resume=False)
    assert "resuming" not in caplog.text

    # Without max_steps the time budget ends the stage (and the schedule runs on it).
    budget = train_mlm(start, tmp_path / "budget", _mlm_cfg(repetitive, max_minutes=0.005), [str(repetitive)])
    assert budget["stopped_by"] == "max_minutes" and budget["steps"] >= 1
    assert budget["train_seconds"] >= 0.3 and budget["curve"][-1]["step"] == budget["steps"]
