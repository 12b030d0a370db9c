"""A memory bank: one L2-normalised vector per training example (NPID, PIRL).

Entry ``i`` is updated from the features computed for example ``i`` with momentum
``m`` (Wu et al. 2018, eq. 9; PIRL uses the same rule):

    v_i <- normalize(m * v_i + (1 - m) * f_i)

The bank is a registered buffer (checkpointed, moves with ``.to``). Under data
parallelism ``update`` all-gathers indices and features first, so every process keeps
an identical bank without broadcasting it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textcl.core.distributed import gather_no_grad, keyed_randint

__all__ = ["MemoryBank"]


class MemoryBank(nn.Module):
    """``size`` unit vectors of width ``dim``, initialised at random (a fixed seed
    stream, so every process starts from the same bank)."""

    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("bank", F.normalize(torch.randn(size, dim, generator=g), dim=1))

    @property
    def size(self) -> int:
        return int(self.bank.shape[0])

    def get(self, indices: Tensor) -> Tensor:
        """Entries at ``indices`` (detached: the bank is never differentiated)."""
        return self.bank[indices].detach()

    def sample(self, k: int, generator: torch.Generator | None = None, key: Tensor | int | None = None) -> Tensor:
        """``k`` indices drawn uniformly with replacement (NPID's noise distribution): a
        function of ``key`` alone when given (``textcl.core.distributed.keyed_randint``;
        the same on every process and device), else from ``generator`` / the global RNG."""
        if key is not None:
            key = torch.as_tensor(key, dtype=torch.int64, device=self.bank.device).reshape(())
            return keyed_randint(key, k, self.size)
        return torch.randint(self.size, (k,), generator=generator, device="cpu").to(self.bank.device)

    @torch.no_grad()
    def update(self, indices: Tensor, features: Tensor, momentum: float, gather: bool = True) -> None:
        """``v_i <- normalize(m * v_i + (1 - m) * f_i)`` for each index in the batch.

        Indices within one (gathered) batch must be distinct -- the trainer's batches
        are slices of one permutation -- since ``index_copy_`` keeps an arbitrary row
        of a repeated index.
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if gather:
            indices, features = gather_no_grad(indices), gather_no_grad(features.detach())
        features = features.detach().to(self.bank.dtype)
        mixed = self.bank[indices] * momentum + features * (1.0 - momentum)
        self.bank.index_copy_(0, indices, F.normalize(mixed, dim=1))
