"""GLUE dev-set scores of a sentence encoder: fine-tuned, or frozen with a linear probe.

    python -m benchmarks.glue [NAME=]MODEL [[NAME=]MODEL ...]
        [--tasks cola,sst2,mrpc,stsb,rte,wnli,qqp,qnli] [--data-dir DIR]
        [--mode finetune|probe] [--max-train-samples N] [--max-eval-samples N]
        [--epochs E] [--lr LR] [--batch-size B] [--max-seq-length L]
        [--seed S | --seeds S1,S2,...] [--split-seed S] [--probe-c C]
        [--head cls|pooled] [--lr-grid LR1,LR2,...] [--probe-baseline PROBE.json] [--threads N]
        [--out F.json [--fresh]] [--plot]

* ``finetune`` (default): ``AutoModelForSequenceClassification`` on MODEL's transformer
  weights (a textcl / sentence-transformers directory, a plain HF directory, or a hub name;
  ``sentence-transformers/all-MiniLM-L6-v2`` resolves offline to the packaged copy), sentence
  pairs as one cross-encoded input, trained with the Hugging Face ``Trainer`` (AdamW, linear
  decay, no warmup, weight decay 0: the ``run_glue.py`` recipe, so numbers compare with it).
  STS-B is a regression (1 output, MSE).
* ``finetune --head pooled``: the sentence-transformers model fine-tuned through its own pooling
  (mean pooling + Normalize for MiniLM): u -> linear, pairs [u, v, |u-v|, u*v] -> linear (head
  initialised from a probe fit), STS-B cos(u, v) with MSE; lr picked from ``--lr-grid`` on the
  probe's seeded 10% held-out part of train, then retrained on all train (see
  ``benchmarks/glue_pooled.py``). Each run also fits the frozen probe on the same train rows;
  ``--probe-baseline PROBE.json`` adds a full-train probe report to the comparison.
* ``probe``: frozen, L2-normalised embeddings -> StandardScaler + LogisticRegression (STS-B:
  Ridge); pair tasks use ``[u, v, |u-v|, u*v]``. C (alpha) is picked from a small grid on a
  seeded 10% held-out part of train by the task's main metric, then refit on all of train;
  ``--probe-c`` fixes it instead.

Scores are on the GLUE dev sets, x100, computed by an ``evaluate`` metric module: the hub's
``evaluate.load("glue", task)`` when the hub is reachable, else the local copy
``benchmarks/glue_metric.py`` (same formulas, scikit-learn / scipy; STS-B in float64 where
the hub's casts to float32): CoLA Matthews corr; MRPC/QQP F1 and accuracy; STS-B Pearson
and Spearman; the rest accuracy. Data layout: ``DIR/glue/<task>/``
as in ``../shared/data/README.md``. QQP (only a 23,497-row *train* subset) and QNLI (only
dev) are split 80/20 by a seeded hash of the row index, and the protocol says so; MNLI is
not in the data.

Several models and seeds: every (model, task, seed) is one run; per model and task the
report gives the per-seed scores, their mean and sample standard deviation (ddof=1), and
for every model after the first the difference of means from the first. A run's seed sets
the head's init, the batch order and the ``--max-train-samples`` subset, so two models with
the same seed see the same data in the same order (paired). With ``--out`` the JSON is
rewritten after every run and a restart with the same settings skips the finished runs.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._cli import cli_main
from benchmarks.common import add_data_dir_argument, environment, resolve_data_dir, write_report

# The split modules' public names stay importable from here (tests and scripts use glue.X).
from benchmarks.glue_data import (  # noqa: F401
    GLUE_METRIC_MODULE,
    METRIC_LABELS,
    SPLIT_DEV_FRACTION,
    TASKS,
    GlueError,
    Split,
    Task,
    TaskData,
    check_files,
    glue_metric,
    hash_split,
    in_dev_part,
    load_task,
    majority_rate,
    parse_tasks,
    protocol_line,
    read_rows,
    score,
    subsample,
)
from benchmarks.glue_finetune import finetune, finetune_protocol, seeds_phrase, transformer_ref  # noqa: F401
from benchmarks.glue_pooled import (
    LR_GRID,
    comparison,
    finetune_pooled,
    load_st,
    pooled_protocol,
    read_probe_baseline,
    st_dir,
)
from benchmarks.glue_probe import (  # noqa: F401
    PROBE_ALPHA_GRID,
    PROBE_C_GRID,
    PROBE_HOLDOUT_FRACTION,
    Encoder,
    features,
    load_encoder,
    probe,
    probe_protocol,
)
from benchmarks.glue_report import (  # noqa: F401
    _fmt,
    markdown_table,
    print_comparison,
    print_table,
    write_comparison_plot,
    write_plot,
)
from benchmarks.glue_runs import (  # noqa: F401
    RUN_SETTINGS,
    STD_NOTE,
    STEP_CHARS,
    ModelSpec,
    estimate_seconds_left,
    model_identity,
    parse_models,
    parse_seeds,
    resume_state,
    settings_of,
    summarize,
    task_work,
    weights_fingerprint,
)

# The formulas live with the evaluate module; re-exported for the probe's model selection.
from benchmarks.glue_scores import METRICS, accuracy, f1, matthews, pearson, spearman  # noqa: F401

# --------------------------------------------------------------------------- running one task

def run_task(
    args: argparse.Namespace, data: TaskData, encoder: Encoder | None, ref: str | None, seed: int | None = None,
    st: Any = None,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Scores and details of one task, one model, one seed (default ``args.seed``), in ``args.mode``
    (``st``: the sentence-transformers model, for ``--head pooled``)."""
    seed = args.seed if seed is None else seed
    task = data.task
    y_true = data.eval.labels
    if args.mode == "probe":
        assert encoder is not None
        preds, details = probe(encoder, data, seed=seed, batch_size=args.batch_size or 64, strength=args.probe_c)
    elif getattr(args, "head", "cls") == "pooled":
        assert st is not None and encoder is not None
        y_true, preds, details = finetune_pooled(
            st, encoder, data, lr_grid=args.lr_grid, epochs=args.epochs, batch_size=args.batch_size or 16, seed=seed,
            head_c=args.head_c,
        )
    else:
        assert ref is not None
        y_true, preds, details = finetune(
            ref, data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size or 32,
            max_seq_length=args.max_seq_length, seed=seed,
        )
    details.update(n_train=len(data.train), n_eval=len(data.eval))
    if not task.regression:
        details["eval_majority_rate"] = majority_rate(data.eval.labels)
    return score(task, y_true, preds), details


def task_protocol(args: argparse.Namespace, data: TaskData, details: dict[str, Any], seeds: Sequence[int]) -> str:
    """The protocol line of a task, from its data and the details of one of its runs."""
    task = data.task
    if args.mode == "probe":
        how = probe_protocol(task, details, fixed=args.probe_c is not None)
        if len(seeds) > 1:
            how += f"; {seeds_phrase(seeds)} picks the hold-out part and the train subset"
    elif getattr(args, "head", "cls") == "pooled":
        how = pooled_protocol(task, details, seeds)
    else:
        how = finetune_protocol(args, details, task, seeds)
    return protocol_line(task, data, how)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.glue", description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="+", help="one or more models, each PATH or NAME=PATH: model dir (textcl / "
                   "sentence-transformers / HF) or hub name; probe mode also takes benchmarks.models specs "
                   "(avg-word-vectors:PATH, random-init:PATH). With 2+, differences are taken from the first")
    p.add_argument("--tasks", default="all", help=f"comma list of {','.join(TASKS)} (default: all)")
    add_data_dir_argument(p)
    p.add_argument("--mode", choices=["finetune", "probe"], default="finetune")
    p.add_argument("--max-train-samples", type=int, default=None, help="seeded random subset of train per task "
                   "(drawn with each run's seed)")
    p.add_argument("--max-eval-samples", type=int, default=None, help="seeded random subset of eval per task")
    p.add_argument("--epochs", type=float, default=3.0, help="finetune epochs, fractions allowed (default 3)")
    p.add_argument("--lr", type=float, default=2e-5, help="finetune learning rate (default 2e-5)")
    p.add_argument("--batch-size", type=int, default=None, help="finetune batch (default 32); probe encode batch (64)")
    p.add_argument("--max-seq-length", type=int, default=128, help="finetune truncation (default 128); probe "
                   "uses the encoder's own")
    seed = p.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, default=None, help="one training seed (default 0): init, order, train "
                      "subset, probe hold-out")
    seed.add_argument("--seeds", default=None, help="several training seeds, e.g. 0,1,2: every model runs "
                      "every task with each; tables give mean ± sample std")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the QQP/QNLI 80/20 split and of the eval "
                   "subset, kept apart from --seed so that runs with other seeds share one eval set")
    p.add_argument("--probe-c", type=float, default=None, help="fix the probe's C (Ridge alpha for STS-B) "
                   "instead of picking it on held-out train")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here, after every run; an "
                   "existing report made with the same settings is continued (finished runs are skipped)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing --out report (it is kept as OUT.bak)")
    p.add_argument("--plot", action="store_true", help="also write a PNG bar chart next to --out")
    p.add_argument("--head", choices=["cls", "pooled"], default="cls", help="finetune head: cls = "
                   "AutoModelForSequenceClassification cross-encoder (default); pooled = the sentence-transformers "
                   "model's own pooling, pair features / cosine, lr picked on held-out train (see glue_pooled.py)")
    p.add_argument("--lr-grid", default=None, help="--head pooled: comma list of lrs to pick from on the held-out "
                   f"part of train (default {','.join(f'{v:g}' for v in LR_GRID)}); one value = fixed lr")
    p.add_argument("--probe-baseline", type=Path, default=None, help="--head pooled: a probe report (JSON) whose "
                   "full-train scores are shown beside the fine-tune and the same-subsample probe")
    p.add_argument("--head-c", type=float, default=None, help="--head pooled: C of the LogisticRegression the "
                   "linear head starts from (default: the probe's pick, at most 0.01)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return p


def parse_lr_grid(text: str | None) -> tuple[float, ...]:
    """Learning rates from a comma list ("2e-5,5e-5"): positive, distinct; LR_GRID for None."""
    if text is None:
        return LR_GRID
    try:
        grid = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        grid = ()
    if not grid or min(grid) <= 0 or not all(map(math.isfinite, grid)) or len(set(grid)) != len(grid):
        raise GlueError(f"--lr-grid {text!r}: expected distinct positive numbers — e.g. --lr-grid 2e-5,5e-5,1e-4")
    return grid


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.plot and args.out is None:
        parser.error("--plot needs --out")
    if args.fresh and args.out is None:
        parser.error("--fresh needs --out")
    for name in ("max_train_samples", "max_eval_samples", "batch_size", "max_seq_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.seed is not None and args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.head == "pooled" and args.mode != "finetune":
        parser.error("--head pooled needs --mode finetune")
    if (args.lr_grid is not None or args.probe_baseline is not None or args.head_c is not None) and args.head != "pooled":
        parser.error("--lr-grid, --probe-baseline and --head-c need --head pooled")
    if args.head_c is not None and not (args.head_c > 0 and math.isfinite(args.head_c)):
        parser.error("--head-c must be > 0")
    if not (args.epochs > 0 and math.isfinite(args.epochs)) or args.lr <= 0 or (
        args.probe_c is not None and args.probe_c <= 0
    ):
        parser.error("--epochs, --lr and --probe-c must be > 0")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


@cli_main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run every (model, task, seed), print the tables; write JSON / PNG if asked."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    args.lr_grid = parse_lr_grid(args.lr_grid) if args.head == "pooled" else None
    baseline = read_probe_baseline(args.probe_baseline) if args.probe_baseline is not None else None
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [0 if args.seed is None else args.seed]
    args.seed = seeds[0]  # what single-seed helpers (run_task, finetune_protocol) default to
    models = parse_models(args.model)
    names = [m.name for m in models]
    tasks = parse_tasks(args.tasks)
    data_dir = resolve_data_dir(args.data_dir)
    check_files(data_dir, tasks)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    env = environment(("scikit-learn", "scipy", "accelerate"))
    started = time.perf_counter()
    t0 = time.perf_counter()
    # Before any run: a wrong path fails now, not after an hour of the first model's runs.
    identity = {m.name: model_identity(args.mode, m) for m in models}
    settings = settings_of(args)
    runs: dict[str, Any] = {}
    model_info: dict[str, Any] = {}
    if args.out is not None:
        runs, model_info = resume_state(args.out, settings, identity, args.fresh)
    model_info.update(identity)
    encoders: dict[str, Encoder] = {}
    sts: dict[str, Any] = {}
    load_seconds = time.perf_counter() - t0

    phrase = seeds_phrase(seeds)

    def load(task: Task, seed: int) -> TaskData:
        return load_task(
            data_dir, task, split_seed=args.split_seed, max_train=args.max_train_samples,
            max_eval=args.max_eval_samples, seed=seed, seed_text=phrase if len(seeds) > 1 else None,
        )

    # The first seed's data of every task up front: the time estimate needs every task's size.
    first_data = {t.name: load(t, seeds[0]) for t in tasks}
    work = {name: task_work(d, args.mode, args.epochs, args.batch_size or 32) for name, d in first_data.items()}
    # Task outermost, model innermost: the models' runs with one seed sit side by side, so an
    # interrupted comparison is still paired, and each task's first run times that task.
    plan = [(t, s, m) for t in tasks for s in seeds for m in models]
    todo = [(t, s, m) for t, s, m in plan if str(s) not in runs.get(m.name, {}).get(t.name, {})]
    if len(todo) < len(plan):
        print(f"{len(plan) - len(todo)} of {len(plan)} runs already in {args.out}: skipped", flush=True)
    print(f"{len(todo)} run(s) to do: {len(models)} model(s) x {len(tasks)} task(s) x {len(seeds)} seed(s) "
          f"({args.mode})", flush=True)
    done_times: list[tuple[str, float]] = []

    def build_report() -> dict[str, Any]:
        summary, differences = summarize(runs, names, tasks, seeds)
        first = names[0]
        protocol, details = {}, {}
        for t in tasks:
            mine = [runs.get(n, {}).get(t.name, {}) for n in names]
            finished = next((r for r in mine if r), None)
            if finished is None:
                continue
            run = finished[min(finished, key=int)]
            protocol[t.name] = task_protocol(args, first_data[t.name], run["details"], seeds)
            own = runs.get(first, {}).get(t.name, {})
            if own:
                details[t.name] = own[min(own, key=int)]["details"]
        seconds: dict[str, float] = {"load_model": round(load_seconds, 2)}
        for t in tasks:
            secs = [r["seconds"] for n in names for s, r in runs.get(n, {}).get(t.name, {}).items() if int(s) in seeds]
            if secs:
                seconds[t.name] = round(sum(secs), 2)
        seconds["total"] = round(sum(v for k, v in seconds.items()), 2)
        seconds["wall_this_invocation"] = round(time.perf_counter() - started, 2)
        first_model = model_info[first]
        label = str(getattr(encoders.get(first), "name", first)) if args.mode == "probe" else first
        out: dict[str, Any] = {
            # Single-run layout, kept for readers of the older reports: the first model's means.
            **{t.name: {m: summary[first][t.name][m]["mean"] for m in t.metrics} for t in tasks
               if runs.get(first, {}).get(t.name)},
            "protocol": protocol,
            "details": details,
            "mode": args.mode,
            "scale": "x100",
            "model": label,
            "model_path": first_model.get("ref"),
            "command": "python -m benchmarks.glue " + shlex.join(argv),
            "environment": env,
            "seconds": seconds,
            # Several models and seeds.
            "models": names,
            "model_info": model_info,
            "seeds": seeds,
            "tasks": [t.name for t in tasks],
            "settings": settings,
            "runs": runs,
            "summary": summary,
            "differences": differences,
            "std_note": STD_NOTE,
        }
        if args.head == "pooled":
            out["head"] = "pooled"
            out["lr_grid"] = list(args.lr_grid)
            out["chosen_lr"] = {t: d["lr"] for t, d in details.items()}
            out["lr_selection"] = {t: d["lr_selection"] for t, d in details.items()}
            out["probe_full_data"] = baseline
            out["comparison"] = comparison(out, tasks, baseline)
        return out

    data_cache: dict[tuple[str, int], TaskData] = {}
    for k, (task, seed, model) in enumerate(todo, 1):
        t0 = time.perf_counter()
        key = (task.name, seed)
        if key not in data_cache:  # runs go task by task, seed by seed: keep one (task, seed) in memory
            data_cache = {key: first_data[task.name] if seed == seeds[0] else load(task, seed)}
        data = data_cache[key]
        pooled = args.head == "pooled"
        if (args.mode == "probe" or pooled) and model.name not in encoders:
            t1 = time.perf_counter()
            encoders[model.name] = load_encoder(model.spec)
            if pooled:
                sts = {model.name: load_st(st_dir(model.spec), args.max_seq_length)}  # one model in memory
            load_seconds += time.perf_counter() - t1
        encoder = encoders.get(model.name)
        scores, details = run_task(args, data, encoder, model_info[model.name].get("ref"), seed,
                                   st=sts.get(model.name))
        sec = round(time.perf_counter() - t0, 2)
        runs.setdefault(model.name, {}).setdefault(task.name, {})[str(seed)] = {
            "scores": scores, "details": details, "seconds": sec,
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),  # runs may span sessions
        }
        done_times.append((task.name, sec))
        left = estimate_seconds_left(done_times, [t.name for t, _, _ in todo[k:]], work)
        values = ", ".join(f"{METRIC_LABELS[m]} {_fmt(scores.get(m))}" for m in task.metrics)
        eta = "" if left is None or k == len(todo) else (
            f"; ~{_minutes(left)} left, ~{_minutes(time.perf_counter() - started + left)} in all")
        print(f"[{k}/{len(todo)}] {model.name} {task.display} seed {seed} ({len(data.train)} train / "
              f"{len(data.eval)} eval): {values} ({sec:.1f} s){eta}", flush=True)
        if k == 1 and len(todo) > 1:
            print("  (estimate: each task's runs take as long as its finished ones; a task not run yet is scaled "
                  "from the others by its text volume x passes)", flush=True)
        if args.out is not None:
            write_report(args.out, build_report())
    env["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = build_report()
    where = ", ".join(f"{n} = {model_info[n]['spec']}" for n in names)
    print(f"models: {where}  mode: {args.mode}  "
          f"seeds: {', '.join(map(str, seeds))}")
    print_table(report, tasks)
    if args.head == "pooled":
        print("fine-tune vs frozen probe:")
        print_comparison(report["comparison"], tasks)
    if args.out is not None:
        write_report(args.out, report)
        print(f"wrote {args.out}")
        if args.plot:
            png = args.out.with_suffix(".png")
            if args.head == "pooled":
                n = args.max_train_samples
                write_comparison_plot(report["comparison"], tasks, png, "GLUE dev (QQP: held-out 20% split), MiniLM: "
                                      f"pooled fine-tune vs frozen probe{f' ({n} train rows)' if n else ''}")
            else:
                write_plot(report, tasks, png)
            print(f"wrote {png}")
    return report


if __name__ == "__main__":
    main()  # cli_main prints a GlueError / DataDirError's one line (SystemExit(2) would not)
