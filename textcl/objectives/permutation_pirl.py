"""Order-invariant sentence permutation (after PIRL, Misra and van der Maaten 2020).

Passages as in :mod:`textcl.objectives.permutation` (``k = passage_sentences`` consecutive
sentences of one document, shuffled; :mod:`textcl.objectives._passages`). The positive pair
is (mean of the passage's sentence embeddings, each sentence encoded alone) and (the
*shuffled* passage encoded as one text); the other passages of the global batch are
negatives. Both halves matter: the mean of the shuffled sentences encoded alone would equal
the mean of the original ones exactly (a trivial positive), so the permuted view must be one
sequence, where word positions -- hence the order -- reach the encoder, and the loss teaches
the encoder to ignore that order. The passage text is truncated to ``model.max_seq_length``
tokens: raise it to about ``passage_sentences`` times the typical sentence length. Held-out
metric: the sentence mean retrieves its shuffled passage among all held-out passages
(``permutation_pirl_heldout_top1``; chance ``1 / passages``). No heads, no markers.

Registry name ``permutation-pirl`` (``pirl`` is the vision method). The older spelling,
``method: permutation`` with ``objective.variant: pirl``, builds this class too, with that
recipe's sections (``SentencePermutation.from_recipe``).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from textcl.core.distributed import batch_offset, gather_with_grad
from textcl.core.losses import info_nce, similarity_logits
from textcl.objectives._mlm import MLMOptions
from textcl.objectives._passages import BART_CITATION, PassageObjective
from textcl.objectives.base import TextConfig
from textcl.sentences import SentenceDataSection

__all__ = ["PermutationPIRL", "PermutationPIRLConfig", "PermutationPIRLObjective"]

PIRL_CITATION = """@inproceedings{misra-vandermaaten-2020-pirl,
  title = {Self-Supervised Learning of Pretext-Invariant Representations},
  author = {Misra, Ishan and van der Maaten, Laurens},
  booktitle = {Proceedings of CVPR 2020},
  pages = {6707--6717},
  year = {2020}
}"""


class PermutationPIRLObjective(MLMOptions):
    passage_sentences: int = Field(5, ge=2, description="k: sentences per passage")
    temperature: float = Field(0.05, gt=0)
    max_eval_passages: int = Field(256, ge=1, description="held-out passages for the pretext metric")


class PermutationPIRLConfig(TextConfig):
    data: SentenceDataSection
    objective: PermutationPIRLObjective = PermutationPIRLObjective()


class PermutationPIRL(PassageObjective):
    name = "permutation-pirl"
    metric_prefix = "permutation_pirl"
    config_class = PermutationPIRLConfig
    citation = BART_CITATION + "\n\n" + PIRL_CITATION

    # ---- data
    def passage_views(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """The shuffled passage as one text (truncated to the encoder's max_seq_length)."""
        shuffled = [[t for sent in ex["sentences"] for t in sent] for ex in examples]
        return {"passages": self.encoder.pad_token_ids(shuffled, chunk_tokens=self.chunk_tokens)}

    # ---- loss
    def embedding_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Every sentence of every passage alone (``sentences``) and each shuffled passage as
        one text (``passages``)."""
        return {"sentences": batch["sentences"], "passages": batch["passages"]}

    def loss_from_embeddings(self, embeddings: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Mean of a passage's sentence embeddings ``(N * k, d)`` vs its shuffled passage
        encoded as one text ``(N, d)``, against every other passage of the global batch."""
        e, shuffled = embeddings["sentences"], embeddings["passages"]
        n = shuffled.shape[0]
        query = e.view(n, self.k, -1).mean(dim=1)
        keys = gather_with_grad(shuffled)
        labels = torch.arange(n, device=e.device) + batch_offset(n)
        temperature = self.cfg.objective.temperature
        loss = info_nce(query, keys, labels=labels, temperature=temperature)
        with torch.no_grad():
            top1 = (similarity_logits(query.float(), keys.float(), temperature).argmax(1) == labels).float().mean()
        return {"loss": loss, "top1": top1}

    # ---- evaluation and output
    def heldout_metrics(self) -> dict[str, float]:
        """Each held-out passage's sentence mean retrieves its shuffled passage among all
        held-out shuffled passages (chance: 1 / passages)."""
        if not self.eval_slots:
            return {}
        means, shuffled = [], []
        for batch in self.heldout_batches(self.heldout_passages(), 32):
            e = self.encoder(batch["sentences"], project=True)
            means.append(e.view(-1, self.k, e.shape[-1]).mean(dim=1))
            shuffled.append(self.encoder(batch["passages"], project=True))
        q, keys = torch.cat(means), torch.cat(shuffled)
        labels = torch.arange(q.shape[0], device=q.device)
        t = self.cfg.objective.temperature
        top1 = (similarity_logits(q.float(), keys.float(), t).argmax(1) == labels).float().mean()
        loss = info_nce(q, keys, labels=labels, temperature=t)
        return {"top1": float(top1), "loss": float(loss)}

    def describe_objective(self) -> str:
        return (
            f"order-invariant sentence permutation (PIRL-style): the mean of a {self.k}-sentence "
            "passage's sentence embeddings and its shuffled passage encoded as one text are "
            "positives, InfoNCE"
        )
