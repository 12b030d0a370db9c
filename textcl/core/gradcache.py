"""GradCache (Gao et al., 2021): in-batch contrastive losses over batches that do not fit.

An in-batch loss couples every example with every other, so it cannot be split into
independent micro-batches the way gradient accumulation splits a regression loss. But
its gradient factorises through the embeddings: ``dL/dtheta = sum_i dL/de_i * de_i/dtheta``.
A GradCache step (``train.mini_batch_size: M``) therefore

1. embeds every side of the batch in mini-batches of at most ``M`` rows *without*
   gradient, keeping only the embeddings, and remembers the RNG state (CPU and CUDA)
   taken just before each mini-batch;
2. computes the loss once on the whole batch from detached leaf copies of those
   embeddings (``loss_from_embeddings``: gathering across processes happens in there)
   and back-propagates it to the leaves -- the cached gradient ``dL/de``. Parameters the
   loss itself owns (a learnable temperature, a head applied to the embeddings) get
   their gradient here;
3. re-runs each mini-batch *with* gradient after restoring its RNG state, so dropout
   draws the same masks as in step 1, and back-propagates ``sum(e * dL/de)`` (a
   surrogate whose gradient with respect to ``e`` is exactly the cached one), computed
   in float32 even under autocast.

Peak activation memory is that of one mini-batch, whatever the batch size; the cost is
one extra no-gradient forward pass. The gradient is the gradient of the loss computed
in step 2 -- exactly, when step 3 replays step 1 (the tests check every parameter
against one backward through the whole batch, with dropout on).

The protocol a method implements (``supports_gradcache``):

* ``embedding_inputs(batch) -> dict[side, features]``: the encoder inputs per side, in
  the order ``forward`` encodes them (the RNG is consumed in that order);
* ``loss_from_embeddings(embeddings: dict[side, Tensor], batch) -> dict`` with
  ``"loss"`` (plus metrics), holding all the loss logic, so that ``forward(batch) ==
  loss_from_embeddings({s: embed(s, f) for s, f in embedding_inputs(batch).items()}, batch)``;
* optional ``embed(side, features) -> Tensor``; default ``self.encoder(features,
  project=True)`` (``textcl.encoders.TextEncoder``);
* optional ``auxiliary_loss(batch) -> dict``: a term that does not go through the
  embeddings (DeCLUTR's MLM), computed with gradient on the whole batch after the cached
  loss -- GradCache does not bound its memory. Its ``"loss"`` is added to the total and
  its other keys are reported as metrics (``merge_auxiliary``).

Features and mini-batches (``split_features``). A side's features may be a tensor
(rows = dim 0), a padded dict of row tensors (``input_ids``, ``attention_mask``, ...) or
the chunked form ``{"chunks": [padded dict, ...], "order": LongTensor}`` of
``TextEncoder.collate(chunk_tokens=...)``. Padded dicts are sorted by length (the
``attention_mask`` row sums) and cut into ``M`` rows, each mini-batch re-padded to its
own longest row (trailing columns no row attends to are dropped), so mini-batches
carry little padding. Chunked features are cut chunk by chunk into pieces of at most
``M`` rows: a chunk that already has ``M`` rows or fewer is one mini-batch as it is, so
with ``M`` at least the largest chunk GradCache draws exactly the dropout masks of the
uncached forward. Embeddings are put back into the batch's row order before the loss.

CPU memory (glibc). On CPU, ``GradCache`` pins glibc's mmap threshold once per process at
128 KiB (:func:`textcl.core.malloc_tuning.pin_malloc_mmap_threshold`): with glibc's dynamic
threshold, mini-batches of other shapes leave heap holes that stay resident (the step's peak
about doubled, docs/benchmarks/gradcache-memory.md). Off with ``GradCache(cpu_mmap_threshold=None)``.

Models with BatchNorm layers in training mode are refused: their output depends on the
other rows of the forward pass (and their running statistics would be updated twice),
so a mini-batch is a different function, not a cache of the same one.

Data parallelism. ``loss_from_embeddings`` gathers embeddings with
``textcl.core.distributed.gather_with_grad``, so step 2 gives each rank the gradient of
the global loss with respect to its own embeddings, exactly as the uncached forward
does. The mini-batch backwards of step 3 run without any cross-process communication
(the encoder is called directly, not through the ``DistributedDataParallel`` wrapper,
whose reducer then stays idle); after the last micro-step of an optimizer step
(``sync_gradients=True``) the parameter gradients are averaged over ranks in one
bucketed all-reduce -- DDP's own scale, ``1/N``, applied once (``all_reduce_gradients``).
Doing the sync ourselves rather than through DDP's hooks on the last mini-batch also
covers parameters that only the loss (step 2) or only some mini-batches touch, where a
DDP reducer prepared for one mini-batch would wait for gradients that never come.
FSDP and DeepSpeed shard or own the parameters and are not supported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from textcl.core.distributed import is_distributed
from textcl.core.errors import RecipeError
from textcl.core.malloc_tuning import CPU_MMAP_THRESHOLD, pin_malloc_mmap_threshold

__all__ = [
    "CPU_MMAP_THRESHOLD",
    "GRADCACHE_PROTOCOL",
    "GradCache",
    "RngState",
    "all_reduce_gradients",
    "check_gradcache_support",
    "gradcache_for_training",
    "merge_auxiliary",
    "pin_malloc_mmap_threshold",
    "split_features",
    "supports_gradcache",
]

#: Methods a method must define for ``train.mini_batch_size``.
GRADCACHE_PROTOCOL = ("embedding_inputs", "loss_from_embeddings")

#: Gradient elements per all-reduce call (like DDP's 25 MB buckets, in float32).
_BUCKET_ELEMENTS = 25 * 2**20 // 4


def supports_gradcache(method: Any) -> bool:
    """Whether ``method`` (an instance or a class) implements the GradCache protocol."""
    return all(callable(getattr(method, name, None)) for name in GRADCACHE_PROTOCOL)


def check_gradcache_support(method: Any, name: str | None = None, source: str | None = None) -> None:
    """The one check that ``train.mini_batch_size`` can be used with ``method`` (an instance
    or a class): ``RecipeError`` unless it implements the protocol. Called when a recipe is
    loaded (``source``: the recipe file) and when the trainer starts (a Trainer built from
    Python has no recipe). ``name``: the method's name in the message (default: its
    registry name, else its class name)."""
    if supports_gradcache(method):
        return
    if name is None:
        cls = method if isinstance(method, type) else type(method)
        name = getattr(method, "name", "") or cls.__name__
    raise RecipeError(
        f"{source + ': ' if source else ''}train.mini_batch_size: method {name!r} does not implement the "
        "GradCache protocol (embedding_inputs + loss_from_embeddings, see textcl.core.gradcache); "
        "remove train.mini_batch_size"
    )


def gradcache_for_training(
    method: nn.Module, mini_batch_size: int, accelerator: Any, cpu_mmap_threshold: int | None = CPU_MMAP_THRESHOLD
) -> GradCache:
    """The trainer's GradCache runner for ``train.mini_batch_size`` (and
    ``train.cpu_mmap_threshold``); ``RecipeError`` when the method or the launch cannot use one
    (``check_gradcache_support``; a method that applies its update in forward; FSDP, DeepSpeed
    and the like)."""
    check_gradcache_support(method)
    if getattr(method, "updates_in_forward", False):
        raise RecipeError(
            f"train.mini_batch_size: {type(method).__name__} applies its update in forward; remove train.mini_batch_size"
        )
    kind = accelerator.distributed_type.name
    if kind in ("DEEPSPEED", "FSDP", "MEGATRON_LM", "XLA"):
        raise RecipeError(
            f"train.mini_batch_size: GradCache runs single-process or under DDP, not under "
            f"{kind}; remove train.mini_batch_size or launch with plain DDP"
        )
    return GradCache(method, mini_batch_size, autocast=accelerator.autocast, backward=accelerator.backward,
                     cpu_mmap_threshold=cpu_mmap_threshold)


def merge_auxiliary(out: dict[str, Any], aux: Mapping[str, Any] | None) -> dict[str, Any]:
    """``out`` with the metrics of ``aux`` added and ``aux["loss"]`` added to ``out["loss"]``."""
    if not aux:
        return out
    merged = {k: v for k, v in out.items() if k != "loss"}
    merged.update((k, v) for k, v in aux.items() if k != "loss")
    merged["loss"] = out["loss"] + aux["loss"] if "loss" in aux else out["loss"]
    return merged


# ----------------------------------------------------------------------------- RNG


@dataclass
class RngState:
    """The torch RNG states that dropout draws from: CPU and, once initialised, every CUDA device."""

    cpu: Tensor
    cuda: list[Tensor] | None

    @classmethod
    def capture(cls) -> RngState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


# ----------------------------------------------------------------------------- splitting


def _rows(features: Mapping[str, Any], where: str) -> int:
    rows = {int(v.shape[0]) for v in features.values() if isinstance(v, Tensor) and v.dim() > 0}
    if len(rows) != 1:
        raise ValueError(
            f"GradCache: the features of side {where!r} must hold tensors with one common number "
            f"of rows (dim 0); got row counts {sorted(rows)}"
        )
    return rows.pop()


def _host_mask(features: Mapping[str, Any]) -> Tensor | None:
    """The side's 2-d ``attention_mask`` copied to the CPU once (None without one).

    Lengths and widths come from this one host copy: computing them piece by piece on a
    GPU would synchronise twice per mini-batch, and GradCache's small mini-batches are
    launch-bound there.
    """
    mask = features.get("attention_mask")
    if not (isinstance(mask, Tensor) and mask.dim() == 2 and mask.shape[1] > 0):
        return None
    return mask.detach().cpu()


def _last_attended(mask: Tensor | None) -> Tensor | None:
    """Per row of a host ``mask``, the last column it attends to (-1: none)."""
    if mask is None:
        return None
    return torch.where(mask.bool(), torch.arange(mask.shape[1]), -1).amax(dim=1)


def _take(features: Mapping[str, Any], index: Tensor, last: Tensor | None) -> dict[str, Any]:
    """Rows ``index`` of a padded dict, with trailing columns no kept row attends to dropped
    (``last``: :func:`_last_attended` of ``features``)."""
    out = {k: v.index_select(0, index.to(v.device)) if isinstance(v, Tensor) and v.dim() > 0 else v
           for k, v in features.items()}
    mask = features.get("attention_mask")
    if last is not None and isinstance(mask, Tensor):
        width = max(int(last.index_select(0, index).max()) + 1, 1)
        if width < mask.shape[1]:
            shape = (len(index), mask.shape[1])
            out = {k: v[:, :width] if isinstance(v, Tensor) and tuple(v.shape[:2]) == shape else v
                   for k, v in out.items()}
    return out


def split_features(features: Any, mini_batch_size: int, where: str = "features") -> tuple[list[Any], Tensor | None]:
    """Cut one side's features into mini-batches of at most ``mini_batch_size`` rows.

    Returns ``(pieces, order)``: running the encoder on each piece and concatenating the
    outputs gives the rows in a "stacked" order; ``stacked.index_select(0, order)`` puts
    them back into the batch's order (``order is None``: already in order). See the
    module docstring for the three accepted forms.
    """
    m = int(mini_batch_size)
    if m < 1:
        raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
    if isinstance(features, Tensor):
        return list(features.split(m)), None
    if isinstance(features, Mapping) and "chunks" in features:
        if "order" not in features:
            raise ValueError(f"GradCache: side {where!r} has 'chunks' without 'order' (see TextEncoder.collate)")
        pieces: list[Any] = []
        for chunk in features["chunks"]:
            if not isinstance(chunk, Mapping) or "chunks" in chunk:
                raise ValueError(f"GradCache: each chunk of side {where!r} must be a padded dict of tensors")
            n = _rows(chunk, where)
            if n <= m:
                pieces.append(chunk)  # as is: the same forward (and dropout draws) as uncached
            else:
                last = _last_attended(_host_mask(chunk))
                pieces.extend(_take(chunk, torch.arange(s, min(s + m, n)), last) for s in range(0, n, m))
        return pieces, features["order"]
    if isinstance(features, Mapping):
        n = _rows(features, where)
        mask = _host_mask(features)
        last = _last_attended(mask)
        if mask is not None:
            # Longest first (stable): mini-batches of similar lengths carry little padding.
            by_length = torch.sort(mask.sum(dim=1), descending=True, stable=True).indices
        else:
            by_length = torch.arange(n)
        pieces = [_take(features, by_length[s : s + m], last) for s in range(0, n, m)]
        order = torch.empty_like(by_length)
        order[by_length] = torch.arange(n)
        return pieces, (None if torch.equal(by_length, torch.arange(n)) else order)
    raise TypeError(
        f"GradCache cannot cut the features of side {where!r} ({type(features).__name__}) into "
        "mini-batches: embedding_inputs must return, per side, a tensor, a dict of row tensors or "
        "the chunked {'chunks', 'order'} form of TextEncoder.collate"
    )


# ----------------------------------------------------------------------------- gradients


def all_reduce_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average gradients over processes, as DDP does (divide by N, then sum).

    A parameter with a gradient on some ranks and none on others gets zeros where it has
    none (a row of a collective must exist on every rank); one without a gradient on any
    rank keeps ``grad = None`` (optimizers skip it, as under DDP).
    """
    if not is_distributed():
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    world = dist.get_world_size()
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has)
    grads = []
    for p, h in zip(params, has.tolist()):
        if h == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if p.grad.is_sparse:
            raise ValueError("GradCache: sparse gradients are not supported under data parallelism")
        grads.append(p.grad)
    buckets: dict[tuple[torch.device, torch.dtype], list[list[Tensor]]] = {}
    for g in grads:
        groups = buckets.setdefault((g.device, g.dtype), [[]])
        if groups[-1] and sum(x.numel() for x in groups[-1]) + g.numel() > _BUCKET_ELEMENTS:
            groups.append([])
        groups[-1].append(g)
    for groups in buckets.values():
        for bucket in groups:
            flat = torch.cat([g.reshape(-1) for g in bucket]).div_(world)
            dist.all_reduce(flat)
            start = 0
            for g in bucket:
                g.copy_(flat[start : start + g.numel()].view_as(g))
                start += g.numel()


# ----------------------------------------------------------------------------- the step


class GradCache:
    """Runs one GradCache step of an in-batch method; see the module docstring.

    Args:
        method: the module implementing the protocol (not its DDP wrapper).
        mini_batch_size: rows per encoder pass.
        autocast: a callable returning the mixed-precision context the method's forward
            runs under (the trainer passes ``accelerator.autocast``); default none.
        backward: how the loss is back-propagated (the trainer passes
            ``accelerator.backward``, which applies the fp16 loss scale); default
            ``Tensor.backward``. The scale it applies reaches the cached gradients, so
            the mini-batch backwards of step 3 apply it too, and only once.
        replay_rng: restore each mini-batch's RNG state before its second pass. Only the
            tests turn it off, to show that without it the gradients are wrong.
        cpu_mmap_threshold: when the method's parameters are on the CPU, the first step pins
            glibc's mmap threshold at this many bytes (:func:`pin_malloc_mmap_threshold`);
            ``None`` leaves malloc as it is.
    """

    def __init__(
        self,
        method: nn.Module,
        mini_batch_size: int,
        *,
        autocast: Callable[[], AbstractContextManager[Any]] | None = None,
        backward: Callable[[Tensor], None] | None = None,
        replay_rng: bool = True,
        cpu_mmap_threshold: int | None = CPU_MMAP_THRESHOLD,
    ):
        if not supports_gradcache(method):
            missing = [n for n in GRADCACHE_PROTOCOL if not callable(getattr(method, n, None))]
            raise TypeError(
                f"{type(method).__name__} does not implement the GradCache protocol (missing "
                f"{', '.join(missing)}); see textcl.core.gradcache"
            )
        if not callable(getattr(method, "embed", None)) and not isinstance(getattr(method, "encoder", None), nn.Module):
            raise TypeError(f"{type(method).__name__}: GradCache needs an `encoder` module or an embed(side, features) method")
        if int(mini_batch_size) < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
        self.method = method
        self.mini_batch_size = int(mini_batch_size)
        self._autocast = autocast or nullcontext
        self._backward = backward or (lambda loss: loss.backward())
        self.replay_rng = replay_rng
        self.cpu_mmap_threshold = cpu_mmap_threshold

    def _tune_cpu_malloc(self) -> None:
        if self.cpu_mmap_threshold is None:
            return
        param = next(self.method.parameters(), None)
        if param is not None and param.device.type == "cpu":
            pin_malloc_mmap_threshold(self.cpu_mmap_threshold)

    def _check_no_batchnorm(self) -> None:
        for name, module in self.method.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
                raise ValueError(
                    f"GradCache: {type(self.method).__name__}.{name} is a BatchNorm layer in training mode; "
                    "its output depends on the other rows of each forward pass, so mini-batches would "
                    "compute a different loss. Remove train.mini_batch_size (or use LayerNorm/GroupNorm)"
                )

    def _embed(self, side: str, features: Any) -> Tensor:
        embed = getattr(self.method, "embed", None)
        if callable(embed):
            return embed(side, features)
        return self.method.encoder(features, project=True)

    def step(
        self,
        batch: Any,
        *,
        accumulation_steps: int = 1,
        sync_gradients: bool = True,
        check_loss: Callable[[Tensor], None] | None = None,
    ) -> dict[str, Any]:
        """Forward + backward of ``batch``; returns the method's output dict (loss included).

        Gradients are *added* to ``.grad`` (the caller zeroes them), for the loss divided by
        ``accumulation_steps``, as one micro-step of gradient accumulation. ``check_loss``
        sees the loss before any backward (the trainer's NaN check). With
        ``sync_gradients`` the gradients are averaged over processes at the end.
        """
        method = self.method
        self._check_no_batchnorm()
        self._tune_cpu_malloc()
        inputs = method.embedding_inputs(batch)
        plans = {side: split_features(f, self.mini_batch_size, side) for side, f in inputs.items()}

        # 1. Embed without gradient, remembering the RNG state before each mini-batch.
        states: dict[str, list[RngState]] = {}
        leaves: dict[str, Tensor] = {}
        with torch.no_grad():
            for side, (pieces, order) in plans.items():
                states[side], outs = [], []
                for piece in pieces:
                    states[side].append(RngState.capture())
                    with self._autocast():
                        outs.append(self._embed(side, piece))
                emb = torch.cat(outs)
                if order is not None:
                    emb = emb.index_select(0, order.to(emb.device))
                # Leaves in float32: the cached gradient of a half-precision leaf could underflow.
                dtype = torch.float32 if emb.dtype in (torch.float16, torch.bfloat16) else emb.dtype
                leaves[side] = emb.detach().to(dtype).requires_grad_()

        # 2. The loss on the whole batch; its gradient w.r.t. the embeddings is cached.
        with self._autocast():
            out = method.loss_from_embeddings(leaves, batch)
            aux_fn = getattr(method, "auxiliary_loss", None)
            out = merge_auxiliary(out, aux_fn(batch) if callable(aux_fn) else None)
        after = RngState.capture()  # where the uncached forward would leave the RNG
        loss = out["loss"]
        if check_loss is not None:
            check_loss(loss)
        if loss.requires_grad:
            self._backward(loss / accumulation_steps)

        # 3. Replay each mini-batch with gradient and back-propagate the cached gradient.
        for side, (pieces, order) in plans.items():
            grad = leaves[side].grad
            if grad is None:
                continue  # the loss does not depend on this side
            if order is not None:  # batch order -> stacked (mini-batch) order
                grad = torch.empty_like(grad).index_copy_(0, order.to(grad.device), grad)
            start = 0
            for piece, state in zip(pieces, states[side]):
                if self.replay_rng:
                    state.restore()
                with self._autocast():
                    emb = self._embed(side, piece)
                g = grad[start : start + emb.shape[0]]
                start += emb.shape[0]
                with torch.autocast(device_type=emb.device.type, enabled=False):
                    surrogate = (emb.to(g.dtype) * g).sum()
                surrogate.backward()
        after.restore()

        if sync_gradients:
            all_reduce_gradients(method.parameters())
        return out
