"""Cross-process helpers: all-gather *with gradient* so negatives are shared.

Gradient scale, spelled out. Each rank r computes the mean loss ``L_r`` over its own
queries against the gathered keys of all ranks. DDP averages parameter gradients over
the N ranks, so the effective objective is ``L = (1/N) sum_r L_r`` -- the mean over the
global batch. ``gather_with_grad`` back-propagates by *summing* every rank's gradient
w.r.t. the gathered copy into the owner's local tensor, so rank r's embeddings receive
``sum_s dL_s/de_r`` and after DDP's 1/N average the parameters get exactly
``dL/dtheta``. A gather that returns other ranks' tensors detached (the common bug)
drops the cross-rank terms and under-scales those gradients by a factor of N.
``tests/test_distributed.py`` checks 2 processes x B == 1 process x 2B for the loss
and every gradient.

Randomness contract (``tests/test_rank_randomness.py``). Keyed by (seed, epoch, global
example index) -- so N processes draw exactly what one process draws for the same global
batch, and each rank draws its own: text data (``example_rng``), vision augmentation (per
image and view, ``random_keys`` + ``keyed_uniform``). Keyed by the global micro-batch and
shared by every rank, as one process shares them across its batch: memory-bank negatives,
MoCo's shuffle permutation. Per rank (``rank_seed``; rank 0 keeps the seed, so a 1-process
run is unchanged): the global torch / numpy / python RNGs while training, i.e. dropout.
Model initialisation uses the recipe seed on every rank; resume restores each rank's RNG.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "batch_offset",
    "gather_no_grad",
    "gather_with_grad",
    "is_distributed",
    "keyed_randint",
    "keyed_uniform",
    "random_keys",
    "rank",
    "rank_seed",
    "world_size",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _AllGather(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient w.r.t. the gathered tensor
    (all_reduce) and returns this rank's slice -- see the module docstring."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x)
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":  # reduce-scatter moves 1/N of the data
            out = torch.empty((ctx.n, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM)
            return out
        # gloo has no reduce-scatter; and torch's deprecated autograd all_gather
        # aborted at interpreter exit on gloo here, so keep to all_reduce.
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0, keeping the autograd graph.

    Every rank must pass the same shape. Single process: returns ``x`` unchanged.
    """
    if not is_distributed():
        return x
    return _AllGather.apply(x.contiguous())


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """All-gather without gradient (e.g. keys from a momentum encoder before enqueue)."""
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def batch_offset(local_batch_size: int) -> int:
    """Index of this rank's first example in the gathered batch (for InfoNCE labels)."""
    return rank() * local_batch_size


# ----------------------------------------------------------------------- keyed randomness
# splitmix64 (Steele et al. 2014) on int64 tensors: torch has no uint64 arithmetic, but
# int64 add / multiply wrap modulo 2**64 and a masked arithmetic shift is a logical one,
# so every op below is exact and the same on every device.
def _int64(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _M1, _M2 = _int64(0x9E3779B97F4A7C15), _int64(0xBF58476D1CE4E5B9), _int64(0x94D049BB133111EB)


def _shr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 ``z`` by ``s`` bits."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix64(z: Tensor) -> Tensor:
    """splitmix64's output function: a bijection of 64-bit words that avalanches every bit."""
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def _mix64_int(z: int) -> int:
    """``_mix64`` of a python int, as a signed 64-bit value (exactly the tensor version)."""
    m = (1 << 64) - 1
    z &= m
    z = ((z ^ (z >> 30)) * _M1) & m
    z = ((z ^ (z >> 27)) * _M2) & m
    return _int64(z ^ (z >> 31))


def random_keys(*parts: int | Tensor) -> Tensor:
    """int64 keys hashed from ``parts`` (python ints or int64 tensors, broadcast together),
    e.g. ``random_keys(seed, stream, epoch, index)`` -> one key per index. A key can be a
    part again: ``random_keys(keys, view)`` derives independent keys per view. Python-int
    parts are hashed in Python (fewer small tensor ops on a batch's keys)."""
    device = next((p.device for p in parts if isinstance(p, Tensor)), None)
    h: int | Tensor = 0
    for p in parts:
        if isinstance(p, Tensor):
            p = _mix64(p.to(device=device, dtype=torch.int64) + _GOLDEN)
        else:
            p = _mix64_int(int(p) + _GOLDEN)
        if isinstance(h, int) and isinstance(p, int):
            h = _mix64_int(h ^ p)
        else:
            h = _mix64(p ^ h) if isinstance(p, Tensor) else _mix64(h ^ p)
    return h if isinstance(h, Tensor) else torch.tensor(h, dtype=torch.int64, device=device)


def _keyed_words(keys: Tensor, count: int) -> Tensor:
    """``(*keys.shape, count)`` words: the first ``count`` outputs of splitmix64 from state ``key``."""
    j = torch.arange(1, count + 1, dtype=torch.int64, device=keys.device)
    return _mix64(keys.to(torch.int64).unsqueeze(-1) + j * _GOLDEN)


def keyed_uniform(keys: Tensor, count: int) -> Tensor:
    """float32 uniforms in [0, 1), ``(*keys.shape, count)``: draw ``j`` of row ``i`` is a
    function of ``(keys[i], j)`` only -- not of the batch it is drawn in, nor the device."""
    return _shr(_keyed_words(keys, count), 40).to(torch.float32) * (1.0 / (1 << 24))


def keyed_randint(keys: Tensor, count: int, high: int) -> Tensor:
    """int64 integers uniform in [0, ``high``), ``(*keys.shape, count)`` (bias < high / 2**63)."""
    return _shr(_keyed_words(keys, count), 1) % high


def rank_seed(seed: int, process_index: int) -> int:
    """The seed of the global RNGs on process ``process_index``: ``seed`` on rank 0 (so a
    1-process run is seeded as before), a 32-bit hash of (seed, rank) on the others."""
    if process_index == 0:
        return seed
    return int(random_keys(seed, process_index)) & 0xFFFFFFFF
