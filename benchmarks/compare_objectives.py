"""Sentence objectives compared at equal budgets from the same from-scratch start: learning curves.

    python -m benchmarks.compare_objectives [--data-dir D] [--budget-minutes 10 [30 60 ...]]
        [--rows R ...] [--transfer-tasks mr subj trec [cr mpqa ...]]
        [--out benchmarks/results/compare_objectives.json] [--plot] [--scratch-dir runs/scratch]
        [--runs-dir runs/scratch/compare] [--recipes-dir recipes/text/scratch] [--threads 1]
        [--folds 10] [--inner-folds 10] [--fresh]

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
* ``<row>+whiten`` -- ``<row>``'s model with a BERT-whitening layer (``textcl.whitening``)
  fitted on 20,000 sentences of the training documents (seed 0): no labels, no evaluation text;
  it keeps every component, or at most ``--whiten-dim`` K (BERT-whitening's k);
  its cost (``whiten_seconds``) is recorded, outside the training budget. For the untrained
  ``random-init`` / ``sgns-init`` it is a row of its own (``sgns-init+whiten`` is in the
  default rows); for a trained row every point below has its whitened entry, and
  ``<row>+whiten`` is a copy of the longest budget's one (for the table and the bar plot);
* ``<row>@start`` -- the untrained start of recipe row ``<row>``: its ``model:`` section built
  (levers included, e.g. ``token_weights`` counted on their corpus) and saved without a
  training step, so a row that changes its own start is compared with that start (the Must).

Learning curves: ``--budget-minutes`` takes one or more budgets. A trained row trains once, for
the longest budget (which sets the time-based lr schedule), and saves a snapshot of its model
when its training time first reaches each shorter budget (``benchmarks._curves``). Each
(row, budget) point is evaluated raw and whitened, and records the run's pretext metrics at
that moment; the untrained rows are evaluated once (budget-independent).

Evaluation goes through the SentEval harness (``benchmarks.senteval``): STS "all" Spearman x100
of cosine similarity on STS12-16, STS-B and SICK-R test sets (original text) and their mean,
frozen-embedding logistic-regression accuracy on the ``--transfer-tasks`` (default MR, SUBJ
(nested CV) and TREC (CV on train, test)), SentEval's protocol and seed 1111, and the STS-B
*dev* Spearman (``stsb_dev``: the number to choose settings by; the test sets are only
reported). Each model is evaluated as saved (its own ``max_seq_length``).

Resumable: the JSON is rewritten (atomically) after each row and each point; a restart keeps
what is finished: a finished (row, budget) point is not recomputed, an evaluation that lacks a
newly asked transfer task (or ``stsb_dev``) gets only what it lacks, and a finished training
run is reused. A textcl run killed mid-training resumes from its latest checkpoint
(``--resume``), keeping the snapshots already written; ``st-simcse`` restarts from its start.
A row's points all come from one run: points of an earlier run with another longest budget
(another lr schedule) are moved to the row's ``earlier_points`` and measured again. A JSON of
the single-budget format (rows without ``points``) loads as points at its ``budget_minutes``.
Each point records STS per set + avg, transfer accuracies, STS-B dev, training steps and
seconds, the pretext metrics and the whitening facts; each trained row the command, examples/s
and ``pretext_initial``. ``--plot`` writes ``<out>.png`` (STS avg per row at the longest
budget, with the 56.7 bare-loop reference line) and ``<out>_curves.png`` (STS avg and transfer
avg vs training minutes: solid raw, dashed whitened, horizontal lines for the untrained rows).
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks._cli import cli_main
from benchmarks._curves import (
    ExportAtMinutes,
    budget_key,
    clear_exports,
    export_dir,
    print_curves,
    read_export,
    upgrade_rows,
    write_curves_plot,
)
from benchmarks.common import (
    DataDirError,
    add_data_dir_argument,
    environment,
    finite_json,
    resolve_data_dir,
    write_report,
)

__all__ = ["DEFAULT_ROWS", "ROWS", "RowSkipped", "Settings", "is_row", "main", "run_comparison"]

logger = logging.getLogger("benchmarks.compare_objectives")

BASELINE_ROWS = ("random-init", "sgns-init", "sgns-bow-init", "sgns-bag-init", "sgns-start-init", "avg-sgns")
OBJECTIVE_ROWS = ("nsp", "neighbour", "permutation", "declutr", "cert")
ROWS = (*BASELINE_ROWS, "st-simcse", *OBJECTIVE_ROWS)
#: What the CLI runs by default: the rows plus the whitened untrained start (a curves baseline).
DEFAULT_ROWS = ("random-init", "sgns-init", "sgns-init+whiten", "avg-sgns", "st-simcse", *OBJECTIVE_ROWS)
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
#: ``<row>@start``: the model ``<recipes-dir>/<row>.yaml`` builds, saved before any training step.
START_SUFFIX = "@start"
WHITEN_SENTENCES = 20_000
#: ``sgns-bow-init``: ``base-sgns`` with the residual bag-of-words path (``model.bow_weight``)
#: at this weight -- chosen on STS-B *dev* (untrained, raw / whitened on 5,000 sentences):
#: 0 -> 62.99 / 72.30, 2 -> 63.47 / 72.47, 8 -> 64.32 / 72.87.
BOW_START_WEIGHT = 8.0
#: ``sgns-bag-init``: ``base-sgns`` as a bag of its input embeddings (``model.context_weight`` 0,
#: ``bow_weight`` 1): the untrained start of the bag-of-embeddings rows (``neighbour-bag``).
#: ``sgns-start-init``: ``base-sgns`` (the transformer's mean) with its own frozen bag beside it
#: (``model.start_bag_weight`` 1): the untrained start of the ``<objective>-start`` rows.
#: Start rows: name -> (bow_weight, context_weight, start_bag_weight).
START_ROWS = {"sgns-bow-init": (BOW_START_WEIGHT, 1.0, 0.0), "sgns-bag-init": (1.0, 0.0, 0.0),
              "sgns-start-init": (0.0, 1.0, 1.0)}
BASE_ENV = "TEXTCL_SCRATCH_BASE"
#: train.save_every_n_steps added to recipes that set none (resumable rows).
CHECKPOINT_EVERY = 100
# Settings whose change makes earlier rows incomparable with new ones (budgets are points of
# their own; transfer tasks are recorded per evaluation and completed when asked for).
_COMPARABLE_KEYS = ("folds", "inner_folds", "sts_tasks", "whiten_dim")
#: What a results file written before a comparable key existed was measured with.
_COMPARABLE_DEFAULTS: dict[str, Any] = {"whiten_dim": None}
#: The STS-B dev split (for choosing settings), relative to the data dir.
STSB_DEV = "sts/stsb/dev.jsonl"


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
    budget_minutes: float = 10.0  # the longest budget: the training run's length and lr schedule
    budgets: tuple[float, ...] = ()  # all budgets (points); default (budget_minutes,)
    scratch_dir: Path = Path("runs/scratch")
    runs_dir: Path = Path("runs/scratch/compare")
    recipes_dir: Path = Path("recipes/text/scratch")
    transfer_tasks: tuple[str, ...] = DEFAULT_TRANSFER
    sts_tasks: tuple[str, ...] = ("sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr")
    folds: int = 10
    inner_folds: int = 10
    threads: int = 1  # evaluation: 2 threads ran 2.5x slower than 1 on 2 busy cores
    batch_size: int = 64
    # BERT-whitening's k: whitened rows keep at most this many components (None: all of them).
    whiten_dim: int | None = None
    show_progress: bool = True
    simcse: SimCSESettings = field(default_factory=SimCSESettings)

    def __post_init__(self) -> None:
        if self.budgets:
            self.budgets = tuple(sorted({float(b) for b in self.budgets}))
            self.budget_minutes = self.budgets[-1]
        else:
            self.budgets = (float(self.budget_minutes),)

    def comparable(self) -> dict[str, Any]:
        return {"folds": self.folds, "inner_folds": self.inner_folds, "sts_tasks": list(self.sts_tasks),
                "whiten_dim": self.whiten_dim}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"budget_minutes": self.budget_minutes, "budgets": list(self.budgets),
                               "transfer_tasks": list(self.transfer_tasks), **self.comparable()}
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
    shorter = [b for b in settings.budgets if b < budget]
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
    missing = _missing_exports(out, shorter) if finished and same_budget else []
    command = f"{BASE_ENV}={base} python -m textcl.train {recipe} " + " ".join(
        f"--set {shlex.quote(o)}" for o in overrides
    )
    info: dict[str, Any] = {"recipe": str(recipe), "method": method, "output_dir": str(out)}
    start = time.perf_counter()
    if finished and same_budget and not missing:
        print(f"[{name}] training already finished in {out}; evaluating it")
        info["training"] = "reused finished run"
    else:
        if missing:
            print(f"[{name}] the finished run in {out} has no snapshot at {missing} min; training again")
        if resume:
            command += " --resume"
            print(f"[{name}] resuming the interrupted run in {out}")
        else:
            # A fresh run: the model, metrics and snapshots of an earlier run must not pass as its own.
            clear_exports(out)
            for marker in ("modules.json", "metrics.json"):
                (out / marker).unlink(missing_ok=True)
        print(f"[{name}] {command}")
        # Not resuming = training afresh: the earlier run's model there is replaced.
        run(str(recipe), overrides, resume=resume, overwrite=not resume,
            callbacks=[ExportAtMinutes(out, shorter)])
        info["training"] = "resumed" if resume else "trained"
        # Only needed to resume a killed run: ~100 MB each for the small BERT + AdamW.
        shutil.rmtree(ckpts, ignore_errors=True)
    info["train_wall_seconds"] = time.perf_counter() - start
    info["command"] = command
    if shorter:  # what the command line alone does not do (benchmarks._curves.ExportAtMinutes)
        info["snapshots"] = f"model snapshots at {', '.join(f'{b:g}' for b in shorter)} min of training"
    info.update(_summarize_log(out / "log.jsonl"))
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    info.update(_pretext(metrics))
    info["model"] = str(out)
    return info


def _missing_exports(out: Path, shorter: list[float]) -> list[float]:
    """Shorter budgets a finished run in ``out`` reached but holds no snapshot of."""
    reached = _summarize_log(out / "log.jsonl").get("train_seconds", math.inf)
    return [b for b in shorter if read_export(out, b) is None and reached >= b * 60.0]


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

    out = settings.runs_dir / "st-simcse"
    shorter = [b for b in settings.budgets if b < settings.budget_minutes]
    reused = _finished_simcse(out, settings.budget_minutes, shorter)
    if reused is not None:
        print(f"[st-simcse] training already finished in {out}; evaluating it")
        return {**reused, "training": "reused finished run"}
    sentences = simcse_sentences(documents, s)
    if len(sentences) < s.batch_size:
        raise RowSkipped(f"{documents}: only {len(sentences)} training sentences, fewer than one batch")
    budget = settings.budget_minutes * 60.0
    tmp = settings.runs_dir / ".tmp-st-simcse"
    shutil.rmtree(tmp, ignore_errors=True)

    class Budget(TrainerCallback):
        """Ends training at the first step past the wall-clock budget; tracks elapsed time
        (snapshot saving excluded) and saves a snapshot when it first reaches a shorter budget."""

        def __init__(self) -> None:
            self.start: float | None = None
            self.elapsed = 0.0
            self.paused = 0.0
            self.pending = list(shorter)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            assert self.start is not None
            self.elapsed = time.perf_counter() - self.start - self.paused
            while self.pending and self.elapsed >= self.pending[0] * 60.0:
                pause = time.perf_counter()
                _save_simcse_snapshot(model, tmp, self.pending.pop(0), state, self.elapsed)
                self.paused += time.perf_counter() - pause
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
    from textcl.core.io import atomic_write_json, replace_dir

    info = {
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
        "budget_minutes": settings.budget_minutes,
    }
    if shorter:
        info["snapshots"] = f"model snapshots at {', '.join(f'{b:g}' for b in shorter)} min of training"
    atomic_write_json(tmp / SIMCSE_RUN, info)
    replace_dir(tmp, out)
    return info


SIMCSE_RUN = "simcse_run.json"


def _save_simcse_snapshot(model: Any, run_dir: Path, minutes: float, state: Any, elapsed: float) -> None:
    """``<run_dir>/at-<m>min``: the ST model now, with its step, seconds and last logged loss."""
    from textcl.core.io import atomic_write_json, replace_dir

    final = export_dir(run_dir, minutes)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp))
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    atomic_write_json(tmp / "point.json", {
        "budget_minutes": minutes, "step": int(state.global_step), "train_seconds": elapsed,
        "metrics": {"last_logged_loss": losses[-1]} if losses else {},
    })
    replace_dir(tmp, final)


def _finished_simcse(out: Path, budget: float, shorter: list[float]) -> dict[str, Any] | None:
    """The facts of a finished st-simcse run in ``out`` for this budget and snapshots, if any."""
    try:
        info = json.loads((out / SIMCSE_RUN).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not (out / "modules.json").is_file() or info.get("budget_minutes") != budget:
        return None
    reached = float(info.get("train_seconds") or 0.0)
    if any(read_export(out, b) is None and reached >= b * 60.0 for b in shorter):
        return None
    return info


# --------------------------------------------------------------------------- evaluation


def evaluate_model(spec: Any, settings: Settings, *, sts: bool = True,
                   transfer_tasks: tuple[str, ...] | None = None, dev: bool = True) -> dict[str, Any]:
    """STS (all Spearman x100 per set + avg), transfer accuracies (``transfer_tasks``, default the
    settings') through benchmarks.senteval, and the STS-B dev Spearman (``stsb_dev``)."""
    import numpy as np

    from benchmarks.models import load_model
    from benchmarks.senteval import run_sts, run_transfer

    tasks = settings.transfer_tasks if transfer_tasks is None else transfer_tasks
    _set_threads(settings.threads)
    encoder = load_model(spec)
    out: dict[str, Any] = {}
    start = time.perf_counter()
    if sts:
        result = run_sts(encoder, settings.sts_tasks, settings.data_dir, batch_size=settings.batch_size,
                         show_progress=settings.show_progress)
        sts_all = {t: m["spearman_all"] for t, m in result.items()}
        values = [v for v in sts_all.values() if v is not None and math.isfinite(v)]
        out.update(
            sts=sts_all,
            sts_avg=float(np.mean(values)) if len(values) == len(sts_all) and values else None,
            sts_wmean={t: m["spearman_wmean"] for t, m in result.items()},
        )
    sts_seconds = time.perf_counter() - start
    start = time.perf_counter()
    transfer = run_transfer(
        encoder, tasks, settings.data_dir, folds=settings.folds,
        inner_folds=settings.inner_folds, batch_size=settings.batch_size,
        show_progress=settings.show_progress,
    ) if tasks else {}
    transfer_seconds = time.perf_counter() - start
    acc = {t: m["accuracy"] for t, m in transfer.items()}
    out.update(
        transfer=acc,
        transfer_avg=float(np.mean(list(acc.values()))) if acc else None,
        transfer_tasks=list(tasks),
        transfer_details={
            t: {k: m[k] for k in ("accuracy", "dev_accuracy", "C", "encode_seconds", "classify_seconds") if k in m}
            for t, m in transfer.items()
        },
        sts_seconds=sts_seconds,
        transfer_seconds=transfer_seconds,
        eval_seconds=sts_seconds + transfer_seconds,
    )
    if dev:
        out["stsb_dev"] = stsb_dev(encoder, settings)
    return out


def stsb_dev(encoder: Any, settings: Settings) -> float | None:
    """Spearman x100 of cosine vs gold on the STS-B dev split (None without the file)."""
    import numpy as np

    from benchmarks.senteval import encode_unique, sts_metrics
    from textcl.evaluation import read_sts_file

    path = settings.data_dir / STSB_DEV
    if not path.is_file():
        return None
    pairs = read_sts_file(path)
    n = len(pairs.s1)
    vecs = encode_unique(encoder, pairs.s1 + pairs.s2, settings.batch_size, settings.show_progress)
    a, b = np.asarray(vecs[:n], dtype=np.float64), np.asarray(vecs[n:], dtype=np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    value = sts_metrics(cos, np.asarray(pairs.scores))["spearman_all"]
    return float(value) if math.isfinite(value) else None


def _entry_complete(entry: dict[str, Any] | None, settings: Settings) -> bool:
    """An evaluation holding STS, every asked transfer task and the STS-B dev value."""
    if entry and entry.get("status") == "not applicable":
        return True
    return bool(entry) and "sts" in entry and "stsb_dev" in entry and all(  # type: ignore[operator]
        t in entry.get("transfer", {}) for t in settings.transfer_tasks)  # type: ignore[union-attr]


def _ends_with_dense(model: Path | str) -> bool:
    """Whether a model directory already ends with a Dense (whitening) module."""
    try:
        modules = json.loads((Path(model) / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(str(m.get("type", "")).endswith(".Dense") for m in modules)


def complete_eval(entry: dict[str, Any] | None, spec: Any, settings: Settings) -> dict[str, Any]:
    """``entry`` with what it lacks evaluated: everything if it has no STS, else only the missing
    transfer tasks and ``stsb_dev`` (earlier values kept)."""
    from benchmarks.senteval import TRANSFER_TASKS

    if not entry or "sts" not in entry:
        return evaluate_model(spec, settings)
    entry = dict(entry)
    missing = tuple(t for t in settings.transfer_tasks if t not in entry.get("transfer", {}))
    if not missing and "stsb_dev" in entry:
        return entry
    extra = evaluate_model(spec, settings, sts=False, transfer_tasks=missing, dev="stsb_dev" not in entry)
    transfer = {**entry.get("transfer", {}), **extra["transfer"]}
    entry.update(
        transfer={t: transfer[t] for t in TRANSFER_TASKS if t in transfer},
        transfer_details={**entry.get("transfer_details", {}), **extra["transfer_details"]},
        transfer_tasks=[t for t in TRANSFER_TASKS if t in transfer],
        transfer_avg=sum(transfer.values()) / len(transfer) if transfer else None,
        transfer_seconds=entry.get("transfer_seconds", 0.0) + extra["transfer_seconds"],
        eval_seconds=entry.get("eval_seconds", 0.0) + extra["eval_seconds"],
    )
    if "stsb_dev" in extra:
        entry["stsb_dev"] = extra["stsb_dev"]
    return entry


def is_row(name: str, recipes_dir: Path) -> bool:
    """A standard row, or a variant row: any recipe ``<recipes-dir>/<name>.yaml`` (e.g. an
    objective with other settings), trained and evaluated like the objective rows, or
    ``<row>+whiten`` for either."""
    if name.endswith(WHITEN_SUFFIX):
        base = name[: -len(WHITEN_SUFFIX)]
        return base != "avg-sgns" and is_row(base, recipes_dir)
    if name.endswith(START_SUFFIX):
        return (Path(recipes_dir) / f"{name[: -len(START_SUFFIX)]}.yaml").is_file()
    return name in ROWS or (Path(recipes_dir) / f"{name}.yaml").is_file()


def is_trained(name: str) -> bool:
    """Rows that train (and so have one point per budget)."""
    return name not in BASELINE_ROWS and not name.endswith((WHITEN_SUFFIX, START_SUFFIX))


def _is_derived(name: str) -> bool:
    """``<trained row>+whiten``: a copy of the trained row's whitened entry at the longest budget."""
    return name.endswith(WHITEN_SUFFIX) and is_trained(name[: -len(WHITEN_SUFFIX)])


def _row_model(name: str, settings: Settings) -> Path:
    """The model directory a row evaluates (trained rows: must have been run already)."""
    if name == "random-init":
        return _scratch_model(settings, "base-random")
    if name == "sgns-init":
        return _scratch_model(settings, "base-sgns")
    if name in START_ROWS:
        return _bow_start(settings, name)
    if name.endswith(START_SUFFIX):
        return _recipe_start(settings, name[: -len(START_SUFFIX)])
    path = settings.runs_dir / name
    if not (path / "modules.json").is_file():
        raise RowSkipped(f"{path} holds no finished model -- run the row {name!r} first")
    return path


_SENTENCES: dict[tuple[Any, ...], list[str]] = {}


def _whiten(model: Path | str, out: Path, settings: Settings) -> dict[str, Any]:
    """Fit textcl.whitening on training-split sentences (seed 0) for ``model``; write it to ``out``."""
    import random

    from textcl.whitening import whiten_model

    s = settings.simcse
    documents = s.documents or str(settings.data_dir / "corpora" / "gutenberg_chapters.jsonl.gz")
    key = (documents, s.max_documents, s.held_out_fraction)
    if key not in _SENTENCES:  # reading the corpus takes a while: once per process
        sentences = simcse_sentences(documents, s)
        random.Random(0).shuffle(sentences)
        _SENTENCES[key] = sentences
    _set_threads(settings.threads)
    # k caps the components: a narrower model keeps all of its own.
    facts = whiten_model(model, _SENTENCES[key], out, max_dim=settings.whiten_dim, max_texts=WHITEN_SENTENCES,
                         seed=0, batch_size=settings.batch_size, show_progress=settings.show_progress)
    dim = facts["dim"] if settings.whiten_dim is not None else None
    return {
        "model": str(out),
        "whitening": facts,
        "whiten_seconds": facts["encode_seconds"] + facts["fit_seconds"],
        "command": f"textcl.whitening.whiten_model({model}, <{WHITEN_SENTENCES} distinct training-split "
        f"sentences of {documents}, seed 0>, {out}" + (f", dim={dim}" if dim is not None else "") + ")",
    }


def whiten_row(base: str, settings: Settings) -> dict[str, Any]:
    """``<base>+whiten``: fit textcl.whitening on training-split sentences, on ``base``'s model."""
    model = _row_model(base, settings)
    return {"base_row": base, **_whiten(model, settings.runs_dir / f"{base}{WHITEN_SUFFIX}", settings)}


def _untrained_once(out: Path, build: Callable[[], Any]) -> Path:
    """The untrained encoder ``build()`` returns, saved to ``out`` once (temp dir, then renamed)."""
    if not (out / "modules.json").is_file():
        from textcl.core.io import replace_dir

        encoder = build()
        tmp = out.with_name(f".{out.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        encoder.save(tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(tmp, out)
    return out


def _bow_start(settings: Settings, name: str = "sgns-bow-init") -> Path:
    """``base-sgns`` with the bag-of-words path of start row ``name`` (:data:`START_ROWS`),
    written once under the runs dir."""
    from textcl.encoders import TextEncoder

    bow_weight, context_weight, start_bag_weight = START_ROWS[name]
    return _untrained_once(settings.runs_dir / name, lambda: TextEncoder.from_pretrained(
        _scratch_model(settings, "base-sgns"), bow_weight=bow_weight, context_weight=context_weight,
        start_bag_weight=start_bag_weight))


def _recipe_start(settings: Settings, row: str) -> Path:
    """``<row>@start``: the encoder recipe ``row`` builds from ``base-sgns``, saved untrained
    (written once under the runs dir)."""

    def build() -> Any:
        from textcl.core.recipe import RecipeError, load_recipe
        from textcl.objectives._encoder import EncoderSection, build_encoder

        recipe = settings.recipes_dir / f"{row}.yaml"
        with _environ({BASE_ENV: str(_scratch_model(settings, "base-sgns")), "TEXTCL_DATA": str(settings.data_dir)}):
            try:
                model = getattr(load_recipe(recipe).config, "model", None)
                if not isinstance(model, EncoderSection):
                    raise RowSkipped(f"{recipe}: method has no text encoder (model:) section")
                return build_encoder(model)
            except RecipeError as exc:
                raise RowSkipped(str(exc)) from None

    return _untrained_once(settings.runs_dir / f"{row}{START_SUFFIX}", build)


def prepare_row(name: str, settings: Settings) -> dict[str, Any]:
    """Train (if the row trains) and return the row's facts incl. ``model`` (what to evaluate)."""
    if name == "random-init":
        path = _scratch_model(settings, "base-random")
        return {"model": str(path), "command": f"(untrained) {path}"}
    if name == "sgns-init":
        path = _scratch_model(settings, "base-sgns")
        return {"model": str(path), "command": f"(untrained) {path}"}
    if name in START_ROWS:
        path = _bow_start(settings, name)
        bow_weight, context_weight, start_bag_weight = START_ROWS[name]
        return {"model": str(path), "command": f"(untrained) {path}: base-sgns + bow_weight {bow_weight:g}, "
                f"context_weight {context_weight:g}"
                + (f", start_bag_weight {start_bag_weight:g}" if start_bag_weight else "")}
    if name.endswith(START_SUFFIX):
        path = _recipe_start(settings, name[: -len(START_SUFFIX)])
        return {"model": str(path), "command": f"(untrained) {path}: the model: section of "
                f"{settings.recipes_dir / (name[: -len(START_SUFFIX)] + '.yaml')} built and saved before any step"}
    if name == "avg-sgns":
        path = _scratch_model(settings, "sgns")
        return {"model": f"avg-word-vectors:{path}", "command": f"mean of the SGNS vectors in {path}"}
    if name == "st-simcse":
        return train_st_simcse_row(settings)
    if name.endswith(WHITEN_SUFFIX):
        return whiten_row(name[: -len(WHITEN_SUFFIX)], settings)
    return train_textcl_row(name, settings)


def _point_facts(info: dict[str, Any], minutes: float, settings: Settings) -> dict[str, Any] | None:
    """Model and training facts of a trained row at ``minutes`` (None: the run never got there)."""
    if minutes >= settings.budget_minutes:
        return {"model": info["model"], "train_seconds": info.get("train_seconds"), "steps": info.get("steps"),
                "pretext": info.get("pretext"), "dev_sts": info.get("dev_sts")}
    snapshot = read_export(Path(info["output_dir"]), minutes)
    if snapshot is None:
        return None
    split = _pretext(snapshot.get("metrics", {}))
    return {"model": str(export_dir(Path(info["output_dir"]), minutes)),
            "train_seconds": snapshot.get("train_seconds"), "steps": snapshot.get("step"),
            "pretext": split["pretext"], "dev_sts": split["dev_sts"]}


def point_done(point: dict[str, Any] | None, settings: Settings) -> bool:
    """A finished point of the current run length with every evaluation asked for."""
    if not point or point.get("schedule_minutes") != settings.budget_minutes:
        return False
    if point.get("status") == "skipped":
        return True
    return point.get("status") == "done" and all(
        _entry_complete(point.get(k), settings) for k in ("raw", "whitened"))


def evaluate_point(info: dict[str, Any], minutes: float, settings: Settings, previous: dict[str, Any] | None,
                   save: Any) -> dict[str, Any]:
    """One (trained row, budget) point: the model at ``minutes`` evaluated raw and whitened;
    what ``previous`` (the same point, same run) already holds is kept."""
    point: dict[str, Any] = {"budget_minutes": minutes, "schedule_minutes": settings.budget_minutes}
    facts = _point_facts(info, minutes, settings)
    if facts is None:
        return {**point, "status": "skipped",
                "reason": f"the run ended after {_fmt(info.get('train_seconds'), '.1f')} s of training, "
                f"before {minutes:g} min"}
    point.update(facts)
    previous = previous or {}
    point["raw"] = complete_eval(previous.get("raw"), facts["model"], settings)
    point["status"] = "partial"
    save(point)
    wmodel = Path(str(facts["model"]) + WHITEN_SUFFIX)
    if _ends_with_dense(facts["model"]):
        # Trained through a whitening layer (model.output_layer: train): its raw entry is the
        # whitened one already, and whitening twice is refused.
        point["whitened"] = {"status": "not applicable",
                             "reason": "the model already ends with a whitening (Dense) layer"}
        point.update(status="done", finished_utc=_now())
        return point
    old = previous.get("whitened")
    if old and "sts" in old and (wmodel / "modules.json").is_file():
        wfacts = {k: old[k] for k in ("model", "whitening", "whiten_seconds") if k in old}
    else:
        wfacts, old = _whiten(facts["model"], wmodel, settings), None
        wfacts.pop("command")
    point["whitened"] = {**complete_eval(old, str(wmodel), settings), **wfacts}
    point.update(status="done", finished_utc=_now())
    return point


def run_trained_row(name: str, settings: Settings, previous: dict[str, Any] | None, save: Any) -> dict[str, Any]:
    """A trained row: one training run for the longest budget (snapshots at the others), then
    each point not yet finished; ``save(record)`` is called after each point."""
    start = time.perf_counter()
    record: dict[str, Any] = {"row": name}
    previous = previous or {}
    points = dict(previous.get("points") or {})
    earlier = dict(previous.get("earlier_points") or {})
    if points and previous.get("schedule_minutes") != settings.budget_minutes:
        # Points of a run of another length (another lr schedule): kept aside, measured again.
        earlier[f"schedule {previous.get('schedule_minutes')} min"] = points
        points = {}
    if earlier:
        record["earlier_points"] = earlier
    record.update(budgets=list(settings.budgets), schedule_minutes=settings.budget_minutes, points=points)
    try:
        info = prepare_row(name, settings)
        record.update(info)
        if info.get("training") == "trained":  # a new run: unfinished points of an earlier one are void
            points = {k: v for k, v in points.items() if point_done(v, settings)}
            record["points"] = points
        for minutes in settings.budgets:
            key = budget_key(minutes)
            if point_done(points.get(key), settings):
                continue
            print(f"[{name}] evaluating the model at {minutes:g} min (raw and whitened) ...")

            def save_point(p: dict[str, Any], key: str = key) -> None:
                points[key] = p
                save(record)

            points[key] = evaluate_point(info, minutes, settings, points.get(key), save_point)
            save(record)
        last = points.get(budget_key(settings.budget_minutes), {})
        if last.get("status") != "done":
            raise RuntimeError(f"no finished point at the longest budget ({last.get('reason', '?')})")
        # The single-budget fields: the longest budget's raw evaluation.
        record.update({k: v for k, v in last["raw"].items()})
        record["status"] = "done"
    except Exception as exc:  # noqa: BLE001 - a broken row must not end the comparison
        _record_failure(name, record, exc)
    record["wall_seconds"] = time.perf_counter() - start
    record["finished_utc"] = _now()
    return record


def _record_failure(name: str, record: dict[str, Any], exc: Exception) -> None:
    """Mark ``record`` skipped (a missing recipe / model) or failed (anything else, traceback shown)."""
    if isinstance(exc, RowSkipped):
        record.update(status="skipped", reason=str(exc))
        print(f"[{name}] skipped: {exc}")
        return
    traceback.print_exc()
    record.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
    print(f"[{name}] failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def derived_row(name: str, rows: dict[str, dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """``<trained>+whiten``: the whitened entry of the trained row's longest-budget point."""
    base = name[: -len(WHITEN_SUFFIX)]
    point = (rows.get(base, {}).get("points") or {}).get(budget_key(settings.budget_minutes))
    if not point_done(point, settings) or not point.get("whitened"):  # type: ignore[union-attr]
        return {"row": name, "status": "skipped", "reason": f"{base!r} has no whitened model at "
                f"{settings.budget_minutes:g} min -- run the row {base!r} first"}
    assert point is not None
    return {"row": name, "status": "done", "base_row": base, "budget_minutes": settings.budget_minutes,
            "derived_from": f"rows[{base!r}].points[{budget_key(settings.budget_minutes)!r}].whitened",
            **point["whitened"]}


def run_row(name: str, settings: Settings, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """An untrained row (or ``<untrained>+whiten``) end to end; returns its record (status done /
    skipped / failed). A finished record lacking asked transfer tasks or ``stsb_dev`` is completed."""
    start = time.perf_counter()
    record: dict[str, Any] = {"row": name}
    try:
        if previous and previous.get("status") == "done" and _model_exists(previous.get("model")):
            record.update(previous)
            record.update(complete_eval(previous, previous["model"], settings))
        else:
            info = prepare_row(name, settings)
            record.update(info)
            record.update(evaluate_model(info["model"], settings))
        record["status"] = "done"
    except Exception as exc:  # noqa: BLE001 - a broken row must not end the comparison
        _record_failure(name, record, exc)
    record["wall_seconds"] = time.perf_counter() - start
    record["finished_utc"] = _now()
    return record


def _model_exists(spec: Any) -> bool:
    if not spec:
        return False
    path = str(spec).removeprefix("avg-word-vectors:")
    return Path(path).exists()


# --------------------------------------------------------------------------- the comparison


def _load_previous(out: Path, settings: Settings, fresh: bool) -> dict[str, dict[str, Any]]:
    """Rows of an earlier run of the same comparison (``{}`` if none or ``fresh``); rows of the
    single-budget format come back with points at their budget."""
    if fresh or not out.is_file():
        return {}
    try:
        previous = json.loads(out.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataDirError(f"{out}: not valid JSON ({exc.msg}); move it away or pass --fresh") from None
    old = previous.get("settings", {})
    old = {**(_COMPARABLE_DEFAULTS if old else {}), **old}
    diff = [k for k in _COMPARABLE_KEYS if k in old and old[k] != settings.comparable()[k]]
    if diff:
        detail = ", ".join(f"{k}: {old[k]} -> {settings.comparable()[k]}" for k in diff)
        raise DataDirError(
            f"{out} holds rows measured with other settings ({detail}); pass --fresh to start "
            "over or choose another --out"
        )
    return upgrade_rows(dict(previous.get("rows", {})), old, is_trained)


def protocol(settings: Settings) -> dict[str, str]:
    return {
        "start": "every trained row starts from base-sgns (python -m textcl.scratch; default "
        "4-layer/256 BERT, 16k WordPiece, whole-word input embeddings from 100-d SGNS vectors in "
        "the first 100 dims, see start_models); random-init = the same model before the SGNS copy",
        "budget": f"{settings.budget_minutes:g} minutes of training per row (textcl: train.max_minutes, "
        "evaluation and checkpoint time excluded; st-simcse: TrainerCallback on wall-clock from the "
        "first step)",
        "curves": "points at " + ", ".join(f"{b:g}" for b in settings.budgets) + " min: one training "
        f"run per row for {settings.budget_minutes:g} min (its lr schedule spans that), the model saved "
        "when its training time first reaches each shorter budget; every point evaluated raw and "
        "whitened; untrained rows evaluated once",
        "stsb_dev": "Spearman x100 of cosine vs gold on the STS-B dev split: for choosing settings "
        "(the test sets are only reported)",
        "sts": "Spearman x100 of cosine similarity vs gold, 'all' setting (one correlation per set), "
        "original text, test splits; avg = mean of " + ", ".join(settings.sts_tasks),
        "transfer": f"SentEval protocol via benchmarks.senteval: logistic regression on frozen unit "
        f"embeddings, seed 1111; MR/SUBJ {settings.folds}-fold CV with {settings.inner_folds}-fold "
        f"inner C selection; TREC C by {settings.folds}-fold CV on train, test accuracy",
        "whiten": "<row>+whiten rows: <row>'s model followed by BERT-whitening (textcl.whitening: "
        "mean and covariance eigenvectors / sqrt(eigenvalues), "
        + ("all dimensions" if settings.whiten_dim is None else
           f"the top {settings.whiten_dim} components, or all of a narrower model's")
        + f") fitted on "
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
    earlier: list[str] = []
    try:  # the commands of earlier invocations that wrote rows still in this file
        previous = json.loads(out.read_text(encoding="utf-8"))
        earlier = [c for c in [*previous.get("earlier_commands", []), previous.get("command")]
                   if c and c != command]
    except (OSError, ValueError, AttributeError):
        pass
    report = {
        "benchmark": "compare_objectives",
        "command": command,
        "earlier_commands": list(dict.fromkeys(earlier)),
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


def _row_done(name: str, record: dict[str, Any] | None, settings: Settings) -> bool:
    """Nothing left to do for the row (a ``<trained>+whiten`` copy is always refreshed)."""
    if not record or record.get("status") != "done" or _is_derived(name):
        return False
    if is_trained(name):
        points = record.get("points") or {}
        return all(point_done(points.get(budget_key(b)), settings) for b in settings.budgets)
    return _entry_complete(record, settings)


def run_comparison(
    settings: Settings, rows: list[str], out: Path, *, fresh: bool = False, command: str = "",
    plot: bool = False,
) -> dict[str, dict[str, Any]]:
    """Run the rows (points) not yet done in ``out``, rewriting ``out`` after each; returns all rows."""
    unknown = [r for r in rows if not is_row(r, settings.recipes_dir)]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; valid rows: {', '.join(ROWS)} or <recipes-dir>/<row>.yaml")
    done = _load_previous(out, settings, fresh)
    started = _now()
    order = [r for r in ROWS if r in rows or done.get(r, {}).get("status") == "done"]
    # Variant rows (extra recipes in the recipes dir) after the standard ones.
    order += [r for r in dict.fromkeys([*done, *rows]) if r not in ROWS and r not in order
              and (r in rows or done.get(r, {}).get("status") == "done")]
    todo = [r for r in rows if not _row_done(r, done.get(r), settings)]
    # The whitened copies of trained rows after the rows they copy.
    todo = [r for r in todo if not _is_derived(r)] + [r for r in todo if _is_derived(r)]
    trains = sum(is_trained(r) for r in todo)
    print(
        f"rows to run: {', '.join(todo) or 'none'}; already done: "
        f"{', '.join(r for r in rows if r not in todo) or 'none'}; budgets "
        f"{', '.join(f'{b:g}' for b in settings.budgets)} min: at most {trains * settings.budget_minutes:g} min "
        "of training (+ ~1-2 min of loading and in-run evaluation per trained row) + ~4 min of evaluation "
        "per point, raw and whitened (4-layer BERT, 1 thread, 2 busy cores)"
    )
    _write(out, settings, done, order, command, started)

    def save(record: dict[str, Any]) -> None:
        done[record["row"]] = record
        _write(out, settings, done, order, command, started)

    for name in todo:
        if _is_derived(name):
            record = derived_row(name, done, settings)
        elif is_trained(name):
            print(f"[{name}] running ...")
            record = run_trained_row(name, settings, done.get(name), save)
        else:
            print(f"[{name}] running ...")
            record = run_row(name, settings, done.get(name))
        save(record)
        if record["status"] == "done" and not _is_derived(name):
            print(f"[{name}] STS avg {_fmt(record.get('sts_avg'))}, row {record['wall_seconds']:.0f} s")
    for name in rows:
        if name not in todo:
            print(f"[{name}] already done in {out}, skipped")
    # Refresh the stored whitened copies of trained rows whose points changed.
    for name in [r for r in done if _is_derived(r) and r not in todo]:
        fresh_copy = derived_row(name, done, settings)
        if fresh_copy["status"] == "done" and any(
                fresh_copy.get(k) != done[name].get(k) for k in ("sts", "transfer", "stsb_dev", "model")):
            done[name] = {**fresh_copy, "finished_utc": _now()}
    _write(out, settings, done, order, command, started)
    print_table(done, order, settings)
    print_curves(done, order, settings.transfer_tasks)
    if plot:
        png = out.with_suffix(".png")
        write_plot(done, order, png, settings)
        curves_png = out.with_name(out.stem + "_curves.png")
        write_curves_plot(done, order, curves_png, settings.transfer_tasks, title=_model_title(settings))
        print(f"wrote {png} and {curves_png}")
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
    print(f"\nSTS: Spearman x100 'all', cosine; transfer: accuracy %; trained rows at the longest budget, "
          f"{settings.budget_minutes:g} min; bare-loop reference STS avg {BARE_LOOP_STS_AVG}")
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
    colors = ["tab:green" if n.endswith(WHITEN_SUFFIX) else "tab:gray" if n in BASELINE_ROWS or n.endswith(START_SUFFIX)
              else "tab:orange" if n == "st-simcse" else "tab:blue" for n in names]
    # A file can hold runs of several lengths (e.g. 10 and 20 minutes): the title names them all
    # and a bar whose run length is not the current one says its own.
    minutes = {n: rows[n].get("schedule_minutes") or rows[n].get("budget_minutes") for n in names}
    labels = [f"{n} ({m:g} min)" if m and m != settings.budget_minutes else n for n, m in minutes.items()]
    lengths = sorted({m for m in minutes.values() if m} or {settings.budget_minutes})
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 4.2))
    bars = ax.bar(labels, values, color=colors)
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.axhline(BARE_LOOP_STS_AVG, color="tab:red", linestyle="--", linewidth=1)
    ax.text(len(names) - 0.5 if names else 0.5, BARE_LOOP_STS_AVG + 0.4, f"bare loop {BARE_LOOP_STS_AVG}",
            color="tab:red", ha="right", va="bottom", fontsize=8)
    low = min([*values, BARE_LOOP_STS_AVG]) if values else 0
    ax.set_ylim(max(0.0, low - 10), max([*values, BARE_LOOP_STS_AVG]) + 5 if values else 100)
    ax.set_ylabel("STS avg (Spearman x100, 'all', 7 sets)")
    ax.set_title(f"{_model_title(settings)}, trained rows at the end of their run "
                 f"({' / '.join(f'{m:g}' for m in lengths)} min of training)", fontsize=9)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _model_title(settings: Settings) -> str:
    config = start_models(settings).get("base_random", {}).get("config", {})
    model = (f"{config['num_hidden_layers']}-layer / {config['hidden_size']} BERT"
             if "num_hidden_layers" in config and "hidden_size" in config else "BERT")
    return f"From-scratch {model}"


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_objectives", description=__doc__.split("\n")[0])
    add_data_dir_argument(p)
    p.add_argument("--budget-minutes", type=float, nargs="+", default=[10.0],
                   help="training minutes per row; several (e.g. 10 30 60) = one run per trained row for "
                   "the longest, evaluated at each (default 10)")
    p.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS),
                   help=f"rows, comma or space separated (default: all = {', '.join(DEFAULT_ROWS)})")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/compare_objectives.json"))
    p.add_argument("--plot", action="store_true",
                   help="also write <out>.png (STS avg per row) and <out>_curves.png (STS and transfer avg "
                   "vs training minutes)")
    p.add_argument("--scratch-dir", type=Path, default=Path("runs/scratch"),
                   help="output of python -m textcl.scratch (base-random, base-sgns, sgns)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/scratch/compare"),
                   help="where the trained rows' models go (one directory per row)")
    p.add_argument("--recipes-dir", type=Path, default=Path("recipes/text/scratch"),
                   help="<row>.yaml recipes of the textcl objectives")
    p.add_argument("--transfer-tasks", nargs="+", default=None,
                   help="transfer tasks, space or comma separated (default mr subj trec; add cr mpqa ...; "
                   "'none' for none). Finished evaluations get only the tasks they lack")
    p.add_argument("--transfer", default=None, help=argparse.SUPPRESS)  # the old spelling: comma separated
    p.add_argument("--folds", type=int, default=10, help="outer CV folds (default 10, SentEval)")
    p.add_argument("--inner-folds", type=int, default=10, help="inner CV folds (default 10, SentEval)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for evaluation (default 1: 2 threads were 2.5x slower on 2 busy "
                   "cores; try 2 on an idle machine)")
    p.add_argument("--simcse-threads", type=int, default=2,
                   help="torch threads while training st-simcse (default 2 = the recipes' train.threads)")
    p.add_argument("--simcse-max-documents", type=int, default=None, help="st-simcse: read at most N documents")
    p.add_argument("--whiten-dim", type=int, default=None, metavar="K",
                   help="whitened rows keep at most K components (BERT-whitening's k; default: all). "
                   "Results with another K go to another --out")
    p.add_argument("--fresh", action="store_true", help="ignore rows already in --out and run all again")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@cli_main
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
    if min(args.budget_minutes) <= 0 or args.folds < 2 or args.inner_folds < 2 or min(args.threads, args.simcse_threads) < 1 \
            or (args.whiten_dim is not None and args.whiten_dim < 1):
        p.error("--budget-minutes must be > 0, --folds/--inner-folds >= 2, --threads/--simcse-threads >= 1, "
                "--whiten-dim >= 1")
    if args.transfer is not None and args.transfer_tasks is not None:
        p.error("give --transfer-tasks only (--transfer is its old comma-separated spelling)")
    items = args.transfer_tasks if args.transfer_tasks is not None else [
        args.transfer if args.transfer is not None else ",".join(DEFAULT_TRANSFER)]
    items = [i for i in items if i.strip().lower() not in ("", "none")]
    try:
        transfer = tuple(parse_tasks(items)) if items else ()
    except ValueError as exc:
        p.error(str(exc))
    if any(t in STS_TASKS for t in transfer):
        p.error("--transfer-tasks takes transfer tasks only (mr, cr, subj, mpqa, sst2, trec, mrpc)")
    data_dir = resolve_data_dir(args.data_dir, *required_files(list(STS_TASKS) + list(transfer)))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "datasets", "sentence_transformers", "accelerate", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = Settings(
        data_dir=data_dir, budgets=tuple(args.budget_minutes), scratch_dir=args.scratch_dir,
        runs_dir=args.runs_dir, recipes_dir=args.recipes_dir, transfer_tasks=transfer,
        folds=args.folds, inner_folds=args.inner_folds, threads=args.threads,
        show_progress=not args.no_progress, whiten_dim=args.whiten_dim,
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
    main()
