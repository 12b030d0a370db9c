"""SGNS's parameter updates: the autograd loss with the sparse-row SGD that applies it
(``backend: torch``), and word2vec's per-pair SGD as a compiled numba kernel, Hogwild over
threads (``backend: numba``). Used by :class:`textcl.objectives.skipgram.SGNS`; see that
module for the formulas and the data."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["SparseSGD", "numba_available", "sgd_pairs", "sgns_loss"]


def sgns_loss(
    input_vectors: torch.Tensor,
    output_vectors: torch.Tensor,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    sparse: bool = False,
) -> torch.Tensor:
    """Sum over pairs of ``-log sigma(u_t . v_c) - sum_k log sigma(-u_nk . v_c)``; noise
    words equal to the pair's target are left out (word2vec)."""
    f = nn.functional
    v = f.embedding(inputs, input_vectors, sparse=sparse)  # (P, D)
    rows = torch.cat([targets[:, None], negatives], dim=1)  # (P, 1 + K)
    u = f.embedding(rows, output_vectors, sparse=sparse)  # (P, 1 + K, D)
    scores = torch.bmm(u, v[:, :, None]).squeeze(2)
    positive = f.softplus(-scores[:, 0]).sum()
    noise = f.softplus(scores[:, 1:]) * (negatives != targets[:, None])
    return positive + noise.sum()


class SparseSGD(torch.optim.Optimizer):
    """Plain SGD (no momentum, no decay) that applies sparse row gradients with
    ``index_add_`` -- no coalescing, duplicates add up -- and dense ones as usual."""

    def __init__(self, params: Any, lr: float):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    p.index_add_(0, g._indices()[0], g._values(), alpha=-group["lr"])
                else:
                    p.add_(g, alpha=-group["lr"])
        return loss


_KERNEL: Any = None
_POOLS: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def _kernel() -> Any:
    """The compiled per-pair SGD kernel (numba, compiled on first use, ~2 s)."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import numba

    # fastmath lets LLVM vectorise the dot products (reassociation); nogil lets threads run
    # slices of a batch at once (Hogwild, as word2vec.c and gensim).
    @numba.njit(nogil=True, fastmath=True, error_model="numpy")
    def sgns_update(syn0, syn1, inputs, targets, negatives, lo, hi, alpha, work):  # pragma: no cover
        dim = syn0.shape[1]
        k_neg = negatives.shape[1]
        a = np.float32(alpha)
        one = np.float32(1.0)
        loss = 0.0
        for p in range(lo, hi):
            v = syn0[inputs[p]]
            t0 = targets[p]
            for j in range(dim):
                work[j] = 0.0
            # The pair's loss is -log of the product of its terms' probabilities: one log
            # per pair instead of one per term (the logs cost a third of the kernel).
            prob = 1.0
            for d in range(k_neg + 1):
                if d == 0:
                    t = t0
                    label = one
                else:
                    t = negatives[p, d - 1]
                    if t == t0:
                        continue
                    label = np.float32(0.0)
                u = syn1[t]
                dot = np.float32(0.0)
                for j in range(dim):
                    dot += v[j] * u[j]
                # One exp gives both sigma(dot) and the term's probability, overflow-free.
                e = np.float32(math.exp(-abs(dot)))
                sig = one / (one + e) if dot >= 0 else e / (one + e)
                if (dot >= 0) == (label > 0):
                    prob *= 1.0 / (1.0 + e)  # the term is sigma(|dot|)
                else:
                    prob *= e / (1.0 + e)  # sigma(-|dot|)
                if prob < 1e-200:  # flush before float64 underflow
                    loss -= math.log(prob)
                    prob = 1.0
                g = (label - sig) * a
                for j in range(dim):
                    work[j] += g * u[j]
                    u[j] += g * v[j]
            loss -= math.log(prob)
            for j in range(dim):
                v[j] += work[j]
        return loss

    _KERNEL = sgns_update
    return _KERNEL


def sgd_pairs(
    syn0: np.ndarray,
    syn1: np.ndarray,
    inputs: np.ndarray,
    targets: np.ndarray,
    negatives: np.ndarray,
    alpha: float,
    threads: int = 1,
) -> float:
    """Word2vec's per-pair SGD on ``syn0`` (input) / ``syn1`` (output) float32 tables, in
    place; returns the summed loss (computed before each pair's update). With ``threads >
    1`` each thread runs a contiguous slice of the pairs at once (Hogwild)."""
    kernel = _kernel()
    n = len(inputs)
    dim = syn0.shape[1]
    threads = max(1, min(threads, n // 64 or 1))
    if threads == 1:
        return float(kernel(syn0, syn1, inputs, targets, negatives, 0, n, alpha, np.empty(dim, np.float32)))
    with _LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="sgns")
    cuts = [n * i // threads for i in range(threads + 1)]
    futures = [
        pool.submit(kernel, syn0, syn1, inputs, targets, negatives, cuts[i], cuts[i + 1], alpha,
                    np.empty(dim, np.float32))
        for i in range(threads)
    ]
    return float(sum(f.result() for f in futures))


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True
