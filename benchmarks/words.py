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
from pathlib import Path
from typing import Any

from benchmarks._cli import cli_main
from benchmarks.common import (
    DataDirError,
    add_data_dir_argument,
    environment,
    resolve_data_dir,
    write_report,
)

# The evaluation functions live in textcl (the SGNS objective uses them); re-exported here.
from textcl.word_eval import (
    ANALOGY_RESTRICT_VOCAB,
    PAIRS_RESTRICT_VOCAB,
    evaluate_analogies,
    evaluate_word_similarity,
    read_analogies,
    read_word_pairs,
)
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


def _first_line(err: BaseException) -> str:
    return next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)


@cli_main
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
    try:
        wv = WordVectors.load(args.vectors)
    except (OSError, EOFError, ValueError) as err:  # missing, a directory without vectors, malformed
        what = _first_line(err)
        if str(Path(args.vectors).expanduser()) not in what:  # WordVectors' own messages name the file
            what = f"{args.vectors}: cannot load word vectors ({what})"
        raise DataDirError(
            f"{what} — give a word2vec .txt/.bin file, or a directory holding vectors.bin / vectors.txt"
        ) from None
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
