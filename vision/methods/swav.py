"""SwAV (Caron et al., NeurIPS 2020): online clustering with swapped prediction.

Each crop's L2-normalised projection ``z`` is scored against ``P`` prototypes (unit
rows of a bias-free linear layer). For each global crop, codes ``q`` are computed from
its scores by Sinkhorn-Knopp on the (all-reduced) batch -- an equipartition of the
batch over the prototypes -- and every *other* crop predicts them:
``loss = -mean sum_p q_p log softmax(z.c / t)_p``, averaged over all (code, predictor)
pairs. Multi-crop: 2 global crops + ``num_local_crops`` small ones, encoded per
resolution. Prototypes are re-normalised after every optimizer step (so every forward
sees unit prototypes) and get no update for the first ``freeze_prototypes_steps``
steps. Optional feature queue (small batches): the last ``queue_length`` projections
per global crop join the Sinkhorn batch from epoch ``queue_start_epoch``, once full.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from textcl.core.distributed import is_distributed, world_size
from textcl.core.queue import FeatureQueue
from textcl.vision.augment import AugmentConfig, MultiCrop
from textcl.vision.methods.common import VisionConfig, VisionMethod, VisionObjective, projection_mlp

__all__ = ["SwAV", "SwAVConfig", "sinkhorn", "swapped_prediction"]

CITATION = """@inproceedings{caron2020swav,
  title = {Unsupervised Learning of Visual Features by Contrasting Cluster Assignments},
  author = {Caron, Mathilde and Misra, Ishan and Mairal, Julien and Goyal, Priya and Bojanowski, Piotr and Joulin, Armand},
  booktitle = {Advances in Neural Information Processing Systems 33 (NeurIPS 2020)},
  pages = {9912--9924},
  year = {2020}
}"""


class SwAVObjective(VisionObjective):
    num_prototypes: int = Field(3000, ge=2)
    projection_dim: int = Field(128, ge=1)
    projection_hidden_dim: int = Field(2048, ge=1)
    temperature: float = Field(0.1, gt=0)
    epsilon: float = Field(0.05, gt=0, description="Sinkhorn entropy regularisation")
    sinkhorn_iterations: int = Field(3, ge=1)
    freeze_prototypes_steps: int = Field(313, ge=0, description="SwAV: 1 epoch of ImageNet; here steps")
    num_local_crops: int = Field(4, ge=0)
    queue_length: int = Field(0, ge=0, description="per global crop; 0 = no queue")
    queue_start_epoch: int = Field(0, ge=0)
    global_crop: AugmentConfig = AugmentConfig(scale=(0.14, 1.0))
    local_crop: AugmentConfig = AugmentConfig(size=16, scale=(0.05, 0.14))


class SwAVConfig(VisionConfig):
    objective: SwAVObjective = SwAVObjective()


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """Codes ``(B, P)`` from prototype scores ``(B, P)`` (SwAV's ``distributed_sinkhorn``).

    ``Q = exp(scores / eps)``, then alternately rows (prototypes) are scaled to total
    mass ``1/P`` and columns (samples) to ``1/B_global``; returned ×B_global, so each
    sample's code sums to 1 and each prototype gets ~``B_global / P`` of the mass. Sums
    are all-reduced: the equipartition is over the global batch.
    """
    s = scores.float() / epsilon
    smax = s.max()
    if is_distributed():
        dist.all_reduce(smax, op=dist.ReduceOp.MAX)
    q = (s - smax).exp().T  # (P, B); a shared shift cancels in the normalisations
    n_protos, n = q.shape[0], q.shape[1] * world_size()

    def total(t: Tensor) -> Tensor:
        if is_distributed():
            dist.all_reduce(t)
        return t

    q /= total(q.sum())
    for _ in range(iterations):
        q /= total(q.sum(dim=1, keepdim=True))
        q /= n_protos
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    return (q * n).T


def swapped_prediction(codes: list[Tensor], scores: list[Tensor], temperature: float) -> Tensor:
    """Mean over (code crop i, predicting crop v != i) of ``-sum q_i log softmax(s_v / t)``."""
    total, pairs = scores[0].new_zeros(()), 0
    for i, q in enumerate(codes):
        for v, s in enumerate(scores):
            if v != i:
                total = total - (q * F.log_softmax(s.float() / temperature, dim=1)).sum(dim=1).mean()
                pairs += 1
    return total / pairs


class SwAV(VisionMethod):
    name = "swav"
    config_class = SwAVConfig
    citation = CITATION
    objective_name = "SwAV (swapped prediction of Sinkhorn cluster codes, multi-crop)"

    def __init__(self, cfg: SwAVConfig, splits: Any, seed: int = 42):
        super().__init__(cfg, splits, seed)
        obj = cfg.objective
        self.head = projection_mlp(self.backbone.dim, obj.projection_hidden_dim, obj.projection_dim)
        self.prototypes = nn.Linear(obj.projection_dim, obj.num_prototypes, bias=False)
        self.normalize_prototypes()
        self.crops = MultiCrop(obj.global_crop, obj.local_crop, 2, obj.num_local_crops)
        self.queues = nn.ModuleList(
            FeatureQueue(obj.queue_length, obj.projection_dim, init="empty") for _ in range(2 if obj.queue_length else 0)
        )
        self._pending: list[list[Tensor]] = []
        self._ddp_ignore("queues.")  # per-process queues: DDP must not overwrite them with rank 0's

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        obj, x = self.cfg.objective, self.images(batch)
        b = x.shape[0]
        big, small = self.crops(x, self.example_keys(batch))
        z = [F.normalize(self.head(self.backbone(big)), dim=1)]  # one forward per resolution
        if small is not None:
            z.append(F.normalize(self.head(self.backbone(small)), dim=1))
        z_all = torch.cat(z)
        scores = list(self.prototypes(z_all).split(b))
        use_queue = bool(self.queues) and self.epoch >= obj.queue_start_epoch and self.queues[0].is_full
        codes = []
        with torch.no_grad():
            for i in range(2):
                s = scores[i].detach()
                if use_queue:  # the queue's projections, scored by the current prototypes
                    s = torch.cat([self.prototypes(self.queues[i].features()), s])
                codes.append(sinkhorn(s, obj.epsilon, obj.sinkhorn_iterations)[-b:])
        if self.training and self.queues:
            self._pending.append([z_all[i * b : (i + 1) * b].detach() for i in range(2)])
        loss = swapped_prediction(codes, scores, obj.temperature)
        return {"loss": loss, "code_entropy": _entropy(codes[0])}

    def before_optimizer_step(self, step: int) -> None:
        if step < self.cfg.objective.freeze_prototypes_steps:
            self.prototypes.weight.grad = None  # the optimizer skips a parameter without grad

    def after_optimizer_step(self, step: int) -> None:
        self.normalize_prototypes()
        for zs in self._pending:
            for queue, z in zip(self.queues, zs):
                queue.enqueue(z, gather=False)  # local queues, as SwAV: Sinkhorn all-reduces
        self._pending.clear()


@torch.no_grad()
def _entropy(codes: Tensor) -> Tensor:
    """Entropy of the mean code: log P when the batch uses every prototype equally."""
    p = codes.mean(0).clamp(min=1e-12)
    return -(p * p.log()).sum()
