"""Optimizers (AdamW, SGD with momentum, LARS) and warmup + decay schedules."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["LARS", "build_optimizer", "lr_lambda"]


class LARS(Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017).

    For each parameter ``w`` with gradient ``g`` (weight decay folded in:
    ``g <- g + wd * w``), the update is scaled by the trust ratio
    ``eta * ||w|| / ||g||`` (1 when either norm is 0). Groups flagged
    ``lars_exclude=True`` (biases, normalisation parameters) get neither weight decay
    nor adaptation, as SimCLR and BYOL do.
    """

    def __init__(
        self,
        params: Any,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            lars_exclude=False,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(g)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / g_norm,
                        torch.ones_like(w_norm),
                    )
                    g = g * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(groups: list[dict[str, Any]], cfg: Any) -> Optimizer:
    """Optimizer named by ``cfg.optimizer`` over parameter ``groups``."""
    if cfg.optimizer == "adamw":
        clean = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
        return torch.optim.AdamW(clean, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        clean = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
        return torch.optim.SGD(clean, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "lars":
        return LARS(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            trust_coefficient=cfg.lars_trust_coefficient,
        )
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def lr_lambda(
    schedule: str, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0
) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimizer step ``s`` (0-based): linear warmup from
    0 over ``warmup_steps``, then constant / linear / cosine decay to ``min_lr_ratio``
    at ``total_steps``."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        if schedule == "linear":
            decay = 1.0 - progress
        elif schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            raise ValueError(f"unknown schedule {schedule!r}")
        return min_lr_ratio + (1.0 - min_lr_ratio) * decay

    return f
