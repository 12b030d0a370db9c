"""Momentum (EMA) encoders: MoCo's key encoder, BYOL's target, CERT's key encoder.

``update_momentum`` is the three lines of MoCo's ``_momentum_update_key_encoder``:
``theta_k <- m * theta_k + (1 - m) * theta_q`` for every parameter pair. Buffers
(BatchNorm running statistics) are *not* averaged: the momentum encoder keeps its own,
from its own forward passes, as in MoCo.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["cosine_momentum", "momentum_copy", "update_momentum"]


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` (no parameter requires grad): the initial
    momentum encoder, equal to the online one as in MoCo."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def update_momentum(online: nn.Module, target: nn.Module, m: float) -> None:
    """``target <- m * target + (1 - m) * online``, parameter by parameter, in place."""
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {m}")
    q_params, k_params = list(online.parameters()), list(target.parameters())
    if len(q_params) != len(k_params):
        raise ValueError("online and target modules have different parameter lists")
    for q, k in zip(q_params, k_params):
        # Written as the formula (not mul_/add_ with alpha, which may fuse and round
        # differently), so the result is bit-for-bit m * k + (1 - m) * q.
        k.copy_(k * m + q.detach() * (1.0 - m))


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's schedule: ``final - (final - base) * (cos(pi * step / total) + 1) / 2``."""
    progress = min(max(step / max(1, total_steps), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
