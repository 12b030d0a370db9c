"""benchmarks.download writes the shared layout from hub rows (load_dataset stubbed: no network)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import download  # noqa: E402


def test_download_writes_layout_and_resumes(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "sentence-transformers/stsb":
            return [{"sentence1": "a", "sentence2": "b", "score": 0.5}]
        if config in ("rte", "qnli"):
            return [{"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0}]
        return [{"sentence1": "a", "sentence2": "b", "score": 3.0}]

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    download.main([str(tmp_path), "--only", "sts"])
    row = json.loads((tmp_path / "sts/stsb/test.jsonl").read_text())
    assert row["score"] == 2.5  # 0-1 scaled back to 0-5
    assert (tmp_path / "sts/sts12/test.jsonl").exists()
    assert not list(tmp_path.rglob("*.tmp"))
    assert all(name != "nyu-mll/glue" for name, _, _ in calls)

    n = len(calls)
    download.main([str(tmp_path), "--only", "sts,glue"])  # sts files exist: only glue is fetched
    assert all(name == "nyu-mll/glue" for name, _, _ in calls[n:])
    assert json.loads((tmp_path / "glue/rte/dev.jsonl").read_text())["label"] == "not_entailment"
