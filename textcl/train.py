"""``python -m textcl.train RECIPE.yaml [--set key=value ...] [--resume]``

Writes ``output_dir/``: the model (a sentence-transformers directory for text
methods), ``recipe.yaml`` (fully resolved), ``log.jsonl``, ``metrics.json`` (final
evaluation; ``initial/<name>`` holds the before-training values), ``README.md``
(model card) and ``checkpoints/``. Multi-GPU / multi-node:
``accelerate launch -m textcl.train RECIPE.yaml``.

Exit codes: 0 done, 2 bad recipe or data, 3 non-finite loss.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
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
        "--overwrite", action="store_true", help="start afresh even if output_dir has checkpoints"
    )
    return p


def run(recipe_path: str, overrides: list[str] | None = None, resume: bool = False,
        overwrite: bool = False, callbacks: list[Any] | None = None) -> dict[str, float]:
    """Programmatic entry point (raises instead of exiting)."""
    import shutil

    from accelerate.utils import set_seed

    from textcl.core.io import atomic_write_json, atomic_write_text, install_dir_contents
    from textcl.core.method import get_method_class
    from textcl.core.recipe import RecipeError, load_recipe
    from textcl.core.trainer import Trainer
    from textcl.evaluation import build_evaluators

    recipe = load_recipe(recipe_path, overrides)
    out = recipe.output_dir
    ckpts = out / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()) and not (resume or overwrite):
        raise RecipeError(
            f"{recipe_path}: output_dir: {out} already holds checkpoints; pass --resume to continue "
            "that run, --overwrite to start afresh, or choose another output_dir"
        )
    if overwrite and ckpts.is_dir():
        shutil.rmtree(ckpts)

    set_seed(recipe.seed)  # before building the method: heads are randomly initialised
    method = get_method_class(recipe.method).from_recipe(recipe)
    evaluators = build_evaluators(recipe.eval.evaluators)
    trainer = Trainer(
        method, recipe.train, out, seed=recipe.seed, evaluators=evaluators,
        eval_every_n_steps=recipe.eval.every_n_steps, callbacks=callbacks or [],
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
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "datasets", "sentence_transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from textcl.core.recipe import RecipeError
    from textcl.core.trainer import NonFiniteLossError, TrainingDataError
    from textcl.documents import DataError

    try:
        run(args.recipe, args.overrides, resume=args.resume, overwrite=args.overwrite)
    except (RecipeError, DataError, TrainingDataError) as exc:
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
