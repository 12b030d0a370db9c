"""Several models and seeds in :mod:`benchmarks.glue`: model specs, resuming a report,
mean and sample std over seeds, and the time estimate."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.glue_data import GlueError, Task, TaskData
from benchmarks.glue_finetune import transformer_ref

STD_NOTE = (
    "mean and std over seeds; std is the sample standard deviation (ddof=1, n-1 in the denominator), "
    "null with one seed; diff = mean of the model minus mean of the first model, diff_std = sample std "
    "of the per-seed paired differences (same seed = same train subset and batch order for both models)"
)
# What decides a run's result besides (model, task, seed): a resumed report must agree on all.
RUN_SETTINGS = (
    "mode", "epochs", "lr", "batch_size", "max_seq_length", "max_train_samples", "max_eval_samples",
    "split_seed", "probe_c",
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate: its name in tables and reports, and where it is."""

    name: str
    spec: str


def parse_models(specs: Sequence[str]) -> list[ModelSpec]:
    """``PATH`` or ``NAME=PATH`` per model; an unnamed model is named by its spec. Names must differ."""
    out: list[ModelSpec] = []
    for raw in specs:
        name, sep, spec = raw.partition("=")
        # An existing path that happens to contain "=" is a path, not a name.
        if sep and _NAME.fullmatch(name) and not Path(raw).expanduser().exists():
            if not spec:
                raise GlueError(f"model {raw!r}: no path after '='")
            out.append(ModelSpec(name, spec))
        else:
            out.append(ModelSpec(raw, raw))
    names = [m.name for m in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise GlueError(f"model name(s) {', '.join(map(repr, twice))} given twice: name each model, "
                        "e.g. start=PATH1 cert=PATH2")
    return out


def parse_seeds(text: str) -> list[int]:
    """Seeds from a comma list ("0,1,2"): distinct integers >= 0, in the order given."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise GlueError(f"--seeds {text!r}: expected a comma list of integers, e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise GlueError(f"--seeds {text!r}: expected distinct integers >= 0, e.g. 0,1,2")
    return seeds


def weights_fingerprint(ref: str) -> str | None:
    """sha1 (16 hex) of a local model directory's weight files; None for a hub name.

    Recorded so that resuming never mixes runs of a model retrained at the same path.
    """
    root = Path(ref)
    if not root.is_dir():
        return None
    digest = hashlib.sha1()
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix in {".safetensors", ".bin", ".pt", ".pth"}:
            digest.update(path.name.encode())
            with path.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def model_identity(mode: str, spec: ModelSpec) -> dict[str, Any]:
    """Where a model's weights are (absolute path or hub name) and their fingerprint, for resuming."""
    if mode == "probe":  # benchmarks.models specs: the spec is the identity
        return {"spec": spec.spec, "path": None, "fingerprint": None}
    ref = transformer_ref(spec.spec)
    local = Path(ref).exists()
    return {
        "spec": spec.spec,
        "path": os.path.abspath(ref) if local else ref,
        "ref": ref,
        "fingerprint": weights_fingerprint(ref) if local else None,
    }


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that decide a run's result (see RUN_SETTINGS)."""
    settings = {k: getattr(args, k) for k in RUN_SETTINGS}
    # The effective batch: an explicit "--batch-size 32" resumes a report made with the default.
    settings["batch_size"] = args.batch_size or (64 if args.mode == "probe" else 32)
    if getattr(args, "head", "cls") == "pooled":  # only then: older reports resume as before
        settings["batch_size"] = args.batch_size or 16
        settings["head"] = "pooled"
        settings["lr_grid"] = list(args.lr_grid)
        if getattr(args, "head_c", None) is not None:  # only then: reports without it resume as before
            settings["head_c"] = args.head_c
        settings.pop("lr")  # unused by the pooled head
    return settings


def _identity_key(info: dict[str, Any]) -> tuple[Any, ...]:
    """What must match for a model's runs to be reused: path and weights, or the probe spec."""
    return (info.get("path"), info.get("fingerprint")) if info.get("path") else (info.get("spec"),)


def resume_state(
    out: Path, settings: dict[str, Any], models: dict[str, dict[str, Any]], fresh: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(runs, model info) of a previous report at ``out`` that can be continued, else empty ones.

    A report that cannot be continued (other settings, a model whose path or weights changed,
    an older single-run format, unreadable) is moved to ``OUT.bak`` with a message saying why.
    """
    if not out.exists():
        return {}, {}
    problem = None
    old: Any = None
    try:
        old = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problem = f"cannot be read as JSON ({err})"
    if fresh:
        problem = "--fresh given"
    elif problem is None and not (isinstance(old, dict) and isinstance(old.get("runs"), dict)
                                  and isinstance(old.get("settings"), dict)):
        problem = "has no per-run results (written by the single-run version of this benchmark)"
    elif problem is None:
        diffs = [f"{k} {old['settings'].get(k)!r} there, {v!r} now"
                 for k, v in settings.items() if old["settings"].get(k) != v]
        old_info = old.get("model_info", {})
        for name, info in models.items():
            prev = old_info.get(name)
            if prev is not None and _identity_key(prev) != _identity_key(info):
                diffs.append(f"model {name!r} was {prev.get('path') or prev.get('spec')} (weights "
                             f"{prev.get('fingerprint')}), now {info['path'] or info['spec']} (weights {info['fingerprint']})")
        if diffs:
            problem = "was made with other settings: " + "; ".join(diffs)
    if problem is None:
        n = sum(len(seeds) for tasks in old["runs"].values() for seeds in tasks.values())
        print(f"resuming {out}: {n} finished run(s) there are kept and not run again", flush=True)
        return old["runs"], old.get("model_info", {})
    backup = out.with_name(out.name + ".bak")
    os.replace(out, backup)
    print(f"{out} {problem}: starting fresh (the old report is now {backup})", flush=True)
    return {}, {}


# --------------------------------------------------------------------------- aggregating


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def _std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof=1); None below 2 values, where it is undefined."""
    return round(float(np.std(values, ddof=1)), 3) if len(values) >= 2 else None


def summarize(
    runs: dict[str, Any], models: Sequence[str], tasks: Sequence[Task], seeds: Sequence[int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per model, task and metric: per-seed scores, mean, sample std (ddof=1) and n; and the
    differences of every later model from the first.

    Only finished runs count; an undefined score (None, e.g. Pearson of constant predictions)
    is left out of the mean and std, so ``n`` says how many values went in.
    """
    summary: dict[str, Any] = {}
    for name in models:
        for task in tasks:
            done = runs.get(name, {}).get(task.name, {})
            for metric in task.metrics:
                per_seed = {str(s): done[str(s)]["scores"].get(metric) for s in seeds if str(s) in done}
                values = [v for v in per_seed.values() if v is not None]
                summary.setdefault(name, {}).setdefault(task.name, {})[metric] = {
                    "per_seed": per_seed, "mean": _mean(values), "std": _std(values), "n": len(values),
                }
    differences: dict[str, Any] = {}
    base = models[0] if models else None
    for name in models[1:]:
        for task in tasks:
            for metric in task.metrics:
                a, b = summary[base][task.name][metric], summary[name][task.name][metric]
                paired = [b["per_seed"][s] - a["per_seed"][s] for s in b["per_seed"]
                          if a["per_seed"].get(s) is not None and b["per_seed"][s] is not None]
                diff = None if a["mean"] is None or b["mean"] is None else round(b["mean"] - a["mean"], 3)
                differences.setdefault(name, {}).setdefault(task.name, {})[metric] = {
                    "diff": diff, "diff_std": _std(paired), "n_pairs": len(paired),
                }
    return summary, differences


def estimate_seconds_left(
    done: Sequence[tuple[str, float]], pending: Sequence[str], work: dict[str, float]
) -> float | None:
    """Seconds the ``pending`` runs (their task names) should take, from the ``done`` ones.

    A task with finished runs costs their mean time; another costs its ``work`` (text volume
    x passes) at the seconds-per-work rate of all finished runs. None before any run finished.
    """
    if not done:
        return None
    by_task: dict[str, list[float]] = {}
    for name, sec in done:
        by_task.setdefault(name, []).append(sec)
    rate = sum(sec for _, sec in done) / max(sum(work[name] for name, _ in done), 1e-9)
    return sum(float(np.mean(by_task[t])) if t in by_task else rate * work[t] for t in pending)


# The fixed cost of one optimizer step (AdamW over every weight, embeddings included, and the
# Trainer's bookkeeping) in "characters of training text" (see task_work): on CPU with a 4-layer,
# 256-wide BERT (16k vocab) a step cost 134 ms + 0.2 ms per token, i.e. ~680 tokens ~ 2,600
# characters. Without it, a task of short rows (CoLA) was estimated at half its time.
STEP_CHARS = 2600


def task_work(data: TaskData, mode: str, epochs: float, batch_size: int = 32) -> float:
    """Relative cost of one run: characters forwarded, a training pass counting 3 forwards
    (forward + backward), plus each optimizer step's fixed cost (STEP_CHARS)."""
    train = sum(len(t) for row in data.train.texts for t in row)
    evaluate = sum(len(t) for row in data.eval.texts for t in row)
    if mode == "probe":
        return float(train + evaluate)
    steps = math.ceil(epochs * math.ceil(len(data.train) / batch_size))
    return float(3 * (epochs * train + steps * STEP_CHARS) + evaluate)

