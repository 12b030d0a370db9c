"""Intrinsic word-vector benchmarks: word similarity and the Google analogy set.

    python -m benchmarks.words VECTORS [--data-dir DIR] [--out F.json] [--plot]
        [--restrict-vocab 30000] [--pairs-restrict-vocab 300000] [--[no-]case-insensitive]

VECTORS is a word2vec text/binary file or a directory holding ``vectors.bin``/``vectors.txt``
(a textcl SGNS output directory). Both protocols follow gensim's ``KeyedVectors`` evaluators,
so the numbers agree with ``evaluate_word_pairs`` / ``evaluate_word_analogies``:

* **Similarity** (WordSim-353, SimLex-999, MEN; ``words/*.tsv`` in the data directory):
  Spearman and Pearson correlation (x100) between the cosine of the two words and the gold
  score, over the pairs whose words are both among the first ``--pairs-restrict-vocab``
  (300000) words; pairs with an unknown word are dropped and counted (``oov_pairs``,
  ``oov_ratio`` in %).
* **Analogy** (``words/questions-words.txt``): 3CosAdd, i.e. the word nearest by cosine to
  ``b - a + c`` (unit vectors), searched among the first ``--restrict-vocab`` (30000) words,
  the three question words excluded. Questions with a word outside those 30000 are skipped
  (counted in ``skipped``), not scored as wrong. Accuracy (%) per section, in total, and
  split into semantic and syntactic (``gram*``) sections; computed in blocks of matrix
  products rather than one nearest-neighbour search per question.

Case-insensitive matching (the default) folds words with ``str.upper`` as gensim does; among
case variants in the vocabulary the first (most frequent) one's vector is used.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import add_data_dir_argument, environment, resolve_data_dir, write_report
from textcl.word_vectors import WordVectors

__all__ = [
    "ANALOGY_FILE",
    "SIMILARITY_FILES",
    "evaluate_analogies",
    "evaluate_word_similarity",
    "main",
    "read_analogies",
    "read_word_pairs",
]

SIMILARITY_FILES = {
    "wordsim353": "words/wordsim353.tsv",
    "simlex999": "words/simlex999.tsv",
    "men": "words/men3000.tsv",
}
ANALOGY_FILE = "words/questions-words.txt"
PAIRS_RESTRICT_VOCAB = 300_000  # gensim's evaluate_word_pairs default
ANALOGY_RESTRICT_VOCAB = 30_000  # gensim's documented / word2vec's compute-accuracy setting
# Candidates gensim looks at per question (most_similar(topn=5)) before giving up on
# finding one that is not a case variant of a question word.
_ANALOGY_TOPN = 5
# Questions per matrix product: a (block, 30000) float32 score matrix is ~30 MB.
_ANALOGY_BLOCK = 256

# --------------------------------------------------------------------------- reading


def read_word_pairs(path: str | Path) -> list[tuple[str, str, float]]:
    """``(word1, word2, score)`` rows of a tab-separated similarity file.

    Blank lines and ``#`` comments are skipped. A first line whose third field is not a
    number is a header: if it names ``word1``, ``word2`` and ``score`` columns (SimLex's
    extra columns), those are read, else the first three. Any other malformed line (a
    missing column, a non-numeric score) raises ValueError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"word-pair file {path} does not exist")
    cols = (0, 1, 2)
    rows: list[tuple[str, str, float]] = []
    first = True
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = [f.strip() for f in line.rstrip("\r\n").split("\t")]
            if first:
                first = False
                names = [f.lower() for f in fields]
                if len(fields) >= 3 and not _is_number(fields[2]):
                    if {"word1", "word2", "score"} <= set(names):
                        cols = (names.index("word1"), names.index("word2"), names.index("score"))
                    continue
            if len(fields) <= max(cols):
                raise ValueError(
                    f"{path}, line {line_no}: expected {max(cols) + 1} tab-separated columns "
                    f"(word1, word2, score), got {len(fields)}: {line.strip()!r}"
                )
            a, b, score = (fields[c] for c in cols)
            if not a or not b:
                raise ValueError(f"{path}, line {line_no}: empty word in {line.strip()!r}")
            if not _is_number(score):
                raise ValueError(f"{path}, line {line_no}: score {score!r} is not a number")
            rows.append((a, b, float(score)))
    if not rows:
        raise ValueError(f"{path}: no word pairs found (empty file or only a header/comments)")
    return rows


def _is_number(text: str) -> bool:
    try:
        return np.isfinite(float(text))
    except ValueError:
        return False


def read_analogies(path: str | Path) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    """Sections of a ``questions-words.txt`` style file: ``[(name, [(a, b, c, d), ...]), ...]``.

    ``: name`` lines start sections; other non-blank lines must hold 4 words (else
    ValueError naming the file and line), and none may come before the first section.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"analogy file {path} does not exist")
    sections: list[tuple[str, list[tuple[str, str, str, str]]]] = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if line.startswith(": "):
                sections.append((line.lstrip(": ").strip(), []))  # gensim's name rule
                continue
            words = line.split()
            if not words:
                continue
            if not sections:
                raise ValueError(
                    f"{path}, line {line_no}: question before the first ': section' line"
                )
            if len(words) != 4:
                raise ValueError(
                    f"{path}, line {line_no}: expected 4 words (a b c d), got {len(words)}: "
                    f"{line.strip()!r}"
                )
            sections[-1][1].append((words[0], words[1], words[2], words[3]))
    if not any(questions for _, questions in sections):
        raise ValueError(f"{path}: no analogy questions found (empty file or only section lines)")
    return sections


# --------------------------------------------------------------------------- evaluation


def _case_lookup(
    wv: WordVectors, restrict_vocab: int, case_insensitive: bool
) -> tuple[dict[str, int], Callable[[str], str]]:
    """Key -> row over the first ``restrict_vocab`` words; the first (most frequent) variant wins."""
    fold: Callable[[str], str] = str.upper if case_insensitive else str
    lookup: dict[str, int] = {}
    for i, word in enumerate(wv.words[:restrict_vocab]):
        lookup.setdefault(fold(word), i)
    return lookup, fold


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero (cosine 0, not NaN)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32, copy=False)


def _finite(x: float) -> float | None:
    """JSON has no NaN: an undefined correlation (constant input) is reported as null."""
    return float(x) if np.isfinite(x) else None


def evaluate_word_similarity(
    wv: WordVectors,
    path: str | Path,
    restrict_vocab: int = PAIRS_RESTRICT_VOCAB,
    case_insensitive: bool = True,
    dummy4unknown: bool = False,
) -> dict[str, Any]:
    """Spearman/Pearson (x100) of cosine vs gold scores, as gensim's ``evaluate_word_pairs``.

    Pairs with a word outside the first ``restrict_vocab`` words are dropped, or scored with
    cosine 0 if ``dummy4unknown``. ``oov_ratio`` is in percent, computed as gensim does.
    """
    from scipy import stats

    pairs = read_word_pairs(path)
    lookup, fold = _case_lookup(wv, restrict_vocab, case_insensitive)
    gold: list[float] = []
    rows_a: list[int] = []
    rows_b: list[int] = []
    known: list[bool] = []
    oov = 0
    for a, b, score in pairs:
        ia, ib = lookup.get(fold(a)), lookup.get(fold(b))
        if ia is None or ib is None:
            oov += 1
            if not dummy4unknown:
                continue
        gold.append(score)
        known.append(ia is not None and ib is not None)
        rows_a.append(ia or 0)
        rows_b.append(ib or 0)
    if not gold:
        raise ValueError(f"{path}: all {len(pairs)} word pairs are out of vocabulary")
    cosine = np.einsum("ij,ij->i", _unit(wv.vectors[rows_a]), _unit(wv.vectors[rows_b])).astype(
        np.float64
    )
    cosine[~np.asarray(known)] = 0.0
    gold_arr = np.asarray(gold, dtype=np.float64)
    if len(gold) < 2:
        spearman = pearson = float("nan")
    else:
        spearman = float(stats.spearmanr(gold_arr, cosine)[0])
        pearson = float(stats.pearsonr(gold_arr, cosine)[0])
    denominator = len(gold) if dummy4unknown else len(gold) + oov
    return {
        "spearman": _finite(100.0 * spearman),
        "pearson": _finite(100.0 * pearson),
        "pairs": len(gold),
        "oov_pairs": oov,
        "oov_ratio": 100.0 * oov / denominator,
        "total_pairs": len(pairs),
    }


def _solve_3cosadd(
    unit: np.ndarray, classes: np.ndarray, q: np.ndarray, block: int = _ANALOGY_BLOCK
) -> np.ndarray:
    """Predicted word class per question (``-1``: no candidate); ``q`` holds rows (a, b, c).

    Per question: scores = unit @ normalize(b + c - a) over the vocabulary, the three
    question rows masked; then, best first among at most ``_ANALOGY_TOPN`` candidates, the
    first whose class (case-folded word) is none of the question words' (gensim's rule;
    if all are, the last one looked at is the answer, as in gensim).
    """
    n, vocab = len(q), unit.shape[0]
    predicted = np.full(n, -1, dtype=np.int64)
    for start in range(0, n, block):
        qa, qb, qc = (q[start : start + block, j] for j in range(3))
        m = len(qa)
        query = unit[qb] + unit[qc] - unit[qa]
        query /= np.maximum(np.linalg.norm(query, axis=1, keepdims=True), np.finfo(np.float32).tiny)
        scores = query @ unit.T
        rows = np.arange(m)
        for col in (qa, qb, qc):
            scores[rows, col] = -np.inf
        found = np.full(m, -1, dtype=np.int64)
        last = np.full(m, -1, dtype=np.int64)
        pending = np.arange(m)
        # Almost always the best candidate is accepted, so later rounds touch few rows.
        for _ in range(min(_ANALOGY_TOPN, vocab)):
            sub = scores[pending]
            best = sub.argmax(axis=1)
            finite = np.isfinite(sub[np.arange(len(pending)), best])
            cls = classes[best]
            ok = finite & (cls != qa[pending]) & (cls != qb[pending]) & (cls != qc[pending])
            last[pending[finite]] = cls[finite]
            found[pending[ok]] = cls[ok]
            retry = finite & ~ok
            scores[pending[retry], best[retry]] = -np.inf
            pending = pending[retry]
            if not len(pending):
                break
        predicted[start : start + m] = np.where(found >= 0, found, last)
    return predicted


def evaluate_analogies(
    wv: WordVectors,
    path: str | Path,
    restrict_vocab: int = ANALOGY_RESTRICT_VOCAB,
    case_insensitive: bool = True,
) -> dict[str, Any]:
    """3CosAdd accuracy (%) on an analogy file, as gensim's ``evaluate_word_analogies``.

    Returns ``total``, ``semantic``, ``syntactic`` (sections named ``gram*``) accuracies,
    ``correct``/``evaluated``/``skipped``/``questions`` counts and per-section results.
    An accuracy over zero evaluated questions is ``None``.
    """
    sections = read_analogies(path)
    lookup, fold = _case_lookup(wv, restrict_vocab, case_insensitive)
    top = min(restrict_vocab, len(wv))
    classes = np.array([lookup[fold(w)] for w in wv.words[:top]], dtype=np.int64)
    unit = _unit(wv.vectors[:top])
    rows: list[tuple[int, int, int, int]] = []
    owner: list[int] = []  # section index of each evaluated question
    skipped = [0] * len(sections)
    for s, (_, questions) in enumerate(sections):
        for question in questions:
            ids = [lookup.get(fold(w)) for w in question]
            if any(i is None for i in ids):
                skipped[s] += 1
                continue
            rows.append(tuple(ids))  # type: ignore[arg-type]
            owner.append(s)
    q = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    correct = _solve_3cosadd(unit, classes, q[:, :3]) == q[:, 3]
    section_of = np.asarray(owner, dtype=np.int64)
    n_correct = np.bincount(section_of, weights=correct, minlength=len(sections)).astype(int)
    n_eval = np.bincount(section_of, minlength=len(sections))

    def accuracy(c: int, e: int) -> float | None:
        return 100.0 * c / e if e else None

    def group(members: list[int]) -> dict[str, Any]:
        c, e = int(n_correct[members].sum()), int(n_eval[members].sum())
        return {
            "accuracy": accuracy(c, e),
            "correct": c,
            "evaluated": e,
            "skipped": int(sum(skipped[i] for i in members)),
        }

    per_section: dict[str, dict[str, Any]] = {}
    for s, (name, _) in enumerate(sections):
        key = name if name not in per_section else f"{name} ({s})"  # keep repeated names apart
        per_section[key] = group([s])
    syntactic = [s for s, (name, _) in enumerate(sections) if name.startswith("gram")]
    semantic = [s for s in range(len(sections)) if s not in syntactic]
    total, sem, syn = group(list(range(len(sections)))), group(semantic), group(syntactic)
    questions = total["evaluated"] + total["skipped"]
    return {
        "total": total["accuracy"],
        "semantic": sem["accuracy"],
        "syntactic": syn["accuracy"],
        "correct": total["correct"],
        "evaluated": total["evaluated"],
        "skipped": total["skipped"],
        "questions": questions,
        "oov_ratio": 100.0 * total["skipped"] / questions,
        "groups": {"semantic": sem, "syntactic": syn},
        "sections": per_section,
    }


# --------------------------------------------------------------------------- reporting


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fmt(x: float | None, spec: str = "6.2f") -> str:
    return format(x, spec) if x is not None else "n/a".rjust(int(spec.split(".")[0]))


def print_report(report: dict[str, Any]) -> None:
    """The results as a table, then the protocol line."""
    w = 28  # "gram6-nationality-adjective" fits
    print(f"{'task':<{w}} {'spearman':>8} {'pearson':>8} {'pairs':>6} {'oov':>5} {'oov %':>6}")
    for name in SIMILARITY_FILES:
        r = report[name]
        print(
            f"{name:<{w}} {_fmt(r['spearman'], '8.2f')} {_fmt(r['pearson'], '8.2f')} "
            f"{r['pairs']:>6} {r['oov_pairs']:>5} {r['oov_ratio']:>6.1f}"
        )
    a = report["analogy"]
    rows = list(a["sections"].items()) + [
        ("semantic", a["groups"]["semantic"]),
        ("syntactic", a["groups"]["syntactic"]),
        (
            "total",
            {"accuracy": a["total"], **{k: a[k] for k in ("correct", "evaluated", "skipped")}},
        ),
    ]
    print(f"\n{'analogy section':<{w}} {'acc %':>8} {'correct':>8} {'eval':>6} {'skip':>5}")
    for name, r in rows:
        acc = _fmt(r["accuracy"], "8.2f")
        print(f"{name:<{w}} {acc} {r['correct']:>8} {r['evaluated']:>6} {r['skipped']:>5}")
    p = report["protocol"]
    print(
        f"\nprotocol: similarity = Spearman/Pearson x100 of cosine, OOV pairs dropped, vocab top "
        f"{p['pairs_restrict_vocab']}; analogy = 3CosAdd over top {p['analogy_restrict_vocab']} "
        f"words, question words excluded, OOV questions skipped; case_insensitive="
        f"{p['case_insensitive']} (gensim KeyedVectors conventions)"
    )


def write_plot(report: dict[str, Any], png: Path) -> None:
    """Bar chart: similarity Spearman per dataset, analogy accuracy (total/semantic/syntactic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    names = list(SIMILARITY_FILES)
    bars = left.bar(names, [report[n]["spearman"] or 0.0 for n in names], color="tab:blue")
    left.bar_label(bars, fmt="%.1f")
    left.set_ylabel("Spearman x100")
    left.set_title("word similarity")
    a = report["analogy"]
    parts = ["total", "semantic", "syntactic"]
    bars = right.bar(parts, [a[p] or 0.0 for p in parts], color="tab:orange")
    right.bar_label(bars, fmt="%.1f")
    right.set_ylabel("accuracy %")
    right.set_title(f"analogy 3CosAdd ({a['evaluated']} evaluated, {a['skipped']} skipped)")
    fig.suptitle(Path(report["model"]).name, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run all four benchmarks, print the table, write JSON / PNG if asked."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.words", description=__doc__.split("\n")[0]
    )
    p.add_argument("vectors", help="word2vec .txt/.bin file, or a directory with vectors.bin/.txt")
    add_data_dir_argument(p)
    p.add_argument("--out", type=Path, default=None, help="write all numbers to this JSON file")
    p.add_argument("--plot", action="store_true", help="also write a PNG bar chart next to --out")
    p.add_argument(
        "--restrict-vocab",
        type=int,
        default=ANALOGY_RESTRICT_VOCAB,
        help=f"analogy: search and require the first N words (default {ANALOGY_RESTRICT_VOCAB})",
    )
    p.add_argument(
        "--pairs-restrict-vocab",
        type=int,
        default=PAIRS_RESTRICT_VOCAB,
        help=f"similarity: words beyond the first N count as unknown (default {PAIRS_RESTRICT_VOCAB})",
    )
    p.add_argument(
        "--case-insensitive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="match words case-insensitively (default: yes, as gensim)",
    )
    args = p.parse_args(argv)
    if args.plot and args.out is None:
        p.error("--plot needs --out")
    data = resolve_data_dir(args.data_dir, *SIMILARITY_FILES.values(), ANALOGY_FILE)

    start = time.perf_counter()
    wv = WordVectors.load(args.vectors)
    timing = {"load_s": time.perf_counter() - start}
    print(f"vectors: {args.vectors} ({len(wv)} words, dim {wv.dim})")
    report: dict[str, Any] = {}
    start = time.perf_counter()
    for name, rel in SIMILARITY_FILES.items():
        report[name] = evaluate_word_similarity(
            wv,
            data / rel,
            restrict_vocab=args.pairs_restrict_vocab,
            case_insensitive=args.case_insensitive,
        )
    timing["similarity_s"] = time.perf_counter() - start
    start = time.perf_counter()
    report["analogy"] = evaluate_analogies(
        wv,
        data / ANALOGY_FILE,
        restrict_vocab=args.restrict_vocab,
        case_insensitive=args.case_insensitive,
    )
    timing["analogy_s"] = time.perf_counter() - start
    report["protocol"] = {
        "similarity": "Spearman and Pearson (x100) of cosine vs gold over pairs with both words "
        "in the first pairs_restrict_vocab words; other pairs dropped (gensim evaluate_word_pairs)",
        "analogy": "3CosAdd: argmax cosine(w, b - a + c) on unit vectors over the first "
        "analogy_restrict_vocab words, a/b/c excluded; questions with a word outside them skipped "
        "(gensim evaluate_word_analogies); semantic = non-gram* sections, syntactic = gram*",
        "pairs_restrict_vocab": args.pairs_restrict_vocab,
        "analogy_restrict_vocab": args.restrict_vocab,
        "case_insensitive": args.case_insensitive,
        "case_folding": "str.upper, first (most frequent) case variant's vector"
        if args.case_insensitive
        else None,
        "files": {
            rel: {"sha256": _sha256(data / rel)}
            for rel in (*SIMILARITY_FILES.values(), ANALOGY_FILE)
        },
    }
    report["model"] = str(args.vectors)
    report["vocabulary"] = {"words": len(wv), "dim": wv.dim}
    report["timing"] = timing
    report["command"] = "python -m benchmarks.words " + shlex.join(argv)
    report["environment"] = environment(("scipy",))
    print_report(report)
    if args.out is not None:
        write_report(args.out, report)
        print(f"wrote {args.out}")
        if args.plot:
            write_plot(report, args.out.with_suffix(".png"))
            print(f"wrote {args.out.with_suffix('.png')}")
    return report


if __name__ == "__main__":
    main()
