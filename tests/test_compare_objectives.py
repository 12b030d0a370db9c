"""benchmarks/compare_objectives.py on a tiny scratch model and a tiny data dir in the shared layout."""

from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds benchmarks/

from benchmarks import compare_objectives as co  # noqa: E402

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _sample_sentences(n: int) -> list[str]:
    from textcl.data import data_path

    out: list[str] = []
    with gzip.open(data_path("gutenberg_sample.jsonl.gz"), "rt", encoding="utf-8") as fh:
        for line in fh:
            for sent in json.loads(line)["text"].replace("\n", " ").split(". "):
                words = sent.split()
                if 4 <= len(words) <= 20:
                    out.append(" ".join(words))
            if len(out) >= n:
                return out[:n]
    return out


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """STS (7 sets, 12 pairs each), MR (20 texts), TREC (18 + 6) in the shared layout."""
    root = tmp_path_factory.mktemp("data")
    sents = _sample_sentences(120)
    rng = random.Random(0)
    for i, rel in enumerate(["sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sick"]):
        pairs = [{"sentence1": sents[(i * 12 + j) % 120], "sentence2": sents[(i * 12 + j + 1) % 120],
                  "score": rng.uniform(0, 5)} for j in range(12)]
        _jsonl(root / "sts" / rel / "test.jsonl", pairs)
    _jsonl(root / "senteval" / "mr" / "all.jsonl", [{"text": s, "label": k % 2} for k, s in enumerate(sents[:20])])
    _jsonl(root / "senteval" / "trec" / "train.jsonl",
           [{"text": s, "label": ["DESC", "HUM", "LOC"][k % 3]} for k, s in enumerate(sents[20:38])])
    _jsonl(root / "senteval" / "trec" / "test.jsonl",
           [{"text": s, "label": ["DESC", "HUM", "LOC"][k % 3]} for k, s in enumerate(sents[38:44])])
    return root


@pytest.fixture(scope="module")
def scratch_dir(tmp_path_factory, small_documents) -> Path:
    """tokenizer, base-random, base-sgns and sgns/ as python -m textcl.scratch lays them out."""
    from textcl.scratch import load_pipeline_config, run_pipeline
    from textcl.word_vectors import WordVectors

    root = tmp_path_factory.mktemp("scratch")
    corpus = root / "corpus.txt"
    texts = [json.loads(line)["text"] for line in small_documents.read_text().splitlines()]
    corpus.write_text("\n".join(texts) + "\n")
    words = sorted({w for t in texts for w in t.lower().split() if w.isalpha()})[:300]
    rng = np.random.default_rng(0)
    (root / "sgns").mkdir()
    WordVectors(words, rng.normal(size=(len(words), 8))).save(root / "sgns" / "vectors.txt")
    cfg_file = root / "pipeline.yaml"
    cfg_file.write_text(
        f"output_dir: {root}\ntokenizer: {{files: [{corpus}], vocab_size: 400}}\n"
        f"sgns: {{vectors: {root / 'sgns'}}}\n"
        "model: {layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 64}\n"
    )
    run_pipeline(load_pipeline_config(cfg_file))
    return root


@pytest.fixture()
def settings(data_dir, scratch_dir, tmp_path, monkeypatch) -> co.Settings:
    monkeypatch.setenv("TEXTCL_CACHE", str(tmp_path / "cache"))
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    return co.Settings(
        data_dir=data_dir, budget_minutes=0.002, scratch_dir=scratch_dir, runs_dir=tmp_path / "runs",
        recipes_dir=recipes, transfer_tasks=("mr", "trec"), folds=2, inner_folds=2, threads=1,
        show_progress=False,
    )


def test_row_is_written_and_a_restart_skips_it(settings, tmp_path, monkeypatch, capsys):
    out = tmp_path / "res.json"
    rows = co.run_comparison(settings, ["random-init", "avg-sgns"], out, plot=True)
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    r = saved["rows"]["random-init"]
    assert r["status"] == "done" and r["model"] == str(settings.scratch_dir / "base-random")
    assert set(r["sts"]) == {"sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr"}
    assert r["sts_avg"] == pytest.approx(np.mean(list(r["sts"].values())))
    assert set(r["transfer"]) == {"mr", "trec"} and all(0 <= v <= 100 for v in r["transfer"].values())
    assert r["eval_seconds"] > 0 and saved["rows"]["avg-sgns"]["model"].startswith("avg-word-vectors:")
    assert saved["reference"]["bare_loop_sts_avg"] == 56.7
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "random-init" in capsys.readouterr().out  # the table

    calls = []
    monkeypatch.setattr(co, "evaluate_model", lambda *a, **k: calls.append(a) or {})
    again = co.run_comparison(settings, ["random-init", "avg-sgns"], out)
    assert calls == [] and again == rows
    assert "already done" in capsys.readouterr().out
    # Other settings than the saved rows': refused, not mixed.
    settings.folds = 3
    with pytest.raises(co.DataDirError, match="folds: 2 -> 3"):
        co.run_comparison(settings, ["random-init"], out)


def test_missing_recipe_or_method_is_skipped_with_the_reason(settings, tmp_path):
    (settings.recipes_dir / "cert.yaml").write_text("method: no_such_method\noutput_dir: x\n")
    out = tmp_path / "res.json"
    rows = co.run_comparison(settings, ["nsp", "cert"], out)
    assert rows["nsp"]["status"] == "skipped" and "nsp.yaml not found" in rows["nsp"]["reason"]
    assert rows["cert"]["status"] == "skipped"
    assert "'no_such_method' is not available" in rows["cert"]["reason"]
    assert json.loads(out.read_text())["rows"]["cert"]["status"] == "skipped"


def test_variant_rows_need_a_recipe_and_come_after_the_standard_rows(settings, tmp_path):
    with pytest.raises(ValueError, match="unknown rows .*nsp-typo"):
        co.run_comparison(settings, ["nsp-typo"], tmp_path / "res.json")
    (settings.recipes_dir / "nsp-variant.yaml").write_text("method: no_such_method\noutput_dir: x\n")
    out = tmp_path / "res.json"
    rows = co.run_comparison(settings, ["nsp-variant", "random-init"], out)
    assert rows["nsp-variant"]["status"] == "skipped"  # trained like an objective row
    assert json.loads(out.read_text())["order"] == ["random-init", "nsp-variant"]


def test_json_is_valid_after_a_kill_and_the_restart_finishes(settings, tmp_path, monkeypatch):
    out = tmp_path / "res.json"
    real = co.evaluate_model
    seen = []

    def killed_on_second(spec, s):
        seen.append(spec)
        if len(seen) == 2:
            raise KeyboardInterrupt  # what a kill mid-row looks like to the loop
        return real(spec, s)

    monkeypatch.setattr(co, "evaluate_model", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        co.run_comparison(settings, ["random-init", "sgns-init"], out)
    saved = json.loads(out.read_text())  # valid JSON with the finished row
    assert saved["rows"]["random-init"]["status"] == "done" and "sgns-init" not in saved["rows"]
    assert not list(tmp_path.glob(".res.json.tmp*"))
    monkeypatch.setattr(co, "evaluate_model", killed_on_second)
    rows = co.run_comparison(settings, ["random-init", "sgns-init"], out)
    assert seen[2:] == [str(settings.scratch_dir / "base-sgns")]  # only the unfinished row ran
    assert rows["sgns-init"]["status"] == "done"
    assert rows["random-init"] == saved["rows"]["random-init"]


def _tiny_declutr_recipe(settings: co.Settings, documents: Path) -> Path:
    stsb = settings.data_dir / "sts" / "stsb" / "test.jsonl"
    path = settings.recipes_dir / "declutr.yaml"
    path.write_text(
        "method: declutr\noutput_dir: runs/never-used\nseed: 1\n"
        "model: {name_or_path: '${TEXTCL_SCRATCH_BASE}', max_seq_length: 32}\n"
        f"data: {{documents: {documents}, held_out_fraction: 0.2, skip_short_documents: true}}\n"
        "objective: {num_anchors: 1, num_positives: 1, min_span_len: 4, max_span_len: 8}\n"
        "train: {batch_size: 4, lr: 1.0e-4, threads: 1, max_minutes: 99}\n"
        f"eval: {{evaluators: [{{name: sts, path: {stsb}, prefix: stsb_dev}}]}}\n"
    )
    return path


def test_textcl_row_trains_for_the_budget_then_reuses_the_finished_run(settings, tmp_path, small_documents):
    _tiny_declutr_recipe(settings, small_documents)
    out = tmp_path / "res.json"
    row = co.run_comparison(settings, ["declutr"], out)["declutr"]
    assert row["status"] == "done", row.get("reason")
    assert row["training"] == "trained" and row["steps"] >= 1 and row["examples_per_sec"] > 0
    assert "declutr_heldout_top1" in row["pretext"] and "declutr_heldout_top1" in row["pretext_initial"]
    assert set(row["dev_sts"]) == {"stsb_dev_spearman", "initial/stsb_dev_spearman"}
    assert "--set train.max_minutes=0.002" in row["command"]
    assert "train.save_every_n_steps=100" in row["command"]
    run_dir = settings.runs_dir / "declutr"
    assert row["output_dir"] == str(run_dir) and (run_dir / "modules.json").is_file()
    assert not (run_dir / "checkpoints").exists()  # removed once the run finished
    # A kill during evaluation: the finished run is evaluated again, not retrained.
    saved = json.loads(out.read_text())
    saved["rows"]["declutr"]["status"] = "failed"
    out.write_text(json.dumps(saved))
    row2 = co.run_comparison(settings, ["declutr"], out)["declutr"]
    assert row2["training"] == "reused finished run" and row2["steps"] == row["steps"]
    assert row2["sts"] == row["sts"]


def test_a_killed_textcl_run_resumes_from_its_checkpoint(settings, tmp_path, small_documents, monkeypatch):
    from textcl.train import run

    recipe = _tiny_declutr_recipe(settings, small_documents)
    run_dir = settings.runs_dir / "declutr"
    monkeypatch.setenv("TEXTCL_SCRATCH_BASE", str(settings.scratch_dir / "base-sgns"))
    # The run the comparison starts, killed after its last checkpoint and before the final save.
    run(str(recipe), ["train.max_minutes=0.002", f"output_dir={run_dir}", "train.save_every_n_steps=1"])
    steps = json.loads((run_dir / "log.jsonl").read_text().splitlines()[-2])["step"]
    for name in ("modules.json", "metrics.json"):
        (run_dir / name).unlink()
    row = co.run_comparison(settings, ["declutr"], tmp_path / "res.json")["declutr"]
    assert row["status"] == "done", row.get("reason")
    assert row["training"] == "resumed" and row["command"].endswith("--resume")
    assert row["steps"] == steps  # the budget was already spent: no step is added
    assert (run_dir / "modules.json").is_file() and not (run_dir / "checkpoints").exists()


def test_st_simcse_row_trains_with_sentence_transformers(settings, tmp_path, small_documents):
    pytest.importorskip("sentence_transformers")
    settings.simcse.documents = str(small_documents)
    settings.simcse.batch_size = 8
    row = co.run_comparison(settings, ["st-simcse"], tmp_path / "res.json")["st-simcse"]
    assert row["status"] == "done", row.get("reason")
    assert row["steps"] >= 1 and row["sentences"] > 100
    assert row["pretext"]["first_logged_loss"] is None or row["pretext"]["first_logged_loss"] > 0
    assert (settings.runs_dir / "st-simcse" / "modules.json").is_file()
    assert not (settings.runs_dir / ".tmp-st-simcse").exists()
    assert "MultipleNegativesRankingLoss(scale=20)" in row["command"]


def test_whiten_rows_fit_on_training_sentences_and_need_their_base_row(settings, tmp_path, small_documents):
    settings.simcse.documents = str(small_documents)
    with pytest.raises(ValueError, match=r"unknown rows .*avg-sgns\+whiten"):  # no encoder to whiten
        co.run_comparison(settings, ["avg-sgns+whiten"], tmp_path / "res.json")
    out = tmp_path / "res.json"
    rows = co.run_comparison(settings, ["sgns-init", "sgns-init+whiten", "nsp+whiten"], out)
    assert rows["nsp+whiten"]["status"] == "skipped" and "run the row 'nsp' first" in rows["nsp+whiten"]["reason"]
    row = rows["sgns-init+whiten"]
    assert row["status"] == "done", row.get("reason")
    assert row["base_row"] == "sgns-init" and row["whitening"]["dim"] == 16 and row["whitening"]["texts"] > 16
    model = Path(row["model"])
    assert model == settings.runs_dir / "sgns-init+whiten" and (model / "2_Dense" / "model.safetensors").is_file()
    # Whitening is affine, so it changes the cosine scores: the STS numbers differ from the start's.
    assert row["sts"] != rows["sgns-init"]["sts"]
    assert json.loads(out.read_text())["order"] == ["sgns-init", "sgns-init+whiten", "nsp+whiten"]
