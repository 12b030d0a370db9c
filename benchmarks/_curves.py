"""Learning curves for ``benchmarks.compare_objectives``: snapshots at shorter budgets, the
per-budget points of a row, the old single-budget JSON read as points, and the curves plot.

A trained row trains once, for the longest budget (``train.max_minutes``, which sets the lr
schedule); :class:`ExportAtMinutes` saves the model when the run's training time
(``TrainerState.train_seconds``: steps only, evaluation and checkpoints excluded) first
reaches each shorter budget, the same "first step past the budget" rule that ends a run under
``train.max_minutes``. A snapshot is ``<output_dir>/at-<m>min/``: a sentence-transformers
model directory plus ``point.json`` (step, train_seconds and the run's evaluation -- pretext
metrics and in-training STS-dev -- at that moment), written to a temporary directory and
renamed into place, so a kill never leaves half a snapshot and a resumed run keeps the
snapshots already written.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CURVE_BASELINES",
    "ExportAtMinutes",
    "budget_key",
    "curve",
    "export_dir",
    "print_curves",
    "transfer_avg",
    "upgrade_rows",
    "write_curves_plot",
]

#: Untrained rows drawn as horizontal lines on the curves plot.
CURVE_BASELINES = ("random-init", "sgns-init", "sgns-init+whiten", "sgns-bow-init+whiten", "avg-sgns")
WHITEN_SUFFIX = "+whiten"
#: Evaluation fields of a row/point entry (what ``evaluate_model`` returns, plus ``stsb_dev``).
EVAL_KEYS = ("sts", "sts_avg", "sts_wmean", "transfer", "transfer_avg", "transfer_details", "sts_seconds",
             "transfer_seconds", "eval_seconds", "stsb_dev", "transfer_tasks")


def budget_key(minutes: float) -> str:
    """The JSON key of a budget: ``10``, ``2.5``."""
    return f"{float(minutes):g}"


def export_dir(output_dir: Path, minutes: float) -> Path:
    """Where the snapshot of a run at ``minutes`` of training goes."""
    return Path(output_dir) / f"at-{budget_key(minutes)}min"


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """Run the block without moving the python / numpy / torch RNGs (an evaluation in the middle
    of training must not change the data that follows, or a resumed run would diverge)."""
    import numpy as np
    import torch

    py, nps, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(nps)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class ExportAtMinutes:
    """textcl trainer callback: a model snapshot when training time first reaches each budget.

    Pass it to ``textcl.train.run(..., callbacks=[...])``. Knows no objective: it calls the
    method's ``save_model`` (what ``textcl.train`` calls at the end) and the trainer's
    ``evaluate`` (the recipe's evaluators and the method's pretext metrics). A snapshot that
    already exists (written before a kill, found again after ``--resume``) is kept.
    """

    def __init__(self, output_dir: Path, minutes: Sequence[float], *, evaluate: bool = True):
        self.output_dir = Path(output_dir)
        self.pending = sorted(float(m) for m in minutes)
        self.evaluate = evaluate
        self.written: list[float] = []

    def on_step_end(self, trainer: Any) -> None:
        while self.pending and trainer.state.train_seconds >= self.pending[0] * 60.0:
            minutes = self.pending.pop(0)
            if (export_dir(self.output_dir, minutes) / "modules.json").is_file():
                continue
            self._export(trainer, minutes)

    def _export(self, trainer: Any, minutes: float) -> None:
        from textcl.core.io import atomic_write_json, replace_dir

        final = export_dir(self.output_dir, minutes)
        with _rng_preserved():
            metrics = trainer.evaluate() if self.evaluate else {}  # every rank: it synchronises
        if trainer.is_main:
            tmp = final.with_name(f".tmp-{final.name}")
            shutil.rmtree(tmp, ignore_errors=True)
            info = trainer.method.card_info()
            info["metrics"] = metrics
            recipe = self.output_dir / "recipe.yaml"
            if recipe.is_file():
                info["recipe_yaml"] = recipe.read_text(encoding="utf-8")
            trainer.method.save_model(tmp, info)
            atomic_write_json(tmp / "point.json", {
                "budget_minutes": minutes, "step": trainer.state.step, "epoch": trainer.state.epoch,
                "train_seconds": trainer.state.train_seconds, "metrics": metrics,
            })
            replace_dir(tmp, final)
            self.written.append(minutes)
        trainer.accelerator.wait_for_everyone()


def clear_exports(output_dir: Path) -> None:
    """Remove the snapshots (and their whitened models) of an earlier run in ``output_dir``."""
    output_dir = Path(output_dir)
    if output_dir.is_dir():
        for path in output_dir.glob("at-*min*"):
            shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(output_dir.with_name(output_dir.name + WHITEN_SUFFIX), ignore_errors=True)


def read_export(output_dir: Path, minutes: float) -> dict[str, Any] | None:
    """``point.json`` of a snapshot (None if the snapshot is absent or incomplete)."""
    path = export_dir(output_dir, minutes)
    if not (path / "modules.json").is_file():
        return None
    try:
        return json.loads((path / "point.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


# --------------------------------------------------------------------------- points


def transfer_avg(entry: dict[str, Any] | None, tasks: Sequence[str]) -> float | None:
    """Mean accuracy over ``tasks`` (None unless every task has a finite value)."""
    if not entry or not tasks:
        return None
    values = [entry.get("transfer", {}).get(t) for t in tasks]
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    return float(sum(values) / len(values))


def curve(record: dict[str, Any]) -> list[tuple[float, dict[str, Any]]]:
    """(budget, point) of a trained row's evaluated points (finished, or with the raw evaluation
    only, e.g. an old single-budget row never whitened), by budget."""
    points = record.get("points") or {}
    out = [(float(p.get("budget_minutes", k)), p) for k, p in points.items()
           if p.get("status") in ("done", "partial") and p.get("raw")]
    return sorted(out, key=lambda x: x[0])


def _eval_fields(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: record[k] for k in EVAL_KEYS if k in record}
    out.setdefault("transfer_tasks", list(record.get("transfer", {})))
    return out


def upgrade_rows(rows: dict[str, dict[str, Any]], old_settings: dict[str, Any],
                 is_trained: Any) -> dict[str, dict[str, Any]]:
    """Rows of a single-budget JSON (no ``points``) as rows with points at their budget.

    A finished trained row becomes one point at the file's ``budget_minutes`` (its lr schedule
    too); the ``<row>+whiten`` row made from it, if finished, is that point's whitened entry.
    Evaluated rows without ``transfer_tasks`` get the tasks their ``transfer`` holds.
    """
    budget = old_settings.get("budget_minutes")
    rows = {k: dict(v) for k, v in rows.items()}
    for record in rows.values():
        if record.get("status") == "done" and "transfer_tasks" not in record and "sts" in record:
            record["transfer_tasks"] = list(record.get("transfer", {}))
    for name, record in rows.items():
        if not is_trained(name) or "points" in record or record.get("status") != "done" or budget is None:
            continue
        whiten = rows.get(name + WHITEN_SUFFIX, {})
        point = {
            "budget_minutes": float(budget), "schedule_minutes": float(budget), "model": record.get("model"),
            "train_seconds": record.get("train_seconds"), "steps": record.get("steps"),
            "pretext": record.get("pretext"), "dev_sts": record.get("dev_sts"),
            "raw": _eval_fields(record),
            "whitened": ({**_eval_fields(whiten), "model": whiten.get("model"),
                          "whitening": whiten.get("whitening"), "whiten_seconds": whiten.get("whiten_seconds")}
                         if whiten.get("status") == "done" else None),
            "upgraded_from": "single-budget row",
        }
        point["status"] = "done" if point["whitened"] else "partial"
        record.update(budgets=[float(budget)], schedule_minutes=float(budget), points={budget_key(budget): point})
    return rows


# --------------------------------------------------------------------------- output


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def print_curves(rows: dict[str, dict[str, Any]], order: Sequence[str], tasks: Sequence[str]) -> None:
    """One line per (trained row, budget): STS avg, transfer avg and STS-B dev, raw and whitened."""
    lines = [(n, b, p) for n in order for b, p in curve(rows.get(n, {}))]
    if not lines:
        return
    w = max(12, *(len(n) + 1 for n, _, _ in lines))
    print(f"\nlearning curves (raw / whitened; transfer avg over {', '.join(tasks) or '-'}; "
          "STS-B dev Spearman x100 for choosing settings, the test sets only reported)")
    header = (f"{'row':<{w}}{'min':>6}{'steps':>7}{'train s':>8}{'STS':>7}{'STS+w':>7}{'trans':>7}{'trans+w':>8}"
              f"{'dev':>7}{'dev+w':>7}")
    print(header)
    print("-" * len(header))
    for name, budget, p in lines:
        raw, wh = p.get("raw") or {}, p.get("whitened") or {}
        print(f"{name:<{w}}{budget:>6g}{p.get('steps') if p.get('steps') is not None else '-':>7}"
              f"{_fmt(p.get('train_seconds'), '.0f'):>8}{_fmt(raw.get('sts_avg')):>7}{_fmt(wh.get('sts_avg')):>7}"
              f"{_fmt(transfer_avg(raw, tasks)):>7}{_fmt(transfer_avg(wh, tasks)):>8}"
              f"{_fmt(raw.get('stsb_dev')):>7}{_fmt(wh.get('stsb_dev')):>7}")


def write_curves_plot(rows: dict[str, dict[str, Any]], order: Sequence[str], png: Path,
                      tasks: Sequence[str], title: str = "") -> dict[str, dict[str, tuple[str, str]]]:
    """Two panels, STS avg and transfer avg vs training minutes: one colour per trained row
    (solid raw, dashed whitened), horizontal lines for the untrained baselines. Returns each
    panel's labelled lines: ``{"sts": {label: (linestyle, colour)}, "transfer": {...}}``."""
    import matplotlib
    from matplotlib.colors import to_hex

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    trained = [n for n in order if curve(rows.get(n, {}))]
    base_styles = {"random-init": ("black", ":"), "sgns-init": ("tab:gray", "-."),
                   "sgns-init+whiten": ("tab:gray", "--"), "sgns-bow-init+whiten": ("tab:olive", "--"),
                   "avg-sgns": ("tab:brown", ":")}
    panels = [("STS avg (Spearman x100, 'all', 7 sets)", lambda e: (e or {}).get("sts_avg")),
              (f"transfer avg ({', '.join(t.upper() for t in tasks) or '-'}, accuracy %)",
               lambda e: transfer_avg(e, tasks))]
    labels: dict[str, dict[str, tuple[str, str]]] = {}
    for ax, (ylabel, value) in zip(axes, panels):
        for i, name in enumerate(trained):
            pts = curve(rows[name])
            colour = colours[i % len(colours)]
            for key, style, suffix in (("raw", "-", ""), ("whitened", "--", WHITEN_SUFFIX)):
                xy = [(b, value(p.get(key))) for b, p in pts]
                xy = [(b, v) for b, v in xy if v is not None]
                if xy:
                    ax.plot([b for b, _ in xy], [v for _, v in xy], style, marker="o", markersize=4,
                            color=colour, label=name + suffix)
        for name in CURVE_BASELINES:
            record = rows.get(name, {})
            v = value(record) if record.get("status") == "done" else None
            if v is not None:
                colour, style = base_styles[name]
                ax.axhline(v, color=colour, linestyle=style, linewidth=1.2, label=f"{name} (untrained)")
        ax.set_xlabel("training minutes")
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3)
        labels["sts" if ax is axes[0] else "transfer"] = {
            line.get_label(): (line.get_linestyle(), to_hex(line.get_color()))
            for line in ax.get_lines() if not line.get_label().startswith("_")}
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return labels
