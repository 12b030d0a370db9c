"""benchmarks/words.py: agreement with gensim's evaluators, hand-checked Spearman, errors, CLI."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds benchmarks/

from benchmarks import words  # noqa: E402
from textcl.word_vectors import WordVectors  # noqa: E402

KeyedVectors = pytest.importorskip("gensim.models").KeyedVectors

DIM = 16


def _to_gensim(wv: WordVectors) -> KeyedVectors:
    kv = KeyedVectors(wv.dim)
    kv.add_vectors(wv.words, wv.vectors)
    return kv


def _analogy_margin(wv: WordVectors, lines: list[str], top: int = 6) -> float:
    """Smallest gap between the ``top`` best 3CosAdd scores of any question (float64).

    gensim takes the answer from ``most_similar(topn=5)`` past the question words, so the
    order of the best 6 decides it. Our blocked matrix products and gensim's per-question
    ``most_similar`` round float32 cosines differently (by ~1e-7), so near-ties among the
    leading candidates would make the agreement test depend on the BLAS build rather than on
    the protocol; the fixture must keep them apart. Checked for both search ranges, with every
    question word resolved to its first case variant (a superset of the questions either mode
    evaluates, with the same rows).
    """
    unit = wv.vectors.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    first: dict[str, int] = {}
    for i, w in enumerate(wv.words):
        first.setdefault(w.upper(), i)
    gaps = [np.inf]
    for line in lines:
        ids = [first.get(w.upper()) for w in line.split()]
        if line.startswith(":") or None in ids:
            continue
        a, b, c, _ = ids
        query = unit[b] + unit[c] - unit[a]
        scores = unit @ (query / np.linalg.norm(query))
        scores[[a, b, c]] = -np.inf
        for restrict in (150, len(wv)):
            best = np.sort(scores[:restrict])[::-1][:top]
            gaps.append(float(np.min(-np.diff(best))))
    return min(gaps)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """~200 words with analogy structure, case variants, and words beyond the search range.

    Section ``capital-x``: country = city + offset + noise; ``gram-x``: plural = noun +
    offset + noise; the noise makes some answers wrong. Some question words exist only in
    upper case, some only past the first 150 words (skipped with restrict_vocab=150), and a
    case variant of a question word sits exactly on a query (gensim skips it).
    """
    rng = np.random.default_rng(1)
    out = tmp_path_factory.mktemp("words")
    words_: list[str] = []
    vecs: list[np.ndarray] = []

    def add(word: str, vec: np.ndarray) -> None:
        words_.append(word)
        vecs.append(vec.astype(np.float32))

    capital, plural = rng.standard_normal(DIM) * 1.5, rng.standard_normal(DIM) * 1.5
    cities = [f"city{i}" for i in range(25)]
    nouns = [f"noun{i}" for i in range(25)]
    for i in range(25):
        city = rng.standard_normal(DIM)
        add(cities[i], city)
        add(f"country{i}", city + capital + rng.normal(0, 0.6, DIM))
        noun = rng.standard_normal(DIM)
        add(nouns[i], noun)
        add(f"nouns{i}" if i % 7 else f"NOUNS{i}", noun + plural + rng.normal(0, 0.6, DIM))
    for i in range(60):  # filler, then rare words past position 150
        add(f"filler{i}", rng.standard_normal(DIM))
    # Variant of city0, far from city0. Not a copy of another word's vector: a duplicate of
    # country1 (as this once was) ties exactly with the answer of (city0 country0 city1 ->
    # country1) when matching is case-sensitive, and which of two equal cosines ranks first
    # depends on the BLAS kernel (a block matrix product rounds the rows of a tail block
    # differently), not on the protocol. Its antipode adds no draw from rng.
    add("City0", -vecs[words_.index("city0")])
    # Exactly on the query for (city1 country1 city2 -> country2): must be skipped as a
    # case variant of city2, found before the real answer.
    q = vecs[words_.index("country1")] - vecs[words_.index("city1")] + vecs[words_.index("city2")]
    add("CITY2", q)
    for i in range(5):
        add(f"rare{i}", rng.standard_normal(DIM))
    wv = WordVectors(words_, np.stack(vecs))

    lines = [": capital-x"]
    for i in range(24):
        lines.append(f"city{i} country{i} city{i + 1} country{i + 1}")
    lines += ["city0 country0 rare0 country3", "City0 Country0 city5 country5"]
    lines.append(": gram-x")
    for i in range(24):
        lines.append(f"noun{i} nouns{i} noun{(i + 3) % 25} nouns{(i + 3) % 25}")
    lines += ["noun1 nouns1 rare1 nouns2", "unknown nouns1 noun2 nouns2"]
    questions = out / "questions.txt"
    questions.write_text("\n".join(lines) + "\n")
    # ~100x the float32 rounding of these 16-dim cosines; the old duplicate City0 gave 0.
    assert _analogy_margin(wv, lines) > 1e-5, "near-tied analogy candidates in the fixture"

    pairs = [
        (words_[i], words_[j], float(rng.uniform(0, 10))) for i, j in rng.integers(0, 150, (60, 2))
    ]
    pairs += [("CITY1", "country1", 3.0), ("rare2", "city3", 4.0), ("unicorn", "city1", 1.0)]
    sim = out / "sim.tsv"
    sim.write_text(
        "word1\tword2\tscore\n# a comment\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs)
    )
    # SimLex layout: the score in the 4th of 10 columns.
    simlex = out / "simlex.tsv"
    simlex.write_text(
        "word1\tword2\tPOS\tscore\tc1\tc2\tc3\tc4\tc5\tc6\n"
        + "".join(f"{a}\t{b}\tN\t{s}\t1\t2\t3\t4\t5\t6\n" for a, b, s in pairs)
    )
    return {"wv": wv, "questions": questions, "sim": sim, "simlex": simlex, "dir": out}


@pytest.mark.parametrize("restrict", [150, 300_000])
@pytest.mark.parametrize("case_insensitive", [True, False])
def test_similarity_agrees_with_gensim(
    fixture: dict, restrict: int, case_insensitive: bool
) -> None:
    wv, kv = fixture["wv"], _to_gensim(fixture["wv"])
    pearson, spearman, oov_ratio = kv.evaluate_word_pairs(
        str(fixture["sim"]), restrict_vocab=restrict, case_insensitive=case_insensitive
    )
    for path in (fixture["sim"], fixture["simlex"]):
        ours = words.evaluate_word_similarity(
            wv, path, restrict_vocab=restrict, case_insensitive=case_insensitive
        )
        # Same float32 cosines, so the same ranks; Pearson sees float32 rounding (1e-6 unscaled).
        assert ours["spearman"] == pytest.approx(100 * spearman[0], abs=1e-9)
        assert ours["pearson"] == pytest.approx(100 * pearson[0], abs=1e-4)
        assert ours["oov_ratio"] == pytest.approx(oov_ratio, abs=1e-12)
        assert ours["pairs"] + ours["oov_pairs"] == ours["total_pairs"] == 63
    expected_oov = (2 if restrict == 150 else 1) + (
        0 if case_insensitive else 1
    )  # rare2; unicorn; CITY1
    assert ours["oov_pairs"] == expected_oov


def test_similarity_dummy4unknown_agrees_with_gensim(fixture: dict) -> None:
    kv = _to_gensim(fixture["wv"])
    pearson, spearman, oov_ratio = kv.evaluate_word_pairs(str(fixture["sim"]), dummy4unknown=True)
    ours = words.evaluate_word_similarity(fixture["wv"], fixture["sim"], dummy4unknown=True)
    assert ours["spearman"] == pytest.approx(100 * spearman[0], abs=1e-9)
    assert ours["pearson"] == pytest.approx(100 * pearson[0], abs=1e-4)
    assert ours["oov_ratio"] == pytest.approx(oov_ratio)


@pytest.mark.parametrize("restrict", [150, 30_000])
@pytest.mark.parametrize("case_insensitive", [True, False])
def test_analogies_agree_with_gensim(fixture: dict, restrict: int, case_insensitive: bool) -> None:
    wv, kv = fixture["wv"], _to_gensim(fixture["wv"])
    score, sections = kv.evaluate_word_analogies(
        str(fixture["questions"]), restrict_vocab=restrict, case_insensitive=case_insensitive
    )
    ours = words.evaluate_analogies(
        wv, fixture["questions"], restrict_vocab=restrict, case_insensitive=case_insensitive
    )
    for section in sections[:-1]:
        mine = ours["sections"][section["section"]]
        assert mine["correct"] == len(section["correct"]), section["section"]
        assert mine["evaluated"] == len(section["correct"]) + len(section["incorrect"])
    assert ours["total"] == pytest.approx(100 * score, abs=1e-9)
    assert ours["questions"] == 52 and ours["evaluated"] + ours["skipped"] == 52
    assert 0 < ours["correct"] < ours["evaluated"]  # the fixture has right and wrong answers
    assert ours["semantic"] is not None and ours["syntactic"] is not None
    assert ours["groups"]["semantic"]["evaluated"] == ours["sections"]["capital-x"]["evaluated"]
    assert ours["groups"]["syntactic"]["evaluated"] == ours["sections"]["gram-x"]["evaluated"]
    # rare* are past the first 150 words; "unknown" is nowhere; "Country0" only matches
    # case-insensitively (as "country0"), and NOUNS0/7/14/21 (in 8 questions) only as "nouns0"/... .
    skipped = (2 if restrict == 150 else 0) + 1 + (0 if case_insensitive else 1 + 8)
    assert ours["skipped"] == skipped


def test_case_variant_on_the_query_is_skipped(fixture: dict, tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text(": one\ncity1 country1 city2 country2\n")
    ours = words.evaluate_analogies(fixture["wv"], path)
    wv = fixture["wv"]
    top = wv.most_similar(
        wv.unit_vectors[wv.index["country1"]]
        - wv.unit_vectors[wv.index["city1"]]
        + wv.unit_vectors[wv.index["city2"]],
        topn=1,
    )
    assert top[0][0] == "CITY2"  # the variant is the nearest word, yet it is not the answer
    kv = _to_gensim(wv)
    score, _ = kv.evaluate_word_analogies(str(path))
    assert ours["total"] == pytest.approx(100 * score)


def test_spearman_by_hand(tmp_path: Path) -> None:
    # Cosines of anchor (1, 0) with words at 80, 60, 45, 30, 10 degrees rise: ranks 1..5.
    angles = np.radians([80, 60, 45, 30, 10])
    vecs = np.vstack([[1.0, 0.0], np.stack([np.cos(angles), np.sin(angles)], axis=1)])
    wv = WordVectors(["a", "p1", "p2", "p3", "p4", "p5"], vecs)
    path = tmp_path / "five.tsv"
    # Gold ranks 2, 1, 4, 3, 5: sum d^2 = 4, rho = 1 - 6 * 4 / (5 * 24) = 0.8.
    path.write_text("a\tp1\t2.0\na\tp2\t1.0\na\tp3\t4.0\na\tp4\t3.0\na\tp5\t5.0\n")
    res = words.evaluate_word_similarity(wv, path)
    assert res["spearman"] == pytest.approx(80.0, abs=1e-9)
    cos = np.cos(angles)
    assert res["pearson"] == pytest.approx(100 * np.corrcoef(cos, [2, 1, 4, 3, 5])[0, 1], abs=1e-5)
    assert res["pairs"] == 5 and res["oov_pairs"] == 0 and res["oov_ratio"] == 0.0


@pytest.mark.parametrize(
    "text, match",
    [
        (
            "word1\tword2\tscore\ncat\tdog\t1.5\ncat\tbird\tabc\n",
            r"bad.tsv, line 3: score 'abc' is not a number",
        ),
        ("cat\tdog\t1.5\ncat\tbird\n", r"bad.tsv, line 2: expected 3 tab-separated columns"),
        (
            "word1\tword2\tPOS\tscore\ncat\tdog\tN\n",
            r"bad.tsv, line 2: expected 4 tab-separated columns",
        ),
        ("cat\t\t1.0\n", r"bad.tsv, line 1: empty word"),
        ("", r"bad.tsv: no word pairs found"),
        ("word1\tword2\tscore\n\n", r"bad.tsv: no word pairs found"),
    ],
)
def test_malformed_pairs(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        words.read_word_pairs(path)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"bad.txt: no analogy questions"),
        (": only-a-section\n", r"bad.txt: no analogy questions"),
        ("a b c d\n", r"bad.txt, line 1: question before the first"),
        (": s\na b c d\na b c\n", r"bad.txt, line 3: expected 4 words"),
    ],
)
def test_malformed_analogies(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        words.read_analogies(path)


def test_missing_and_all_oov_files(fixture: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        words.read_word_pairs(tmp_path / "nope.tsv")
    path = tmp_path / "oov.tsv"
    path.write_text("zzz\tyyy\t1.0\n")
    with pytest.raises(ValueError, match=r"oov.tsv: all 1 word pairs are out of vocabulary"):
        words.evaluate_word_similarity(fixture["wv"], path)
    q = tmp_path / "oov.txt"
    q.write_text(": s\nzz yy xx ww\n")
    res = words.evaluate_analogies(fixture["wv"], q)
    assert res["total"] is None and res["evaluated"] == 0 and res["skipped"] == 1


def test_cli_writes_report_and_plot(
    fixture: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    (data / "words").mkdir(parents=True)
    for name in ("wordsim353.tsv", "men3000.tsv"):
        (data / "words" / name).write_text(fixture["sim"].read_text())
    (data / "words" / "simlex999.tsv").write_text(fixture["simlex"].read_text())
    (data / "words" / "questions-words.txt").write_text(fixture["questions"].read_text())
    vec_dir = tmp_path / "run"
    fixture["wv"].save(vec_dir / "vectors.bin")
    out = tmp_path / "report" / "words.json"
    report = words.main([str(vec_dir), "--data-dir", str(data), "--out", str(out), "--plot"])
    printed = capsys.readouterr().out
    assert "protocol:" in printed and "gram-x" in printed and "wordsim353" in printed
    saved = json.loads(out.read_text())
    for key in ("wordsim353", "simlex999", "men"):
        assert set(saved[key]) >= {"spearman", "pearson", "pairs", "oov_pairs", "oov_ratio"}
        assert saved[key]["spearman"] == pytest.approx(report[key]["spearman"])
    assert set(saved["analogy"]) >= {
        "total",
        "semantic",
        "syntactic",
        "sections",
        "evaluated",
        "skipped",
    }
    assert saved["protocol"]["analogy_restrict_vocab"] == 30_000
    assert saved["model"] == str(vec_dir) and saved["command"].startswith(
        "python -m benchmarks.words"
    )
    assert "versions" in saved["environment"]
    assert out.with_suffix(".png").stat().st_size > 0


def test_cli_needs_data_dir(fixture: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEXTCL_DATA", raising=False)
    path = fixture["wv"].save(tmp_path / "v.txt")
    with pytest.raises(SystemExit, match="no data directory"):
        words.main([str(path)])
    with pytest.raises(SystemExit, match="lacks words/wordsim353.tsv"):
        words.main([str(path), "--data-dir", str(tmp_path)])


@pytest.mark.skipif(
    not os.environ.get("TEXTCL_DATA"), reason="set TEXTCL_DATA for the real-data check"
)
def test_real_files_agree_with_gensim(tmp_path: Path) -> None:
    """Random vectors over the real files' words (10% held out as OOV): same numbers as gensim."""
    data = Path(os.environ["TEXTCL_DATA"])
    vocab: dict[str, None] = {}
    for name in words.SIMILARITY_FILES.values():
        for a, b, _ in words.read_word_pairs(data / name):
            vocab.update({a.lower(): None, b.lower(): None})
    for _, questions in words.read_analogies(data / words.ANALOGY_FILE):
        for q in questions:
            vocab.update(dict.fromkeys(w.lower() for w in q))
    rng = np.random.default_rng(0)
    kept = [w for w in vocab if rng.random() > 0.1]
    wv = WordVectors(kept, rng.standard_normal((len(kept), 24)))
    kv = _to_gensim(wv)
    for name in words.SIMILARITY_FILES.values():
        three = tmp_path / "pairs.tsv"  # gensim reads only 3-column lines (not SimLex's 10)
        three.write_text(
            "".join(f"{a}\t{b}\t{s}\n" for a, b, s in words.read_word_pairs(data / name))
        )
        pearson, spearman, oov = kv.evaluate_word_pairs(str(three))
        ours = words.evaluate_word_similarity(wv, data / name)
        assert ours["spearman"] == pytest.approx(100 * spearman[0], abs=1e-9)
        assert ours["pearson"] == pytest.approx(100 * pearson[0], abs=1e-4)
        assert ours["oov_ratio"] == pytest.approx(oov)
    score, sections = kv.evaluate_word_analogies(
        str(data / words.ANALOGY_FILE), restrict_vocab=30_000
    )
    ours = words.evaluate_analogies(wv, data / words.ANALOGY_FILE)
    assert ours["total"] == pytest.approx(100 * score, abs=1e-9)
    assert ours["questions"] == 19_544
