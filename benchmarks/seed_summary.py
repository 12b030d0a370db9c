"""One table of trained rows across seeds, from several ``compare_objectives`` result files.

Each ``--file SEED=PATH`` is one ``benchmarks.compare_objectives`` output; rows with the same
name in files of different seeds are the same recipe run with another seed. The summary
keeps, per row and seed, the longest-budget point (raw and whitened: STS avg, transfer per
task and avg, STS-B dev, steps), adds each row's mean over its seeds and its margin over the
untrained start named by ``--start`` (taken from the first file that holds it), and counts
the seeds that beat the start. It reads files only: nothing is trained or evaluated.

    python -m benchmarks.seed_summary --file 42=benchmarks/results/compare_objectives_5tasks.json \\
        --file 43=benchmarks/results/compare_objectives_5tasks_seed43.json --start sgns-start-init \\
        --out benchmarks/results/seed_summary.json --plot
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks._cli import cli_main
from benchmarks.common import DataDirError, finite_json, write_report

__all__ = ["collect", "main", "summarise"]

METRICS = ("sts_avg", "transfer_avg", "stsb_dev")


def _point(record: dict[str, Any], rows: dict[str, Any], name: str) -> tuple[dict, dict, int | None]:
    """(raw, whitened, steps) of a row: a trained row's longest-budget point, else the row
    itself and its ``+whiten`` row."""
    points = record.get("points") or {}
    if points:
        point = points[max(points, key=float)]
        return point.get("raw") or {}, point.get("whitened") or {}, point.get("steps")
    return record, rows.get(f"{name}+whiten") or {}, None


def _entry(raw: dict[str, Any], whitened: dict[str, Any], steps: int | None) -> dict[str, Any]:
    keep = ("sts_avg", "transfer", "transfer_avg", "stsb_dev")
    return {"steps": steps, "raw": {k: raw.get(k) for k in keep},
            "whitened": {k: whitened.get(k) for k in keep} if whitened else None}


def collect(files: list[tuple[str, Path]], start: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The start row's entry, and ``{row: {seed: entry}}`` for every trained row of the files."""
    start_entry: dict[str, Any] | None = None
    rows: dict[str, dict[str, Any]] = {}
    for seed, path in files:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise DataDirError(f"{path}: cannot read ({exc.strerror}) — fix --file {seed}=PATH") from None
        except UnicodeDecodeError:
            raise DataDirError(f"{path}: not a UTF-8 text file — pass a compare_objectives result") from None
        except json.JSONDecodeError as exc:
            raise DataDirError(f"{path}: not valid JSON ({exc.msg}) — pass a compare_objectives result") from None
        found = data.get("rows") if isinstance(data, dict) else None
        if not isinstance(found, dict):
            raise DataDirError(f"{path}: no 'rows' object — pass a benchmarks.compare_objectives result")
        for name, record in found.items():
            if not isinstance(record, dict) or record.get("status") != "done":
                continue
            if name == start and start_entry is None:
                start_entry = {"file": str(path), **_entry(*_point(record, found, name))}
            elif record.get("points"):
                rows.setdefault(name, {})[seed] = {"file": str(path), **_entry(*_point(record, found, name))}
    if start_entry is None:
        raise DataDirError(f"no file holds a finished row {start!r} — add its file or fix --start")
    return start_entry, rows


def summarise(start: dict[str, Any], rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per row: its seeds, the mean of each raw metric over them, the margin of that mean over
    the start and how many seeds beat the start on it."""
    out: dict[str, Any] = {}
    for name, seeds in rows.items():
        summary: dict[str, Any] = {"seeds": seeds}
        for metric in METRICS:
            values = [e["raw"][metric] for e in seeds.values() if e["raw"].get(metric) is not None]
            base = start["raw"].get(metric)
            if not values or base is None:
                continue
            mean = sum(values) / len(values)
            summary[metric] = {"mean": mean, "margin": mean - base, "n": len(values),
                               "seeds_above_start": sum(v > base for v in values)}
        out[name] = summary
    return out


def write_plot(report: dict[str, Any], path: Path) -> Path:
    """STS avg and transfer avg per row: one dot per seed, a bar at the mean, the start as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["rows"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.8))
    for ax, metric, title in zip(axes, ("sts_avg", "transfer_avg"), ("STS avg (raw)", "transfer avg (raw)")):
        for y, name in enumerate(names):
            seeds = report["rows"][name]["seeds"]
            xs = [e["raw"][metric] for e in seeds.values() if e["raw"].get(metric) is not None]
            ax.scatter(xs, [y] * len(xs), color="tab:blue", s=18, zorder=3)
            if xs:
                ax.plot([sum(xs) / len(xs)] * 2, [y - 0.3, y + 0.3], color="black", lw=2)
        base = report["start"]["raw"].get(metric)
        if base is not None:
            ax.axvline(base, color="tab:red", ls="--", lw=1, label=f"{report['start_row']} {base:.2f}")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(title + ": dot = seed, bar = mean", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _parse_file(item: str) -> tuple[str, Path]:
    seed, sep, path = item.partition("=")
    if not sep or not seed or not path:
        raise argparse.ArgumentTypeError(f"{item!r}: expected SEED=PATH (e.g. 43=benchmarks/results/x.json)")
    return seed, Path(path)


@cli_main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", dest="files", type=_parse_file, action="append", required=True,
                   metavar="SEED=PATH", help="a compare_objectives result and the seed of its rows (repeat)")
    p.add_argument("--start", default="sgns-start-init", help="the untrained row the trained rows start from")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--plot", action="store_true", help="also write OUT with .png")
    args = p.parse_args(argv)
    start, rows = collect(args.files, args.start)
    report = {
        "benchmark": "seed_summary",
        "command": "python -m benchmarks.seed_summary " + " ".join(sys.argv[1:] if argv is None else argv),
        "what": "trained rows of compare_objectives files across seeds (longest-budget points); mean over "
                "seeds, margin of the mean over the start, seeds above the start (raw metrics)",
        "start_row": args.start,
        "start": start,
        "rows": summarise(start, rows),
    }
    write_report(args.out, finite_json(report))
    if args.plot:
        write_plot(report, args.out.with_suffix(".png"))
    for name, r in report["rows"].items():
        t = r.get("transfer_avg", {})
        s = r.get("sts_avg", {})
        print(f"{name:24s} seeds {len(r['seeds'])}: STS avg {s.get('mean', float('nan')):.2f} "
              f"({s.get('margin', float('nan')):+.2f}), transfer avg {t.get('mean', float('nan')):.2f} "
              f"({t.get('margin', float('nan')):+.2f}, {t.get('seeds_above_start', 0)}/{t.get('n', 0)} above)")
    return report


if __name__ == "__main__":
    main()
