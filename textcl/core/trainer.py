"""The one training loop of textcl, on Hugging Face Accelerate.

It knows no objective by name: a ``Method`` supplies data, loss and hooks. It owns
optimisation (AdamW / SGD / LARS, warmup + decay, AMP, gradient accumulation,
clipping), determinism (seeding; per-epoch data order from the seed), logging
(tqdm, ``log.jsonl``, and ``train.report_to``'s experiment trackers through Accelerate),
evaluation callbacks, crash-safe checkpoints and resume.

Data order and sharding are done here rather than by ``accelerator.prepare``: every
micro-step has a *global* batch of ``batch_size x world_size`` indices drawn from a
permutation seeded by (seed, epoch); rank r takes the r-th contiguous slice. So the
gathered batch of N processes equals the batch of one process with N times the
batch size (the multi-process equivalence the tests check), and resuming mid-epoch
just slices the index list instead of loading and discarding batches.

With ``train.mini_batch_size`` every micro-step of an in-batch method is a GradCache step
(``textcl.core.gradcache``): the method's forward is not called through the DDP wrapper;
GradCache runs backward itself and averages gradients over processes on the last
micro-step of each optimizer step.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from textcl.core import checkpoint
from textcl.core.checkpoint import CheckpointError, LogWindow
from textcl.core.gradcache import GradCache, supports_gradcache
from textcl.core.method import Method
from textcl.core.optim import build_optimizer, lr_lambda
from textcl.core.recipe import RecipeError, TrainConfig, flat_config

__all__ = [
    "TRACKING_DIR", "CheckpointError", "NonFiniteLossError", "Trainer", "TrainerState", "TrainingDataError",
]

logger = logging.getLogger("textcl")

Evaluator = Callable[[Method], dict[str, float]]


#: Resolution of the time-based lr schedule (fraction of train.max_minutes).
_TIME_TICKS = 100_000
#: Epoch cap of a time-budgeted run that sets neither epochs nor max_steps.
_UNBOUNDED_EPOCHS = 1_000_000
#: Subdirectory of output_dir for the trackers' local files (``train.report_to``).
TRACKING_DIR = "tracking"


class NonFiniteLossError(RuntimeError):
    """Raised when the loss is NaN/inf; parameters are left at the last good step."""


class TrainingDataError(ValueError):
    """The training data cannot fill a single batch."""


def _reset_single_process_accelerate_state() -> None:
    """Let a second Trainer in one process use another precision/device (notebooks, tests).

    Accelerate keeps process-wide state and refuses a new ``mixed_precision`` once it is
    set. In a single process nothing else depends on it, so it is reset; under a
    distributed launch it stays, since it holds the process group.
    """
    from accelerate.state import AcceleratorState, PartialState

    if PartialState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)


def _accelerator_device() -> bool:
    """Whether torch sees a GPU-like device. Without one, Accelerate must be given
    ``cpu=True``: otherwise, under ``torchrun``, it finds no backend for the processes and
    each trains alone as rank 0 (``DistributedType.NO``), all writing the same output_dir."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


@dataclass
class TrainerState:
    """Position in training; checkpointed with the model, optimizer, scheduler and RNG."""

    step: int = 0  # completed optimizer steps
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    train_seconds: float = 0.0  # wall-clock spent in training steps (for train.max_minutes)

    def state_dict(self) -> dict[str, float]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, float]) -> None:
        for key, value in state.items():
            setattr(self, key, type(getattr(self, key, 0))(value))


class _IndexBatches(torch.utils.data.Sampler[list[int]]):
    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __iter__(self) -> Iterable[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Trainer:
    """Train a ``Method`` on its ``train_dataset()``.

    Args:
        method: the method (encoders, heads, loss, hooks).
        config: the recipe's ``train`` section.
        output_dir: where ``log.jsonl`` and ``checkpoints/`` go.
        seed: seeds torch/numpy/random and the data order.
        evaluators: name -> callable(method) -> metrics, run every
            ``eval_every_n_steps`` and at the end (prefixed by nothing: callables
            name their metrics).
        callbacks: objects with optional ``on_step_end(trainer)`` (called after
            logging, checkpointing and evaluation of a step).
        accelerator: an Accelerator to use instead of building one (its own ``log_with``
            then decides the trackers).
        run_config: the resolved recipe, stored by the trackers as the run's config
            (flattened to dotted keys); default: the ``train`` section.
    """

    def __init__(
        self,
        method: Method,
        config: TrainConfig,
        output_dir: str | Path,
        *,
        seed: int = 42,
        evaluators: dict[str, Evaluator] | None = None,
        eval_every_n_steps: int | None = None,
        callbacks: Iterable[Any] = (),
        accelerator: Any = None,
        run_config: dict[str, Any] | None = None,
    ):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        self.method = method
        self.config = config
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.seed = seed
        self.evaluators = dict(evaluators or {})
        self.eval_every_n_steps = eval_every_n_steps
        self.callbacks = list(callbacks)
        self.run_config = run_config
        if accelerator is None:
            _reset_single_process_accelerate_state()
        self.accelerator = accelerator or Accelerator(
            mixed_precision=config.mixed_precision,
            cpu=config.cpu or not _accelerator_device(),
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=config.ddp_find_unused_parameters)
            ],
            log_with=list(config.report_to) or None,
            project_config=ProjectConfiguration(logging_dir=str(self.output_dir / TRACKING_DIR)),
        )
        self._tracking = False
        self.state = TrainerState()
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        self._progress: Any = None

    # ------------------------------------------------------------------ helpers
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _epoch_batches(self, n: int, epoch: int) -> list[list[int]]:
        """This rank's micro-batches for ``epoch`` (drop-last, equal sizes on every rank)."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        b = self.config.batch_size
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        n_micro = (n // (b * world)) // self.config.gradient_accumulation_steps
        n_micro *= self.config.gradient_accumulation_steps
        out = []
        for j in range(n_micro):
            start = j * b * world + rank * b
            out.append(perm[start : start + b])
        return out

    def _save_checkpoint(self) -> None:
        """Pickle-free checkpoint with a manifest (``textcl.core.checkpoint``)."""
        final = self.checkpoint_dir / f"step_{self.state.step:08d}"
        checkpoint.save(
            self.accelerator, final, model=self.method, optimizer=self.optimizer, scheduler=self.scheduler,
            position=self.state.state_dict(), loader_state=self._loader_epoch_state, window=self._window,
            keep=self.config.keep_last_checkpoints,
        )
        self.last_checkpoint = final

    def _resume(self) -> None:
        """Restore the newest intact checkpoint (a corrupted newer one is skipped with a warning)."""
        path = checkpoint.find_intact(self.checkpoint_dir, warn=self.is_main)
        if path is None:
            logger.warning("--resume: no checkpoint in %s; starting from scratch", self.checkpoint_dir)
            return
        back = checkpoint.load(self.accelerator, path, model=self.method, optimizer=self.optimizer,
                               scheduler=self.scheduler)
        self.state.load_state_dict(back.position)
        self._loader_epoch_state, self._window, self.last_checkpoint = back.loader_state, back.window, path
        if self.is_main:  # drop log lines of the steps the resumed run will redo
            checkpoint.truncate_log(self.output_dir / "log.jsonl", self.state.step)
        logger.info("resumed from %s (step %d)", path, self.state.step)

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.is_main:
            with open(self.output_dir / "log.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            if self._tracking:
                scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
                self.accelerator.log(scalars, step=record["step"])

    def _start_tracking(self) -> None:
        """Open ``train.report_to``'s trackers (main process only, as Accelerate's are).

        The project is named after output_dir; the run config is the flattened recipe.
        TensorBoard purges the events of earlier runs in the same directory from the first
        step this run logs on, as ``log.jsonl`` drops those lines (resume: the steps past the
        checkpoint; a fresh run: all), so both show each step once.
        """
        acc = self.accelerator
        if not getattr(acc, "log_with", None) or not self.is_main:
            return
        tracking = self.output_dir / TRACKING_DIR
        tracking.mkdir(parents=True, exist_ok=True)
        init_kwargs = {"tensorboard": {"purge_step": self.state.step + 1}, "wandb": {"dir": str(tracking)}}
        config = self.run_config if self.run_config is not None else {"train": self.config.model_dump(mode="json")}
        acc.init_trackers(self.output_dir.resolve().name, config=flat_config(config), init_kwargs=init_kwargs)
        self._tracking = True

    def _end_tracking(self) -> None:
        """Close the trackers: the trackers' half of ``accelerator.end_training()``, whose
        other half (destroying the process group) would break the barriers that come
        after training (saving the model, a second fit)."""
        if not self._tracking:
            return
        self._tracking = False
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers = []

    def evaluate(self) -> dict[str, float]:
        """Run the method's own ``evaluate`` and every evaluator (main process)."""
        metrics: dict[str, float] = {}
        if self.is_main:
            was_training = self.method.training
            self.method.eval()
            with torch.no_grad():
                metrics.update(self.method.evaluate())
                for fn in self.evaluators.values():
                    metrics.update(fn(self.method))
            self.method.train(was_training)
        self.accelerator.wait_for_everyone()
        return metrics

    # ------------------------------------------------------------------ training
    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train to ``max_steps`` (or ``epochs``); returns the final evaluation metrics."""
        # TF32 is a process-wide switch: set for this run only, restored afterwards.
        try:
            with _tf32(self.config.tf32):
                return self._fit(resume)
        finally:
            # Closed before an exception propagates: its message (the CLI prints it) then
            # stands on its own line instead of inside the bar, which tqdm would redraw.
            if self._progress is not None:
                self._progress.close()
                self._progress = None
            # Also after an error: the tracker keeps the steps logged up to it.
            self._end_tracking()

    def _gradcache(self) -> GradCache | None:
        """The GradCache runner for ``train.mini_batch_size`` (None without it)."""
        cfg, acc = self.config, self.accelerator
        if cfg.mini_batch_size is None:
            return None
        name = type(self.method).__name__
        if not supports_gradcache(self.method):
            raise RecipeError(
                f"train.mini_batch_size: method {self.method.name or name!r} does not implement the GradCache "
                "protocol (embedding_inputs + loss_from_embeddings, see textcl.core.gradcache); remove "
                "train.mini_batch_size"
            )
        if getattr(self.method, "updates_in_forward", False):
            raise RecipeError(f"train.mini_batch_size: {name} applies its update in forward; remove train.mini_batch_size")
        if acc.distributed_type.name in ("DEEPSPEED", "FSDP", "MEGATRON_LM", "XLA"):
            raise RecipeError(
                f"train.mini_batch_size: GradCache runs single-process or under DDP, not under "
                f"{acc.distributed_type.name}; remove train.mini_batch_size or launch with plain DDP"
            )
        return GradCache(self.method, cfg.mini_batch_size, autocast=acc.autocast, backward=acc.backward)

    def _fit(self, resume: bool) -> dict[str, float]:
        from accelerate.utils import send_to_device, set_seed

        from textcl.core.distributed import rank_seed

        cfg, acc = self.config, self.accelerator
        # Per-rank global RNGs (dropout masks differ across ranks; rank 0 keeps the seed). The
        # model was built before, from the same seed on every rank. See core/distributed.py.
        set_seed(rank_seed(self.seed, acc.process_index))
        if self.is_main:  # only rank 0 writes into output_dir (the others' first write is after a barrier)
            self.output_dir.mkdir(parents=True, exist_ok=True)

        dataset: Dataset = self.method.train_dataset()
        n = len(dataset)  # type: ignore[arg-type]
        global_batch = cfg.batch_size * acc.num_processes * cfg.gradient_accumulation_steps
        steps_per_epoch = (n // (cfg.batch_size * acc.num_processes)) // cfg.gradient_accumulation_steps
        if steps_per_epoch == 0:
            raise TrainingDataError(
                f"the training data has {n} examples, fewer than one optimizer step needs "
                f"(batch_size {cfg.batch_size} x {acc.num_processes} processes x "
                f"gradient_accumulation_steps {cfg.gradient_accumulation_steps} = {global_batch}); "
                "add data or lower train.batch_size"
            )
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        budget = cfg.max_minutes * 60 if cfg.max_minutes else None
        epochs = cfg.epochs
        if budget is not None and cfg.max_steps is None and "epochs" not in cfg.model_fields_set:
            # A time budget without an explicit epoch count means "train for that long":
            # the default of 1 epoch must not end a small corpus's run after a minute.
            epochs = _UNBOUNDED_EPOCHS
        max_steps = cfg.max_steps or epochs * steps_per_epoch
        # A time budget without max_steps: the schedule runs on the elapsed fraction of
        # the budget, so warmup and decay fit whatever number of steps the budget allows
        # (epochs cap it only when the recipe sets them).
        self._time_schedule = budget is not None and cfg.max_steps is None
        warmup = cfg.warmup_steps or int(round(cfg.warmup_ratio * max_steps))

        cache = self._gradcache()
        if cfg.compile:
            for module in self.method.compile_modules():
                module.compile()
        optimizer = self.method.configure_optimizer(cfg)
        if optimizer is None:
            optimizer = build_optimizer(self.method.parameter_groups(cfg.weight_decay), cfg)
        if self._time_schedule:
            assert budget is not None
            by_time = lr_lambda(cfg.scheduler, _TIME_TICKS, int(round(cfg.warmup_ratio * _TIME_TICKS)), cfg.min_lr_ratio)

            def factor(_: int) -> float:
                tick = min(_TIME_TICKS, int(self.state.train_seconds / budget * _TIME_TICKS))
                warm = min(1.0, (self.state.step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
                return warm * by_time(tick)

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lr_lambda(cfg.scheduler, max_steps, warmup, cfg.min_lr_ratio)
            )
        model, optimizer = acc.prepare(self.method, optimizer)
        self.optimizer, self.scheduler, self.model = optimizer, scheduler, model
        if cfg.save_every_n_steps or resume:
            checkpoint.check_supported(acc)
        # A dedicated generator for the DataLoader: creating an iterator must not consume
        # the global torch RNG, or a resumed run's dropout masks would diverge. Its state at
        # the start of the epoch is checkpointed (worker seeds are drawn from it).
        loader_gen = torch.Generator().manual_seed(self.seed)
        self._loader_epoch_state = loader_gen.get_state()
        self._window = LogWindow(start=time.perf_counter())

        if resume:
            self._resume()
            loader_gen.set_state(self._loader_epoch_state)
        elif self.is_main and (self.output_dir / "log.jsonl").exists():
            (self.output_dir / "log.jsonl").unlink()
        self._start_tracking()

        self.method.on_train_start(self)
        model.train()
        accum = cfg.gradient_accumulation_steps
        # A method whose forward applies its own update: no backward / clipping / step.
        manual = bool(getattr(self.method, "updates_in_forward", False))
        progress = None
        if self.is_main:
            from tqdm.auto import tqdm

            progress = self._progress = tqdm(
                total=None if self._time_schedule else max_steps, initial=self.state.step,
                desc="train", unit="step", dynamic_ncols=True,
            )

        def check_finite(loss: torch.Tensor) -> None:
            finite = torch.tensor(float(torch.isfinite(loss.detach()).all()), device=acc.device)
            if acc.num_processes > 1:
                finite = acc.reduce(finite, reduction="sum") / acc.num_processes
            if finite.item() < 1.0:
                self._non_finite(loss, applied=manual)

        win = self._window

        def finished() -> bool:
            over = budget is not None and self.state.train_seconds >= budget
            return self.state.step >= max_steps or over

        while not finished():
            epoch = self.state.epoch
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            self.method.on_epoch_start(epoch)
            batches = self._epoch_batches(n, epoch)[self.state.batch_in_epoch :]
            pin = cfg.pin_memory if cfg.pin_memory is not None else cfg.num_workers > 0
            pin = pin and acc.device.type == "cuda"  # pinned host memory only helps copies to a GPU
            self._loader_epoch_state = loader_gen.get_state()
            loader = DataLoader(
                dataset,
                batch_sampler=_IndexBatches(batches),
                collate_fn=self.method.collate,
                num_workers=cfg.num_workers,
                generator=loader_gen,
                pin_memory=pin,
            )
            it = iter(loader)
            for _ in range(len(batches) // accum):
                if finished():
                    break
                step_start = time.perf_counter()
                step_metrics: dict[str, float] = {}
                examples = 0
                for micro in range(accum):
                    batch = send_to_device(next(it), acc.device, non_blocking=pin)
                    examples += self.method.examples_in(batch)
                    sync = micro == accum - 1
                    with nullcontext() if sync else acc.no_sync(model):
                        if cache is not None:
                            # GradCache does its own backward (and, on the last micro-step,
                            # the cross-process gradient average); see core/gradcache.py.
                            out = cache.step(batch, accumulation_steps=accum, sync_gradients=sync,
                                             check_loss=check_finite)
                        else:
                            out = model(batch)
                            check_finite(out["loss"])
                            if not manual:
                                acc.backward(out["loss"] / accum)
                    for key, value in out.items():
                        v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
                        step_metrics[key] = step_metrics.get(key, 0.0) + v / accum
                    self.state.batch_in_epoch += 1
                self.method.before_optimizer_step(self.state.step)
                if not manual and cfg.max_grad_norm is not None and acc.sync_gradients:
                    grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    if grad_norm is not None:
                        step_metrics["grad_norm"] = float(grad_norm)
                lr = scheduler.get_last_lr()[0]
                if not manual:
                    optimizer.step()
                # Count this step's time before scheduler.step(): a time-based schedule
                # sets the next step's lr from the training time elapsed so far.
                now = time.perf_counter()
                self.state.train_seconds += now - step_start
                step_start = now
                if not manual:
                    scheduler.step()
                else:
                    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
                        warnings.simplefilter("ignore", UserWarning)
                        scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                self.state.step += 1
                self.method.after_optimizer_step(self.state.step)
                self.state.train_seconds += time.perf_counter() - step_start
                if budget is not None and acc.num_processes > 1:
                    # Ranks must agree on when the budget ends, or one would wait forever.
                    secs = torch.tensor(self.state.train_seconds, device=acc.device, dtype=torch.float64)
                    self.state.train_seconds = float(acc.reduce(secs, reduction="max"))
                done = finished()

                for key, value in step_metrics.items():
                    win.sums[key] = win.sums.get(key, 0.0) + value
                win.steps += 1
                win.examples += examples * acc.num_processes
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{step_metrics['loss']:.4f}", lr=f"{lr:.2e}")

                step = self.state.step
                if step % cfg.log_every_n_steps == 0 or done:
                    elapsed = time.perf_counter() - win.start
                    record = {"step": step, "epoch": epoch, "lr": lr, "train_seconds": self.state.train_seconds}
                    for key, value in win.sums.items():
                        mean = torch.tensor(value / win.steps, device=acc.device)
                        if acc.num_processes > 1:
                            mean = acc.reduce(mean, reduction="mean")
                        record[key] = float(mean)
                    record["examples_per_sec"] = win.examples / max(elapsed, 1e-9)
                    self._log(record)
                    win = self._window = LogWindow(start=time.perf_counter())
                if cfg.save_every_n_steps and (step % cfg.save_every_n_steps == 0 or done):
                    self._save_checkpoint()
                if self.eval_every_n_steps and step % self.eval_every_n_steps == 0 and not done:
                    metrics = self.evaluate()
                    if metrics:
                        self._log({"step": step, "train_seconds": self.state.train_seconds,
                                   **{f"eval/{k}": v for k, v in metrics.items()}})
                for cb in self.callbacks:
                    if hasattr(cb, "on_step_end"):
                        cb.on_step_end(self)
            else:
                # Epoch's batches exhausted: move to the next epoch.
                self.method.on_epoch_end(epoch)
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                continue
            break  # max_steps or the time budget reached inside the epoch

        if progress is not None:
            progress.close()
            self._progress = None
        model.eval()
        metrics = self.evaluate()
        if metrics:
            self._log({"step": self.state.step, "train_seconds": self.state.train_seconds,
                       **{f"eval/{k}": v for k, v in metrics.items()}})
        return metrics

    def _non_finite(self, loss: torch.Tensor, applied: bool = False) -> None:
        where = (
            f"the last good checkpoint is {self.last_checkpoint}"
            if self.last_checkpoint
            else "no checkpoint was written yet (set train.save_every_n_steps)"
        )
        # A method that updates in forward has already applied this step's update.
        when = "after the method applied its update" if applied else "before the update"
        raise NonFiniteLossError(
            f"non-finite loss ({float(loss.detach())}) at step {self.state.step + 1}; training stopped "
            f"{when}, {where}. Try a lower train.lr, train.max_grad_norm, or "
            f"train.mixed_precision: no."
        )


class _tf32:
    """Context: ``train.tf32`` lets CUDA float32 matmuls and convolutions use TF32 tensor
    cores (Ampere and later); restores the previous flags. No effect on CPU."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self) -> None:
        if self.enabled:
            # The legacy flags, not torch.backends.*.fp32_precision: mixing the two APIs
            # makes torch.get_float32_matmul_precision() raise in torch >= 2.9.
            self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved
