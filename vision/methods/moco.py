"""MoCo v2 (He et al., CVPR 2020; Chen et al., arXiv:2003.04297): a query encoder, a
momentum key encoder and a queue of K negative keys.

Per image: query ``q`` from one view (backbone + MLP head, trained), key ``k`` from
another view (momentum copy, no gradient). Logits ``[q.k+, q.queue]`` / t with
cross-entropy on the positive, as MoCo's ``builder.py`` -- through the core
``info_nce`` with the other keys of the batch excluded, so each query sees exactly one
positive and the K queued negatives. After each optimizer step:
``theta_k <- m theta_k + (1 - m) theta_q`` (``textcl.core.momentum``) and the batch's
keys, all-gathered across processes, are enqueued (``textcl.core.queue``).

Shuffle BN: a key encoder whose BatchNorm sees the same sub-batch as the query encoder
can cheat through batch statistics. Keys are therefore encoded on a shuffled batch:
under DDP the global batch is shuffled across processes and each process encodes its
slice (MoCo's ``_batch_shuffle_ddp``); within a process the shuffled slice is further
split into ``shuffle_bn_splits`` chunks with their own BN statistics (ghost BN), which
is what gives the effect on one device. The permutation comes from (seed, step), so
every process draws the same one without communication.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from textcl.core.distributed import gather_no_grad, rank
from textcl.core.losses import info_nce, retrieval_top1
from textcl.core.momentum import momentum_copy, update_momentum
from textcl.core.queue import FeatureQueue
from vision.augment import AugmentConfig, ViewAugment
from vision.methods.common import (
    VisionConfig,
    VisionMethod,
    VisionObjective,
    projection_mlp,
)

__all__ = ["MoCo", "MoCoConfig", "shuffle_bn_forward"]

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
    shuffle_bn_splits: int = Field(2, ge=1, description="ghost-BN chunks per process for the keys")
    augment: AugmentConfig = AugmentConfig(scale=(0.2, 1.0), blur_p=0.5)  # MoCo v2 views


class MoCoConfig(VisionConfig):
    objective: MoCoObjective = MoCoObjective()


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
        self.key_backbone, self.key_head = momentum_copy(self.backbone), momentum_copy(self.head)
        self.queue = FeatureQueue(obj.queue_size, obj.projection_dim, init="random")
        self.augment = ViewAugment(obj.augment)
        self.register_buffer("key_steps", torch.zeros((), dtype=torch.long))  # seeds the shuffle
        self._pending: list[Tensor] = []
        self._ddp_ignore("queue.")

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        """Normalised keys of the local batch ``x``, encoded under shuffle BN."""
        obj = self.cfg.objective

        def encode(t: Tensor) -> Tensor:
            return self.key_head(self.key_backbone(t))

        if obj.shuffle_bn:
            k = shuffle_bn_forward(encode, x, self.seed * 1_000_003 + int(self.key_steps), obj.shuffle_bn_splits)
        else:
            k = encode(x)
        return F.normalize(k, dim=1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        obj, x = self.cfg.objective, self.images(batch)
        x_q, x_k = self.augment(x), self.augment(x)  # two calls: independent parameters
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
