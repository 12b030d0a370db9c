"""How long a training run lasts and how its learning rate moves (``textcl.core.trainer``).

A run ends at ``train.max_steps``, after ``train.epochs`` epochs, or when its training time
reaches ``train.max_minutes``, whichever comes first. With a time budget and no
``max_steps`` the lr schedule runs on the elapsed fraction of the budget, so warmup and
decay fit whatever number of steps the budget allows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from textcl.core.optim import lr_lambda

__all__ = ["RunLength", "build_scheduler"]

#: Resolution of the time-based lr schedule (fraction of train.max_minutes).
_TIME_TICKS = 100_000
#: Epoch cap of a time-budgeted run that sets neither epochs nor max_steps.
_UNBOUNDED_EPOCHS = 1_000_000


@dataclass(frozen=True)
class RunLength:
    """When a run ends: ``max_steps`` optimizer steps or ``budget`` seconds of training."""

    max_steps: int
    budget: float | None  # seconds (train.max_minutes), None without a time budget
    by_time: bool  # the lr schedule runs on the elapsed fraction of the budget

    @classmethod
    def of(cls, cfg: Any, steps_per_epoch: int) -> RunLength:
        """The length ``cfg`` (a ``TrainConfig``) gives a run of ``steps_per_epoch`` steps an epoch."""
        budget = cfg.max_minutes * 60 if cfg.max_minutes else None
        epochs = cfg.epochs
        if budget is not None and cfg.max_steps is None and "epochs" not in cfg.model_fields_set:
            # A time budget without an explicit epoch count means "train for that long":
            # the default of 1 epoch must not end a small corpus's run after a minute.
            epochs = _UNBOUNDED_EPOCHS
        max_steps = cfg.max_steps or epochs * steps_per_epoch
        # A time budget without max_steps: the schedule runs on the elapsed fraction of
        # the budget (epochs cap it only when the recipe sets them).
        return cls(max_steps, budget, budget is not None and cfg.max_steps is None)

    def reached(self, state: Any) -> bool:
        """Whether a run at ``state`` (a ``TrainerState``) is over."""
        over = self.budget is not None and state.train_seconds >= self.budget
        return state.step >= self.max_steps or over


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, length: RunLength,
                    state: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """The lr scheduler of a run: warmup + decay over ``max_steps``, or over the time budget
    (reading ``state.train_seconds`` and ``state.step`` of the trainer's live ``state``)."""
    if not length.by_time:
        warmup = cfg.warmup_steps or int(round(cfg.warmup_ratio * length.max_steps))
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(cfg.scheduler, length.max_steps, warmup, cfg.min_lr_ratio)
        )
    assert length.budget is not None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _by_time(cfg, length.budget, state))


def _by_time(cfg: Any, budget: float, state: Any) -> Callable[[int], float]:
    # A plain function, not a callable object: LambdaLR.state_dict() stores the attributes
    # of a callable object in the checkpoint, and of a function nothing.
    by_time = lr_lambda(cfg.scheduler, _TIME_TICKS, int(round(cfg.warmup_ratio * _TIME_TICKS)), cfg.min_lr_ratio)

    def factor(_: int) -> float:
        tick = min(_TIME_TICKS, int(state.train_seconds / budget * _TIME_TICKS))
        warm = min(1.0, (state.step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        return warm * by_time(tick)

    return factor
