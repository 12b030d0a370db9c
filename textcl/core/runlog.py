"""What a training run reports (``textcl.core.trainer``): the progress bar, the log window
(each process's sums since the last record), ``log.jsonl`` and ``train.report_to``'s
experiment trackers through Accelerate.

Only the main process writes ``log.jsonl``, draws the bar and opens the trackers; every
process keeps the window, whose means are reduced over the processes when a record is
written (a collective call: every process writes its records at the same steps).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from textcl.core.checkpoint import LogWindow
from textcl.core.recipe import flat_config

__all__ = ["TRACKING_DIR", "RunLog"]

#: Subdirectory of output_dir for the trackers' local files (``train.report_to``).
TRACKING_DIR = "tracking"


class RunLog:
    """The records of one trainer (``history``) and where they go."""

    def __init__(self, accelerator: Any, output_dir: Path):
        self.accelerator = accelerator
        self.output_dir = output_dir
        self.history: list[dict[str, Any]] = []
        #: Sums since the last record; opened by the trainer (and restored on resume).
        self.window = LogWindow(start=0.0)
        self._tracking = False
        self._progress: Any = None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # ------------------------------------------------------------------ records
    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` to ``history``, ``log.jsonl`` and the trackers."""
        self.history.append(record)
        if self.is_main:
            with open(self.output_dir / "log.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            if self._tracking:
                scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
                self.accelerator.log(scalars, step=record["step"])

    def add_step(self, metrics: dict[str, float], examples: int, lr: float) -> None:
        """Count one optimizer step's metrics (means over its micro-steps) into the window."""
        win = self.window
        for key, value in metrics.items():
            win.sums[key] = win.sums.get(key, 0.0) + value
        win.steps += 1
        win.examples += examples * self.accelerator.num_processes
        if self._progress is not None:
            # No forced redraw per step (tqdm redraws every 0.1 s): at SGNS's ~100 steps/s
            # redrawing the bar each step took 2% of the run.
            self._progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
            self._progress.update(1)

    def write_window(self, step: int, epoch: int, lr: float, train_seconds: float) -> None:
        """Write the window's means (over steps and processes) as one record; open a new window."""
        acc, win = self.accelerator, self.window
        elapsed = time.perf_counter() - win.start
        record = {"step": step, "epoch": epoch, "lr": lr, "train_seconds": train_seconds}
        for key, value in win.sums.items():
            mean = torch.tensor(value / win.steps, device=acc.device)
            if acc.num_processes > 1:
                mean = acc.reduce(mean, reduction="mean")
            record[key] = float(mean)
        record["examples_per_sec"] = win.examples / max(elapsed, 1e-9)
        self.write(record)
        self.window = LogWindow(start=time.perf_counter())

    # ------------------------------------------------------------------ progress bar
    def open_progress(self, total: int | None, initial: int) -> None:
        """The main process's tqdm bar (``total`` None: a time budget, no known end)."""
        if self.is_main:
            from tqdm.auto import tqdm

            self._progress = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def close_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    # ------------------------------------------------------------------ trackers
    def start_tracking(self, step: int, config: dict[str, Any]) -> None:
        """Open ``train.report_to``'s trackers (main process only, as Accelerate's are).

        The project is named after output_dir; the run config is ``config`` flattened.
        TensorBoard purges the events of earlier runs in the same directory from the first
        step this run logs on (``step + 1``), as ``log.jsonl`` drops those lines (resume: the
        steps past the checkpoint; a fresh run: all), so both show each step once.
        """
        acc = self.accelerator
        if not getattr(acc, "log_with", None) or not self.is_main:
            return
        tracking = self.output_dir / TRACKING_DIR
        tracking.mkdir(parents=True, exist_ok=True)
        init_kwargs = {"tensorboard": {"purge_step": step + 1}, "wandb": {"dir": str(tracking)}}
        acc.init_trackers(self.output_dir.resolve().name, config=flat_config(config), init_kwargs=init_kwargs)
        self._tracking = True

    def end_tracking(self) -> None:
        """Close the trackers: the trackers' half of ``accelerator.end_training()``, whose
        other half (destroying the process group) would break the barriers that come
        after training (saving the model, a second fit)."""
        if not self._tracking:
            return
        self._tracking = False
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers = []
