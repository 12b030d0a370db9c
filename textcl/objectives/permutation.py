"""Sentence permutation (BART's sentence-shuffling pretext task) in contrastive form.

A *passage* is ``k = passage_sentences`` consecutive sentences of one document (never
across a document boundary; :mod:`textcl.objectives._passages`). Each training example
shuffles one passage with randomness derived from (seed, epoch, index); the task is to
recover the original order. Documents with fewer than ``k`` sentences are skipped and
counted (they appear in the model card), rather than giving shorter passages: a fixed ``k``
keeps the decoding search and the pretext metric (exact-order rate, Kendall's tau)
comparable across documents and runs.

Contrastive form
----------------
Every sentence is encoded **alone** by the shared :class:`~textcl.encoders.TextEncoder`.
The product this objective trains is a single-sentence embedding; encoding a sentence
inside its shuffled passage would need a cross-sentence model (and cross-sentence
attention) that the downstream sentence embedding never uses, so the order signal would
be learnt by a component that is thrown away.

The task is successor prediction. Cosine similarity is symmetric, so plain similarity
cannot tell a successor from a predecessor; hence two small training-only parts:

* a *successor head* applied to the query, ``h(e) = e + W2 gelu(W1 e)`` with ``W2``
  zero-initialised -- it starts as the identity (so the first steps already train
  "adjacent sentences are similar", like next-sentence prediction) and learns the
  asymmetric "what comes next" direction;
* learnable START and END marker vectors: START queries the passage's first sentence,
  and the last sentence's successor is END.

Queries: ``h(e_i)`` for every sentence and START for every passage. Candidates of a
sentence query: the other sentences of its passage (hard negatives) + END; with
``in_batch_negatives: true`` also every other passage's sentences in the global batch
(gathered across processes), except those of the same document, which are dropped
from the softmax via ``ignore_mask`` (the sentence after a passage's last sentence is a
true successor that may sit in a neighbouring passage), and any sentence whose text
equals the query's successor's (Gutenberg dialogue repeats "Yes." and "No."), which is
ignored too rather than counted as a negative. START's candidates are always
its own passage's sentences only: a single START vector cannot know which passage it
opens. Loss: :func:`textcl.core.losses.info_nce` over all queries (mean).

Decoding and pretext metrics
----------------------------
With ``T[a, b] = log p(next = b | a)`` (row ``a`` in {START, s_1..s_k}, column ``b`` in
{END, s_1..s_k}, each row a softmax over its passage's candidates), the predicted
order is the one maximising ``T[START, s_1] + sum_j T[s_j, s_j+1] + T[s_k, END]``:
exact search over all ``k!`` orders (vectorised) for ``k <= 7``, greedy beyond.
Held-out metrics on a document-level split (fixed passages, own seed stream):
``permutation_heldout_exact`` (exact-order recovery rate), ``permutation_heldout_tau``
(mean Kendall's tau between predicted and true order), ``permutation_heldout_successor_top1``
(successor among the passage's other sentences + END) and the held-out loss.
Random-order baseline for ``k = 5``: exact rate ``1/5! = 0.0083``, ``E[tau] = 0``,
successor top-1 ``1/k = 0.2`` (``k - 1`` other sentences + END); in general ``1/k!``,
0 and ``1/k``.

The successor head and the markers exist only for training: the saved
sentence-transformers model is the encoder (with its pooling) alone.

Order-invariant variant
-----------------------
``method: permutation-pirl`` (:mod:`textcl.objectives.permutation_pirl`). The older spelling
``method: permutation`` with ``objective.variant: pirl`` still builds it (``from_recipe``).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from textcl.core.distributed import batch_offset, gather_no_grad, gather_with_grad
from textcl.core.losses import info_nce, similarity_logits
from textcl.objectives._mlm import MLMOptions
from textcl.objectives._passages import BART_CITATION, PassageObjective, ShuffledPassageDataset
from textcl.objectives.base import TextConfig
from textcl.objectives.permutation_pirl import PermutationPIRL
from textcl.sentences import SentenceDataSection, SentenceDocument

__all__ = [
    "EXACT_SEARCH_MAX",
    "PermutationConfig",
    "PermutationObjective",
    "SentencePermutation",
    "ShuffledPassageDataset",
    "SuccessorHead",
    "decode_orders",
    "kendall_tau",
    "successor_targets",
]

CITATION = BART_CITATION

#: Largest passage length decoded by exhaustive search (7! = 5040 orders); greedy beyond.
EXACT_SEARCH_MAX = 7


# --------------------------------------------------------------------- recipe sections
class PermutationObjective(MLMOptions):
    passage_sentences: int = Field(5, ge=2, description="k: sentences per passage")
    # pirl: the permutation-pirl objective (from_recipe builds it; the older spelling of that method)
    variant: Literal["successor", "pirl"] = Field(
        "successor", description="successor: recover the order; pirl: order-invariant passage pairs"
    )
    temperature: float = Field(0.05, gt=0)
    in_batch_negatives: bool = Field(
        False, description="also rank other passages' sentences of the global batch (same-document ones ignored)"
    )
    head_hidden_dim: int | None = Field(None, ge=1, description="successor head width; default: embedding width")
    max_eval_passages: int = Field(256, ge=1, description="held-out passages for the pretext metric")


class PermutationConfig(TextConfig):
    data: SentenceDataSection
    objective: PermutationObjective = PermutationObjective()


# --------------------------------------------------------------------- passages and labels
def successor_targets(order: Tensor) -> Tensor:
    """Shuffled-position successor of each shuffled sentence; ``k`` means END.

    ``order`` (``(N, k)``): ``order[p, i]`` = shuffled position of original sentence
    ``i``. Returns ``next_pos`` (``(N, k)``) with ``next_pos[p, order[p, i]] =
    order[p, i + 1]`` and ``k`` for the original last sentence.
    """
    n, k = order.shape
    nxt = torch.cat([order[:, 1:], torch.full((n, 1), k, dtype=order.dtype, device=order.device)], dim=1)
    return torch.empty_like(order).scatter_(1, order, nxt)


def _all_orders(k: int, device: torch.device) -> Tensor:
    return torch.tensor(list(itertools.permutations(range(k))), dtype=torch.long, device=device)


def decode_orders(scores: Tensor, exact_max: int = EXACT_SEARCH_MAX) -> Tensor:
    """Most likely orders from transition scores.

    ``scores`` (``(N, k + 1, k + 1)``): ``scores[p, a, b]`` = log-probability that ``b``
    follows ``a`` in passage ``p``; row 0 is START, column 0 is END, rows/columns
    ``1..k`` are the (shuffled) sentences. Returns ``(N, k)`` sentence indices
    (``0..k-1``) in the predicted original order: the order maximising
    ``scores[0, s1] + sum scores[s_j, s_j+1] + scores[sk, 0]`` -- exact over all ``k!``
    orders when ``k <= exact_max``, greedy (best unused successor from START) beyond.
    """
    if scores.dim() != 3 or scores.shape[1] != scores.shape[2]:
        raise ValueError(f"scores must be (N, k+1, k+1), got {tuple(scores.shape)}")
    n, k = scores.shape[0], scores.shape[1] - 1
    if k <= exact_max:
        orders = _all_orders(k, scores.device)  # (P, k)
        nodes = orders + 1
        total = scores[:, 0, nodes[:, 0]] + scores[:, nodes[:, -1], 0]  # (N, P)
        if k > 1:
            total = total + scores[:, nodes[:, :-1], nodes[:, 1:]].sum(-1)
        return orders[total.argmax(dim=1)]
    out = torch.empty(n, k, dtype=torch.long, device=scores.device)
    used = torch.zeros(n, k, dtype=torch.bool, device=scores.device)
    current = torch.zeros(n, dtype=torch.long, device=scores.device)
    rows = torch.arange(n, device=scores.device)
    for step in range(k):
        cand = scores[rows, current, 1:].masked_fill(used, float("-inf"))
        pick = cand.argmax(dim=1)
        out[:, step] = pick
        used[rows, pick] = True
        current = pick + 1
    return out


def kendall_tau(pred_order: Tensor, true_order: Tensor) -> Tensor:
    """Kendall's tau (no ties) between two orders of the same ``k`` items, per row.

    Orders are ``(N, k)`` sequences of item ids ``0..k-1``. ``tau = (concordant -
    discordant) / (k (k - 1) / 2)``: 1 for the same order, -1 for the reverse.
    """
    if pred_order.shape != true_order.shape or pred_order.dim() != 2:
        raise ValueError(f"orders must both be (N, k), got {tuple(pred_order.shape)} and {tuple(true_order.shape)}")
    k = pred_order.shape[1]
    if k < 2:
        raise ValueError("Kendall's tau needs k >= 2 items")
    pred_rank, true_rank = pred_order.argsort(dim=1), true_order.argsort(dim=1)
    dp = torch.sign(pred_rank[:, :, None] - pred_rank[:, None, :])
    dt = torch.sign(true_rank[:, :, None] - true_rank[:, None, :])
    # Every unordered pair appears twice in the full (k, k) grid.
    return (dp * dt).sum(dim=(1, 2)).float() / (k * (k - 1))


# --------------------------------------------------------------------- heads
class SuccessorHead(nn.Module):
    """Residual MLP ``e + W2 gelu(W1 e)`` with ``W2 = 0`` at init (identity at start)."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.gelu(self.fc1(x)))


# --------------------------------------------------------------------- the method
class SentencePermutation(PassageObjective):
    name = "permutation"
    config_class = PermutationConfig
    citation = CITATION

    def __init__(self, encoder: Any, config: PermutationConfig, documents: list[SentenceDocument],
                 seed: int = 42, skipped: dict[str, int] | None = None, mlm_model: nn.Module | None = None):
        if config.objective.variant == "pirl":
            raise ValueError("objective.variant: pirl is the permutation-pirl objective: build "
                             "textcl.objectives.permutation_pirl.PermutationPIRL")
        super().__init__(encoder, config, documents, seed, skipped, mlm_model)
        # The heads are the successor task's (the PIRL variant, another class, has none: a
        # parameter without gradient would stall DDP).
        dim = self.projected_dim
        self.successor_head = SuccessorHead(dim, config.objective.head_hidden_dim)
        self.start_marker = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.end_marker = nn.Parameter(torch.randn(dim) / math.sqrt(dim))

    @classmethod
    def from_recipe(cls, recipe: Any) -> PassageObjective:
        if recipe.config.objective.variant == "pirl":  # the older spelling of method: permutation-pirl
            return PermutationPIRL.from_recipe(recipe)
        return super().from_recipe(recipe)  # type: ignore[return-value]

    # ---- loss
    def embedding_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Encoder inputs: every sentence of every passage, each encoded alone."""
        return {"sentences": batch["sentences"]}

    def loss_from_embeddings(self, embeddings: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """All loss logic, given the sentence embeddings ``(N * k, d)``."""
        e = embeddings["sentences"]
        order, doc = batch["order"].to(e.device), batch["doc"].to(e.device)
        loss, top1 = self._successor_loss(e, order, doc, self.cfg.objective.in_batch_negatives,
                                          text_key=batch.get("text_key"))
        return {"loss": loss, "top1": top1}

    def _successor_loss(self, e: Tensor, order: Tensor, doc: Tensor, in_batch: bool,
                        text_key: Tensor | None = None, reduction: str = "mean") -> tuple[Tensor, Tensor]:
        """InfoNCE of sentence + START queries (see the module docstring); (loss, top-1).

        ``text_key`` (``(N * k,)``, optional): a hash of each sentence's token ids; a
        candidate with the same text as a query's successor (another "Yes.") is ignored
        rather than counted as a negative.
        """
        n, k = order.shape
        device = e.device
        if in_batch:
            keys_e = gather_with_grad(e)
            key_doc = gather_no_grad(doc)
            key_text = gather_no_grad(text_key) if text_key is not None else None
            off_s, off_p = batch_offset(n * k), batch_offset(n)
        else:
            keys_e, key_doc, key_text, off_s, off_p = e, doc, text_key, 0, 0
        m = keys_e.shape[0]  # sentences among the candidates; END is column m
        keys = torch.cat([keys_e, self.end_marker[None].to(keys_e.dtype)], dim=0)
        key_passage = torch.arange(m, device=device) // k
        key_doc = key_doc.to(device)[key_passage]

        local = torch.arange(n * k, device=device)
        q_passage = local // k + off_p  # global passage of each sentence query
        nxt = successor_targets(order).reshape(-1)
        sent_labels = torch.where(nxt == k, torch.full_like(nxt, m), off_s + (local // k) * k + nxt)
        other_passage = key_passage[None, :] != q_passage[:, None]
        if in_batch:
            same_doc = key_doc[None, :] == doc[local // k][:, None]
            sent_ignore = other_passage & same_doc
        else:
            sent_ignore = other_passage
        sent_ignore = sent_ignore.clone()
        sent_ignore[local, off_s + local] = True  # a sentence is not its own successor
        if key_text is not None:
            key_text = key_text.to(device)
            is_end = sent_labels == m
            target_text = torch.where(is_end, torch.full_like(sent_labels, -1), key_text[sent_labels.clamp(max=m - 1)])
            duplicate = key_text[None, :] == target_text[:, None]
            duplicate[local[~is_end], sent_labels[~is_end]] = False
            sent_ignore |= duplicate
        sent_ignore = torch.cat([sent_ignore, torch.zeros(n * k, 1, dtype=torch.bool, device=device)], dim=1)

        p_local = torch.arange(n, device=device)
        start_labels = off_s + p_local * k + order[:, 0]
        start_ignore = key_passage[None, :] != (p_local + off_p)[:, None]
        start_ignore = torch.cat([start_ignore, torch.ones(n, 1, dtype=torch.bool, device=device)], dim=1)

        query = torch.cat([self.successor_head(e), self.start_marker[None].to(e.dtype).expand(n, -1)], dim=0)
        labels = torch.cat([sent_labels, start_labels])
        ignore = torch.cat([sent_ignore, start_ignore])
        temperature = self.cfg.objective.temperature
        loss = info_nce(query, keys, labels=labels, ignore_mask=ignore, temperature=temperature,
                        reduction=reduction)
        with torch.no_grad():
            logits = similarity_logits(query.float(), keys.float(), temperature).masked_fill(ignore, float("-inf"))
            top1 = (logits.argmax(dim=1) == labels).float().mean()
        return loss, top1

    # ---- evaluation and output
    def transition_scores(self, e: Tensor) -> Tensor:
        """``(N, k + 1, k + 1)`` successor log-probabilities within each passage (see
        :func:`decode_orders` for the layout) from sentence embeddings ``(N * k, d)``."""
        k = self.k
        n = e.shape[0] // k
        e = e.view(n, k, -1).float()
        successor = self.successor_head(e.to(self.start_marker.dtype)).float()
        query = torch.cat([self.start_marker.float().expand(n, 1, -1), successor], dim=1)
        keys = torch.cat([self.end_marker.float().expand(n, 1, -1), e], dim=1)
        logits = similarity_logits(query, keys, self.cfg.objective.temperature)  # (n, k+1, k+1)
        ignore = torch.eye(k + 1, dtype=torch.bool, device=e.device)  # self, and START -> END
        return logits.masked_fill(ignore, float("-inf")).log_softmax(dim=-1)

    def heldout_metrics(self) -> dict[str, float]:
        """Held-out passages (fixed: own seed stream, epoch 0): exact-order rate, mean
        Kendall's tau, successor top-1 within the passage, and the held-out loss."""
        if not self.eval_slots:
            return {}
        exact, taus, succ, losses = [], [], [], []
        for batch in self.heldout_batches(self.heldout_passages(), 32):
            e = self.encoder(batch["sentences"], project=True)
            order = batch["order"]
            scores = self.transition_scores(e)
            pred = decode_orders(scores)
            exact.append((pred == order).all(dim=1).float())
            taus.append(kendall_tau(pred, order))
            nxt = successor_targets(order)  # k = END = column 0 in the score layout
            target = torch.where(nxt == self.k, torch.zeros_like(nxt), nxt + 1)
            succ.append((scores[:, 1:, :].argmax(dim=-1) == target).float().reshape(-1))
            loss, _ = self._successor_loss(e, order, batch["doc"], in_batch=False, text_key=batch["text_key"],
                                           reduction="none")
            losses.append(loss)
        return {
            "exact": float(torch.cat(exact).mean()),
            "tau": float(torch.cat(taus).mean()),
            "successor_top1": float(torch.cat(succ).mean()),
            "loss": float(torch.cat(losses).mean()),
        }

    def describe_objective(self) -> str:
        return (
            f"sentence permutation (BART) as contrastive successor prediction over {self.k}-sentence "
            "passages, InfoNCE. The successor head and the START/END marker vectors are used "
            "only in training and are not part of this model"
        )
