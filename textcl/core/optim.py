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
    """Optimizer named by ``cfg.optimizer`` over parameter ``groups``.

    Group options beyond torch's: ``lr_scale`` (the group's peak lr is ``cfg.lr * lr_scale``;
    the schedule scales every group alike) and ``anchor`` + ``anchor_weight`` (a list of
    tensors, one per parameter: before each step ``anchor_weight * (p - anchor)`` is added to
    ``p.grad``, the gradient of ``anchor_weight / 2 * ||p - anchor||^2``, L2-SP). Anchors stay
    out of the optimizer's state dict: the method rebuilds them from its start model.
    """
    anchors: list[tuple[list[torch.Tensor], list[torch.Tensor], float]] = []
    clean = []
    for g in groups:
        g = dict(g)
        scale = g.pop("lr_scale", 1.0)
        if scale != 1.0:
            g["lr"] = cfg.lr * scale
        anchor = g.pop("anchor", None)
        if anchor is not None:
            anchors.append((list(g["params"]), anchor, float(g["anchor_weight"])))
        if cfg.optimizer != "lars":
            g.pop("lars_exclude", None)
        clean.append(g)
    if cfg.optimizer == "adamw":
        opt: Optimizer = torch.optim.AdamW(clean, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(clean, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "lars":
        opt = LARS(
            clean,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            trust_coefficient=cfg.lars_trust_coefficient,
        )
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
    if anchors:
        opt.register_step_pre_hook(_anchor_hook(anchors))
    return opt


def _anchor_hook(anchors: list[tuple[list[torch.Tensor], list[torch.Tensor], float]]) -> Callable[..., None]:
    @torch.no_grad()
    def hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        for params, targets, weight in anchors:
            for p, p0 in zip(params, targets):
                pull = (p - p0.to(p.device)).mul_(weight)
                if p.grad is None:
                    p.grad = pull
                else:
                    p.grad.add_(pull)

    return hook


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
