"""SentEval-style evaluation of a sentence encoder: STS (cosine vs gold) and transfer tasks.

    python -m benchmarks.senteval MODEL [--tasks T[,T] ...] [--data-dir DIR] [--out F.json]
        [--plot] [--text original|tokenized] [--batch-size 64] [--seed 1111]
        [--folds 10] [--inner-folds 10] [--mrpc-features senteval|concat] [--check-st]

MODEL is a spec for :func:`benchmarks.models.load_model` (a model dir or hub name,
``avg-word-vectors:PATH``, ``random-init:NAME``). Tasks (default ``sts``): ``sts12 sts13 sts14
sts15 sts16 stsb sickr``, ``mr cr subj mpqa sst2 trec mrpc``, and the groups ``sts``,
``transfer``, ``all``. Data come from the shared layout (``--data-dir`` or ``$TEXTCL_DATA``).

* **STS**: Spearman x100 between the cosine similarity of the two sentence embeddings and the
  gold score. As SimCSE describes: "all" (the headline) = one Spearman over all pairs of a set,
  "wmean" = mean of per-domain Spearman weighted by domain size, "mean" = unweighted; Pearson
  likewise. STS-B and SICK-R use their test split and have no domains (all = wmean = mean).
  Each distinct sentence of a set is encoded once. ``--text tokenized`` reads the Moses-tokenized
  text SentEval evaluates (``sts/senteval_tokenized``); there is no tokenized SICK, so SICK-R
  always uses the original text (the protocol says so).
* **Transfer**: frozen unit-length embeddings -> scikit-learn ``LogisticRegression`` (lbfgs), as
  SentEval's sklearn classifiers: MR/CR/SUBJ/MPQA nested stratified CV (``--folds`` outer; for
  each outer fold C is chosen by ``--inner-folds`` CV on its training part, grid 2^-2..2^3);
  SST-2 C (2^-2..2^3) chosen on dev, test accuracy; TREC and MRPC C (2^-1..2^5) chosen by
  ``--folds`` CV on train, then trained on all of train, test accuracy (and F1 for MRPC). MRPC
  features: SentEval's ``[|u-v|, u*v]`` (``--mrpc-features concat``: ``[u, v, |u-v|, u*v]``).
  Folds are seeded (``--seed``, default 1111 as SentEval), so runs repeat exactly.
* ``--check-st``: recomputes the STS "all" Spearman with sentence-transformers directly
  (:func:`st_reference_sts`) and records the largest difference (must be <= 0.05).

``--out`` writes every number as JSON (tasks, protocol, model, command, environment, seconds);
``--plot`` adds ``<out>_sts_scatter.png`` (cosine vs gold per STS set) and ``<out>_tasks.png``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._cli import cli_main
from benchmarks.common import (
    DataDirError,
    add_data_dir_argument,
    environment,
    finite_json,
    resolve_data_dir,
    write_report,
)
from benchmarks.models import load_model

# The parts, re-exported: ``benchmarks.senteval`` stays the one import path for all of them.
from benchmarks.senteval_data import (
    CV_TASKS,
    STS_TASKS,
    TASK_GROUPS,
    TRANSFER_TASKS,
    DataFormatError,
    _as_encoder,
    encode_unique,
    parse_tasks,
    read_jsonl,
    required_files,
    sts_file,
)
from benchmarks.senteval_report import print_report, protocol, write_sts_scatter, write_task_bars
from benchmarks.senteval_sts import (
    ST_TOLERANCE,
    StsResult,
    evaluate_sts,
    run_sts,
    st_reference_sts,
    sts_metrics,
)
from benchmarks.senteval_transfer import (
    C_GRID_INNER,
    C_GRID_KFOLD,
    MAX_ITER,
    run_transfer,
    stratified_folds,
)

__all__ = [
    "CV_TASKS",
    "C_GRID_INNER",
    "C_GRID_KFOLD",
    "MAX_ITER",
    "STS_TASKS",
    "ST_TOLERANCE",
    "TASK_GROUPS",
    "TRANSFER_TASKS",
    "DataFormatError",
    "StsResult",
    "encode_unique",
    "evaluate_sts",
    "main",
    "parse_tasks",
    "print_report",
    "protocol",
    "read_jsonl",
    "required_files",
    "run_senteval",
    "run_sts",
    "run_transfer",
    "st_reference_sts",
    "stratified_folds",
    "sts_file",
    "sts_metrics",
    "write_sts_scatter",
    "write_task_bars",
]


def run_senteval(model: Any, tasks: Sequence[str], data_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Both kinds of task for a spec, encoder object or callable; ``kwargs`` as run_sts/run_transfer."""
    encoder = _as_encoder(model)
    sts_keys = {"text", "batch_size", "show_progress"}
    out = run_sts(encoder, tasks, data_dir, **{k: v for k, v in kwargs.items() if k in sts_keys})
    transfer_kwargs = {k: v for k, v in kwargs.items() if k != "text"}
    out.update(run_transfer(encoder, tasks, data_dir, **transfer_kwargs))
    return out


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.senteval", description=__doc__.split("\n")[0])
    p.add_argument("model", help="model dir / hub name, avg-word-vectors:PATH or random-init:NAME")
    p.add_argument(
        "--tasks", nargs="+", default=["sts"],
        help="tasks or groups (sts, transfer, all), comma or space separated (default: sts)",
    )
    add_data_dir_argument(p)
    p.add_argument("--out", type=Path, default=None, help="write all numbers to this JSON file")
    p.add_argument("--plot", action="store_true", help="also write PNGs next to --out")
    p.add_argument("--text", choices=["original", "tokenized"], default="original", help="STS text")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=1111, help="CV fold seed (default 1111, as SentEval)")
    p.add_argument("--folds", type=int, default=10, help="outer CV folds (default 10)")
    p.add_argument("--inner-folds", type=int, default=10, help="inner CV folds (default 10)")
    p.add_argument("--mrpc-features", choices=["senteval", "concat"], default="senteval",
                   help="senteval: [|u-v|, u*v] (default); concat: [u, v, |u-v|, u*v]")
    p.add_argument("--check-st", action="store_true",
                   help="recompute STS 'all' Spearman with sentence-transformers and compare")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@cli_main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run the tasks, print the table, write JSON / PNGs if asked."""
    wall = time.perf_counter()
    argv = sys.argv[1:] if argv is None else argv
    p = _parser()
    args = p.parse_args(argv)
    try:
        tasks = parse_tasks(args.tasks)
    except ValueError as exc:
        p.error(str(exc))
    if args.plot and args.out is None:
        p.error("--plot needs --out")
    if args.batch_size < 1 or args.folds < 2 or args.inner_folds < 2:
        p.error("--batch-size must be >= 1 and --folds/--inner-folds >= 2")
    sts_tasks = [t for t in tasks if t in STS_TASKS]
    if args.check_st and not sts_tasks:
        p.error("--check-st needs at least one STS task")
    if args.check_st and args.model.partition(":")[0] in ("avg-word-vectors", "random-init"):
        p.error("--check-st needs a model dir or hub name that sentence-transformers can load")
    data_dir = resolve_data_dir(args.data_dir, *required_files(tasks, args.text))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from textcl.encoders import ModelLoadError

    try:
        encoder = load_model(args.model)
    except ModelLoadError:
        raise  # one line already, naming the model: cli_main prints it
    except (OSError, EOFError, ValueError) as exc:  # avg-word-vectors: a missing or malformed vectors file
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise DataDirError(f"cannot load model {args.model!r}: {first}") from None
    show = not args.no_progress

    report: dict[str, Any] = {
        "model": args.model,
        "command": "python -m benchmarks.senteval " + shlex.join(argv),
        "protocol": protocol(tasks, args.text, args.seed, args.folds, args.inner_folds, args.mrpc_features),
        "environment": environment(("scikit-learn", "scipy")),
        "seconds": {},
    }
    seconds = report["seconds"]
    total = time.perf_counter()
    sts_results: list[StsResult] = []
    try:
        for task in tasks:
            start = time.perf_counter()
            if task in STS_TASKS:
                res = evaluate_sts(encoder, task, data_dir, args.text, args.batch_size, show)
                sts_results.append(res)
                report[task] = res.metrics
            else:
                report[task] = run_transfer(
                    encoder, [task], data_dir, args.seed, folds=args.folds,
                    inner_folds=args.inner_folds, batch_size=args.batch_size,
                    show_progress=show, mrpc_features=args.mrpc_features,
                )[task]
            seconds[task] = time.perf_counter() - start
    except (DataFormatError, FileNotFoundError) as exc:
        raise DataDirError(str(exc)) from None
    seconds["total"] = time.perf_counter() - total
    report["environment"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print_report(report, tasks)

    ok = True
    if args.check_st:
        start = time.perf_counter()
        ref = st_reference_sts(args.model, data_dir, sts_tasks, args.text, args.batch_size, show)
        seconds["check_st"] = time.perf_counter() - start
        diffs = {t: abs(ref[t] - report[t]["spearman_all"]) for t in sts_tasks}
        worst = max(diffs.values())
        ok = worst <= ST_TOLERANCE
        report["check_st"] = {
            "reference": "SentenceTransformer(path).encode + numpy cosine + scipy.stats.spearmanr",
            "sentence_transformers_spearman_all": ref,
            "abs_diff": diffs,
            "max_abs_diff": worst,
            "tolerance": ST_TOLERANCE,
            "ok": ok,
        }
        print(
            f"\ncheck vs sentence-transformers ('all' Spearman): max |diff| = {worst:.2e} "
            f"({'ok' if ok else 'FAIL'}, tolerance {ST_TOLERANCE}) in {seconds['check_st']:.1f} s"
        )
    # Everything from argument parsing on: model loading, tasks, the ST check.
    seconds["wall"] = time.perf_counter() - wall
    print(f"tasks: {seconds['total']:.1f} s, wall (with model loading and checks): {seconds['wall']:.1f} s")
    if args.out is not None:
        write_report(args.out, finite_json(report))
        print(f"wrote {args.out}")
        if args.plot:
            pngs = []
            if sts_results:
                pngs.append(args.out.with_name(args.out.stem + "_sts_scatter.png"))
                write_sts_scatter(sts_results, pngs[-1])
            pngs.append(args.out.with_name(args.out.stem + "_tasks.png"))
            write_task_bars(report, tasks, pngs[-1])
            for png in pngs:
                print(f"wrote {png}")
    if not ok:
        raise SystemExit(1)
    return finite_json(report)


if __name__ == "__main__":
    main()
