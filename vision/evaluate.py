"""Frozen-feature evaluation: weighted kNN (InstDisc protocol) and a linear probe.

kNN (Wu et al. 2018): features L2-normalised; for a query, the ``k`` most cosine-similar
bank features vote for their label with weight ``exp(sim / temperature)``; the class
with the largest total wins. Defaults k=200, temperature=0.1.

Linear probe: a linear classifier on standardised frozen features, full-batch L-BFGS
on the L2-regularised cross-entropy (deterministic, no learning-rate schedule to tune;
scikit-learn's LogisticRegression solves the same problem).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from textcl.vision.augment import normalize, to_float

__all__ = ["extract_features", "knn_accuracy", "knn_predict", "linear_probe_accuracy"]


@torch.no_grad()
def extract_features(
    encoder: Callable[[Tensor], Tensor],
    images: np.ndarray | Tensor,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Features of uint8 ``(N, H, W, 3)`` images (CIFAR normalisation, no augmentation), on CPU."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        # np.array copies: a memory-mapped (read-only) split would make torch warn.
        x = chunk if isinstance(chunk, Tensor) else torch.from_numpy(np.array(chunk))
        out.append(encoder(normalize(to_float(x.to(device)))).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def knn_predict(
    query: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int = 200,
    temperature: float = 0.1, chunk: int = 1024,
) -> Tensor:
    """Weighted-kNN class scores ``(Q, num_classes)`` (see the module docstring)."""
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    scores = []
    for start in range(0, query.shape[0], chunk):
        q = F.normalize(query[start : start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weight = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        votes.scatter_add_(1, bank_labels[idx], weight)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(
    query: Tensor, query_labels: Tensor, bank: Tensor, bank_labels: Tensor, k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Top-1 accuracy of ``knn_predict``."""
    num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    pred = knn_predict(query, bank, bank_labels.long(), num_classes, k, temperature).argmax(1)
    return float((pred == query_labels).float().mean())


def linear_probe_accuracy(
    train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor,
    weight_decay: float = 1e-4, max_iter: int = 200,
) -> float:
    """Top-1 test accuracy of a linear classifier trained on frozen ``train`` features."""
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp(min=1e-6)
    xtr, xte = (train - mean) / std, (test - mean) / std
    ytr = train_labels.long()
    num_classes = int(max(ytr.max(), test_labels.max())) + 1
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(xtr.shape[1], num_classes, generator=g) * 0.01).requires_grad_(True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, ytr) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(((xte @ w + b).argmax(1) == test_labels).float().mean())
