"""benchmarks/compare_objectives.py on a tiny scratch model and a tiny data dir in the shared layout."""

from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
    _jsonl(root / "sts" / "stsb" / "dev.jsonl", [  # the STS-B dev split (stsb_dev)
        {"sentence1": sents[j], "sentence2": sents[j + 2], "score": rng.uniform(0, 5)} for j in range(12)])
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
def settings(data_dir, scratch_dir, tmp_path, monkeypatch, small_documents) -> co.Settings:
    monkeypatch.setenv("TEXTCL_CACHE", str(tmp_path / "cache"))
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    return co.Settings(
        data_dir=data_dir, budget_minutes=0.002, scratch_dir=scratch_dir, runs_dir=tmp_path / "runs",
        recipes_dir=recipes, transfer_tasks=("mr", "trec"), folds=2, inner_folds=2, threads=1,
        show_progress=False,
        # Whitening (every trained point) fits on the sentences of these documents.
        simcse=co.SimCSESettings(documents=str(small_documents)),
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


def test_whiten_dim_caps_the_components_and_is_not_mixed_with_full_whitening(settings, tmp_path):
    """--whiten-dim K keeps the top K components (all of a narrower model's), and a results file
    written with another K -- or before the option existed, i.e. with all -- is refused."""
    full = tmp_path / "full.json"
    co.run_comparison(settings, ["sgns-init+whiten"], full)
    saved = json.loads(full.read_text())
    assert saved["settings"]["whiten_dim"] is None
    # A file from before the option: no whiten_dim key, i.e. every component kept.
    del saved["settings"]["whiten_dim"]
    full.write_text(json.dumps(saved))
    assert co._load_previous(full, settings, fresh=False)  # same (default) whitening: loads

    settings.whiten_dim = 24
    with pytest.raises(co.DataDirError, match="whiten_dim: None -> 24"):
        co.run_comparison(settings, ["sgns-init+whiten"], full)
    out = tmp_path / "k24.json"
    rows = co.run_comparison(settings, ["sgns-init+whiten", "sgns-start-init+whiten"], out)
    # base-sgns is 16 wide (< 24): all kept; sgns-start-init is 32 wide: the top 24.
    assert rows["sgns-init+whiten"]["whitening"]["dim"] == 16
    start = rows["sgns-start-init+whiten"]
    assert start["whitening"]["in_dim"] == 32 and start["whitening"]["dim"] == 24
    assert 0 < start["whitening"]["variance_kept"] < 1 and start["command"].endswith("dim=24)")
    from textcl.embed import Embedder

    assert Embedder.load(start["model"]).encode(["a cat"], show_progress=False).shape == (1, 24)
    assert json.loads(out.read_text())["settings"]["whiten_dim"] == 24


def test_start_rows_are_base_sgns_with_their_bag_paths(settings):
    """sgns-bag-init = a bag of base-sgns's input embeddings; sgns-start-init = the
    transformer's mean with a frozen copy of that bag beside it (twice the width)."""
    from textcl.encoders import TextEncoder

    texts = ["the cat sat on the mat", "a dog ran in the park"]
    base = TextEncoder.from_pretrained(settings.scratch_dir / "base-sgns").eval()
    bag = TextEncoder.from_pretrained(co.prepare_row("sgns-bag-init", settings)["model"]).eval()
    facts = co.prepare_row("sgns-start-init", settings)
    assert facts["command"].endswith("start_bag_weight 1")
    start = TextEncoder.from_pretrained(facts["model"]).eval()
    with torch.no_grad():
        b, g, s = (m(m.tokenize(texts)) for m in (base, bag, start))
    assert s.shape == (2, 32) and b.shape == g.shape == (2, 16)
    # [normalize(contextual mean), normalize(start bag)]: each half points where the matching
    # start row's vector points, and the halves weigh the same (start_bag_weight 1).
    n = F.normalize
    torch.testing.assert_close(n(s[:, :16], dim=-1), n(b, dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(n(s[:, 16:], dim=-1), n(g, dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s[:, :16].norm(dim=-1), s[:, 16:].norm(dim=-1))


@pytest.mark.parametrize("objective", ["nsp", "neighbour", "permutation", "declutr", "simcse", "cert"])
def test_start_recipes_are_their_objective_recipe_plus_the_lever(objective):
    """<objective>-start.yaml = <objective>.yaml with start_bag_weight 1 and the temperature
    halved (the trained half keeps its scale); nothing else may differ, or the row would not
    measure the lever alone."""
    import yaml

    scratch = Path(__file__).resolve().parents[1] / "recipes" / "text" / "scratch"
    start = yaml.safe_load((scratch / f"{objective}-start.yaml").read_text())
    base = yaml.safe_load((scratch / f"{objective}.yaml").read_text())
    assert start.pop("output_dir") == f"runs/scratch/{objective}-start"
    assert base.pop("output_dir") == f"runs/scratch/{objective}"
    assert start["model"].pop("start_bag_weight") == 1.0 and "start_bag_weight" not in base["model"]
    assert start["objective"].pop("temperature") == base["objective"].pop("temperature") / 2
    assert start == base


def test_seed_recipes_differ_from_their_row_in_the_seed_alone():
    """recipes/text/scratch/seed<N>/<row>.yaml reruns <row> with seed N: a second seed
    measures seed noise only if nothing else changed."""
    import yaml

    scratch = Path(__file__).resolve().parents[1] / "recipes" / "text" / "scratch"
    copies = sorted(scratch.glob("seed*/*.yaml"))
    assert len(copies) >= 8
    for path in copies:
        copy, row = (yaml.safe_load(p.read_text()) for p in (path, scratch / path.name))
        assert (copy.pop("seed"), row.pop("seed")) == (int(path.parent.name[4:]), 42), path
        assert copy == row, path


# --------------------------------------------------------------------------- learning curves

BUDGETS = (0.001, 0.002, 0.004)  # minutes: snapshots after ~0.06 s and ~0.12 s, run ends at ~0.24 s


def _counting_run(monkeypatch) -> list:
    import textcl.train

    calls, real = [], textcl.train.run
    monkeypatch.setattr(textcl.train, "run", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    return calls


def test_several_budgets_train_once_with_a_snapshot_at_each(settings, tmp_path, small_documents, monkeypatch):
    import dataclasses

    _tiny_declutr_recipe(settings, small_documents)
    settings = dataclasses.replace(settings, budgets=BUDGETS)
    assert settings.budget_minutes == 0.004
    calls = _counting_run(monkeypatch)
    out = tmp_path / "res.json"
    row = co.run_comparison(settings, ["declutr"], out, plot=True)["declutr"]
    assert row["status"] == "done", row.get("reason")
    assert len(calls) == 1 and "train.max_minutes=0.004" in calls[0][0][1]  # one run, the longest budget
    run_dir = settings.runs_dir / "declutr"
    assert set(row["points"]) == {"0.001", "0.002", "0.004"} and row["schedule_minutes"] == 0.004
    steps = []
    for key, budget in zip(["0.001", "0.002", "0.004"], BUDGETS):
        p = row["points"][key]
        model = Path(p["model"])
        assert model == (run_dir if budget == 0.004 else run_dir / f"at-{key}min")
        assert (model / "modules.json").is_file()
        assert p["status"] == "done" and p["budget_minutes"] == budget and p["schedule_minutes"] == 0.004
        assert p["train_seconds"] >= budget * 60  # the first step past the budget
        steps.append(p["steps"])
        # raw and whitened, each with STS, the asked transfer tasks and STS-B dev
        for entry in (p["raw"], p["whitened"]):
            assert set(entry["sts"]) == set(settings.sts_tasks) and set(entry["transfer"]) == {"mr", "trec"}
            assert entry["transfer_tasks"] == ["mr", "trec"] and entry["stsb_dev"] is not None
        assert p["whitened"]["model"] == str(model) + "+whiten" and p["whitened"]["whiten_seconds"] > 0
        assert p["whitened"]["sts"] != p["raw"]["sts"]
        # the pretext metric and the in-run STS-B dev at that budget
        assert "declutr_heldout_top1" in p["pretext"] and "stsb_dev_spearman" in p["dev_sts"]
    assert steps == sorted(steps)
    assert "declutr_heldout_top1" in row["pretext_initial"]
    assert json.loads((run_dir / "at-0.001min" / "point.json").read_text())["step"] == steps[0]
    assert row["sts"] == row["points"]["0.004"]["raw"]["sts"]  # the single-budget fields: the longest
    assert out.with_suffix(".png").is_file() and out.with_name("res_curves.png").stat().st_size > 1000

    # A restart: nothing trained or evaluated again.
    def refuse(*a, **k):
        raise AssertionError("recomputed a finished point")

    monkeypatch.setattr(co, "evaluate_model", refuse)
    monkeypatch.setattr(co, "_whiten", refuse)
    assert co.run_comparison(settings, ["declutr"], out)["declutr"] == json.loads(out.read_text())["rows"]["declutr"]
    assert len(calls) == 1

    # A kill while evaluating the 0.002 point: only that point is measured again, the run reused.
    saved = json.loads(out.read_text())
    del saved["rows"]["declutr"]["points"]["0.002"]
    saved["rows"]["declutr"]["status"] = "failed"
    out.write_text(json.dumps(saved))
    seen, whitened = [], []
    monkeypatch.setattr(co, "evaluate_model", lambda spec, s, **k: seen.append(spec) or dict(row["points"]["0.002"]["raw"]))
    monkeypatch.setattr(co, "_whiten", lambda model, o, s: whitened.append(model) or {
        "model": str(o), "whitening": {}, "whiten_seconds": 1.0, "command": "x"})
    again = co.run_comparison(settings, ["declutr"], out)["declutr"]
    assert again["status"] == "done" and again["training"] == "reused finished run" and len(calls) == 1
    assert seen == [str(run_dir / "at-0.002min"), str(run_dir / "at-0.002min+whiten")]
    assert whitened == [str(run_dir / "at-0.002min")]
    assert again["points"]["0.001"] == row["points"]["0.001"]


def test_a_killed_curve_run_resumes_and_keeps_its_snapshots(settings, tmp_path, small_documents, monkeypatch):
    import dataclasses

    from benchmarks._curves import ExportAtMinutes
    from textcl.train import run

    recipe = _tiny_declutr_recipe(settings, small_documents)
    settings = dataclasses.replace(settings, budgets=(0.001, 0.004))
    run_dir = settings.runs_dir / "declutr"
    monkeypatch.setenv("TEXTCL_SCRATCH_BASE", str(settings.scratch_dir / "base-sgns"))
    # The run the comparison starts, killed after its last checkpoint and before the final save.
    run(str(recipe), ["train.max_minutes=0.004", f"output_dir={run_dir}", "train.save_every_n_steps=1"],
        callbacks=[ExportAtMinutes(run_dir, [0.001])])
    snapshot = (run_dir / "at-0.001min" / "point.json").read_text()
    for name in ("modules.json", "metrics.json"):
        (run_dir / name).unlink()
    row = co.run_comparison(settings, ["declutr"], tmp_path / "res.json")["declutr"]
    assert row["status"] == "done", row.get("reason")
    assert row["training"] == "resumed" and row["command"].endswith("--resume")
    assert (run_dir / "at-0.001min" / "point.json").read_text() == snapshot  # kept, not rewritten
    assert row["points"]["0.001"]["steps"] == json.loads(snapshot)["step"]
    assert {p["status"] for p in row["points"].values()} == {"done"}


def test_export_callback_saves_once_per_budget_and_keeps_earlier_snapshots(tmp_path):
    from types import SimpleNamespace

    from benchmarks._curves import ExportAtMinutes, export_dir

    class FakeMethod:
        def card_info(self):
            return {}

        def save_model(self, path, info):
            path.mkdir(parents=True)
            (path / "modules.json").write_text("[]")

    evals = []
    trainer = SimpleNamespace(state=SimpleNamespace(train_seconds=0.0, step=0, epoch=0), is_main=True,
                              method=FakeMethod(), evaluate=lambda: evals.append(1) or {"m": 1.0},
                              accelerator=SimpleNamespace(wait_for_everyone=lambda: None))
    (export_dir(tmp_path, 2) / "modules.json").parent.mkdir(parents=True)
    (export_dir(tmp_path, 2) / "modules.json").write_text("[]")  # written before a kill
    cb = ExportAtMinutes(tmp_path, [3, 1, 2])
    for step, secs in enumerate([30, 61, 100, 250], 1):
        trainer.state.step, trainer.state.train_seconds = step, secs
        cb.on_step_end(trainer)
    assert cb.written == [1.0, 3.0] and len(evals) == 2
    assert json.loads((export_dir(tmp_path, 1) / "point.json").read_text())["step"] == 2
    assert json.loads((export_dir(tmp_path, 3) / "point.json").read_text()) == {
        "budget_minutes": 3.0, "step": 4, "epoch": 0, "train_seconds": 250, "metrics": {"m": 1.0}}
    assert not (export_dir(tmp_path, 2) / "point.json").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def _old_format(settings: co.Settings, transfer: dict) -> dict:
    """A results JSON of the single-budget format (before learning curves)."""
    ev = {"sts": {t: 40.0 + i for i, t in enumerate(settings.sts_tasks)}, "sts_avg": 43.0, "transfer": transfer,
          "transfer_avg": 50.0, "eval_seconds": 1.0, "status": "done"}
    return {
        "settings": {"budget_minutes": 0.002, "transfer_tasks": list(transfer), "folds": settings.folds,
                     "inner_folds": settings.inner_folds, "sts_tasks": list(settings.sts_tasks)},
        "order": ["random-init", "nsp", "nsp+whiten"],
        "rows": {
            "random-init": {"row": "random-init", "model": str(settings.scratch_dir / "base-random"), **ev},
            "nsp": {"row": "nsp", "model": "runs/nsp", "steps": 7, "train_seconds": 0.2, "training": "trained",
                    "pretext": {"nsp_acc": 0.9}, "pretext_initial": {"nsp_acc": 0.5}, **ev},
            "nsp+whiten": {"row": "nsp+whiten", "base_row": "nsp", "model": "runs/nsp+whiten", "whiten_seconds": 2.0,
                           **ev, "sts_avg": 60.0},
        },
    }


def test_old_single_budget_json_loads_as_points_and_new_tasks_are_added(settings, tmp_path, monkeypatch):
    out = tmp_path / "res.json"
    out.write_text(json.dumps(_old_format(settings, {"mr": 50.0})))
    rows = co._load_previous(out, settings, fresh=False)
    point = rows["nsp"]["points"]["0.002"]
    assert point["status"] == "done" and point["schedule_minutes"] == 0.002 and point["steps"] == 7
    assert point["raw"]["sts_avg"] == 43.0 and point["whitened"]["sts_avg"] == 60.0
    assert point["pretext"] == {"nsp_acc": 0.9} and rows["nsp"]["pretext_initial"] == {"nsp_acc": 0.5}
    assert rows["random-init"]["transfer_tasks"] == ["mr"]
    # --transfer-tasks mr trec: the baseline gets TREC (and STS-B dev) only; STS and MR are kept.
    calls = []

    def fake_eval(spec, s, **kw):
        calls.append((spec, kw))
        return {"transfer": {"trec": 40.0}, "transfer_details": {"trec": {"accuracy": 40.0}},
                "transfer_seconds": 1.0, "eval_seconds": 1.0, "stsb_dev": 12.0}

    monkeypatch.setattr(co, "evaluate_model", fake_eval)
    r = co.run_comparison(settings, ["random-init"], out)["random-init"]
    assert calls == [(str(settings.scratch_dir / "base-random"), {"sts": False, "transfer_tasks": ("trec",), "dev": True})]
    assert r["transfer"] == {"mr": 50.0, "trec": 40.0} and r["transfer_tasks"] == ["mr", "trec"]
    assert r["transfer_avg"] == 45.0 and r["sts_avg"] == 43.0 and r["stsb_dev"] == 12.0
    assert co.run_comparison(settings, ["random-init"], out)["random-init"] == r and len(calls) == 1


def test_committed_results_still_load_and_plot(tmp_path):
    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "compare_objectives.json"
    if not committed.is_file():
        pytest.skip("no committed results")
    data = json.loads(committed.read_text())
    old = data["settings"]
    s = co.Settings(data_dir=tmp_path, folds=old["folds"], inner_folds=old["inner_folds"],
                    sts_tasks=tuple(old["sts_tasks"]), transfer_tasks=tuple(old["transfer_tasks"]))
    rows = co._load_previous(committed, s, fresh=False)
    trained = [n for n in data["order"] if co.is_trained(n) and rows[n].get("status") == "done"]
    assert trained and all(rows[n]["points"] for n in trained)
    labels = co.write_curves_plot(rows, data["order"], tmp_path / "c.png", s.transfer_tasks)
    assert "sgns-init+whiten (untrained)" in labels["sts"] and trained[0] in labels["transfer"]


def test_curves_plot_has_raw_whitened_and_baseline_lines(settings, tmp_path):
    def ev(sts, acc):
        return {"sts_avg": sts, "transfer": {"mr": acc, "trec": acc}, "status": "done"}

    def point(b, sts):
        return {"budget_minutes": b, "status": "done", "raw": ev(sts, 60), "whitened": ev(sts + 5, 62)}

    rows = {name: ev(40 + i, 55) for i, name in enumerate(["random-init", "sgns-init", "sgns-init+whiten", "avg-sgns"])}
    rows["nsp"] = {"status": "done", "points": {"5": point(5, 50), "10": point(10, 52), "20": point(20, 55)}}
    rows["cert"] = {"status": "failed", "points": {"5": point(5, 45)}}  # its finished points are drawn
    png = tmp_path / "curves.png"
    labels = co.write_curves_plot(rows, ["random-init", "sgns-init", "nsp", "cert"], png, ("mr", "trec"))
    assert png.stat().st_size > 1000
    for panel in ("sts", "transfer"):
        got = labels[panel]
        assert set(got) == {"nsp", "nsp+whiten", "cert", "cert+whiten", "random-init (untrained)",
                            "sgns-init (untrained)", "sgns-init+whiten (untrained)", "avg-sgns (untrained)"}
        assert got["nsp"][0] == "-" and got["nsp+whiten"][0] == "--" and got["nsp"][1] == got["nsp+whiten"][1]
        assert got["nsp"][1] != got["cert"][1]
    # A transfer average needs every asked task: none for a row evaluated on MR only.
    rows["avg-sgns"]["transfer"] = {"mr": 50.0}
    labels = co.write_curves_plot(rows, ["nsp"], png, ("mr", "trec"))
    assert "avg-sgns (untrained)" in labels["sts"] and "avg-sgns (untrained)" not in labels["transfer"]


def test_cli_takes_several_budgets_and_transfer_tasks(data_dir, monkeypatch, tmp_path):
    got = {}
    monkeypatch.setattr(co, "run_comparison", lambda s, rows, out, **k: got.update(s=s, rows=rows, k=k) or {})
    co.main(["--data-dir", str(data_dir), "--budget-minutes", "20", "5", "10", "--transfer-tasks", "trec", "mr",
             "--out", str(tmp_path / "r.json")])
    s = got["s"]
    assert s.budgets == (5.0, 10.0, 20.0) and s.budget_minutes == 20.0 and s.transfer_tasks == ("mr", "trec")
    assert got["rows"] == list(co.DEFAULT_ROWS) and "sgns-init+whiten" in got["rows"]
    co.main(["--data-dir", str(data_dir), "--rows", "nsp", "--transfer-tasks", "none", "--out", str(tmp_path / "r.json")])
    assert got["s"].budgets == (10.0,) and got["s"].transfer_tasks == () and got["rows"] == ["nsp"]


def test_point_of_a_model_trained_through_whitening_is_not_whitened_again(tmp_path):
    """A row trained through its whitening layer (model.output_layer: train) is evaluated raw
    only: whitening twice is refused, so the point's whitened entry is 'not applicable'."""
    from benchmarks import compare_objectives as co

    plain, dense = tmp_path / "plain", tmp_path / "dense"
    for d, kinds in ((plain, ["Transformer", "Pooling"]), (dense, ["Transformer", "Pooling", "Dense"])):
        d.mkdir()
        (d / "modules.json").write_text(json.dumps([{"type": f"sentence_transformers.models.{k}"} for k in kinds]))
    assert co._ends_with_dense(dense) and not co._ends_with_dense(plain)
    assert not co._ends_with_dense(tmp_path / "missing")
    assert co._entry_complete({"status": "not applicable", "reason": "x"}, settings=None)


def test_recipe_start_row_is_the_recipe_model_before_any_step(settings, small_documents):
    """<row>@start: what <row>.yaml builds (token weights counted on their corpus included),
    saved untrained; a baseline, not a trained row, and only for rows with a recipe."""
    from textcl.encoders import TextEncoder
    from textcl.objectives._encoder import EncoderSection, build_encoder

    model = {"name_or_path": "${TEXTCL_SCRATCH_BASE}", "bow_weight": 1.0, "context_weight": 0.0,
             "start_bag_weight": 1.0, "token_weights": {"sif_a": 0.01, "corpus": str(small_documents)}}
    (settings.recipes_dir / "bag-sif.yaml").write_text(json.dumps(
        {"method": "neighbour", "output_dir": "runs/x", "model": model, "data": {"documents": str(small_documents)}}))
    assert co.is_row("bag-sif@start", settings.recipes_dir) and co.is_row("bag-sif@start+whiten", settings.recipes_dir)
    assert not co.is_row("other@start", settings.recipes_dir)
    assert not co.is_trained("bag-sif@start") and co.is_trained("bag-sif")
    facts = co.prepare_row("bag-sif@start", settings)
    assert "before any step" in facts["command"]
    saved = TextEncoder.from_pretrained(facts["model"]).eval()
    built = build_encoder(EncoderSection(**{**model, "name_or_path": str(settings.scratch_dir / "base-sgns")})).eval()
    assert saved.token_weights is not None and torch.equal(saved.token_weights, built.token_weights)
    texts = ["the cat sat on the mat", "a dog ran in the park"]
    with torch.no_grad():
        torch.testing.assert_close(saved(saved.tokenize(texts)), built(built.tokenize(texts)))
    # The weights change the vector: the plain bag start differs.
    bag = TextEncoder.from_pretrained(co.prepare_row("sgns-bag-init", settings)["model"]).eval()
    with torch.no_grad():
        assert not torch.allclose(F.normalize(bag(bag.tokenize(texts)), dim=-1),
                                  F.normalize(saved(saved.tokenize(texts))[:, :16], dim=-1), atol=1e-3)


def test_sif_recipe_is_the_target_recipe_plus_token_weights():
    """neighbour-bag-sif.yaml = neighbour-bag-start.yaml with model.token_weights: the row
    measures that lever alone."""
    import yaml

    scratch = Path(__file__).resolve().parents[1] / "recipes" / "text" / "scratch"
    sif, base = (yaml.safe_load((scratch / f"{n}.yaml").read_text()) for n in ("neighbour-bag-sif", "neighbour-bag-start"))
    assert (sif.pop("output_dir"), base.pop("output_dir")) == ("runs/scratch/neighbour-bag-sif", "runs/scratch/neighbour-bag-start")
    weights = sif["model"].pop("token_weights")
    assert weights["sif_a"] == 3e-3 and weights["corpus"].endswith("corpora/gutenberg_sentences.txt.gz")
    assert sif == base
