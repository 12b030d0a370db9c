"""Sentence objectives compared at equal budget from the same from-scratch start.

    python -m benchmarks.compare_objectives [--data-dir D] [--budget-minutes 10] [--rows R ...]
        [--out benchmarks/results/compare_objectives.json] [--plot] [--scratch-dir runs/scratch]
        [--runs-dir runs/scratch/compare] [--recipes-dir recipes/text/scratch] [--threads 1]
        [--folds 10] [--inner-folds 10] [--transfer mr,subj,trec] [--fresh]

Needs the start models of ``python -m textcl.scratch`` in ``--scratch-dir`` (``base-random``,
``base-sgns``, ``sgns``). Rows (default: all, in this order):

* ``random-init``  -- ``base-random`` as built (4-layer / 256 BERT, 16k WordPiece, mean pooling);
* ``sgns-init``    -- ``base-sgns``: the same weights, whole-word input embeddings from SGNS;
* ``avg-sgns``     -- the mean of the SGNS vectors of a sentence's words;
* ``st-simcse``    -- sentence-transformers' own unsupervised SimCSE recipe:
  ``MultipleNegativesRankingLoss`` (scale 20 = temperature 0.05) on (s, s) pairs, the dropout
  noise of the model (0.1) making the two views differ, ST's ``no_duplicates`` batch sampler; ``SentenceTransformerTrainer`` from
  ``base-sgns``, batch 64, AdamW lr 1e-4 (weight decay 0.01), 5% warmup and linear decay over
  the time budget (textcl's schedule under ``train.max_minutes``), max 48 tokens per sentence, sentences of the training documents of the chapter
  corpus split by ``textcl.sentences`` (same held-out documents as the textcl recipes), stopped
  by a ``TrainerCallback`` when the budget is spent;
* ``nsp``, ``neighbour``, ``permutation``, ``declutr``, ``cert`` -- ``python -m textcl.train
  recipes/text/scratch/<row>.yaml --set train.max_minutes=<budget> --set output_dir=<runs-dir>/<row>``
  (in-process through ``textcl.train.run``; ``TEXTCL_SCRATCH_BASE`` points the recipes at
  ``base-sgns``). A row whose recipe or method does not exist is reported as ``skipped`` with
  the reason; a row whose training fails is ``failed`` with the error, and the next row runs;
* ``<row>+whiten`` -- ``<row>``'s model (already run) with a BERT-whitening layer
  (``textcl.whitening``) fitted on 20,000 sentences of the training documents: no labels, no
  evaluation text; its cost (``whiten_seconds``) is recorded, outside the training budget.

Evaluation goes through the SentEval harness (``benchmarks.senteval``): STS "all" Spearman x100
of cosine similarity on STS12-16, STS-B and SICK-R test sets (original text) and their mean,
and frozen-embedding logistic-regression accuracy on MR, SUBJ (nested CV) and TREC (CV on
train, test), SentEval's protocol and seed 1111. Each model is evaluated as saved (its own
``max_seq_length``).

Resumable: the JSON is rewritten (atomically) after each row; a restart keeps the rows that
are ``done`` and runs the others (skipped or failed rows are retried). A textcl run killed
mid-training resumes from its latest checkpoint (``--resume``); a finished run whose
evaluation was killed is evaluated without retraining. ``st-simcse`` restarts from its start.
Each row records STS per set + avg, transfer accuracies, training steps, examples/s (the
method's own example unit: pairs, passages or documents), training and evaluation seconds,
the pretext metrics of the run's ``metrics.json`` and the command. ``--plot`` writes
``<out>.png`` (STS avg per row, with the 56.7 bare-loop reference line).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DataDirError,
    add_data_dir_argument,
    environment,
    exit_on_error,
    finite_json,
    resolve_data_dir,
    write_report,
)

__all__ = ["ROWS", "RowSkipped", "Settings", "is_row", "main", "run_comparison"]

logger = logging.getLogger("benchmarks.compare_objectives")

BASELINE_ROWS = ("random-init", "sgns-init", "avg-sgns")
OBJECTIVE_ROWS = ("nsp", "neighbour", "permutation", "declutr", "cert")
ROWS = (*BASELINE_ROWS, "st-simcse", *OBJECTIVE_ROWS)
#: STS avg of the plain 40-line adjacent-sentence loop (issue 5): the bar to match.
BARE_LOOP_STS_AVG = 56.7
CALIBRATION = {
    "bare_loop_adjacent_sentences_10min": 56.7,
    "random_init": 48.1,
    "sgns_init": 50.6,
    "avg_sgns": 47.9,
    "st_simcse_10min_from_random_init": 49.0,
}
DEFAULT_TRANSFER = ("mr", "subj", "trec")
#: ``<row>+whiten``: ``<row>``'s model with a whitening layer (textcl.whitening) fitted on
#: this many training-split sentences of the chapter corpus (seed 0).
WHITEN_SUFFIX = "+whiten"
WHITEN_SENTENCES = 20_000
BASE_ENV = "TEXTCL_SCRATCH_BASE"
#: train.save_every_n_steps added to recipes that set none (resumable rows).
CHECKPOINT_EVERY = 100
# Settings whose change makes earlier rows incomparable with new ones.
_COMPARABLE_KEYS = ("budget_minutes", "transfer_tasks", "folds", "inner_folds", "sts_tasks")


class RowSkipped(Exception):
    """A row that cannot run here (missing recipe, method, start model); the message says why."""


@dataclass
class SimCSESettings:
    """The sentence-transformers SimCSE row: the textcl scratch conventions."""

    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.01
    scheduler: str = "linear"  # over the time budget, as the scratch recipes
    warmup_ratio: float = 0.05
    max_tokens: int = 48  # per sentence, special tokens excluded
    scale: float = 20.0  # = 1 / temperature 0.05
    held_out_fraction: float = 0.02
    max_documents: int | None = None
    documents: str | None = None  # default: <data-dir>/corpora/gutenberg_chapters.jsonl.gz
    seed: int = 42
    threads: int = 2  # torch threads while training: the scratch recipes' train.threads


@dataclass
class Settings:
    """Everything a comparison run depends on."""

    data_dir: Path
    budget_minutes: float = 10.0
    scratch_dir: Path = Path("runs/scratch")
    runs_dir: Path = Path("runs/scratch/compare")
    recipes_dir: Path = Path("recipes/text/scratch")
    transfer_tasks: tuple[str, ...] = DEFAULT_TRANSFER
    sts_tasks: tuple[str, ...] = ("sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr")
    folds: int = 10
    inner_folds: int = 10
    threads: int = 1  # evaluation: 2 threads ran 2.5x slower than 1 on 2 busy cores
    batch_size: int = 64
    show_progress: bool = True
    simcse: SimCSESettings = field(default_factory=SimCSESettings)

    def comparable(self) -> dict[str, Any]:
        return {
            "budget_minutes": self.budget_minutes,
            "transfer_tasks": list(self.transfer_tasks),
            "folds": self.folds,
            "inner_folds": self.inner_folds,
            "sts_tasks": list(self.sts_tasks),
        }

    def to_json(self) -> dict[str, Any]:
        out = self.comparable()
        out.update(
            scratch_dir=str(self.scratch_dir), runs_dir=str(self.runs_dir),
            recipes_dir=str(self.recipes_dir), eval_threads=self.threads, eval_batch_size=self.batch_size,
            simcse={k: v for k, v in vars(self.simcse).items()},
        )
        return out


# --------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then restore the previous values."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def _scratch_model(settings: Settings, name: str) -> Path:
    path = settings.scratch_dir / name
    if not path.exists():
        raise RowSkipped(
            f"{path} not found -- build the start models first: python -m textcl.scratch "
            f"(or pass --scratch-dir)"
        )
    return path


def _summarize_log(log: Path) -> dict[str, Any]:
    """Steps, training seconds and step-weighted examples/s from a run's log.jsonl."""
    steps, seconds, prev, weighted = 0, None, 0, 0.0
    if not log.is_file():
        return {}
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if "loss" not in rec:
            continue  # eval/... lines
        step = int(rec["step"])
        weighted += float(rec.get("examples_per_sec", 0.0)) * (step - prev)
        prev = steps = step
        seconds = rec.get("train_seconds", seconds)
    out: dict[str, Any] = {"steps": steps}
    if steps:
        out["examples_per_sec"] = weighted / steps
    if seconds is not None:
        out["train_seconds"] = float(seconds)
    return out


def _pretext(metrics: dict[str, float]) -> dict[str, Any]:
    """Split a run's metrics.json into pretext metrics, their initial values and STS-dev numbers."""
    pretext = {k: v for k, v in metrics.items() if not k.startswith("initial/") and not k.endswith("_spearman")}
    initial = {k.removeprefix("initial/"): v for k, v in metrics.items()
               if k.startswith("initial/") and not k.endswith("_spearman")}
    dev = {k: v for k, v in metrics.items() if k.endswith("_spearman")}
    return {"pretext": pretext, "pretext_initial": initial, "dev_sts": dev}


# --------------------------------------------------------------------------- training rows


def _recipe_method(recipe: Path) -> str:
    import yaml

    try:
        data = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RowSkipped(f"{recipe}: malformed YAML ({exc})") from None
    method = data.get("method") if isinstance(data, dict) else None
    if not method:
        raise RowSkipped(f"{recipe}: no 'method:' key")
    return str(method)


def train_textcl_row(name: str, settings: Settings) -> dict[str, Any]:
    """Train ``<recipes-dir>/<name>.yaml`` for the budget; returns the row's training facts.

    Raises :class:`RowSkipped` when the recipe file, its method or the start model is missing.
    """
    from textcl.core.method import get_method_class

    recipe = settings.recipes_dir / f"{name}.yaml"
    if not recipe.is_file():
        raise RowSkipped(f"recipe {recipe} not found")
    method = _recipe_method(recipe)
    try:
        get_method_class(method)
    except (KeyError, ImportError, AttributeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise RowSkipped(f"{recipe}: method {method!r} is not available: {msg}") from None
    base = _scratch_model(settings, "base-sgns")
    # The recipes read their start model and data from these (restored afterwards).
    with _environ({BASE_ENV: str(base), "TEXTCL_DATA": str(settings.data_dir)}):
        return _train_textcl(name, recipe, method, base, settings)


def _train_textcl(name: str, recipe: Path, method: str, base: Path, settings: Settings) -> dict[str, Any]:
    from textcl.core.recipe import RecipeError, load_recipe
    from textcl.train import run

    out = settings.runs_dir / name
    budget = settings.budget_minutes
    overrides = [f"train.max_minutes={budget:g}", f"output_dir={out}"]
    try:
        resolved = load_recipe(recipe, overrides)
    except RecipeError as exc:
        raise RowSkipped(str(exc)) from None
    if resolved.train.save_every_n_steps is None:
        # Checkpoints make a killed row resumable; their time is outside the budget.
        overrides.append(f"train.save_every_n_steps={CHECKPOINT_EVERY}")

    finished = (out / "metrics.json").is_file() and (out / "modules.json").is_file()
    same_budget = _recorded_budget(out) == budget
    ckpts = out / "checkpoints"
    has_ckpt = ckpts.is_dir() and any(ckpts.glob("step_*"))
    resume = has_ckpt and same_budget
    command = f"{BASE_ENV}={base} python -m textcl.train {recipe} " + " ".join(
        f"--set {shlex.quote(o)}" for o in overrides
    )
    info: dict[str, Any] = {"recipe": str(recipe), "method": method, "output_dir": str(out)}
    start = time.perf_counter()
    if finished and same_budget:
        print(f"[{name}] training already finished in {out}; evaluating it")
        info["training"] = "reused finished run"
    else:
        if resume:
            command += " --resume"
            print(f"[{name}] resuming the interrupted run in {out}")
        print(f"[{name}] {command}")
        run(str(recipe), overrides, resume=resume, overwrite=has_ckpt and not resume)
        info["training"] = "resumed" if resume else "trained"
        # Only needed to resume a killed run: ~100 MB each for the small BERT + AdamW.
        shutil.rmtree(ckpts, ignore_errors=True)
    info["train_wall_seconds"] = time.perf_counter() - start
    info["command"] = command
    info.update(_summarize_log(out / "log.jsonl"))
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    info.update(_pretext(metrics))
    info["model"] = str(out)
    return info


def _recorded_budget(out: Path) -> float | None:
    """train.max_minutes of the run in ``out`` (its resolved recipe.yaml), if any."""
    import yaml

    path = out / "recipe.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        value = data.get("train", {}).get("max_minutes")
        return float(value) if value is not None else None
    except (yaml.YAMLError, AttributeError, TypeError, ValueError):
        return None


def simcse_sentences(documents: str, settings: SimCSESettings) -> list[str]:
    """Sentences of the training documents (the held-out split removed), via textcl.sentences."""
    try:
        from textcl.sentences import load_sentence_documents
    except ImportError as exc:
        raise RowSkipped(f"textcl.sentences is not available ({exc})") from None
    from textcl.documents import held_out_split

    docs, _ = load_sentence_documents(documents, max_documents=settings.max_documents)
    train, _ = held_out_split(docs, settings.held_out_fraction)
    return [s for d in train for s in d.sentences]


def train_st_simcse_row(settings: Settings) -> dict[str, Any]:
    """sentence-transformers' unsupervised SimCSE from base-sgns for the budget; the model goes
    to ``<runs-dir>/st-simcse``."""
    import torch

    from textcl.core.optim import lr_lambda

    base = _scratch_model(settings, "base-sgns")
    s = settings.simcse
    documents = s.documents or str(settings.data_dir / "corpora" / "gutenberg_chapters.jsonl.gz")
    if not documents.startswith("hf://") and not Path(documents).is_file():
        raise RowSkipped(f"document corpus {documents} not found")
    try:
        import datasets
        from sentence_transformers import (
            SentenceTransformer,
            SentenceTransformerTrainer,
            SentenceTransformerTrainingArguments,
        )
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        from transformers import TrainerCallback
    except ImportError as exc:
        raise RowSkipped(f"sentence-transformers training is not available ({exc})") from None

    sentences = simcse_sentences(documents, s)
    if len(sentences) < s.batch_size:
        raise RowSkipped(f"{documents}: only {len(sentences)} training sentences, fewer than one batch")
    budget = settings.budget_minutes * 60.0
    out = settings.runs_dir / "st-simcse"
    tmp = settings.runs_dir / ".tmp-st-simcse"
    shutil.rmtree(tmp, ignore_errors=True)

    class Budget(TrainerCallback):
        """Ends training at the first step past the wall-clock budget; tracks elapsed time."""

        def __init__(self) -> None:
            self.start: float | None = None
            self.elapsed = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            assert self.start is not None
            self.elapsed = time.perf_counter() - self.start
            if self.elapsed >= budget:
                control.should_training_stop = True

    clock = Budget()

    ticks = 100_000
    by_time = lr_lambda(s.scheduler, ticks, int(round(s.warmup_ratio * ticks)))

    class TimeScheduleTrainer(SentenceTransformerTrainer):
        """The lr schedule of textcl's trainer under train.max_minutes: warmup and decay over
        the elapsed fraction of the *time* budget (a step-based schedule cannot know how many
        steps the budget allows)."""

        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.lr_scheduler is None:
                opt = optimizer if optimizer is not None else self.optimizer
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    opt, lambda _: by_time(min(ticks, int(clock.elapsed / budget * ticks)))
                )
            return self.lr_scheduler

    _set_threads(s.threads)
    model = SentenceTransformer(str(base), device="cpu" if not torch.cuda.is_available() else None)
    specials = model.tokenizer.num_special_tokens_to_add(pair=False)
    model.max_seq_length = s.max_tokens + specials
    dataset = datasets.Dataset.from_dict({"anchor": sentences, "positive": sentences})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp / "trainer"),
        per_device_train_batch_size=s.batch_size,
        learning_rate=s.lr,
        weight_decay=s.weight_decay,
        warmup_steps=0,
        max_steps=10**8,  # the budget callback ends training
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        seed=s.seed,
        dataloader_drop_last=True,
        # ST's advice for in-batch-negative losses: a sentence twice in a batch is a false negative.
        batch_sampler="no_duplicates",
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not settings.show_progress,
    )
    trainer = TimeScheduleTrainer(
        model=model, args=args, train_dataset=dataset,
        loss=MultipleNegativesRankingLoss(model, scale=s.scale), callbacks=[clock],
    )
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    steps = int(trainer.state.global_step)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    shutil.rmtree(tmp / "trainer", ignore_errors=True)
    model.save(str(tmp))
    from textcl.core.io import replace_dir

    replace_dir(tmp, out)
    return {
        "model": str(out),
        "output_dir": str(out),
        "training": "trained",
        "steps": steps,
        "train_seconds": clock.elapsed,
        "train_wall_seconds": wall,
        "examples_per_sec": steps * s.batch_size / clock.elapsed if clock.elapsed else None,
        "sentences": len(sentences),
        "pretext": {"first_logged_loss": losses[0] if losses else None, "last_logged_loss": losses[-1] if losses else None},
        "command": (
            "sentence_transformers.SentenceTransformerTrainer(SentenceTransformer("
            f"{str(base)!r}), MultipleNegativesRankingLoss(scale={s.scale:g}), (s, s) pairs, "
            f"no_duplicates batches of "
            f"{s.batch_size}, lr {s.lr:g}, max {s.max_tokens} tokens, {settings.budget_minutes:g} min)"
        ),
    }


# --------------------------------------------------------------------------- evaluation


def evaluate_model(spec: Any, settings: Settings) -> dict[str, Any]:
    """STS (all Spearman x100 per set + avg) and transfer accuracies through benchmarks.senteval."""
    import numpy as np

    from benchmarks.models import load_model
    from benchmarks.senteval import run_sts, run_transfer

    _set_threads(settings.threads)
    encoder = load_model(spec)
    start = time.perf_counter()
    sts = run_sts(encoder, settings.sts_tasks, settings.data_dir, batch_size=settings.batch_size,
                  show_progress=settings.show_progress)
    sts_seconds = time.perf_counter() - start
    start = time.perf_counter()
    transfer = run_transfer(
        encoder, settings.transfer_tasks, settings.data_dir, folds=settings.folds,
        inner_folds=settings.inner_folds, batch_size=settings.batch_size,
        show_progress=settings.show_progress,
    ) if settings.transfer_tasks else {}
    transfer_seconds = time.perf_counter() - start
    sts_all = {t: m["spearman_all"] for t, m in sts.items()}
    values = [v for v in sts_all.values() if v is not None and math.isfinite(v)]
    acc = {t: m["accuracy"] for t, m in transfer.items()}
    return {
        "sts": sts_all,
        "sts_avg": float(np.mean(values)) if len(values) == len(sts_all) and values else None,
        "sts_wmean": {t: m["spearman_wmean"] for t, m in sts.items()},
        "transfer": acc,
        "transfer_avg": float(np.mean(list(acc.values()))) if acc else None,
        "transfer_details": {
            t: {k: m[k] for k in ("accuracy", "dev_accuracy", "C", "encode_seconds", "classify_seconds") if k in m}
            for t, m in transfer.items()
        },
        "sts_seconds": sts_seconds,
        "transfer_seconds": transfer_seconds,
        "eval_seconds": sts_seconds + transfer_seconds,
    }


def is_row(name: str, recipes_dir: Path) -> bool:
    """A standard row, or a variant row: any recipe ``<recipes-dir>/<name>.yaml`` (e.g. an
    objective with other settings), trained and evaluated like the objective rows, or
    ``<row>+whiten`` for either."""
    if name.endswith(WHITEN_SUFFIX):
        base = name[: -len(WHITEN_SUFFIX)]
        return base != "avg-sgns" and is_row(base, recipes_dir)
    return name in ROWS or (Path(recipes_dir) / f"{name}.yaml").is_file()


def _row_model(name: str, settings: Settings) -> Path:
    """The model directory a row evaluates (trained rows: must have been run already)."""
    if name == "random-init":
        return _scratch_model(settings, "base-random")
    if name == "sgns-init":
        return _scratch_model(settings, "base-sgns")
    path = settings.runs_dir / name
    if not (path / "modules.json").is_file():
        raise RowSkipped(f"{path} holds no finished model -- run the row {name!r} first")
    return path


def whiten_row(base: str, settings: Settings) -> dict[str, Any]:
    """``<base>+whiten``: fit textcl.whitening on training-split sentences, on ``base``'s model."""
    import random

    from textcl.whitening import whiten_model

    model = _row_model(base, settings)
    documents = settings.simcse.documents or str(settings.data_dir / "corpora" / "gutenberg_chapters.jsonl.gz")
    sentences = simcse_sentences(documents, settings.simcse)
    random.Random(0).shuffle(sentences)
    out = settings.runs_dir / f"{base}{WHITEN_SUFFIX}"
    _set_threads(settings.threads)
    facts = whiten_model(model, sentences, out, max_texts=WHITEN_SENTENCES, seed=0,
                         batch_size=settings.batch_size, show_progress=settings.show_progress)
    return {
        "model": str(out),
        "base_row": base,
        "whitening": facts,
        "whiten_seconds": facts["encode_seconds"] + facts["fit_seconds"],
        "command": f"textcl.whitening.whiten_model({model}, <{WHITEN_SENTENCES} distinct training-split "
        f"sentences of {documents}, seed 0>, {out})",
    }


def prepare_row(name: str, settings: Settings) -> dict[str, Any]:
    """Train (if the row trains) and return the row's facts incl. ``model`` (what to evaluate)."""
    if name == "random-init":
        path = _scratch_model(settings, "base-random")
        return {"model": str(path), "command": f"(untrained) {path}"}
    if name == "sgns-init":
        path = _scratch_model(settings, "base-sgns")
        return {"model": str(path), "command": f"(untrained) {path}"}
    if name == "avg-sgns":
        path = _scratch_model(settings, "sgns")
        return {"model": f"avg-word-vectors:{path}", "command": f"mean of the SGNS vectors in {path}"}
    if name == "st-simcse":
        return train_st_simcse_row(settings)
    if name.endswith(WHITEN_SUFFIX):
        return whiten_row(name[: -len(WHITEN_SUFFIX)], settings)
    return train_textcl_row(name, settings)


def run_row(name: str, settings: Settings) -> dict[str, Any]:
    """One row end to end; returns its record (status done / skipped / failed)."""
    start = time.perf_counter()
    record: dict[str, Any] = {"row": name}
    try:
        info = prepare_row(name, settings)
        record.update(info)
        record.update(evaluate_model(info["model"], settings))
        record["status"] = "done"
    except RowSkipped as exc:
        record.update(status="skipped", reason=str(exc))
        print(f"[{name}] skipped: {exc}")
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a broken row must not end the comparison
        traceback.print_exc()
        record.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        print(f"[{name}] failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    record["wall_seconds"] = time.perf_counter() - start
    record["finished_utc"] = _now()
    return record


# --------------------------------------------------------------------------- the comparison


def _load_previous(out: Path, settings: Settings, fresh: bool) -> dict[str, dict[str, Any]]:
    """Rows of an earlier run of the same comparison (``{}`` if none or ``fresh``)."""
    if fresh or not out.is_file():
        return {}
    try:
        previous = json.loads(out.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataDirError(f"{out}: not valid JSON ({exc.msg}); move it away or pass --fresh") from None
    old = previous.get("settings", {})
    diff = [k for k in _COMPARABLE_KEYS if k in old and old[k] != settings.comparable()[k]]
    if diff:
        detail = ", ".join(f"{k}: {old[k]} -> {settings.comparable()[k]}" for k in diff)
        raise DataDirError(
            f"{out} holds rows measured with other settings ({detail}); pass --fresh to start "
            "over or choose another --out"
        )
    return dict(previous.get("rows", {}))


def protocol(settings: Settings) -> dict[str, str]:
    return {
        "start": "every trained row starts from base-sgns (python -m textcl.scratch; default "
        "4-layer/256 BERT, 16k WordPiece, whole-word input embeddings from 100-d SGNS vectors in "
        "the first 100 dims, see start_models); random-init = the same model before the SGNS copy",
        "budget": f"{settings.budget_minutes:g} minutes of training per row (textcl: train.max_minutes, "
        "evaluation and checkpoint time excluded; st-simcse: TrainerCallback on wall-clock from the "
        "first step)",
        "sts": "Spearman x100 of cosine similarity vs gold, 'all' setting (one correlation per set), "
        "original text, test splits; avg = mean of " + ", ".join(settings.sts_tasks),
        "transfer": f"SentEval protocol via benchmarks.senteval: logistic regression on frozen unit "
        f"embeddings, seed 1111; MR/SUBJ {settings.folds}-fold CV with {settings.inner_folds}-fold "
        f"inner C selection; TREC C by {settings.folds}-fold CV on train, test accuracy",
        "whiten": f"<row>+whiten rows: <row>'s model followed by BERT-whitening (textcl.whitening: "
        f"mean and covariance eigenvectors / sqrt(eigenvalues), all dimensions) fitted on "
        f"{WHITEN_SENTENCES} distinct sentences of the training documents (no labels, no STS data), "
        "added after training; whiten_seconds records its cost (outside the training budget)",
        "examples_per_sec": "training examples per second in the method's unit (pairs for nsp / "
        "st-simcse, query sentences for neighbour, passages for permutation, documents for declutr)",
    }


def start_models(settings: Settings) -> dict[str, Any]:
    """What textcl.scratch recorded about the start models (config, vocabulary, SGNS coverage)."""
    files = {
        "base_random": settings.scratch_dir / "base-random" / "scratch.json",
        "tokenizer": settings.scratch_dir / "tokenizer" / "tokenizer_stats.json",
        "embedding_init": settings.scratch_dir / "base-sgns" / "embedding_init.json",
    }
    out: dict[str, Any] = {}
    for key, path in files.items():
        try:
            out[key] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def _write(out: Path, settings: Settings, rows: dict[str, dict[str, Any]], order: list[str],
           command: str, started: str) -> None:
    report = {
        "benchmark": "compare_objectives",
        "command": command,
        "protocol": protocol(settings),
        "settings": settings.to_json(),
        "start_models": start_models(settings),
        "reference": {"bare_loop_sts_avg": BARE_LOOP_STS_AVG, "calibration": CALIBRATION},
        "order": order,
        "rows": rows,
        "environment": environment(("scikit-learn", "scipy", "accelerate")),
        "started_utc": started,
        "updated_utc": _now(),
    }
    write_report(out, finite_json(report))


def run_comparison(
    settings: Settings, rows: list[str], out: Path, *, fresh: bool = False, command: str = "",
    plot: bool = False,
) -> dict[str, dict[str, Any]]:
    """Run the rows not yet done in ``out``, rewriting ``out`` after each; returns all rows."""
    unknown = [r for r in rows if not is_row(r, settings.recipes_dir)]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; valid rows: {', '.join(ROWS)} or <recipes-dir>/<row>.yaml")
    done = _load_previous(out, settings, fresh)
    started = _now()
    order = [r for r in ROWS if r in rows or done.get(r, {}).get("status") == "done"]
    # Variant rows (extra recipes in the recipes dir) after the standard ones.
    order += [r for r in [*done, *rows] if r not in ROWS and r not in order
              and (r in rows or done.get(r, {}).get("status") == "done")]
    todo = [r for r in rows if done.get(r, {}).get("status") != "done"]
    trains = sum(r not in BASELINE_ROWS and not r.endswith(WHITEN_SUFFIX) for r in todo)
    print(
        f"rows to run: {', '.join(todo) or 'none'}; already done: "
        f"{', '.join(r for r in rows if r not in todo) or 'none'}; about "
        f"{trains * settings.budget_minutes:g} min of training (+ ~1-2 min of loading and in-run "
        "evaluation per trained row) + ~4 min of evaluation per row (4-layer BERT, 1 thread, 2 busy cores)"
    )
    _write(out, settings, done, order, command, started)
    for name in rows:
        if name not in todo:
            print(f"[{name}] already done in {out}, skipped")
            continue
        print(f"[{name}] running ...")
        record = run_row(name, settings)
        done[name] = record
        _write(out, settings, done, order, command, started)
        if record["status"] == "done":
            print(f"[{name}] STS avg {_fmt(record.get('sts_avg'))}, eval {record['eval_seconds']:.0f} s, "
                  f"row {record['wall_seconds']:.0f} s")
    print_table(done, order, settings)
    if plot:
        png = out.with_suffix(".png")
        write_plot(done, order, png, settings)
        print(f"wrote {png}")
    print(f"wrote {out}")
    return done


# --------------------------------------------------------------------------- output


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def print_table(rows: dict[str, dict[str, Any]], order: list[str], settings: Settings) -> None:
    """One table: STS per set and avg, transfer accuracies, steps, examples/s, minutes."""
    sts_names = {"sts12": "STS12", "sts13": "STS13", "sts14": "STS14", "sts15": "STS15",
                 "sts16": "STS16", "stsb": "STS-B", "sickr": "SICK-R"}
    cols = [sts_names.get(t, t) for t in settings.sts_tasks]
    tcols = [t.upper() for t in settings.transfer_tasks]
    print(f"\nSTS: Spearman x100 'all', cosine; transfer: accuracy %; {settings.budget_minutes:g} min "
          f"training per row; bare-loop reference STS avg {BARE_LOOP_STS_AVG}")
    w = max([12, *(len(n) + 1 for n in order)])
    header = f"{'row':<{w}}" + "".join(f"{c:>7}" for c in cols) + f"{'avg':>7}" + "".join(
        f"{c:>7}" for c in tcols) + f"{'steps':>7}{'ex/s':>8}{'train s':>8}{'eval s':>7}"
    print(header)
    print("-" * len(header))
    for name in order:
        r = rows.get(name)
        if r is None:
            continue
        if r.get("status") != "done":
            print(f"{name:<{w}} {r.get('status', '?')}: {r.get('reason', '')}")
            continue
        line = f"{name:<{w}}" + "".join(f"{_fmt(r['sts'].get(t)):>7}" for t in settings.sts_tasks)
        line += f"{_fmt(r.get('sts_avg')):>7}"
        line += "".join(f"{_fmt(r['transfer'].get(t)):>7}" for t in settings.transfer_tasks)
        steps = r.get("steps")
        line += f"{steps if steps is not None else '-':>7}{_fmt(r.get('examples_per_sec'), '.1f'):>8}"
        line += f"{_fmt(r.get('train_seconds'), '.0f'):>8}{_fmt(r.get('eval_seconds'), '.0f'):>7}"
        print(line)


def write_plot(rows: dict[str, dict[str, Any]], order: list[str], png: Path, settings: Settings) -> None:
    """Bar chart of the STS avg per row with the bare-loop reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in order if rows.get(n, {}).get("status") == "done" and rows[n].get("sts_avg") is not None]
    values = [rows[n]["sts_avg"] for n in names]
    colors = ["tab:green" if n.endswith(WHITEN_SUFFIX) else "tab:gray" if n in BASELINE_ROWS
              else "tab:orange" if n == "st-simcse" else "tab:blue" for n in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 4.2))
    bars = ax.bar(names, values, color=colors)
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.axhline(BARE_LOOP_STS_AVG, color="tab:red", linestyle="--", linewidth=1)
    ax.text(len(names) - 0.5 if names else 0.5, BARE_LOOP_STS_AVG + 0.4, f"bare loop {BARE_LOOP_STS_AVG}",
            color="tab:red", ha="right", va="bottom", fontsize=8)
    low = min([*values, BARE_LOOP_STS_AVG]) if values else 0
    ax.set_ylim(max(0.0, low - 10), max([*values, BARE_LOOP_STS_AVG]) + 5 if values else 100)
    ax.set_ylabel("STS avg (Spearman x100, 'all', 7 sets)")
    config = start_models(settings).get("base_random", {}).get("config", {})
    model = (f"{config['num_hidden_layers']}-layer / {config['hidden_size']} BERT"
             if "num_hidden_layers" in config and "hidden_size" in config else "BERT")
    ax.set_title(f"From-scratch {model}, {settings.budget_minutes:g} min of training per row", fontsize=9)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_objectives", description=__doc__.split("\n")[0])
    add_data_dir_argument(p)
    p.add_argument("--budget-minutes", type=float, default=10.0, help="training minutes per row (default 10)")
    p.add_argument("--rows", nargs="+", default=list(ROWS),
                   help=f"rows, comma or space separated (default: all = {', '.join(ROWS)})")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/compare_objectives.json"))
    p.add_argument("--plot", action="store_true", help="also write <out>.png (STS avg per row)")
    p.add_argument("--scratch-dir", type=Path, default=Path("runs/scratch"),
                   help="output of python -m textcl.scratch (base-random, base-sgns, sgns)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/scratch/compare"),
                   help="where the trained rows' models go (one directory per row)")
    p.add_argument("--recipes-dir", type=Path, default=Path("recipes/text/scratch"),
                   help="<row>.yaml recipes of the textcl objectives")
    p.add_argument("--transfer", default=",".join(DEFAULT_TRANSFER),
                   help="transfer tasks, comma separated ('' for none; default mr,subj,trec)")
    p.add_argument("--folds", type=int, default=10, help="outer CV folds (default 10, SentEval)")
    p.add_argument("--inner-folds", type=int, default=10, help="inner CV folds (default 10, SentEval)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for evaluation (default 1: 2 threads were 2.5x slower on 2 busy "
                   "cores; try 2 on an idle machine)")
    p.add_argument("--simcse-threads", type=int, default=2,
                   help="torch threads while training st-simcse (default 2 = the recipes' train.threads)")
    p.add_argument("--simcse-max-documents", type=int, default=None, help="st-simcse: read at most N documents")
    p.add_argument("--fresh", action="store_true", help="ignore rows already in --out and run all again")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Parse arguments and run the comparison."""
    from benchmarks.senteval import STS_TASKS, parse_tasks, required_files

    argv = sys.argv[1:] if argv is None else argv
    p = _parser()
    args = p.parse_args(argv)
    rows = [r for item in args.rows for r in item.replace(",", " ").split()]
    bad = [r for r in rows if not is_row(r, args.recipes_dir)]
    if bad or not rows:
        p.error(f"unknown rows {bad}; valid rows: {', '.join(ROWS)}, or a variant with a recipe "
                f"{args.recipes_dir}/<row>.yaml")
    if args.budget_minutes <= 0 or args.folds < 2 or args.inner_folds < 2 or min(args.threads, args.simcse_threads) < 1:
        p.error("--budget-minutes must be > 0, --folds/--inner-folds >= 2, --threads/--simcse-threads >= 1")
    try:
        transfer = tuple(parse_tasks([args.transfer])) if args.transfer.strip() else ()
    except ValueError as exc:
        p.error(str(exc))
    if any(t in STS_TASKS for t in transfer):
        p.error("--transfer takes transfer tasks only (mr, cr, subj, mpqa, sst2, trec, mrpc)")
    data_dir = resolve_data_dir(args.data_dir, *required_files(list(STS_TASKS) + list(transfer)))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "datasets", "sentence_transformers", "accelerate", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = Settings(
        data_dir=data_dir, budget_minutes=args.budget_minutes, scratch_dir=args.scratch_dir,
        runs_dir=args.runs_dir, recipes_dir=args.recipes_dir, transfer_tasks=transfer,
        folds=args.folds, inner_folds=args.inner_folds, threads=args.threads,
        show_progress=not args.no_progress,
        simcse=SimCSESettings(max_documents=args.simcse_max_documents, threads=args.simcse_threads),
    )
    command = "python -m benchmarks.compare_objectives " + shlex.join(argv)
    try:
        return run_comparison(settings, rows, args.out, fresh=args.fresh, command=command, plot=args.plot)
    except KeyboardInterrupt:
        print(f"interrupted; rows finished so far are in {args.out}; rerun the same command to "
              "continue", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    try:
        main()
    except DataDirError as err:
        exit_on_error(err)
