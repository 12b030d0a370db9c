"""Cross-encoder fine-tune mode of :mod:`benchmarks.glue`: ``AutoModelForSequenceClassification``
(a CLS head) trained with the Hugging Face ``Trainer``, the ``run_glue.py`` recipe."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.glue_data import GlueError, Split, Task, TaskData

# Families whose position table has 2 slots before the first real position (padding offset).
_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "longformer", "mpnet", "bart"}


def transformer_ref(model: str) -> str:
    """Where the HF transformer of ``model`` lives: the ST directory's Transformer module, else itself."""
    from textcl.encoders import ModelLoadError, locate_model

    try:
        ref = locate_model(model)  # a missing path, a half-installed dir, offline and not cached
    except ModelLoadError as err:
        raise GlueError(str(err)) from None
    modules = Path(ref) / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise GlueError(f"{modules}: not valid JSON ({err.msg})") from None
        sub = next((m.get("path", "") for m in entries if str(m.get("type", "")).endswith("Transformer")), None)
        if sub is None:
            raise GlueError(f"{modules}: no Transformer module, so no transformer weights to fine-tune")
        ref = str(Path(ref) / sub) if sub else ref
    elif Path(model).expanduser().exists() and not (Path(ref) / "config.json").is_file():
        raise GlueError(f"{model}: neither a sentence-transformers directory (modules.json) nor an HF one (config.json)")
    return ref


def finetune(
    ref: str,
    data: TaskData,
    *,
    epochs: float = 3.0,
    lr: float = 2e-5,
    batch_size: int = 32,
    max_seq_length: int = 128,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Fine-tune ``AutoModelForSequenceClassification`` from ``ref`` on train, predict eval.

    Returns (labels, predictions, details), labels in the order the Trainer evaluated: with
    length-grouped batches it also reorders the eval set, so the caller must not pair the
    predictions with ``data.eval.labels``.

    Why the HF ``Trainer`` and not a plain loop: its optimiser, schedule and seeding are
    the ``run_glue.py`` protocol people compare against, and it picks GPU/CPU by itself.
    """
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )
    from transformers.utils import logging as hf_logging

    task = data.task
    set_seed(seed)  # before the head is initialised, so the run is reproducible
    tokenizer = AutoTokenizer.from_pretrained(ref)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized weights" warning: recorded in details instead
    try:
        # float32 whatever the checkpoint's dtype: training plain fp16/bf16 weights (no master
        # copy) loses small updates, and transformers 5 would keep a half-precision dtype.
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            ref, num_labels=1 if task.regression else 2, output_loading_info=True, dtype=torch.float32
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    config = model.config
    limit = int(getattr(config, "max_position_embeddings", max_seq_length) or max_seq_length)
    if getattr(config, "model_type", "") in _POSITION_OFFSET_TYPES:
        limit -= 2
    length = min(max_seq_length, limit)

    def encode(split: Split) -> list[dict[str, Any]]:
        columns = [list(c) for c in zip(*split.texts)]
        enc = tokenizer(*columns, truncation=True, max_length=length)
        label_dtype = float if task.regression else int
        return [
            {**{k: enc[k][i] for k in enc.keys()}, "labels": label_dtype(y)} for i, y in enumerate(split.labels)
        ]

    train_rows, eval_rows = encode(data.train), encode(data.eval)
    with tempfile.TemporaryDirectory(prefix="textcl-glue-") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            num_train_epochs=epochs,
            learning_rate=lr,
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=2 * batch_size,
            weight_decay=0.0,
            warmup_steps=0,
            lr_scheduler_type="linear",
            optim="adamw_torch",  # fused AdamW is not on every CPU build
            # Batches of similar length: far less padding, which is most of the cost on CPU.
            train_sampling_strategy="group_by_length",
            seed=seed,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_rows,
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        # With tqdm off the Trainer prints its end-of-training metrics dict; the progress line
        # per run says what matters, and train_loss goes into details.
        trainer.remove_callback(PrinterCallback)
        result = trainer.train()
        output = trainer.predict(eval_rows)
    logits = output.predictions
    logits = np.asarray(logits[0] if isinstance(logits, tuple) else logits)
    preds = logits.reshape(-1) if task.regression else logits.argmax(axis=-1)
    # The Trainer's length-grouped eval sampler shuffles rows: score against the labels it
    # returns, which are in its order. Check they are the eval labels, permuted, and nothing else.
    labels = np.asarray(output.label_ids).reshape(-1)
    expected = np.asarray(data.eval.labels).reshape(-1)
    if labels.shape != expected.shape or not np.allclose(np.sort(labels), np.sort(expected)):
        raise RuntimeError(f"{task.display}: Trainer.predict returned labels that are not the eval labels")
    labels = labels.astype(expected.dtype)
    details = {
        "max_seq_length": length,
        "train_loss": round(float(result.training_loss), 5),
        "steps": int(result.global_step),
        "newly_initialized": sorted(loading.get("missing_keys", [])),
        "device": str(trainer.args.device),
    }
    return labels, preds, details


def seeds_phrase(seeds: Sequence[int]) -> str:
    """"seed 0" for one seed, "the run's seed, one of 0, 1, 2" for several: for protocol lines."""
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"the run's seed, one of {', '.join(map(str, seeds))}"


def finetune_protocol(
    args: argparse.Namespace, details: dict[str, Any], task: Task, seeds: Sequence[int] | None = None
) -> str:
    """How the model was fine-tuned, for the protocol line (``seeds`` defaults to ``[args.seed]``)."""
    kind = "regression (1 output, MSE)" if task.regression else "2-way classification"
    inputs = "sentence pair cross-encoded" if len(task.fields) == 2 else "single sentence"
    seeds = list(seeds) if seeds is not None else [args.seed]
    what = "seed" if len(seeds) == 1 else "seeds"
    sets = "head init, batch order" + (" and train subset" if args.max_train_samples else "")
    return (
        f"fine-tune AutoModelForSequenceClassification ({kind}, {inputs}) with HF Trainer: "
        f"{args.epochs:g} epochs ({details['steps']} optimizer steps), lr {args.lr:g}, batch {args.batch_size or 32}, "
        f"AdamW, linear decay, no warmup, max_seq_length {details['max_seq_length']}, length-grouped batches, "
        f"{what} {', '.join(map(str, seeds))} ({sets})"
    )

