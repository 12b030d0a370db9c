"""SGNS speed and quality: textcl against gensim ``Word2Vec(sg=1)``, same corpus, one run.

    python -m benchmarks.sgns_speed [--corpus FILE] [--data-dir DIR] [--normalize a-z]
        [--max-sentences N] [--epochs 5] [--threads 2] [--dim 100] [--window 5]
        [--negative 5] [--sample 1e-4] [--min-count 5] [--rounds 1] [--skip-eval]
        [--compare-readers] [--out F.json] [--plot]

Both train skip-gram with negative sampling on the same tokenised corpus (default
``$TEXTCL_DATA/corpora/gutenberg_sentences.txt.gz`` lowercased to a-z words) with the same
settings and thread count: gensim ``Word2Vec(sg=1, hs=0, ...)`` on the sentences as token
lists, textcl through the recipe path (``load_recipe`` -> ``SGNS.from_recipe`` ->
``Trainer.fit``). Rounds alternate which one goes first (the machine may be shared).

* **words/s** = corpus words (every token read, as gensim counts raw words) x epochs /
  training seconds; vocabulary building (gensim ``build_vocab``, textcl corpus loading and
  kernel compilation) is timed apart. The median over rounds is reported, and the ratio.
* **quality**: ``benchmarks.words`` on both models' vectors (WS353, SimLex-999, MEN Spearman;
  3CosAdd analogy accuracy over the top 30000 words; both vocabularies are in the same
  order, so the same questions count). Round ``r`` trains both with seed ``--seed + r``:
  the mean over rounds is reported with each round's value (seed variance is ~1 point).
* **profile** (textcl): time in the update kernel (which makes the pairs and noise words in
  its threads), in the dataset items (subsampling, windows and noise keys in numpy, re-timed
  afterwards on one epoch of chunks) and the rest (trainer loop, logging).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._cli import cli_main
from benchmarks.common import add_data_dir_argument, environment, resolve_data_dir, write_report
from benchmarks.words import (
    ANALOGY_FILE,
    SIMILARITY_FILES,
    evaluate_analogies,
    evaluate_word_similarity,
)
from textcl.word_vectors import WordVectors

CORPUS = "corpora/gutenberg_sentences.txt.gz"


def _recipe(args: argparse.Namespace, corpus: str, out: Path, seed: int) -> Path:
    """The recipe textcl trains from (a temp file; ``recipes/text/sgns.yaml``'s settings)."""
    text = f"""
method: sgns
output_dir: {out}
seed: {seed}
model: {{dim: {args.dim}}}
data:
  corpus: {corpus}
  normalize: {args.normalize}
  min_count: {args.min_count}
  max_sentences: {args.max_sentences if args.max_sentences else 'null'}
objective:
  window: {args.window}
  negative: {args.negative}
  sample: {args.sample}
  threads: {args.threads}
  backend: numba
train:
  batch_size: 1
  epochs: {args.epochs}
  optimizer: sgd
  lr: 0.025
  min_lr_ratio: 0.004
  scheduler: linear
  momentum: 0.0
  weight_decay: 0.0
  max_grad_norm: null
  log_every_n_steps: 100
  cpu: true
eval: {{before_training: false}}
"""
    path = out / "sgns_bench.yaml"
    path.write_text(text)
    return path


def _train_gensim(args: argparse.Namespace, sentences: list[list[str]], seed: int) -> tuple[dict[str, Any], WordVectors]:
    from gensim.models import Word2Vec

    start = time.perf_counter()
    model = Word2Vec(
        vector_size=args.dim, window=args.window, min_count=args.min_count, sample=args.sample,
        negative=args.negative, hs=0, sg=1, workers=args.threads, epochs=args.epochs,
        alpha=0.025, min_alpha=0.0001, seed=seed,
    )
    model.build_vocab(sentences)
    vocab_s = time.perf_counter() - start
    start = time.perf_counter()
    model.train(sentences, total_examples=model.corpus_count, epochs=args.epochs)
    train_s = time.perf_counter() - start
    wv = WordVectors(list(model.wv.index_to_key), model.wv.vectors)
    return {"vocab_s": vocab_s, "train_s": train_s, "vocabulary": len(wv),
            "corpus_words": int(model.corpus_total_words)}, wv


def _train_textcl(recipe: Path, corpus: Any) -> tuple[dict[str, Any], WordVectors]:
    from textcl.core.recipe import load_recipe
    from textcl.core.trainer import Trainer
    from textcl.objectives.skipgram import SGNS

    r = load_recipe(recipe)
    start = time.perf_counter()
    method = SGNS(r.config, corpus, seed=r.seed, backend="numba")  # compiles the kernel
    init_s = time.perf_counter() - start
    trainer = Trainer(method, r.train, r.output_dir, seed=r.seed)
    start = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - start
    # Profile: the kernel's own time, then the dataset items re-timed on one epoch.
    ds = method.train_dataset()
    start = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    data_epoch_s = time.perf_counter() - start
    data_s = data_epoch_s * r.train.epochs
    update_s = method.timing["update_s"]
    return {
        "init_s": init_s, "train_s": train_s, "vocabulary": len(corpus.vocab),
        "pairs": method.timing["pairs"], "steps": trainer.state.step, "threads": method.threads,
        "profile": {
            "update_kernel_s": update_s,
            "windows_s": data_s,
            "other_s": max(0.0, train_s - update_s - data_s),
        },
    }, method.word_vectors()


def _head(corpus: Any, sentences: int = 2000) -> Any:
    """The first ``sentences`` sentences of a corpus (same vocabulary)."""
    import dataclasses

    n = min(sentences, corpus.sentences)
    return dataclasses.replace(corpus, ids=corpus.ids[: corpus.offsets[n]], offsets=corpus.offsets[: n + 1])


def _evaluate(wv: WordVectors, data: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, rel in SIMILARITY_FILES.items():
        r = evaluate_word_similarity(wv, data / rel)
        out[name] = {k: r[k] for k in ("spearman", "pearson", "pairs", "oov_pairs")}
    a = evaluate_analogies(wv, data / ANALOGY_FILE)
    out["analogy"] = {k: a[k] for k in ("total", "semantic", "syntactic", "correct", "evaluated", "skipped")}
    return out


def _mean_quality(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over rounds of each score, and the per-round values (``rounds``)."""
    out: dict[str, Any] = {}
    for task in rounds[0]:
        keys = ("spearman",) if task != "analogy" else ("total", "semantic", "syntactic")
        out[task] = {k: statistics.mean(r[task][k] for r in rounds) for k in keys}
        out[task]["rounds"] = [{k: r[task][k] for k in keys} for r in rounds]
        if task == "analogy":
            out[task]["evaluated"] = [r[task]["evaluated"] for r in rounds]
    return out


def _compare_readers(corpus: str, normalize: str, max_sentences: int | None) -> dict[str, float]:
    """Seconds to read, normalise and split every line of the corpus: textcl's block reader
    vs the ``datasets`` text loader (streaming, and via Arrow); same output, word counts."""
    import datasets

    from textcl.corpus import _line_blocks, normalize_text

    datasets.disable_progress_bars()

    def count(lines: Any) -> int:
        return sum(len(line.split()) for line in lines)

    start = time.perf_counter()
    n_plain, read = 0, 0
    # Blocks of lines; a block's last line may go on in the next one (never inside a word).
    for lines, open_end in _line_blocks(corpus, normalize, "text"):  # type: ignore[arg-type]
        finished = len(lines) - open_end
        if max_sentences is not None and read + finished >= max_sentences:
            n_plain += count(lines[: max_sentences - read])
            break
        read += finished
        n_plain += count(lines)
    plain = time.perf_counter() - start

    def rows(ds: Any) -> Any:
        for i, row in enumerate(ds):
            if max_sentences is not None and i >= max_sentences:
                break
            yield normalize_text(row["text"], normalize)  # type: ignore[arg-type]

    start = time.perf_counter()
    n_stream = count(rows(datasets.load_dataset("text", data_files=corpus, split="train", streaming=True)))
    streaming = time.perf_counter() - start
    start = time.perf_counter()
    n_arrow = count(rows(datasets.load_dataset("text", data_files=corpus, split="train")))
    arrow = time.perf_counter() - start
    return {"plain_reader_s": plain, "datasets_streaming_s": streaming, "datasets_arrow_s": arrow,
            "words_plain": n_plain, "words_streaming": n_stream, "words_arrow": n_arrow}


def print_report(report: dict[str, Any]) -> None:
    g, t = report["gensim"], report["textcl"]
    print(f"\n{'':24s} {'gensim':>12s} {'textcl':>12s}")
    print(f"{'words/s (median)':24s} {g['words_per_sec']:>12,.0f} {t['words_per_sec']:>12,.0f}")
    print(f"{'train s (per round)':24s} {' '.join(f'{x:.1f}' for x in g['train_s']):>12s} "
          f"{' '.join(f'{x:.1f}' for x in t['train_s']):>12s}")
    print(f"{'vocabulary':24s} {g['vocabulary']:>12d} {t['vocabulary']:>12d}")
    if "quality" in report:
        q = report["quality"]
        print("quality: mean over rounds [each round]")

        def cell(task: str, key: str, name: str) -> str:
            rounds = " ".join(f"{r[key]:.2f}" for r in q[name][task]["rounds"])
            return f"{q[name][task][key]:6.2f} [{rounds}]"

        for name in SIMILARITY_FILES:
            print(f"{name + ' spearman':24s} {cell(name, 'spearman', 'gensim'):>24s} "
                  f"{cell(name, 'spearman', 'textcl'):>24s}")
        for key in ("total", "semantic", "syntactic"):
            print(f"{'analogy ' + key + ' %':24s} {cell('analogy', key, 'gensim'):>24s} "
                  f"{cell('analogy', key, 'textcl'):>24s}")
    print(f"\nratio textcl/gensim words/s: {report['ratio']:.2f}x  "
          f"({report['settings']['threads']} threads each; {report['corpus']['words']:,} words x "
          f"{report['settings']['epochs']} epochs)")
    p = t["profile"]
    print(f"textcl time: kernel {p['update_kernel_s']:.1f} s, windows {p['windows_s']:.1f} s, "
          f"other {p['other_s']:.1f} s (last round)")


def write_plot(report: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1, 2]})
    names = ["gensim", "textcl"]
    bars = left.bar(names, [report[n]["words_per_sec"] / 1e3 for n in names], color=["tab:gray", "tab:blue"])
    left.bar_label(bars, fmt="%.0f")
    left.set_ylabel("thousand words / s")
    left.set_title(f"training speed, {report['settings']['threads']} threads")
    if "quality" in report:
        q = report["quality"]
        labels = [*SIMILARITY_FILES, "analogy"]
        x = np.arange(len(labels))
        for j, n in enumerate(names):
            vals = [q[n][k]["spearman"] for k in SIMILARITY_FILES] + [q[n]["analogy"]["total"]]
            b = right.bar(x + (j - 0.5) * 0.4, vals, 0.4, label=n, color=["tab:gray", "tab:blue"][j])
            right.bar_label(b, fmt="%.1f", fontsize=8)
        right.set_xticks(x, ["WS353 ρ", "SimLex ρ", "MEN ρ", "analogy %"])
        right.legend()
        right.set_title(f"quality, mean of {report['settings']['rounds']} seeds (Spearman x100 / accuracy %)")
    fig.suptitle(f"SGNS on {Path(report['corpus']['path']).name}: {report['corpus']['words']:,} words, "
                 f"{report['settings']['epochs']} epochs", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


@cli_main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.sgns_speed", description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default=None, help=f"one sentence per line (default: DATA/{CORPUS})")
    add_data_dir_argument(p)
    p.add_argument("--normalize", default="a-z", choices=["none", "lowercase", "a-z"])
    p.add_argument("--max-sentences", type=int, default=None)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--negative", type=int, default=5)
    p.add_argument("--sample", type=float, default=1e-4)
    p.add_argument("--min-count", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="train each this many times, alternating")
    p.add_argument("--skip-eval", action="store_true", help="no word benchmarks (speed only)")
    p.add_argument("--compare-readers", action="store_true", help="also time the datasets text loader")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--plot", action="store_true", help="also write a PNG next to --out")
    args = p.parse_args(argv)
    if args.plot and args.out is None:
        p.error("--plot needs --out")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data: Path | None = None
    if not args.skip_eval or args.corpus is None:
        data = resolve_data_dir(args.data_dir, *SIMILARITY_FILES.values(), ANALOGY_FILE,
                                *(() if args.corpus else (CORPUS,)))
    corpus_path = args.corpus or str(data / CORPUS)  # type: ignore[operator]

    from textcl.corpus import iter_sentences, load_corpus

    start = time.perf_counter()
    sentences = list(iter_sentences(corpus_path, args.normalize, max_sentences=args.max_sentences))
    read_gensim_s = time.perf_counter() - start
    start = time.perf_counter()
    corpus = load_corpus(corpus_path, normalize=args.normalize, min_count=args.min_count,
                         max_sentences=args.max_sentences)
    load_textcl_s = time.perf_counter() - start
    words = corpus.raw_words
    print(f"corpus: {corpus_path}: {words:,} words, {corpus.raw_sentences:,} sentences, vocabulary "
          f"{len(corpus.vocab):,} (textcl load {load_textcl_s:.1f} s; token lists for gensim {read_gensim_s:.1f} s)")

    readers = None
    if args.compare_readers:  # before the rounds: a failure here must not cost their minutes
        readers = _compare_readers(corpus_path, args.normalize, args.max_sentences)
        print(f"readers: {readers}")
    results: dict[str, dict[str, Any]] = {"gensim": {"rounds": []}, "textcl": {"rounds": []}}
    with tempfile.TemporaryDirectory(prefix="sgns_bench_") as tmp:
        # Warm-up: the trainer's first fit imports accelerate/tqdm/torch.distributed (~2 s);
        # gensim's extension is loaded already, so neither timing includes imports.
        _train_textcl(_recipe(argparse.Namespace(**{**vars(args), "epochs": 1}), corpus_path,
                              Path(tmp), args.seed), _head(corpus))
        for r in range(args.rounds):
            seed = args.seed + r
            order = ["gensim", "textcl"] if r % 2 == 0 else ["textcl", "gensim"]
            for name in order:
                print(f"round {r + 1}/{args.rounds} (seed {seed}): training {name} ...", flush=True)
                if name == "gensim":
                    info, wv = _train_gensim(args, sentences, seed)
                    if info["corpus_words"] != words:
                        raise SystemExit(f"gensim counted {info['corpus_words']} words, textcl {words}")
                else:
                    info, wv = _train_textcl(_recipe(args, corpus_path, Path(tmp), seed), corpus)
                info["seed"] = seed
                info["words_per_sec"] = words * args.epochs / info["train_s"]
                print(f"  {name}: {info['train_s']:.1f} s, {info['words_per_sec']:,.0f} words/s", flush=True)
                if not args.skip_eval:
                    info["quality"] = _evaluate(wv, data)  # type: ignore[arg-type]
                results[name]["rounds"].append(info)

    report: dict[str, Any] = {
        "corpus": {"path": corpus_path, "words": words, "sentences": corpus.raw_sentences,
                   "normalize": args.normalize, "max_sentences": args.max_sentences,
                   "textcl_load_s": load_textcl_s, "gensim_token_lists_s": read_gensim_s},
        "settings": {k: getattr(args, k) for k in ("epochs", "threads", "dim", "window", "negative",
                                                   "sample", "min_count", "seed", "rounds")}
        | {"alpha": 0.025, "min_alpha": 0.0001},
    }
    for name in ("gensim", "textcl"):
        rounds = results[name]["rounds"]
        report[name] = {
            "words_per_sec": statistics.median(x["words_per_sec"] for x in rounds),
            "train_s": [x["train_s"] for x in rounds],
            "vocabulary": rounds[-1]["vocabulary"],
            "rounds": rounds,
        }
    report["textcl"]["profile"] = results["textcl"]["rounds"][-1]["profile"]
    report["ratio"] = report["textcl"]["words_per_sec"] / report["gensim"]["words_per_sec"]
    if not args.skip_eval:
        report["quality"] = {name: _mean_quality([x["quality"] for x in results[name]["rounds"]])
                             for name in ("gensim", "textcl")}
    if readers is not None:
        report["readers"] = readers
    report["command"] = "python -m benchmarks.sgns_speed " + shlex.join(argv)
    report["environment"] = environment(("gensim", "numba", "scipy"))
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
