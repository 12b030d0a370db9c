"""Intrinsic word-vector evaluation: word similarity and 3CosAdd analogies (gensim's protocol).

Pure functions on a ``WordVectors``, used by the SGNS objective's end-of-training metrics and
by ``benchmarks.words`` (which adds the data-directory layout, the report and the CLI):

* ``evaluate_word_similarity``: Spearman and Pearson (x100) between the cosine of the two
  words and the gold score over the pairs whose words are both among the first
  ``restrict_vocab`` (300000) words, as gensim's ``KeyedVectors.evaluate_word_pairs``.
* ``evaluate_analogies``: 3CosAdd accuracy over the first ``restrict_vocab`` (30000) words,
  question words excluded, questions with an unknown word skipped, as gensim's
  ``evaluate_word_analogies``; computed in blocks of matrix products.

Case-insensitive matching (the default) folds words with ``str.upper`` as gensim does; among
case variants in the vocabulary the first (most frequent) one's vector is used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from textcl.word_vectors import WordVectors

__all__ = [
    "ANALOGY_RESTRICT_VOCAB",
    "PAIRS_RESTRICT_VOCAB",
    "evaluate_analogies",
    "evaluate_word_similarity",
    "read_analogies",
    "read_word_pairs",
]

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
