"""The from-scratch text track: a WordPiece tokenizer, a small random BERT, SGNS-initialised embeddings.

No raw (MLM-only) pretrained encoder can be had offline, so the headline text comparisons start
from a model built here from raw text::

    python -m textcl.scratch [recipes/text/scratch/pipeline.yaml] [--set key=value ...] [--train RECIPE]

runs, each stage skipped when its output already exists (so a killed pipeline resumes):

1. ``tokenizer``: WordPiece vocabulary trained with ``tokenizers`` on the corpus, saved as a
   ``BertTokenizerFast`` directory (:func:`train_wordpiece_tokenizer`);
2. ``sgns``: word vectors from the existing SGNS method (``textcl.train.run`` on
   ``recipes/text/sgns.yaml`` + overrides), or an existing word2vec file;
3. ``base-random``: a random-init ``BertModel`` saved as a sentence-transformers directory
   (mean pooling) with the tokenizer (:func:`build_bert`);
4. ``base-sgns``: the same weights with the input-embedding rows of whole-word tokens replaced
   by their SGNS vectors (:func:`textcl.word_vectors.init_embeddings_from_word_vectors`; coverage in
   ``embedding_init.json``);
5. ``base-mlm`` (off by default: ``--set mlm.enabled=true``): masked-LM training of base-sgns
   (base-random without SGNS vectors) on the sentence corpus (:func:`textcl.scratch_mlm.train_mlm`: a
   ``BertForMaskedLM`` head around its weights, BERT's 80/10/10 masking, AdamW + linear
   warmup/decay, a time budget ``mlm.max_minutes`` and/or ``mlm.max_steps``). Resumable: it
   checkpoints (tensors only) into its temp dir, and a killed stage continues from there.
   Held-out MLM loss / accuracy on fixed sentences excluded from training (fixed masks) at the
   start, every ``mlm.eval_every_steps`` and at the end: ``base-mlm/mlm_metrics.json`` and
   ``pipeline.json``. The output is a sentence-transformers directory like base-sgns (the MLM
   head is not saved);
6. optionally, one objective recipe trained on the last base built -- ``base-mlm`` when
   ``mlm.enabled``, else ``base-sgns`` (``TEXTCL_SCRATCH_BASE`` is set to it, which the recipes
   under ``recipes/text/scratch/`` read).

Every stage writes into a temporary directory and renames it into place, so an output that
exists is complete. ``pipeline.json`` in the output directory records the configuration,
each stage's seconds, the embedding coverage and the MLM curve.

This module holds the stage runners, their order and skipping, and the command line. What
the stages build is in :mod:`textcl.scratch_build` (tokenizer, random BERT) and
:mod:`textcl.scratch_mlm` (masked LM); the pipeline config is in
:mod:`textcl.scratch_config`. Their names are re-exported here, where callers have always
imported them from.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textcl import scratch_mlm

# Re-exported: these names lived here before the split, and callers import them from here.
from textcl.core.recipe import OutputDir  # noqa: F401
from textcl.scratch_build import (  # noqa: F401
    SPECIAL_TOKENS,
    _base_card,
    _iter_texts,
    _write_json,
    build_bert,
    train_wordpiece_tokenizer,
)
from textcl.scratch_config import (  # noqa: F401
    DEFAULT_CONFIG,
    DEFAULT_CORPUS,
    EmbeddingStage,
    ModelStage,
    PipelineConfig,
    SgnsStage,
    TokenizerStage,
    TrainStage,
    _Strict,
    load_pipeline_config,
)
from textcl.scratch_mlm import MLM_CHECKPOINT, MLMStage

__all__ = [
    "PipelineConfig",
    "build_bert",
    "load_pipeline_config",
    "main",
    "run_pipeline",
    "train_mlm",
    "train_wordpiece_tokenizer",
]

logger = logging.getLogger("textcl.scratch")

#: Environment variable the scratch recipes read for their start model.
BASE_ENV = "TEXTCL_SCRATCH_BASE"
STAGES = ("tokenizer", "sgns", "base-random", "base-sgns", "base-mlm", "train")
#: Stages built from each stage's output (re-run when it is forced).
_DOWNSTREAM = {
    "tokenizer": ("base-random", "base-sgns", "base-mlm", "train"),
    "sgns": ("base-sgns", "base-mlm", "train"),
    "base-random": ("base-sgns", "base-mlm", "train"),
    "base-sgns": ("base-mlm", "train"),
    "base-mlm": ("train",),
    "train": (),
}


# --------------------------------------------------------------------------- masked LM


def train_mlm(start: str | Path, work_dir: str | Path, cfg: MLMStage, files: Sequence[str], *,
              resume: bool = True) -> dict[str, Any]:
    """Masked-LM training of the sentence-transformers model ``start`` on the sentences of
    ``files``, read as the tokenizer stage reads its corpus (:func:`textcl.scratch_mlm.train_mlm`
    has the details: saved model, ``mlm_metrics.json``, checkpoints and resume)."""
    return scratch_mlm.train_mlm(start, work_dir, cfg, files, read_texts=_iter_texts, resume=resume)


# --------------------------------------------------------------------------- pipeline


def _paths(cfg: PipelineConfig) -> dict[str, Path]:
    root = Path(cfg.output_dir)
    return {
        "root": root,
        "tokenizer": root / "tokenizer",
        "sgns": Path(cfg.sgns.vectors) if cfg.sgns.vectors else root / "sgns",
        "base-random": root / "base-random",
        "base-sgns": root / "base-sgns",
        "base-mlm": root / "base-mlm",
    }


def _stage_tokenizer(cfg: PipelineConfig, out: Path) -> dict[str, Any]:
    from textcl.core.io import replace_dir

    t = cfg.tokenizer
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = train_wordpiece_tokenizer(
        t.files, t.vocab_size, tmp, lowercase=t.lowercase, min_frequency=t.min_frequency,
        max_lines=t.max_lines, text_field=t.text_field, model_max_length=cfg.model.max_position,
    )
    info = {"vocab_size": len(tok), "asked": t.vocab_size, "files": t.files, "lowercase": t.lowercase,
            "min_frequency": t.min_frequency, "max_lines": t.max_lines}
    info = _portable_json(info, Path(cfg.output_dir))
    _write_json(tmp / "tokenizer_stats.json", info)
    replace_dir(tmp, out)
    return info


def _stage_sgns(cfg: PipelineConfig, out: Path) -> dict[str, Any]:
    """SGNS through the ordinary trainer into a temp dir (resumed from its checkpoints after a
    kill), renamed when complete."""
    from textcl.core.io import replace_dir
    from textcl.train import run

    tmp = out.with_name(f".tmp-{out.name}")
    resume = (tmp / "checkpoints").is_dir() and any((tmp / "checkpoints").iterdir())
    if resume:
        logger.info("sgns: resuming the interrupted run in %s", tmp)
    overrides = [*cfg.sgns.overrides, f"output_dir={tmp}"]
    # tmp is the pipeline's own: a model left there by a run killed before the rename is redone.
    metrics = run(cfg.sgns.recipe, overrides, resume=resume, overwrite=not resume)
    shutil.rmtree(tmp / "checkpoints", ignore_errors=True)  # only needed to resume
    replace_dir(tmp, out)
    return {"recipe": cfg.sgns.recipe, "overrides": cfg.sgns.overrides, "metrics": metrics}


def _stage_base_sgns(cfg: PipelineConfig, base_random: Path, vectors: Path, out: Path) -> dict[str, Any]:
    from textcl.card import portable_path
    from textcl.core.io import replace_dir
    from textcl.encoders import TextEncoder
    from textcl.word_vectors import init_embeddings_from_word_vectors

    encoder = TextEncoder.from_pretrained(str(base_random))
    e = cfg.embeddings
    stats = init_embeddings_from_word_vectors(
        encoder, encoder.tokenizer, vectors, scale=e.scale, rest=e.rest, lowercase_fallback=e.lowercase_fallback,
    )
    stats["vectors"] = portable_path(vectors)  # embedding_init.json goes with the model
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    seed = json.loads((base_random / "scratch.json").read_text()).get("seed") if (base_random / "scratch.json").is_file() else None
    card = _base_card(encoder.transformer.config, seed, _paths(cfg)["tokenizer"], stats)
    encoder.save(tmp, model_card=card)
    _write_json(tmp / "embedding_init.json", stats)
    if (base_random / "scratch.json").is_file():
        shutil.copy(base_random / "scratch.json", tmp / "scratch.json")
    replace_dir(tmp, out)
    return stats


def _stage_mlm(cfg: PipelineConfig, start: Path, out: Path, forced: bool) -> dict[str, Any]:
    """MLM training into the temp dir (resumed from its checkpoint unless forced), renamed when complete."""
    from textcl.core.io import replace_dir

    tmp = out.with_name(f".tmp-{out.name}")
    resume = not forced and (tmp / MLM_CHECKPOINT / "state.pt").is_file()
    if not resume:
        shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, exist_ok=True)
    files = cfg.mlm.files or cfg.tokenizer.files or []
    metrics = train_mlm(start, tmp, cfg.mlm, files, resume=resume)
    replace_dir(tmp, out)
    return {k: v for k, v in metrics.items() if k != "config"}


def _stage_train(cfg: PipelineConfig, forced: bool) -> dict[str, Any]:
    """Train the recipe; an interrupted run (checkpoints, no final model) is resumed unless forced."""
    from textcl.core.recipe import load_recipe
    from textcl.train import run

    assert cfg.train.recipe is not None
    recipe = load_recipe(cfg.train.recipe, cfg.train.overrides)
    out = recipe.output_dir
    ckpts = out / "checkpoints"
    has_ckpt = ckpts.is_dir() and any(ckpts.iterdir())
    resume = has_ckpt and not forced
    # Forced: the model of an earlier run there is replaced (the caller asked for it).
    metrics = run(cfg.train.recipe, cfg.train.overrides, resume=resume, overwrite=forced)
    return {"recipe": cfg.train.recipe, "overrides": cfg.train.overrides, "output_dir": str(out), "metrics": metrics}


def _train_done(cfg: PipelineConfig) -> Path | None:
    """The train stage's output dir if it already holds a finished run (metrics.json is written last)."""
    from textcl.core.recipe import load_recipe

    out = load_recipe(cfg.train.recipe, cfg.train.overrides).output_dir  # type: ignore[arg-type]
    return out if (out / "metrics.json").is_file() and (out / "modules.json").is_file() else None


def run_pipeline(cfg: PipelineConfig, *, force: Sequence[str] = (), stop_after: str | None = None) -> dict[str, Any]:
    """Run the stages in order, skipping those whose output exists (``force`` re-runs named ones).

    Returns (and writes to ``<output_dir>/pipeline.json``) per stage: ``status``
    (``done`` / ``skipped`` / ``disabled``), ``seconds``, ``output`` and its facts.
    ``output_dir`` is locked for the pipeline's duration (one pipeline at a time:
    :class:`textcl.core.lock.DirLock`); a second one raises ``RecipeError``.
    """
    from textcl.core.lock import DirLock, check_output_dir

    for name in [*force, *([stop_after] if stop_after else [])]:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    root = Path(cfg.output_dir)
    label = f"output_dir: {root}"
    check_output_dir(root, label)
    with DirLock(root, label):
        return _run_stages(cfg, set(force), stop_after)


def _portable_json(data: Any, root: Path) -> Any:
    """``data`` as written to the pipeline's JSON files, without absolute local paths: an
    absolute path inside the pipeline's output dir ``root`` relative to it (``root`` itself by
    its name), any other by :func:`textcl.card.portable_path`; absolute paths inside other text
    (``--set`` overrides) by :func:`textcl.card.portable_text`. Nothing reads paths back from
    these files: stages are skipped by their outputs' existence."""
    from textcl.card import portable_path, portable_text

    if isinstance(data, dict):
        return {k: _portable_json(v, root) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_portable_json(v, root) for v in data]
    if not isinstance(data, str):
        return data
    if not os.path.isabs(data):
        return portable_text(data)
    base = os.path.abspath(root)
    path = os.path.normpath(data)
    if path == base:
        return Path(base).name or path
    if path.startswith(base.rstrip(os.sep) + os.sep):
        return Path(os.path.relpath(path, base)).as_posix()
    return portable_path(data)


def _run_stages(cfg: PipelineConfig, force: set[str], stop_after: str | None) -> dict[str, Any]:
    # A rebuilt stage invalidates what was built from it.
    for name in STAGES:
        if name in force:
            force |= set(_DOWNSTREAM[name])
    paths = _paths(cfg)
    root = paths["root"]
    summary_path = root / "pipeline.json"
    summary: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "stages": {}}
    if summary_path.is_file():
        try:
            summary["stages"] = json.loads(summary_path.read_text()).get("stages", {})
        except json.JSONDecodeError:
            pass

    def stage(name: str, output: Path | None, fn: Any, exists: bool | None = None) -> None:
        done = (output is not None and output.exists()) if exists is None else exists
        if done and name not in force:
            print(f"[{name}] exists, skipped: {output}")
            summary["stages"].setdefault(name, {}).update(status="skipped", output=str(output))
        else:
            print(f"[{name}] running ...")
            start = time.perf_counter()
            info = fn()
            seconds = time.perf_counter() - start
            print(f"[{name}] done in {seconds:.1f} s -> {output}")
            summary["stages"][name] = {"status": "done", "seconds": seconds, "output": str(output), **(info or {})}
        _write_json(summary_path, _portable_json(summary, root))

    def stopped(name: str) -> bool:
        return stop_after == name

    stage("tokenizer", paths["tokenizer"], lambda: _stage_tokenizer(cfg, paths["tokenizer"]))
    if stopped("tokenizer"):
        return summary
    if cfg.sgns.vectors:
        if not paths["sgns"].exists():
            raise FileNotFoundError(f"sgns.vectors: {paths['sgns']} not found -- fix the path or remove the key")
        summary["stages"]["sgns"] = {"status": "given", "output": str(paths["sgns"])}
    elif cfg.sgns.enabled:
        stage("sgns", paths["sgns"], lambda: _stage_sgns(cfg, paths["sgns"]))
    else:
        summary["stages"]["sgns"] = {"status": "disabled"}
    if stopped("sgns"):
        return summary
    m = cfg.model
    stage("base-random", paths["base-random"], lambda: {"output": str(build_bert(
        paths["tokenizer"], paths["base-random"], m.layers, m.hidden, m.heads, m.intermediate,
        m.max_position, m.seed, dropout=m.dropout))})
    if stopped("base-random"):
        return summary
    have_vectors = bool(cfg.sgns.vectors) or cfg.sgns.enabled
    if have_vectors:
        stage("base-sgns", paths["base-sgns"],
              lambda: _stage_base_sgns(cfg, paths["base-random"], paths["sgns"], paths["base-sgns"]))
    if stopped("base-sgns"):
        return summary
    base = paths["base-sgns"] if have_vectors else paths["base-random"]
    if cfg.mlm.enabled:
        start = base
        stage("base-mlm", paths["base-mlm"],
              lambda: _stage_mlm(cfg, start, paths["base-mlm"], "base-mlm" in force))
        base = paths["base-mlm"]
    if stopped("base-mlm") or cfg.train.recipe is None:
        return summary
    # The scratch recipes' model.name_or_path reads TEXTCL_SCRATCH_BASE; restored afterwards.
    previous = os.environ.get(BASE_ENV)
    os.environ[BASE_ENV] = str(base)
    try:
        done = _train_done(cfg)
        stage("train", done or Path(cfg.train.recipe),
              lambda: {"start_model": str(base), **_stage_train(cfg, "train" in force)}, exists=done is not None)
    finally:
        if previous is None:
            os.environ.pop(BASE_ENV, None)
        else:
            os.environ[BASE_ENV] = previous
    return summary


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m textcl.scratch",
        description="Build the from-scratch text track: WordPiece tokenizer, SGNS vectors, "
        "runs/scratch/base-random and base-sgns, optionally base-mlm (--set mlm.enabled=true) "
        "and one objective run.",
    )
    p.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help=f"pipeline YAML (default: {DEFAULT_CONFIG})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set tokenizer.vocab_size=8000 (repeatable)")
    p.add_argument("--train", metavar="RECIPE", default=None,
                   help="also train this objective recipe from base-sgns, or base-mlm with "
                   "--set mlm.enabled=true (= --set train.recipe=RECIPE)")
    p.add_argument("--force", action="append", default=[], choices=STAGES,
                   help="re-run this stage (and the stages built from it) even if its output exists "
                   "(repeatable)")
    p.add_argument("--stop-after", choices=STAGES, default=None, help="stop after this stage")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit status 0 done, 2 bad config or data."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "datasets", "sentence_transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from textcl.core.recipe import RecipeError
    from textcl.core.trainer import TrainingDataError
    from textcl.documents import DataError

    overrides = list(args.overrides) + ([f"train.recipe={args.train}"] if args.train else [])
    try:
        cfg = load_pipeline_config(args.config, overrides)
        summary = run_pipeline(cfg, force=args.force, stop_after=args.stop_after)
    except (RecipeError, DataError, TrainingDataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    init = summary["stages"].get("base-sgns", {})
    if "covered" in init:
        print(f"SGNS embedding coverage: {init['covered']} / {init['vocab_size']} tokens "
              f"({100 * init['coverage']:.1f}%), first {init['dims_copied']} dims")
    print(f"summary: {Path(cfg.output_dir) / 'pipeline.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
