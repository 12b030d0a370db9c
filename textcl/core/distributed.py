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
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["batch_offset", "gather_no_grad", "gather_with_grad", "is_distributed", "rank", "world_size"]


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
