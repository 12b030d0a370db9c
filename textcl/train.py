"""``python -m textcl.train RECIPE.yaml [--set key=value ...] [--resume]``

Writes ``output_dir/``: the model (a sentence-transformers directory for text
methods), ``recipe.yaml`` (fully resolved), ``log.jsonl``, ``metrics.json`` (final
evaluation; ``initial/<name>`` holds the before-training values), ``README.md``
(model card) and ``checkpoints/``. Multi-GPU / multi-node:
``accelerate launch -m textcl.train RECIPE.yaml``.

One run at a time per ``output_dir`` (a lock file, ``.textcl.lock``); a model already
there is replaced only with ``--overwrite``.

With ``train.report_to`` the scalars of ``log.jsonl`` also go to experiment trackers
(TensorBoard files in ``output_dir/tracking/``). With ``hub.repo_id`` the repo is created
(or found) before training and the model with its card is uploaded when the run ends
(:func:`textcl.hub.push_to_hub`; ``python -m textcl.hub`` uploads a finished run later).

Exit codes: 0 done, 2 bad recipe, data, model or output_dir, or a failed hub upload
(one ``error:`` line on stderr; the model stays saved), 3 non-finite loss.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["main", "run"]

logger = logging.getLogger("textcl")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m textcl.train",
        description="Train a contrastive model from a YAML recipe.",
    )
    p.add_argument("recipe", help="path to a recipe YAML file (see recipes/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set train.lr=1e-4 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    p.add_argument(
        "--overwrite", action="store_true",
        help="start afresh even if output_dir holds checkpoints or a model (replaced when the run ends)",
    )
    return p


def run(recipe_path: str, overrides: list[str] | None = None, resume: bool = False,
        overwrite: bool = False, callbacks: list[Any] | None = None) -> dict[str, float]:
    """Programmatic entry point (raises instead of exiting).

    Before anything loads: ``output_dir`` must be usable (not a file, not under one,
    writable), no other run may hold it (:class:`textcl.core.lock.DirLock`, held until this
    returns or raises), and an existing model or checkpoints there are replaced only with
    ``overwrite`` (``resume`` continues from the checkpoints). Problems raise ``RecipeError``.
    """
    from textcl.core.lock import DirLock, check_output_dir, launch_rank
    from textcl.core.recipe import load_recipe

    recipe = load_recipe(recipe_path, overrides)
    out = recipe.output_dir
    label = f"{recipe_path}: output_dir: {out}"
    # Only rank 0 writes into output_dir; the other processes of a launch just check it.
    main_rank = launch_rank() == 0
    check_output_dir(out, label, create=main_rank)
    with DirLock(out, label) if main_rank else contextlib.nullcontext():
        _check_replace(out, recipe_path, resume=resume, overwrite=overwrite)
        if recipe.hub.repo_id and main_rank:
            from textcl.hub import connect

            # Offline, no token or no write access: found now rather than after training.
            with _hub_errors(recipe_path):
                connect(recipe.hub.repo_id, private=recipe.hub.private)
        return _run(recipe, recipe_path, resume=resume, overwrite=overwrite, callbacks=callbacks)


@contextlib.contextmanager
def _hub_errors(recipe_path: str, then: str = "") -> Iterator[None]:
    """A ``textcl.hub`` error as one line naming the recipe key (plus ``then``)."""
    from textcl.hub import HubError

    try:
        yield
    except HubError as exc:
        raise HubError(f"{recipe_path}: hub.repo_id: {exc}{then}") from None


# What a model install leaves in output_dir (any method), and what a run writes before one.
_MODEL_FILES = ("metrics.json", "modules.json", "config.json", "vectors.bin", "vectors.txt")
_RUN_FILES = ("recipe.yaml", "log.jsonl", "initial_metrics.json", "checkpoints")


def _model_file(out: Path) -> str | None:
    """The name of a file showing that ``out`` holds a model (or part of one), else None."""
    from textcl.core.io import INSTALL_MARKER

    for name in (*_MODEL_FILES, INSTALL_MARKER):
        if (out / name).exists():
            return name
    return next((p.name for p in sorted(out.glob("*.safetensors"))), None)


def _check_replace(out: Path, recipe_path: str, *, resume: bool, overwrite: bool) -> None:
    """Refuse to replace a model, checkpoints or files of another program without --overwrite."""
    from textcl.core.recipe import RecipeError

    ckpts = out / "checkpoints"
    has_ckpt = ckpts.is_dir() and any(ckpts.iterdir())
    if has_ckpt and not (resume or overwrite):
        raise RecipeError(
            f"{recipe_path}: output_dir: {out} already holds checkpoints; pass --resume to continue "
            "that run, --overwrite to start afresh, or choose another output_dir"
        )
    if overwrite or (resume and has_ckpt):
        return
    model = _model_file(out)
    if model is not None and resume:
        raise RecipeError(
            f"{recipe_path}: output_dir: {out} holds a model ({model}) but no checkpoint to resume from — "
            "pass --overwrite to train afresh and replace it, or choose another output_dir"
        )
    if model is not None:
        raise RecipeError(
            f"{recipe_path}: output_dir: {out} already holds a model ({model}) — pass --overwrite to "
            "replace it, or choose another output_dir"
        )
    entries = [p.name for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []
    if entries and not any(name in entries for name in _RUN_FILES):
        raise RecipeError(
            f"{recipe_path}: output_dir: {out} is a directory of other files ({', '.join(sorted(entries)[:3])}"
            f"{', ...' if len(entries) > 3 else ''}), not a textcl run — choose a new or empty directory, "
            "or pass --overwrite to write the model among them"
        )


def _run(recipe: Any, recipe_path: str, *, resume: bool, overwrite: bool,
         callbacks: list[Any] | None) -> dict[str, float]:
    """The run itself, once output_dir is checked and locked."""
    import shutil

    from accelerate.utils import set_seed

    from textcl.core.io import atomic_write_json, atomic_write_text, install_dir_contents
    from textcl.core.method import get_method_class
    from textcl.core.trainer import Trainer
    from textcl.evaluation import build_evaluators

    out = recipe.output_dir
    ckpts = out / "checkpoints"
    if overwrite and ckpts.is_dir():
        shutil.rmtree(ckpts)

    # Before building the method: heads are randomly initialised, identically on every rank
    # (DDP assumes it); the trainer then reseeds per rank (textcl.core.distributed.rank_seed).
    set_seed(recipe.seed)
    method = get_method_class(recipe.method).from_recipe(recipe)
    evaluators = build_evaluators(recipe.eval.evaluators)
    trainer = Trainer(
        method, recipe.train, out, seed=recipe.seed, evaluators=evaluators,
        eval_every_n_steps=recipe.eval.every_n_steps, callbacks=callbacks or [],
        run_config=recipe.resolved,
    )
    main_process = trainer.is_main
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "recipe.yaml", recipe.to_yaml())

    initial_path = out / "initial_metrics.json"
    initial: dict[str, float] = {}
    if resume and initial_path.exists():
        initial = json.loads(initial_path.read_text())
    elif recipe.eval.before_training:
        initial = trainer.evaluate()
        if main_process and initial:
            atomic_write_json(initial_path, initial)
            _print_metrics("before training", initial)

    metrics = trainer.fit(resume=resume)

    if main_process:
        final = {**metrics, **{f"initial/{k}": v for k, v in initial.items()}}
        tmp = out / ".final-model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        info = method.card_info()
        info["metrics"] = final
        info["recipe_yaml"] = recipe.to_yaml()
        method.save_model(tmp, info)
        install_dir_contents(tmp, out)
        atomic_write_json(out / "metrics.json", final)
        _print_comparison(initial, metrics)
        print(f"model saved to {out}")
    trainer.accelerator.wait_for_everyone()
    hub = recipe.hub
    if main_process and hub.repo_id:
        # After the barrier: the other processes are done and need not wait for the upload.
        from textcl.hub import push_to_hub

        message = hub.commit_message or f"Upload {recipe.method} model trained with textcl"
        with _hub_errors(recipe_path, f"; the model is saved: upload it with python -m textcl.hub {out} {hub.repo_id}"):
            url = push_to_hub(out, hub.repo_id, private=hub.private, commit_message=message)
        print(f"model uploaded to {url}")
    return metrics


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    print(f"{title}:")
    for k, v in sorted(metrics.items()):
        print(f"  {k:32s} {v:9.4f}")


def _print_comparison(before: dict[str, float], after: dict[str, float]) -> None:
    keys = sorted(set(before) | set(after))
    if not keys:
        return
    print(f"{'metric':32s} {'before':>9s} {'after':>9s} {'change':>9s}")
    for k in keys:
        b, a = before.get(k), after.get(k)
        bs = f"{b:9.4f}" if b is not None else f"{'-':>9s}"
        as_ = f"{a:9.4f}" if a is not None else f"{'-':>9s}"
        ds = f"{a - b:+9.4f}" if a is not None and b is not None else f"{'':>9s}"
        print(f"{k:32s} {bs} {as_} {ds}")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (see the module docstring)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "datasets", "sentence_transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from transformers.utils import logging as hf_logging

    from textcl.core.recipe import RecipeError
    from textcl.core.trainer import NonFiniteLossError, TrainingDataError
    from textcl.documents import DataError
    from textcl.encoders import ModelLoadError

    # transformers' "Loading weights" bars: noise on stderr next to the run's own progress.
    hf_logging.disable_progress_bar()
    try:
        run(args.recipe, args.overrides, resume=args.resume, overwrite=args.overwrite)
    except (RecipeError, DataError, TrainingDataError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
