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

from textcl.objectives._sgns_sampling import (
    _LOW32,
    _M1,
    _M2,
    _S27,
    _S30,
    _S31,
    _S32,
    GOLDEN,
    alias_thresholds,
)

__all__ = ["SparseSGD", "numba_available", "sgd_pairs", "sgd_windows", "sgns_loss"]


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


def _prefetch_intrinsic() -> Any:
    """``prefetch(table, row, col)``: LLVM's prefetch of the cache line holding
    ``table[row, col]`` (read, high locality): a hint, no value changes."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx, table, row, col):  # pragma: no cover (compiled)
        def codegen(context, builder, signature, args):
            table_type, row_type, col_type = signature.args
            array = context.make_array(table_type)(context, builder, args[0])
            index = [context.cast(builder, args[1], row_type, types.intp),
                     context.cast(builder, args[2], col_type, types.intp)]
            pointer = cgutils.get_item_pointer(context, builder, table_type, array, index)
            byte_pointer, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            function = builder.module.declare_intrinsic(
                "llvm.prefetch", [byte_pointer], ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]))
            # (address, rw 0 = read, locality 3 = keep in all levels, 1 = data cache)
            builder.call(function, [builder.bitcast(pointer, byte_pointer), ir.Constant(i32, 0),
                                    ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return types.void(table, row, col), codegen

    return prefetch


_KERNELS: Any = None
_POOLS: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def _kernels() -> Any:
    """The compiled kernels (numba, compiled on first use, a few seconds): per-pair SGD on
    given pairs, and the fused one that makes a chunk's pairs and noise words itself."""
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    import numba

    # fastmath lets LLVM vectorise the dot products (reassociation); nogil lets threads run
    # slices of a batch at once (Hogwild, as word2vec.c and gensim).
    jit = numba.njit(nogil=True, fastmath=True, error_model="numpy")

    @jit
    def update_pair(v, syn1, t0, negatives, a, work):  # pragma: no cover
        """word2vec's SGD on one pair (input row ``v``, target ``t0``); returns its loss."""
        dim = v.shape[0]
        one = np.float32(1.0)
        for j in range(dim):
            work[j] = 0.0
        # The pair's loss is -log of the product of its terms' probabilities: one log
        # per pair instead of one per term (the logs cost a third of the kernel).
        prob = 1.0
        loss = 0.0
        for d in range(negatives.shape[0] + 1):
            if d == 0:
                t = t0
                label = one
            else:
                t = negatives[d - 1]
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
        for j in range(dim):
            v[j] += work[j]
        return loss - math.log(prob)

    @jit
    def sgd_given(syn0, syn1, inputs, targets, negatives, lo, hi, alpha, work):  # pragma: no cover
        a = np.float32(alpha)
        loss = 0.0
        for p in range(lo, hi):
            loss += update_pair(syn0[inputs[p]], syn1, targets[p], negatives[p], a, work)
        return loss

    prefetch = _prefetch_intrinsic()

    @jit
    def draw_centre(i, ids, ctx_lo, ctx_hi, keys, thresholds, alias, negatives, syn0, syn1):  # pragma: no cover
        """Centre ``i``'s noise words (:func:`noise_words`, slot by slot) into ``negatives``,
        and a prefetch of every table row its pairs will touch."""
        n = np.uint64(len(alias))
        negative = negatives.shape[1]
        dim = syn1.shape[1]
        for c in range(0, dim, 16):  # 16 float32 = one 64-byte cache line
            prefetch(syn1, ids[i], c)
        for slot in range(ctx_hi[i] - ctx_lo[i] - 1):
            j = ctx_lo[i] + slot
            j += j >= i  # step over the centre
            for c in range(0, dim, 16):
                prefetch(syn0, ids[j], c)
            for d in range(negative):
                z = keys[i] + np.uint64(slot * negative + d + 1) * GOLDEN
                z = (z ^ (z >> _S30)) * _M1
                z = (z ^ (z >> _S27)) * _M2
                z ^= z >> _S31
                column = np.int64(((z >> _S32) * n) >> _S32)
                t = column if (z & _LOW32) < thresholds[column] else alias[column]
                negatives[slot, d] = t
                for c in range(0, dim, 16):
                    prefetch(syn1, t, c)

    @jit
    def sgd_fused(syn0, syn1, ids, ctx_lo, ctx_hi, keys, thresholds, alias, first, last, alpha, work,
                  buffers):  # pragma: no cover
        # Software pipelining by one centre: the next centre's noise words are drawn and all
        # its rows prefetched before this centre's pairs are updated, so their cache misses
        # overlap this centre's arithmetic (the kernel waits on memory: random rows of two
        # vocabulary-sized tables). Prefetches change no value: same updates, bit for bit.
        a = np.float32(alpha)
        loss = 0.0
        if first < last:
            draw_centre(first, ids, ctx_lo, ctx_hi, keys, thresholds, alias, buffers[0], syn0, syn1)
        for i in range(first, last):
            now = (i - first) & 1
            if i + 1 < last:
                draw_centre(i + 1, ids, ctx_lo, ctx_hi, keys, thresholds, alias, buffers[1 - now], syn0, syn1)
            negatives, target, slot = buffers[now], ids[i], 0
            for j in range(ctx_lo[i], ctx_hi[i]):
                if j == i:
                    continue
                loss += update_pair(syn0[ids[j]], syn1, target, negatives[slot], a, work)
                slot += 1
        return loss

    _KERNELS = (sgd_given, sgd_fused)
    return _KERNELS


def _pool(threads: int) -> ThreadPoolExecutor:
    with _LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="sgns")
    return pool


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
    kernel = _kernels()[0]
    n = len(inputs)
    dim = syn0.shape[1]
    threads = max(1, min(threads, n // 64 or 1))
    if threads == 1:
        return float(kernel(syn0, syn1, inputs, targets, negatives, 0, n, alpha, np.empty(dim, np.float32)))
    cuts = [n * i // threads for i in range(threads + 1)]
    futures = [
        _pool(threads).submit(kernel, syn0, syn1, inputs, targets, negatives, cuts[i], cuts[i + 1], alpha,
                              np.empty(dim, np.float32))
        for i in range(threads)
    ]
    return float(sum(f.result() for f in futures))


def sgd_windows(
    syn0: np.ndarray,
    syn1: np.ndarray,
    ids: np.ndarray,
    ctx_lo: np.ndarray,
    ctx_hi: np.ndarray,
    keys: np.ndarray,
    table: tuple[np.ndarray, np.ndarray],
    negative: int,
    alpha: float,
    threads: int = 1,
) -> float:
    """:func:`sgd_pairs` on the pairs of the windows ``ctx_lo[i] <= j < ctx_hi[i]`` (``j !=
    i``, input ``ids[j]``, target ``ids[i]``) with :func:`noise_words` drawn from ``keys``,
    made inside the kernel's threads: the same updates as ``sgd_pairs`` on the expanded
    arrays (bit for bit with one thread), without materialising them. Threads take
    contiguous runs of centres holding about equal numbers of pairs. ``table`` may hold
    thresholds already (:func:`alias_thresholds`)."""
    kernel = _kernels()[1]
    thresholds = table[0] if table[0].dtype == np.uint64 else alias_thresholds(table[0])
    alias = np.ascontiguousarray(table[1], np.int32)
    dim, m = syn0.shape[1], len(ids)
    counts = np.asarray(ctx_hi, np.int64) - ctx_lo - 1
    pairs = np.cumsum(counts)
    total = int(pairs[-1]) if m else 0
    threads = max(1, min(threads, total // 64 or 1))
    cuts = [0, *np.searchsorted(pairs, [total * i // threads for i in range(1, threads)], "right").tolist(), m]
    args = (ids, ctx_lo, ctx_hi, keys, thresholds, alias)
    # Per thread: the work row and two centres' noise words (the one updated, the one drawn).
    most = max(int(counts.max()) if m else 0, 1)
    scratch = [(np.empty(dim, np.float32), np.empty((2, most, negative), np.int32)) for _ in range(threads)]
    if threads == 1:
        return float(kernel(syn0, syn1, *args, 0, m, alpha, *scratch[0]))
    futures = [
        _pool(threads).submit(kernel, syn0, syn1, *args, cuts[i], cuts[i + 1], alpha, *scratch[i])
        for i in range(threads)
    ]
    return float(sum(f.result() for f in futures))


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True
