"""Tables and plots of a :mod:`benchmarks.glue` report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.glue_data import METRIC_LABELS, Task


def _fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.2f}"


def _mean_std(entry: dict[str, Any]) -> str:
    if entry["mean"] is None:
        return "nan"
    return _fmt(entry["mean"]) if entry["std"] is None else f"{entry['mean']:.2f} ± {entry['std']:.2f}"


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def print_table(report: dict[str, Any], tasks: Sequence[Task]) -> None:
    """Per task, metric and model: per-seed scores, mean ± sample std, difference from the first model;
    then a markdown table of the means and the protocol lines."""
    models, seeds = report["models"], report["seeds"]
    summary, differences = report["summary"], report["differences"]
    width = max(5, *(len(m) for m in models))
    per_seed_head = "seed " + " / ".join(map(str, seeds))
    cells = {}
    for t in tasks:
        for m in t.metrics:
            for name in models:
                e = summary[name][t.name][m]
                cells[t.name, m, name] = " / ".join(_fmt(e["per_seed"].get(str(s))) if str(s) in e["per_seed"]
                                                    else "-" for s in seeds)
    seed_width = max(len(per_seed_head), *(len(c) for c in cells.values())) if cells else len(per_seed_head)
    delta = f"diff vs {models[0]}" if len(models) > 1 else ""
    print(f"{'task':<7} {'metric':<14} {'model':<{width}} {per_seed_head:<{seed_width}} {'mean ± std':>15} {delta}")
    for t in tasks:
        for m in t.metrics:
            for name in models:
                e = summary[name][t.name][m]
                d = differences.get(name, {}).get(t.name, {}).get(m)
                dtext = "" if d is None else _signed(d["diff"]) + (f" (paired std {d['diff_std']:.2f})"
                                                                   if d["diff_std"] is not None else "")
                print(f"{t.display:<7} {METRIC_LABELS[m]:<14} {name:<{width}} {cells[t.name, m, name]:<{seed_width}} "
                      f"{_mean_std(e):>15} {dtext}")
    print(f"({'std: sample standard deviation over seeds, ddof=1' if len(seeds) > 1 else 'one seed: no std'})")
    print("markdown:")
    print(markdown_table(report, tasks))
    print("protocol:")
    for t in tasks:
        if t.name in report["protocol"]:
            print(f"  {report['protocol'][t.name]}")


def markdown_table(report: dict[str, Any], tasks: Sequence[Task]) -> str:
    """Models as rows, task metrics as columns, "mean ± std" cells; a diff row per later model."""
    models, summary, differences = report["models"], report["summary"], report["differences"]
    cols = [(t, m) for t in tasks for m in t.metrics]
    lines = [
        "| model | " + " | ".join(f"{t.display} {METRIC_LABELS[m]}" for t, m in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name in models:
        lines.append(f"| {name} | " + " | ".join(_mean_std(summary[name][t.name][m]) for t, m in cols) + " |")
    for name in models[1:]:
        lines.append(f"| {name} − {models[0]} | "
                     + " | ".join(_signed(differences[name][t.name][m]["diff"]) for t, m in cols) + " |")
    return "\n".join(lines)


def write_plot(report: dict[str, Any], tasks: Sequence[Task], png: Path) -> None:
    """Grouped bars: every metric of every task (x100), one bar per model at its mean over
    seeds, error bars one sample std (ddof=1) where there are 2+ seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, summary = report["models"], report["summary"]
    cols = [(t, m) for t in tasks for m in t.metrics]  # the task's order: JSON keys come back sorted
    n = len(models)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, (0.6 + 0.35 * n) * len(cols)), 4.2))
    lowest, highest = 0.0, 100.0
    for i, name in enumerate(models):
        entries = [summary[name][t.name][m] for t, m in cols]
        means = [math.nan if e["mean"] is None else e["mean"] for e in entries]
        stds = [0.0 if e["std"] is None else e["std"] for e in entries]
        x = [j + (i - (n - 1) / 2) * width for j in range(len(cols))]
        has_err = any(e["std"] is not None for e in entries)
        ax.bar(x, means, width, yerr=stds if has_err else None, capsize=3 if has_err else 0,
               label=name, color=f"C{i}")
        for xi, mean, std in zip(x, means, stds):
            # Above the error bar (below it for a negative score), so the two never overlap.
            if math.isnan(mean):
                ax.text(xi, 1, "n/a", ha="center", va="bottom", fontsize=7)
                continue
            y = mean + std + 1 if mean >= 0 else mean - std - 1
            ax.text(xi, y, f"{mean:.1f}", ha="center", va="bottom" if mean >= 0 else "top", fontsize=7)
            if mean >= 0:
                highest = max(highest, y + 6)
            else:
                lowest = min(lowest, y - 6)
    ax.set_xticks(range(len(cols)), [f"{t.display}\n{METRIC_LABELS[m]}" for t, m in cols], fontsize=8)
    ax.set_ylabel("score x100")
    ax.set_ylim(lowest, highest)
    ax.axhline(0, color="black", linewidth=0.5)
    seeds = report["seeds"]
    err = f"mean of seeds {', '.join(map(str, seeds))} ± sample std" if len(seeds) > 1 else f"seed {seeds[0]}"
    split = [t.display for t in tasks if t.split_from]
    note = f" ({', '.join(split)}: held-out 20% split)" if split else ""
    if n > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        title = f"GLUE dev{note}, {report['mode']}: {err}"
    else:
        name = "/".join(Path(str(report["model"])).parts[-2:])  # packaged models end in a bare "model"
        title = f"GLUE dev{note}, {report['mode']}: {name}" + (f" ({err})" if len(seeds) > 1 else "")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)



def print_comparison(cmp: dict[str, Any], tasks: Sequence[Task]) -> None:
    """Fine-tune vs frozen probe (same train rows) vs frozen probe (full train), as markdown."""
    print("| task | metric | fine-tune (pooled) | probe, same rows | probe, full train | lr |")
    print("|---|---|---:|---:|---:|---:|")
    for t in tasks:
        if t.name not in cmp:
            continue
        e = cmp[t.name]
        for m in t.metrics:
            c = e[m]
            print(f"| {t.display} | {METRIC_LABELS[m]} | {_fmt(c['finetune'])} | {_fmt(c['probe_same_subsample'])} | "
                  f"{_fmt(c.get('probe_full_train'))} | {e['lr']:g} |")


def write_comparison_plot(cmp: dict[str, Any], tasks: Sequence[Task], png: Path, title: str) -> None:
    """Grouped bars per task metric: pooled fine-tune, probe on the same rows, probe on full train."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(t, m) for t in tasks if t.name in cmp for m in t.metrics]
    kinds = [("finetune", "fine-tune (pooled head)"), ("probe_same_subsample", "frozen probe, same train rows"),
             ("probe_full_train", "frozen probe, full train")]
    kinds = [k for k in kinds if any(cmp[t.name][m].get(k[0]) is not None for t, m in cols)]
    width = 0.8 / len(kinds)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cols)), 4.2))
    for i, (key, label) in enumerate(kinds):
        vals = [cmp[t.name][m].get(key) for t, m in cols]
        x = [j + (i - (len(kinds) - 1) / 2) * width for j in range(len(cols))]
        ax.bar(x, [math.nan if v is None else v for v in vals], width, label=label, color=f"C{i}")
        for xi, v in zip(x, vals):
            if v is not None:
                ax.text(xi, max(v, 0) + 1, f"{v:.1f}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(cols)), [f"{t.display}\n{METRIC_LABELS[m]}\nlr {cmp[t.name]['lr']:g}" for t, m in cols],
                  fontsize=7)
    ax.set_ylabel("score x100")
    ax.set_ylim(0, 112)  # room above the bars for the legend
    ax.legend(fontsize=7, loc="upper center", ncol=len(kinds))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
