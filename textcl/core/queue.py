"""A FIFO queue of feature vectors (MoCo / CERT negatives, SwAV's feature queue).

The queue is a registered buffer plus a pointer, as in MoCo's ``builder.py``, so it is
saved in checkpoints and moves with ``.to(device)``. Unlike MoCo it does not require
the batch size to divide the length: a batch that runs past the end wraps around.
Entries never carry gradient (``enqueue`` runs under ``no_grad`` and stores detached
copies).

Two starts: ``init="random"`` fills it with random unit vectors that count as entries
from the first step (MoCo: negatives from step 1); ``init="empty"`` holds zeros and
``features()`` returns only what was enqueued (SwAV waits until ``is_full``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textcl.core.distributed import gather_no_grad

__all__ = ["FeatureQueue"]


class FeatureQueue(nn.Module):
    """``size`` most recent vectors of width ``dim``.

    Args:
        size: number of entries K.
        dim: vector width.
        init: ``"random"`` (unit vectors, valid from the start) or ``"empty"``.
    """

    def __init__(self, size: int, dim: int, init: Literal["random", "empty"] = "random"):
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        if init not in ("random", "empty"):
            raise ValueError(f"init must be 'random' or 'empty', got {init!r}")
        start = F.normalize(torch.randn(size, dim), dim=1) if init == "random" else torch.zeros(size, dim)
        self.register_buffer("queue", start)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        # Real entries so far; a random start counts as full.
        self.register_buffer("filled", torch.tensor(size if init == "random" else 0, dtype=torch.long))

    @property
    def size(self) -> int:
        return int(self.queue.shape[0])

    @property
    def is_full(self) -> bool:
        return int(self.filled) >= self.size

    @torch.no_grad()
    def enqueue(self, keys: Tensor, gather: bool = True) -> None:
        """Write ``keys`` (B, dim) at the pointer, oldest first out; wraps around.

        ``gather``: all-gather the keys of every process first (MoCo), so every rank
        holds the same queue. If B > K only the last K keys are kept.
        """
        keys = gather_no_grad(keys.detach()) if gather else keys.detach()
        keys = keys.to(self.queue.dtype)
        k, n = self.size, keys.shape[0]
        if n >= k:
            self.queue.copy_(keys[-k:])
            self.ptr.zero_()
        else:
            idx = (self.ptr + torch.arange(n, device=self.queue.device)) % k
            self.queue[idx] = keys
            self.ptr.copy_((self.ptr + n) % k)
        self.filled.copy_(torch.clamp(self.filled + n, max=k))

    def features(self) -> Tensor:
        """The valid entries (detached; all K once full), in storage order."""
        q = self.queue.detach()
        return q if self.is_full else q[: int(self.filled)]

    def ordered(self) -> Tensor:
        """The valid entries oldest first (for tests and inspection)."""
        if not self.is_full:
            return self.features()
        p = int(self.ptr)
        return torch.cat([self.queue[p:], self.queue[:p]]).detach()
