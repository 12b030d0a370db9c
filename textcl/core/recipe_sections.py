"""The recipe sections every method shares (``train:``, ``eval:``, ``hub:``) and the field types
recipes use for files and directories.

:class:`TrainConfig` (optimisation, precision, workers, trackers), :class:`EvalConfig`
with its :class:`EvaluatorConfig` list, and :class:`HubConfig` are the typed sections of
:class:`textcl.core.recipe.Recipe`; a method types its own ``model:``, ``data:`` and
``objective:`` sections, with :data:`InputFile` (an input that must exist; ``hf://``
and ``textcl://data/NAME`` understood) and :data:`OutputDir` (not empty) for its paths.
Every section is strict: an unknown key is an error, reported with the nearest valid
key by :mod:`textcl.core.config_errors`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "EvalConfig",
    "EvaluatorConfig",
    "HubConfig",
    "InputFile",
    "OutputDir",
    "TrainConfig",
    "existing_input",
    "resolve_input_path",
]


def resolve_input_path(value: str | Path) -> Path:
    """``textcl://data/NAME`` -> packaged file; otherwise an expanded local path."""
    from textcl.data import resolve_path

    return resolve_path(str(value))


def existing_input(value: str, *, file_only: bool = False, missing: str | None = None) -> str:
    """A recipe's input path, resolved (:func:`resolve_input_path`) and checked to exist (with
    ``file_only``: to be a file); ``hf://`` names pass as they are. ``ValueError`` (pydantic's
    validator error) with ``missing`` as its message, or a default one, when it is not there."""
    if value.startswith("hf://"):  # a hub dataset: checked when it is loaded
        return value
    try:
        path = resolve_input_path(value)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    if not (path.is_file() if file_only else path.exists()):
        raise ValueError(missing or f"file not found: {value} -- fix the path (relative paths are relative to the working directory)")
    return str(path)


#: A recipe field naming an input file that must exist.
InputFile = Annotated[str, AfterValidator(existing_input)]


def _non_empty_dir(value: str) -> str:
    # Path("") is the working directory: the model would land among the user's files.
    if not value.strip():
        raise ValueError("is empty — set a directory, e.g. runs/my-run")
    return value


#: A recipe field naming an output directory (not empty: that would be the working directory).
OutputDir = Annotated[str, AfterValidator(_non_empty_dir)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


#: pip package of each Accelerate tracker whose package name differs from the tracker's.
_TRACKER_PACKAGES = {"comet_ml": "comet-ml"}


def _tracker_list(value: Any) -> Any:
    # `report_to: tensorboard` reads as a one-item list; `none` (as in transformers) as no tracker.
    if isinstance(value, str):
        return [] if value.strip().lower() == "none" else [value]
    return value


def _tracker(value: str) -> str:
    """An Accelerate tracker name whose package is installed (Accelerate itself would skip a
    missing one with a debug message, and the run would log nowhere)."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    valid = sorted(t.value for t in LoggerType if t != LoggerType.ALL)
    if value not in valid:
        close = difflib.get_close_matches(value, valid, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown tracker — use one of: {', '.join(valid)}{hint}")
    if LoggerType(value) not in get_available_trackers():
        package = _TRACKER_PACKAGES.get(value, value)
        raise ValueError(
            f"the {value} tracker needs the {package!r} package, which is not installed — "
            f"pip install {package}, or remove {value} from train.report_to"
        )
    return value


class TrainConfig(_Strict):
    """Optimisation settings shared by every method."""

    batch_size: int = Field(32, ge=1, description="examples per process per micro-step")
    gradient_accumulation_steps: int = Field(1, ge=1)
    mini_batch_size: int | None = Field(
        None, ge=1,
        description="GradCache: encode each side of a batch in passes of at most this many rows "
        "(no-gradient pass, loss on the whole batch, then a replayed pass with gradient), so an "
        "in-batch contrastive loss sees batch_size x processes examples while activation memory "
        "stays that of one mini-batch; same loss and gradients as without it (dropout replayed), "
        "for about one extra forward pass. Methods implementing embedding_inputs + "
        "loss_from_embeddings only (textcl.core.gradcache); CPU and GPU alike",
    )
    cpu_mmap_threshold: int | None = Field(
        128 * 1024, ge=4096,
        description="GradCache on CPU: bytes at which the first step pins glibc's mmap threshold, so the "
        "freed activations of differently shaped mini-batches go back to the system instead of staying "
        "resident (about half the step's peak memory); null keeps glibc's dynamic threshold, faster "
        "(the pin's cost is measured in docs/benchmarks/speed.md): choose memory or speed",
    )
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    max_minutes: float | None = Field(
        None, gt=0,
        description="wall-clock training budget (evaluation and checkpoint time excluded); "
        "training stops at the first step past it, and with no max_steps the lr schedule "
        "runs on the elapsed fraction of the budget; epochs then only cap it when set explicitly",
    )
    threads: int | None = Field(None, ge=1, description="torch intra-op CPU threads; default: torch's")
    optimizer: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0, lt=1)
    lars_trust_coefficient: float = Field(0.001, gt=0)
    scheduler: Literal["constant", "linear", "cosine"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr / peak lr")
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no",
        description="autocast dtype for forward passes (weights and optimizer stay float32; "
        "info_nce computes its logits in float32). GPU: bf16 on Ampere+ is the fast safe choice; "
        "fp16 adds a dynamic loss scale. CPU: bf16 autocast runs where the CPU has bf16 "
        "instructions (AVX512-BF16/AMX) and is often slower elsewhere; fp16 is for GPUs",
    )
    tf32: bool = Field(
        False,
        description="let CUDA float32 matmuls/convolutions use TF32 tensor cores (Ampere+ GPUs; "
        "~10 mantissa bits in the products, float32 range and accumulation) for the run; "
        "no effect on CPU",
    )
    compile: bool = Field(
        False,
        description="torch.compile the method's encoder(s) in place (Method.compile_modules; for "
        "text the transformer, not the chunk loop). The first steps are slow while it compiles "
        "(and again for new input shapes); GPU: usually faster steps; CPU: needs a C++ compiler "
        "for inductor, and the gain is small",
    )
    log_every_n_steps: int = Field(10, ge=1)
    save_every_n_steps: int | None = Field(None, ge=1)
    keep_last_checkpoints: int = Field(2, ge=1)
    num_workers: int = Field(
        0, ge=0,
        description="DataLoader worker processes building batches (tokenising, collating) "
        "while the model runs; 0 = in the training process. Helps CPU-heavy collate on both CPU "
        "and GPU, but on a few CPU cores workers compete with torch's threads",
    )
    pin_memory: bool | None = Field(
        None,
        description="page-locked host memory for batches, so copies to the GPU are asynchronous "
        "(non_blocking). Default: on when num_workers > 0 and training on CUDA. Ignored on CPU",
    )
    cpu: bool = False
    ddp_find_unused_parameters: bool = False
    report_to: Annotated[list[Annotated[str, AfterValidator(_tracker)]], BeforeValidator(_tracker_list)] = Field(
        default_factory=list,
        description="experiment trackers (Accelerate's: tensorboard, wandb, mlflow, trackio, aim, "
        "comet_ml, clearml, dvclive, swanlab) that get the log.jsonl scalars and eval metrics at the "
        "same steps, plus the resolved recipe as the run config; main process only. Local files go "
        "to output_dir/tracking/ (TensorBoard, Aim; W&B's run dir). Default: none",
    )


def _repo_id(value: str | None) -> str | None:
    if value is None:
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        raise ValueError(
            "not a valid repo id — use 'user-or-org/name': letters, digits, '-', '_', '.', at most 96 characters"
        ) from None
    return value


class HubConfig(_Strict):
    """Upload the finished model to the Hugging Face Hub (``textcl.hub.push_to_hub``).

    The token comes from ``HF_TOKEN`` or ``hf auth login``, never from the recipe: the
    resolved recipe is written into output_dir and uploaded with the model.
    """

    repo_id: Annotated[str | None, AfterValidator(_repo_id)] = Field(
        None, description="'user-or-org/name' (or 'name': the token's user) to upload to at the end "
        "of a successful run, main process only; default: no upload. The repo is created (or "
        "checked) before training starts, so a missing token or network fails then"
    )
    private: bool = Field(False, description="create the repo as private (an existing repo keeps its visibility)")
    commit_message: str | None = Field(None, description="default: 'Upload <method> model trained with textcl'")


class EvaluatorConfig(_Strict):
    """One evaluation callback (``name`` from the evaluator registry)."""

    name: Literal["sts"] = "sts"
    path: InputFile
    prefix: str | None = Field(None, description="metric name prefix; default: the file stem")
    batch_size: int = Field(64, ge=1)


class EvalConfig(_Strict):
    every_n_steps: int | None = Field(None, ge=1)
    before_training: bool = True
    evaluators: list[EvaluatorConfig] = []
