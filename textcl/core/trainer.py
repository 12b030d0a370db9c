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

Reading order: ``fit`` -> ``_setup`` (seeds, data, run length, optimizer and scheduler,
resume, trackers, progress bar) -> ``_train_epoch`` -> ``_train_step`` (``_forward_backward``
per micro-batch, clipping, ``_optimizer_step``) -> ``_after_step`` (log record, checkpoint,
evaluation, callbacks) -> ``_finish``. The run's length and lr schedule are in
``textcl.core.schedule``, what it reports (bar, log window, ``log.jsonl``, trackers) in
``textcl.core.runlog``, the GradCache checks in ``textcl.core.gradcache``.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from textcl.core import checkpoint
from textcl.core.checkpoint import CheckpointError, LogWindow
from textcl.core.device import accelerator_device, allow_tf32, reset_single_process_accelerate_state
from textcl.core.gradcache import GradCache, gradcache_for_training
from textcl.core.method import Method
from textcl.core.optim import build_optimizer
from textcl.core.recipe import TrainConfig
from textcl.core.runlog import TRACKING_DIR, RunLog
from textcl.core.schedule import RunLength, build_scheduler

__all__ = [
    "TRACKING_DIR", "CheckpointError", "NonFiniteLossError", "Trainer", "TrainerState", "TrainingDataError",
]

logger = logging.getLogger("textcl")

Evaluator = Callable[[Method], dict[str, float]]


class NonFiniteLossError(RuntimeError):
    """Raised when the loss is NaN/inf; parameters are left at the last good step."""


class TrainingDataError(ValueError):
    """The training data cannot fill a single batch."""


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


class _EpochBatches:
    """This rank's micro-batches of one epoch, cut from the permutation tensor when asked:
    as Python lists, a 6M-example epoch's indices alone would hold ~280 MiB."""

    def __init__(self, perm: torch.Tensor, starts: range, size: int):
        self.perm, self.starts, self.size = perm, starts, size

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return _EpochBatches(self.perm, self.starts[i], self.size)
        start = self.starts[i]
        return self.perm[start : start + self.size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return (self[i] for i in range(len(self)))


class _IndexBatches(torch.utils.data.Sampler[list[int]]):
    def __init__(self, batches: _EpochBatches):
        self.batches = batches

    def __iter__(self) -> Iterable[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass
class _FitRun:
    """What ``Trainer._setup`` prepares for one ``fit``."""

    dataset: Dataset
    n: int  # examples in the dataset
    length: RunLength  # when the run ends
    cache: GradCache | None  # train.mini_batch_size: every micro-step is a GradCache step
    manual: bool  # the method applies its update in forward: no backward / clipping / step
    pin: bool  # pinned host memory for the loader (and non-blocking copies)
    loader_gen: torch.Generator  # the DataLoader's own generator (its state checkpointed per epoch)


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
            reset_single_process_accelerate_state()
        self.accelerator = accelerator or Accelerator(
            mixed_precision=config.mixed_precision,
            cpu=config.cpu or not accelerator_device(),
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=config.ddp_find_unused_parameters)
            ],
            log_with=list(config.report_to) or None,
            project_config=ProjectConfiguration(logging_dir=str(self.output_dir / TRACKING_DIR)),
        )
        self.state = TrainerState()
        self.last_checkpoint: Path | None = None
        self._runlog = RunLog(self.accelerator, self.output_dir)  # history, log.jsonl, trackers, bar
        self._run: _FitRun | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def history(self) -> list[dict[str, Any]]:
        """The records this trainer wrote to ``log.jsonl`` (kept on every process)."""
        return self._runlog.history

    def _epoch_batches(self, n: int, epoch: int) -> _EpochBatches:
        """This rank's micro-batches for ``epoch`` (drop-last, equal sizes on every rank)."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        b = self.config.batch_size
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        n_micro = (n // (b * world)) // self.config.gradient_accumulation_steps
        n_micro *= self.config.gradient_accumulation_steps
        return _EpochBatches(perm, range(rank * b, n_micro * b * world, b * world), b)

    def _save_checkpoint(self) -> None:
        """Pickle-free checkpoint with a manifest (``textcl.core.checkpoint``)."""
        final = self.checkpoint_dir / f"step_{self.state.step:08d}"
        checkpoint.save(
            self.accelerator, final, model=self.method, optimizer=self.optimizer, scheduler=self.scheduler,
            position=self.state.state_dict(), loader_state=self._loader_epoch_state, window=self._runlog.window,
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
        self._loader_epoch_state, self._runlog.window, self.last_checkpoint = back.loader_state, back.window, path
        if self.is_main:  # drop log lines of the steps the resumed run will redo
            checkpoint.truncate_log(self.output_dir / "log.jsonl", self.state.step)
        logger.info("resumed from %s (step %d)", path, self.state.step)

    def _log(self, record: dict[str, Any]) -> None:
        self._runlog.write(record)

    def _log_eval(self, metrics: dict[str, float]) -> None:
        if metrics:
            self._log({"step": self.state.step, "train_seconds": self.state.train_seconds,
                       **{f"eval/{k}": v for k, v in metrics.items()}})

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
            with allow_tf32(self.config.tf32):
                return self._fit(resume)
        finally:
            # Closed before an exception propagates: its message (the CLI prints it) then
            # stands on its own line instead of inside the bar, which tqdm would redraw.
            self._runlog.close_progress()
            # Also after an error: the tracker keeps the steps logged up to it.
            self._runlog.end_tracking()
            self._run = None  # the run's data and GradCache are not kept past fit

    def _fit(self, resume: bool) -> dict[str, float]:
        run = self._run = self._setup(resume)
        while not run.length.reached(self.state):
            if not self._train_epoch(run):
                break  # max_steps or the time budget reached inside the epoch
        return self._finish()

    # ---- setup
    def _setup(self, resume: bool) -> _FitRun:
        """Seeds, data, run length, optimizer + scheduler, resume, trackers, progress bar."""
        from accelerate.utils import set_seed

        from textcl.core.distributed import rank_seed

        cfg, acc = self.config, self.accelerator
        # Per-rank global RNGs (dropout masks differ across ranks; rank 0 keeps the seed). The
        # model was built before, from the same seed on every rank. See core/distributed.py.
        set_seed(rank_seed(self.seed, acc.process_index))
        if self.is_main:  # only rank 0 writes into output_dir (the others' first write is after a barrier)
            self.output_dir.mkdir(parents=True, exist_ok=True)

        dataset: Dataset = self.method.train_dataset()
        n = len(dataset)  # type: ignore[arg-type]
        length = RunLength.of(cfg, self._steps_per_epoch(n))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        cache = None
        if cfg.mini_batch_size is not None:
            cache = gradcache_for_training(self.method, cfg.mini_batch_size, acc, cfg.cpu_mmap_threshold)
        self._prepare_optimization(length, resume)
        # A dedicated generator for the DataLoader: creating an iterator must not consume
        # the global torch RNG, or a resumed run's dropout masks would diverge. Its state at
        # the start of the epoch is checkpointed (worker seeds are drawn from it).
        loader_gen = torch.Generator().manual_seed(self.seed)
        self._loader_epoch_state = loader_gen.get_state()
        self._runlog.window = LogWindow(start=time.perf_counter())
        if resume:
            self._resume()
            loader_gen.set_state(self._loader_epoch_state)
        elif self.is_main and (self.output_dir / "log.jsonl").exists():
            (self.output_dir / "log.jsonl").unlink()
        run_config = self.run_config if self.run_config is not None else {"train": cfg.model_dump(mode="json")}
        self._runlog.start_tracking(self.state.step, run_config)

        self.method.on_train_start(self)
        self.model.train()
        # A method whose forward applies its own update: no backward / clipping / step.
        manual = bool(getattr(self.method, "updates_in_forward", False))
        pin = cfg.pin_memory if cfg.pin_memory is not None else cfg.num_workers > 0
        pin = pin and acc.device.type == "cuda"  # pinned host memory only helps copies to a GPU
        self._runlog.open_progress(None if length.by_time else length.max_steps, self.state.step)
        return _FitRun(dataset, n, length, cache, manual, pin, loader_gen)

    def _steps_per_epoch(self, n: int) -> int:
        """Optimizer steps in an epoch of ``n`` examples; ``TrainingDataError`` when none."""
        cfg, world = self.config, self.accelerator.num_processes
        global_batch = cfg.batch_size * world * cfg.gradient_accumulation_steps
        steps = (n // (cfg.batch_size * world)) // cfg.gradient_accumulation_steps
        if steps == 0:
            raise TrainingDataError(
                f"the training data has {n} examples, fewer than one optimizer step needs "
                f"(batch_size {cfg.batch_size} x {world} processes x "
                f"gradient_accumulation_steps {cfg.gradient_accumulation_steps} = {global_batch}); "
                "add data or lower train.batch_size"
            )
        return steps

    def _prepare_optimization(self, length: RunLength, resume: bool) -> None:
        """Compile, build the optimizer and lr scheduler, ``accelerator.prepare``."""
        cfg, acc = self.config, self.accelerator
        if cfg.compile:
            for module in self.method.compile_modules():
                module.compile()
        optimizer = self.method.configure_optimizer(cfg)
        if optimizer is None:
            optimizer = build_optimizer(self.method.parameter_groups(cfg.weight_decay), cfg)
        self.scheduler = build_scheduler(optimizer, cfg, length, self.state)
        self.model, self.optimizer = acc.prepare(self.method, optimizer)
        if cfg.save_every_n_steps or resume:
            checkpoint.check_supported(acc)

    # ---- an epoch, a step
    def _train_epoch(self, run: _FitRun) -> bool:
        """The rest of the current epoch; False when the run ended inside it."""
        cfg, epoch = self.config, self.state.epoch
        if hasattr(run.dataset, "set_epoch"):
            run.dataset.set_epoch(epoch)
        self.method.on_epoch_start(epoch)
        batches = self._epoch_batches(run.n, epoch)[self.state.batch_in_epoch :]
        self._loader_epoch_state = run.loader_gen.get_state()
        loader = DataLoader(
            run.dataset,
            batch_sampler=_IndexBatches(batches),
            collate_fn=self.method.collate,
            num_workers=cfg.num_workers,
            generator=run.loader_gen,
            pin_memory=run.pin,
        )
        micro_batches = iter(loader)
        for _ in range(len(batches) // cfg.gradient_accumulation_steps):
            if run.length.reached(self.state):
                return False
            metrics, examples, lr = self._train_step(run, micro_batches)
            self._after_step(run, metrics, examples, lr)
        # The epoch's batches are exhausted: on to the next epoch.
        self.method.on_epoch_end(epoch)
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        return True

    def _train_step(self, run: _FitRun, micro_batches: Iterator[Any]) -> tuple[dict[str, float], int, float]:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches.

        Returns the step's metrics (means over its micro-batches, plus ``grad_norm`` when
        clipping), the examples it saw on this process and the lr it used."""
        from accelerate.utils import send_to_device

        cfg, acc = self.config, self.accelerator
        accum = cfg.gradient_accumulation_steps
        step_start = time.perf_counter()
        metrics: dict[str, float] = {}
        examples = 0
        for micro in range(accum):
            batch = send_to_device(next(micro_batches), acc.device, non_blocking=run.pin)
            examples += self.method.examples_in(batch)
            out = self._forward_backward(run, batch, sync=micro == accum - 1)
            for key, value in out.items():
                v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
                metrics[key] = metrics.get(key, 0.0) + v / accum
            self.state.batch_in_epoch += 1
        self.method.before_optimizer_step(self.state.step)
        if not run.manual and cfg.max_grad_norm is not None and acc.sync_gradients:
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            if grad_norm is not None:
                metrics["grad_norm"] = float(grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self._optimizer_step(run, step_start)
        return metrics, examples, lr

    def _forward_backward(self, run: _FitRun, batch: Any, sync: bool) -> dict[str, Any]:
        """One micro-batch: forward, non-finite check, backward (gradients are averaged
        across processes only when ``sync``, on the last micro-batch of a step)."""
        acc, accum = self.accelerator, self.config.gradient_accumulation_steps
        with nullcontext() if sync else acc.no_sync(self.model):
            if run.cache is not None:
                # GradCache does its own backward (and, on the last micro-step,
                # the cross-process gradient average); see core/gradcache.py.
                return run.cache.step(batch, accumulation_steps=accum, sync_gradients=sync,
                                      check_loss=self._check_finite)
            out = self.model(batch)
            self._check_finite(out["loss"])
            if not run.manual:
                acc.backward(out["loss"] / accum)
            return out

    def _check_finite(self, loss: torch.Tensor) -> None:
        """``NonFiniteLossError`` when the loss is NaN/inf on any process."""
        acc = self.accelerator
        finite = torch.tensor(float(torch.isfinite(loss.detach()).all()), device=acc.device)
        if acc.num_processes > 1:
            finite = acc.reduce(finite, reduction="sum") / acc.num_processes
        if finite.item() < 1.0:
            self._non_finite(loss, applied=bool(self._run and self._run.manual))

    def _optimizer_step(self, run: _FitRun, step_start: float) -> None:
        """Optimizer and lr-scheduler step, hooks; the step's time goes into ``train_seconds``."""
        acc = self.accelerator
        if not run.manual:
            self.optimizer.step()
        # Count this step's time before scheduler.step(): a time-based schedule
        # sets the next step's lr from the training time elapsed so far.
        now = time.perf_counter()
        self.state.train_seconds += now - step_start
        step_start = now
        if not run.manual:
            self.scheduler.step()
        else:
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
        if not run.manual:  # a method that updates in forward makes no gradients
            self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.method.after_optimizer_step(self.state.step)
        self.state.train_seconds += time.perf_counter() - step_start
        if run.length.budget is not None and acc.num_processes > 1:
            # Ranks must agree on when the budget ends, or one would wait forever.
            secs = torch.tensor(self.state.train_seconds, device=acc.device, dtype=torch.float64)
            self.state.train_seconds = float(acc.reduce(secs, reduction="max"))

    def _after_step(self, run: _FitRun, metrics: dict[str, float], examples: int, lr: float) -> None:
        """Log window and bar, log record, checkpoint, evaluation, callbacks."""
        cfg, step = self.config, self.state.step
        done = run.length.reached(self.state)
        self._runlog.add_step(metrics, examples, lr)
        if step % cfg.log_every_n_steps == 0 or done:
            self._runlog.write_window(step, self.state.epoch, lr, self.state.train_seconds)
        if cfg.save_every_n_steps and (step % cfg.save_every_n_steps == 0 or done):
            self._save_checkpoint()
        if self.eval_every_n_steps and step % self.eval_every_n_steps == 0 and not done:
            self._log_eval(self.evaluate())
        for cb in self.callbacks:
            if hasattr(cb, "on_step_end"):
                cb.on_step_end(self)

    def _finish(self) -> dict[str, float]:
        """Close the bar; the final evaluation, logged as the last record."""
        self._runlog.close_progress()
        self.model.eval()
        metrics = self.evaluate()
        self._log_eval(metrics)
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
