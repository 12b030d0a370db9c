"""MoCo v2 (He et al., CVPR 2020; Chen et al., arXiv:2003.04297): a query encoder, a
momentum key encoder and a queue of K negative keys.

Per image: query ``q`` from one view (backbone + MLP head, trained), key ``k`` from
another view (momentum copy, no gradient). Logits ``[q.k+, q.queue]`` / t with
cross-entropy on the positive, as MoCo's ``builder.py`` -- through the core
``info_nce`` with the other keys of the batch excluded, so each query sees exactly one
positive and the K queued negatives. After each optimizer step:
``theta_k <- m theta_k + (1 - m) theta_q`` (``textcl.core.momentum``) and the batch's
keys, all-gathered across processes, are enqueued (``textcl.core.queue``). The head is
``projection_mlp`` (Linear-BN-ReLU-Linear; MoCo v2's own head has no BatchNorm).

Shuffle BN: a key encoder whose BatchNorm sees the same sub-batch as the query encoder
can cheat through batch statistics. Keys are therefore encoded on a shuffled batch
(MoCo's ``_batch_shuffle_ddp``; the permutation comes from (seed, step), so every process
draws the same one without communication). Under DDP the global batch is shuffled across
processes, each process encodes its slice, and each process's BatchNorm already sees only
its own sub-batch. On one process the same effect is emulated as in MoCo's CIFAR demo:
every BatchNorm of *both* encoders is a ``SplitBatchNorm`` that, in training mode,
normalises each of ``shuffle_bn_splits`` contiguous chunks of the batch with that
chunk's statistics (ghost BN), so the queries are normalised per chunk of the
un-shuffled batch and the keys per chunk of the shuffled one. The running statistics
are the mean of the per-chunk BatchNorm updates; evaluation mode is plain BatchNorm.
Under DDP the query encoder keeps per-process BN (one split) and the key encoder's
slice is still split into ``shuffle_bn_splits`` chunks, as before. ``SplitBatchNorm``
has BatchNorm's parameters and buffers under the same names, so the momentum update
pairs them one-to-one and the state-dict keys are those of plain BatchNorm. With
``shuffle_bn: false`` nothing is shuffled or split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from textcl.core.distributed import gather_no_grad, random_keys, rank, world_size
from textcl.core.losses import info_nce, retrieval_top1
from textcl.core.momentum import momentum_copy, update_momentum
from textcl.core.queue import FeatureQueue
from textcl.vision.augment import AugmentConfig, ViewAugment
from textcl.vision.methods.common import (
    VisionConfig,
    VisionMethod,
    VisionObjective,
    projection_mlp,
)

__all__ = [
    "MoCo",
    "MoCoConfig",
    "SplitBatchNorm1d",
    "SplitBatchNorm2d",
    "set_bn_splits",
    "shuffle_bn_forward",
    "split_batch_norm",
]

CITATION = """@inproceedings{he2020moco,
  title = {Momentum Contrast for Unsupervised Visual Representation Learning},
  author = {He, Kaiming and Fan, Haoqi and Wu, Yuxin and Xie, Saining and Girshick, Ross},
  booktitle = {Proceedings of CVPR 2020},
  pages = {9729--9738},
  year = {2020}
}
@article{chen2020mocov2,
  title = {Improved Baselines with Momentum Contrastive Learning},
  author = {Chen, Xinlei and Fan, Haoqi and Girshick, Ross and He, Kaiming},
  journal = {arXiv preprint arXiv:2003.04297},
  year = {2020}
}"""


class MoCoObjective(VisionObjective):
    queue_size: int = Field(4096, ge=1, description="K (65536 on ImageNet, 4096 on CIFAR)")
    momentum: float = Field(0.99, ge=0, le=1, description="m (0.999 on ImageNet, 0.99 on CIFAR)")
    temperature: float = Field(0.2, gt=0)
    projection_dim: int = Field(128, ge=1)
    projection_hidden_dim: int | None = Field(None, ge=1, description="default: the backbone's width")
    shuffle_bn: bool = True
    shuffle_bn_splits: int = Field(
        2, ge=1, description="ghost-BN chunks per process (SplitBatchNorm): both encoders on one process, "
        "the key encoder's slice under DDP; 1 = plain BatchNorm")
    augment: AugmentConfig = AugmentConfig(scale=(0.2, 1.0), blur_p=0.5)  # MoCo v2 views


class MoCoConfig(VisionConfig):
    objective: MoCoObjective = MoCoObjective()


class _SplitBatchNorm(_BatchNorm):
    """BatchNorm that, in training mode, normalises each of ``num_splits`` contiguous
    chunks of the batch (sizes as ``torch.tensor_split`` along dim 0) with the chunk's own
    statistics -- exactly plain BatchNorm run on each chunk and the outputs concatenated.
    Every chunk's running-statistics update starts from the same running statistics and
    the results are averaged (MoCo's CIFAR-demo ``SplitBatchNorm``); ``num_batches_tracked``
    counts one per call. In evaluation mode, and with ``num_splits == 1``, it is plain
    BatchNorm. Parameters and buffers carry BatchNorm's names."""

    def __init__(self, *args: Any, num_splits: int = 1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.num_splits = num_splits

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"

    def forward(self, x: Tensor) -> Tensor:
        n = min(self.num_splits, x.shape[0])
        if n <= 1 or not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        # Sizes as torch.tensor_split's; one split op (whose backward is one cat) rather
        # than n slices (each of whose backward fills a batch-sized zero tensor).
        size, extra = divmod(x.shape[0], n)
        chunks = x.split([size + 1] * extra + [size] * (n - extra))
        if not self.track_running_stats or self.running_mean is None or self.running_var is None:
            return torch.cat([F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps)
                              for c in chunks])
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        outs, means, variances = [], [], []
        for c in chunks:
            mean, var = self.running_mean.clone(), self.running_var.clone()
            outs.append(F.batch_norm(c, mean, var, self.weight, self.bias, True, factor, self.eps))
            means.append(mean)
            variances.append(var)
        with torch.no_grad():
            self.running_mean.copy_(torch.stack(means).mean(0))
            self.running_var.copy_(torch.stack(variances).mean(0))
        return torch.cat(outs)


class SplitBatchNorm1d(_SplitBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with ghost-BN splits in training mode (see ``_SplitBatchNorm``)."""


class SplitBatchNorm2d(_SplitBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with ghost-BN splits in training mode (see ``_SplitBatchNorm``)."""


_SPLIT = {nn.BatchNorm1d: SplitBatchNorm1d, nn.BatchNorm2d: SplitBatchNorm2d}


def split_batch_norm(module: nn.Module, num_splits: int = 1) -> nn.Module:
    """``module`` with every ``BatchNorm1d`` / ``BatchNorm2d`` replaced, in place, by its
    split version holding the *same* parameter and buffer tensors (so the state dict,
    the parameter order and the values are unchanged); returns ``module`` (or the
    replacement if ``module`` is itself a BatchNorm). Already split ones get
    ``num_splits``; SyncBatchNorm and others are left alone."""
    if isinstance(module, _SplitBatchNorm):
        module.num_splits = num_splits
        return module
    cls = _SPLIT.get(type(module))
    if cls is not None:
        assert isinstance(module, _BatchNorm)
        new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                  num_splits=num_splits)
        for name in ("weight", "bias"):
            setattr(new, name, getattr(module, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(module, name))
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = split_batch_norm(child, num_splits)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def set_bn_splits(module: nn.Module, num_splits: int) -> int:
    """Set ``num_splits`` of every split BatchNorm in ``module``; returns how many there are."""
    found = 0
    for m in module.modules():
        if isinstance(m, _SplitBatchNorm):
            m.num_splits = num_splits
            found += 1
    return found


@torch.no_grad()
def shuffle_bn_forward(encode: Callable[[Tensor], Tensor], x: Tensor, seed: int, splits: int = 1) -> Tensor:
    """``encode`` of this process's batch ``x``, computed on a shuffled batch and returned
    in ``x``'s order: the global batch is permuted (same permutation on every process,
    from ``seed``), each process encodes its slice in ``splits`` chunks, and the outputs
    are gathered and un-permuted (MoCo's ``_batch_shuffle_ddp`` / ``_batch_unshuffle_ddp``)."""
    b = x.shape[0]
    x_all = gather_no_grad(x)
    perm = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(seed)).to(x.device)
    mine = x_all[perm[rank() * b : (rank() + 1) * b]]
    out = torch.cat([encode(c) for c in mine.chunk(splits)])
    gathered = gather_no_grad(out)
    restored = torch.empty_like(gathered)
    restored[perm] = gathered  # row p of the gather holds image perm[p]
    return restored[rank() * b : (rank() + 1) * b]


class MoCo(VisionMethod):
    name = "moco"
    config_class = MoCoConfig
    citation = CITATION
    objective_name = "MoCo v2 (momentum key encoder, queue of negatives, MLP head)"

    def __init__(self, cfg: MoCoConfig, splits: Any, seed: int = 42):
        super().__init__(cfg, splits, seed)
        obj = cfg.objective
        dim = self.backbone.dim
        self.head = projection_mlp(dim, obj.projection_hidden_dim or dim, obj.projection_dim)
        # Ghost BN (see the module docstring): same tensors, same state-dict keys. The
        # split counts are set at each forward (the query's depends on the process count).
        split_batch_norm(self.backbone)
        self.head = split_batch_norm(self.head)
        self.key_backbone, self.key_head = momentum_copy(self.backbone), momentum_copy(self.head)
        self.queue = FeatureQueue(obj.queue_size, obj.projection_dim, init="random")
        self.augment = ViewAugment(obj.augment)
        self.register_buffer("key_steps", torch.zeros((), dtype=torch.long))  # seeds the shuffle
        self._pending: list[Tensor] = []
        self._ddp_ignore("queue.")

    @property
    def ghost_splits(self) -> int:
        """Ghost-BN chunks per process: ``shuffle_bn_splits`` under shuffle BN, else 1."""
        obj = self.cfg.objective
        return obj.shuffle_bn_splits if obj.shuffle_bn else 1

    def query_splits(self) -> int:
        """The query encoder's BN splits: the ghost splits on one process; one (per-process
        BN) under DDP, where each process's BatchNorm already sees only its sub-batch."""
        return self.ghost_splits if world_size() == 1 else 1

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        """Normalised keys of the local batch ``x``, encoded under shuffle BN."""
        obj = self.cfg.objective

        def encode(t: Tensor) -> Tensor:
            return self.key_head(self.key_backbone(t))

        if obj.shuffle_bn:
            # The key encoder's SplitBatchNorms split the slice themselves; separate
            # forward calls per chunk only where they were converted away (sync_bn).
            n_split_bn = set_bn_splits(self.key_backbone, self.ghost_splits) + set_bn_splits(
                self.key_head, self.ghost_splits)
            chunks = 1 if n_split_bn else self.ghost_splits
            k = shuffle_bn_forward(encode, x, self.seed * 1_000_003 + int(self.key_steps), chunks)
        else:
            k = encode(x)
        return F.normalize(k, dim=1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        obj, x = self.cfg.objective, self.images(batch)
        set_bn_splits(self.backbone, self.query_splits())
        set_bn_splits(self.head, self.query_splits())
        keys = self.example_keys(batch)  # two views, independent parameters
        x_q, x_k = self.augment(x, keys=random_keys(keys, 0)), self.augment(x, keys=random_keys(keys, 1))
        q = F.normalize(self.head(self.backbone(x_q)), dim=1)
        k = self.keys(x_k)
        if self.training:
            self.key_steps += 1
        queue = self.queue.features()
        others = ~torch.eye(q.shape[0], dtype=torch.bool, device=q.device)  # only k_i is a candidate
        labels = torch.arange(q.shape[0], device=q.device)
        loss = info_nce(q, k, ignore_mask=others, temperature=obj.temperature, labels=labels,
                                  extra_negatives=queue)
        if self.training:
            self._pending.append(k)
        return {"loss": loss, "top1": retrieval_top1(q, torch.cat([k, queue]), labels=labels, ignore_mask=others)}

    def after_optimizer_step(self, step: int) -> None:
        m = self.cfg.objective.momentum
        update_momentum(self.backbone, self.key_backbone, m)
        update_momentum(self.head, self.key_head, m)
        for k in self._pending:  # after the step: this step's logits used the old queue
            self.queue.enqueue(k, gather=True)
        self._pending.clear()
