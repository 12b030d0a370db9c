"""Stage 5 of ``python -m textcl.scratch``: masked-LM training of a from-scratch BERT.

``train_mlm`` wraps the start model's transformer in a ``BertForMaskedLM`` head (any
``AutoModelForMaskedLM``), trains it with BERT's 80/10/10 masking, AdamW and linear
warmup/decay over ``mlm.max_steps`` or the ``mlm.max_minutes`` budget, checkpoints (tensors
only) so that a killed stage continues where it stopped, and measures held-out MLM loss and
accuracy on fixed sentences with fixed masks. ``MLMStage`` is the ``mlm:`` section of the
pipeline config (``textcl.scratch.PipelineConfig``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["MLMStage", "train_mlm"]

#: Reads the sentences of a stage's files (``textcl.scratch`` passes its corpus reader).
TextReader = Callable[[Sequence[str]], Iterable[str]]

# The pipeline's logger: the stage logs as the rest of the pipeline does.
logger = logging.getLogger("textcl.scratch")


class MLMStage(BaseModel):
    """Stage 5 (optional, off by default): masked-LM training of base-sgns -> base-mlm."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    enabled: bool = False
    files: list[str] | None = Field(None, description="sentence corpus (one text a line); default: tokenizer.files")
    max_lines: int | None = Field(None, ge=1, description="read at most this many texts")
    max_minutes: float | None = Field(20.0, gt=0, description="training-time budget (evaluations not counted)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (and schedule on them)")
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(64, ge=4, description="tokens per sentence, special tokens included")
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="share of the steps / budget warming up")
    max_grad_norm: float | None = Field(1.0, gt=0)
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    heldout_sentences: int = Field(1000, ge=1, description="fixed held-out sentences, never trained on")
    eval_every_steps: int = Field(500, ge=1)
    checkpoint_every_steps: int = Field(200, ge=1)
    checkpoint_every_minutes: float = Field(5.0, gt=0)
    threads: int | None = Field(2, ge=1, description="torch threads (null: torch's default)")
    seed: int = 0

    @field_validator("files")
    @classmethod
    def _files_exist(cls, files: list[str] | None) -> list[str] | None:
        missing = [f for f in files or [] if not Path(f).expanduser().is_file()]
        if missing:
            raise ValueError(f"file not found: {', '.join(missing)}")
        return files

    @model_validator(mode="after")
    def _bounded(self) -> MLMStage:
        if self.max_minutes is None and self.max_steps is None:
            raise ValueError("set max_minutes or max_steps (or both): the stage needs an end")
        return self


#: Inside the stage's temp dir: the resumable state (``state.pt``: tensors, numbers, lists).
MLM_CHECKPOINT = "checkpoint"
#: Settings a checkpoint must share with the config to be resumed (the others, e.g. the
#: budget, may change between the interrupted run and the resumed one).
_MLM_RESUME_KEYS = ("files", "max_lines", "batch_size", "max_length", "lr", "weight_decay", "warmup_ratio",
                    "max_grad_norm", "mlm_probability", "heldout_sentences", "seed")


def _mlm_split(files: Sequence[str], cfg: MLMStage, read_texts: TextReader) -> tuple[list[str], list[str]]:
    """(training, held-out) sentences: ``heldout_sentences`` lines drawn once from ``seed``."""
    from itertools import islice

    import numpy as np

    texts = list(islice(read_texts(files), cfg.max_lines))
    n_held = min(cfg.heldout_sentences, len(texts) // 10)
    if len(texts) - n_held < cfg.batch_size or n_held < 1:
        raise ValueError(
            f"mlm: {len(texts)} sentences in {', '.join(map(str, files))}; need >= 10 and more than "
            f"mlm.batch_size ({cfg.batch_size}) after holding out {n_held}"
        )
    held = np.zeros(len(texts), dtype=bool)
    held[np.random.default_rng([cfg.seed, 1]).choice(len(texts), n_held, replace=False)] = True
    return [t for t, h in zip(texts, held) if not h], [t for t, h in zip(texts, held) if h]


def _mlm_batch(tokenizer: Any, texts: list[str], cfg: MLMStage, seed: int) -> dict[str, Any]:
    from textcl.objectives._mlm import mask_tokens

    enc = tokenizer(texts, truncation=True, max_length=cfg.max_length, padding=True, return_tensors="pt")
    return mask_tokens({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, tokenizer,
                       cfg.mlm_probability, seed)


def _selected_logits(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """(logits, labels) of the selected tokens only. BERT's head (``model.cls``) runs on those
    rows alone: over a 16k vocabulary the head over every position costs as much as the encoder."""
    selected = batch["labels"] != -100
    head = getattr(model, "cls", None)
    if head is None:  # another architecture: the whole model, then the selected rows
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits[selected], batch["labels"][selected]
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    return head(hidden[selected]), batch["labels"][selected]


def _mlm_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Mean cross-entropy over the selected tokens (a zero term when none is selected)."""
    import torch.nn.functional as F

    logits, labels = _selected_logits(model, batch)
    if labels.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels)


def _mlm_evaluate(model: Any, tokenizer: Any, held: list[str], cfg: MLMStage) -> tuple[float, float]:
    """Held-out (loss, accuracy) over all selected tokens; fixed masks (seed per held-out batch)."""
    import torch
    import torch.nn.functional as F

    from textcl.objectives._mlm import mlm_seed

    was_training = model.training
    model.eval()
    total = correct = count = 0.0
    with torch.no_grad():
        for b, start in enumerate(range(0, len(held), cfg.batch_size)):
            batch = _mlm_batch(tokenizer, held[start : start + cfg.batch_size], cfg, mlm_seed(cfg.seed, 1, 0, b))
            logits, labels = _selected_logits(model, batch)
            if labels.numel() == 0:
                continue
            total += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
            correct += float((logits.argmax(dim=-1) == labels).sum())
            count += int(labels.numel())
    model.train(was_training)
    return (total / count, correct / count) if count else (float("nan"), float("nan"))


def _mlm_lr_scale(progress: float, warmup: float) -> float:
    """Linear warmup over the first ``warmup`` of training, then linear decay to 0."""
    if progress < warmup:
        return progress / warmup
    return max(0.0, (1.0 - progress) / (1.0 - warmup))


def _save_mlm_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """``state.pt`` (``torch.save`` of tensors, numbers, strings and lists only; read back with
    ``weights_only=True``), written to a temporary name and renamed."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".state.pt.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, directory / "state.pt")


def train_mlm(start: str | Path, work_dir: str | Path, cfg: MLMStage, files: Sequence[str], *,
              read_texts: TextReader, resume: bool = True) -> dict[str, Any]:
    """Masked-LM training of the sentence-transformers model ``start``; the trained model is
    saved into ``work_dir`` (same layout as ``start``; the MLM head is not saved) with
    ``mlm_metrics.json``. Returns the metrics. ``read_texts(files)``: the sentences, in order
    (``textcl.scratch.train_mlm`` passes the tokenizer stage's reader).

    A ``BertForMaskedLM`` (any ``AutoModelForMaskedLM``) head, fresh from ``seed``, around the
    start model's transformer; batches of ``batch_size`` training sentences in a per-epoch
    permutation from ``(seed, epoch)``, masked with BERT's 80/10/10 rule from a per-step seed;
    AdamW (no decay on biases and LayerNorm), linear warmup/decay over ``max_steps`` or, without
    it, over the ``max_minutes`` budget (training seconds). Every ``checkpoint_every_steps``
    steps / ``checkpoint_every_minutes`` the model, optimizer, step, training seconds, torch RNG
    state and curve go to ``work_dir/checkpoint/state.pt``; with ``resume`` a run finds it and
    continues from there (with one thread, bitwise as if never stopped).
    """
    import numpy as np
    import torch

    from textcl.core.io import atomic_write_json
    from textcl.encoders import TextEncoder
    from textcl.objectives._mlm import mlm_around, mlm_seed

    work = Path(work_dir)
    ckpt_dir = work / MLM_CHECKPOINT
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        encoder = TextEncoder.from_pretrained(str(start))
        tokenizer = encoder.tokenizer
        train_texts, held = _mlm_split(files, cfg, read_texts)
        torch.manual_seed(cfg.seed)  # the head's init and the dropout stream
        model = mlm_around(encoder.transformer)
        model.train()
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        no_decay = [p for n, p in params if p.dim() < 2]
        decay = [p for n, p in params if p.dim() >= 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
        )
        settings = {k: getattr(cfg, k) for k in _MLM_RESUME_KEYS}
        settings["files"] = [str(f) for f in files]
        step, train_seconds, curve = 0, 0.0, []
        state_file = ckpt_dir / "state.pt"
        if resume and state_file.is_file():
            state = torch.load(state_file, weights_only=True)
            if json.loads(state["settings"]) != json.loads(json.dumps(settings)):
                logger.warning("base-mlm: the checkpoint in %s was made with other settings; starting over", ckpt_dir)
            else:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                step, train_seconds = int(state["step"]), float(state["train_seconds"])
                curve = [dict(zip(("step", "train_seconds", "heldout_loss", "heldout_accuracy"), row))
                         for row in state["curve"].tolist()]
                for row in curve:
                    row["step"] = int(row["step"])
                torch.set_rng_state(state["rng"])
                logger.info("base-mlm: resuming at step %d (%.0f s trained)", step, train_seconds)
        elif not resume:
            shutil.rmtree(ckpt_dir, ignore_errors=True)

        def record() -> None:
            loss, acc = _mlm_evaluate(model, tokenizer, held, cfg)
            curve.append({"step": step, "train_seconds": train_seconds, "heldout_loss": loss, "heldout_accuracy": acc})
            logger.info("base-mlm: step %d, %.0f s: held-out MLM loss %.4f, accuracy %.4f", step, train_seconds, loss, acc)

        def checkpoint() -> None:
            rows = [[r["step"], r["train_seconds"], r["heldout_loss"], r["heldout_accuracy"]] for r in curve]
            _save_mlm_checkpoint(ckpt_dir, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "train_seconds": train_seconds, "rng": torch.get_rng_state(),
                "curve": torch.tensor(rows, dtype=torch.float64).reshape(-1, 4), "settings": json.dumps(settings),
            })

        if not curve:
            record()  # before any training
        budget = cfg.max_minutes * 60 if cfg.max_minutes else None
        steps_per_epoch = len(train_texts) // cfg.batch_size
        last_ckpt = time.perf_counter()
        stopped_by = None
        order: Any = None
        order_epoch = -1
        while True:
            if cfg.max_steps is not None and step >= cfg.max_steps:
                stopped_by = "max_steps"
                break
            if budget is not None and train_seconds >= budget:
                stopped_by = "max_minutes"
                break
            t0 = time.perf_counter()
            epoch, k = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = np.random.default_rng([cfg.seed, 2, epoch]).permutation(len(train_texts)), epoch
            texts = [train_texts[i] for i in order[k * cfg.batch_size : (k + 1) * cfg.batch_size]]
            batch = _mlm_batch(tokenizer, texts, cfg, mlm_seed(cfg.seed, 0, 0, step))
            progress = step / cfg.max_steps if cfg.max_steps is not None else train_seconds / budget  # type: ignore[operator]
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * _mlm_lr_scale(progress, cfg.warmup_ratio)
            loss = _mlm_loss(model, batch)
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            train_seconds += time.perf_counter() - t0
            if step % cfg.eval_every_steps == 0:
                record()
            if step % cfg.checkpoint_every_steps == 0 or time.perf_counter() - last_ckpt >= 60 * cfg.checkpoint_every_minutes:
                checkpoint()
                last_ckpt = time.perf_counter()
        if curve[-1]["step"] != step:
            record()  # at the end
        from textcl.card import portable_path

        # mlm_metrics.json goes with the model: the start model and corpus named portably.
        config = cfg.model_dump(mode="json")
        if config.get("files"):
            config["files"] = [portable_path(f) for f in config["files"]]
        metrics = {
            "start": _start_name(start), "steps": step, "train_seconds": train_seconds, "stopped_by": stopped_by,
            "train_sentences": len(train_texts), "heldout_sentences": len(held),
            "heldout_loss": curve[-1]["heldout_loss"], "heldout_accuracy": curve[-1]["heldout_accuracy"],
            "config": config, "curve": curve,
        }
        # The encoder wraps the trained transformer: save as start was saved, without the head.
        encoder.save(work, model_card=_mlm_card(start, metrics))
        atomic_write_json(work / "mlm_metrics.json", metrics)
        for name in ("scratch.json", "embedding_init.json"):
            if (Path(start) / name).is_file():
                shutil.copy(Path(start) / name, work / name)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # only needed to resume
        return metrics
    finally:
        torch.set_num_threads(previous_threads)


def _start_name(start: str | Path) -> str:
    """The start model as a card names it: a local one portably (name and counts), a hub id as it is."""
    from textcl.card import portable_card_info

    return str(portable_card_info({"base_model": str(start)})["base_model"])


def _mlm_card(start: str | Path, m: dict[str, Any]) -> str:
    """The card of base-mlm; the start model named portably (:func:`_start_name`)."""
    from textcl.card import portable_text

    c = m["config"]
    return portable_text("\n".join([
        "# Small BERT from scratch + masked-LM training (textcl)",
        "",
        f"`{_start_name(start)}` trained with BERT's masked-LM objective ({c['mlm_probability']:.0%} of tokens, 80/10/10) "
        f"for {m['steps']} steps ({m['train_seconds'] / 60:.1f} min) of {c['batch_size']} sentences "
        f"(at most {c['max_length']} tokens), AdamW lr {c['lr']:g}, linear warmup/decay, on "
        f"{m['train_sentences']} sentences. Held-out MLM loss {m['curve'][0]['heldout_loss']:.3f} -> "
        f"{m['heldout_loss']:.3f}, accuracy {m['curve'][0]['heldout_accuracy']:.3f} -> "
        f"{m['heldout_accuracy']:.3f} ({m['heldout_sentences']} held-out sentences, fixed masks). "
        "The MLM head is not part of this model. Built by `python -m textcl.scratch --set mlm.enabled=true`.",
        "",
    ]))
