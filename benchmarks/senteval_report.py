"""SentEval's report: the protocol text, the printed tables and the PNGs.
Part of :mod:`benchmarks.senteval`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.senteval_data import STS_TASKS, TRANSFER_TASKS
from benchmarks.senteval_sts import StsResult
from benchmarks.senteval_transfer import C_GRID_INNER, C_GRID_KFOLD, MAX_ITER

__all__ = ["print_report", "protocol", "write_sts_scatter", "write_task_bars"]


def protocol(
    tasks: Sequence[str], text: str, seed: int, folds: int, inner_folds: int, mrpc_features: str
) -> dict[str, Any]:
    """What was measured and how, for the report and the printed header."""
    out: dict[str, Any] = {}
    if any(t in STS_TASKS for t in tasks):
        note = ""
        if text == "tokenized" and "sickr" in tasks:
            note = "; SICK-R: original text (no tokenized SICK in the data)"
        out["sts"] = (
            "STS: Spearman x100 of cosine similarity vs gold; 'all' (headline) = over the "
            "concatenated pairs of a set, 'wmean' = per-domain Spearman weighted by domain size, "
            "'mean' = unweighted; Pearson likewise; STS-B and SICK-R: test split, no domains; "
            f"{text} text{note}"
        )
    if any(t in TRANSFER_TASKS for t in tasks):
        out["transfer"] = {
            "summary": (
                "Transfer: accuracy x100 of sklearn LogisticRegression(lbfgs, L2, "
                f"max_iter={MAX_ITER}) on frozen unit-length embeddings, seed {seed}; "
                f"MR/CR/SUBJ/MPQA: {folds}-fold stratified CV, C per outer fold by "
                f"{inner_folds}-fold inner CV; SST-2: C on dev, test; TREC/MRPC: C by "
                f"{folds}-fold CV on train, refit, test (MRPC also F1)"
            ),
            "classifier": "sklearn.linear_model.LogisticRegression(solver='lbfgs', penalty='l2')",
            "features": "raw unit-length embeddings (not standardized), as SentEval",
            "seed": seed,
            "outer_folds": folds,
            "inner_folds": inner_folds,
            "C_grid_cv_and_split": list(C_GRID_INNER),
            "C_grid_kfold_trec_mrpc": list(C_GRID_KFOLD),
            "mrpc_features": "[|u-v|, u*v]" if mrpc_features == "senteval" else "[u, v, |u-v|, u*v]",
            "selection": "highest mean held-out accuracy; ties -> smaller C; no rounding",
        }
    return out


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_report(report: dict[str, Any], tasks: Sequence[str]) -> None:
    """Protocol lines, then one table for STS and one for transfer tasks."""
    proto = report["protocol"]
    print(f"model: {report['model']}")
    if "sts" in proto:
        print(proto["sts"])
    if "transfer" in proto:
        print(proto["transfer"]["summary"] + "; MRPC features " + proto["transfer"]["mrpc_features"])
    sts = [t for t in tasks if t in STS_TASKS]
    if sts:
        print(f"\n{'task':<7} {'all':>7} {'wmean':>7} {'mean':>7} {'pearson':>8} {'pairs':>6} {'text':<9} {'s':>6}")
        for t in sts:
            m = report[t]
            print(
                f"{t:<7} {_fmt(m['spearman_all']):>7} {_fmt(m['spearman_wmean']):>7} "
                f"{_fmt(m['spearman_mean']):>7} {_fmt(m['pearson_all']):>8} {m['n_pairs']:>6} "
                f"{m['text']:<9} {report['seconds'][t]:>6.1f}"
            )
        print(f"{'avg':<7} {_fmt(float(np.mean([report[t]['spearman_all'] for t in sts]))):>7}")
    transfer = [t for t in tasks if t in TRANSFER_TASKS]
    if transfer:
        print(f"\n{'task':<7} {'acc':>7} {'dev':>7} {'f1':>7} {'C':>12} {'n':>6} {'enc s':>7} {'clf s':>7}")
        for t in transfer:
            m = report[t]
            c = m["C"]
            c_text = f"{min(c):g}..{max(c):g}" if isinstance(c, list) else f"{c:g}"
            n = sum(v for k, v in m.items() if k.startswith("n_") and k not in ("n_classes", "n_unique_texts"))
            print(
                f"{t:<7} {_fmt(m['accuracy']):>7} {_fmt(m['dev_accuracy']):>7} {_fmt(m.get('f1')):>7} "
                f"{c_text:>12} {n:>6} {m['encode_seconds']:>7.1f} {m['classify_seconds']:>7.1f}"
            )
        bad = sum(report[t]["not_converged"] for t in transfer)
        if bad:
            print(f"warning: {bad} logistic regression fits stopped at max_iter={MAX_ITER}")
        print(f"{'avg':<7} {np.mean([report[t]['accuracy'] for t in transfer]):>7.2f}")


def write_sts_scatter(results: Sequence[StsResult], png: Path) -> None:
    """One panel per STS set: predicted cosine against gold score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(results))
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax, res in zip(axes.flat, results):
        ax.scatter(res.gold, res.cosine, s=3, alpha=0.25, linewidths=0)
        ax.set_title(f"{res.task}: Spearman {_fmt(res.metrics['spearman_all'])}", fontsize=10)
        ax.set_xlabel("gold score")
        ax.set_ylabel("cosine")
    for ax in list(axes.flat)[len(results) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_task_bars(report: dict[str, Any], tasks: Sequence[str], png: Path) -> None:
    """Bar chart of the headline metric of every task (STS "all" Spearman, transfer accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [
        report[t]["spearman_all"] if t in STS_TASKS else report[t]["accuracy"] for t in tasks
    ]
    values = [math.nan if v is None else v for v in values]
    colors = ["tab:blue" if t in STS_TASKS else "tab:orange" for t in tasks]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(tasks) + 1.5), 4))
    bars = ax.bar(tasks, values, color=colors)
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("STS: Spearman x100 ('all')\ntransfer: accuracy %")
    name = "/".join(Path(report["model"]).parts[-2:]) if "/" in report["model"] else report["model"]
    ax.set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
