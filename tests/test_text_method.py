"""A new text objective is one file on TextMethod + one registry line + one recipe + one test:
a toy objective defined here (its config, batch and loss only) is registered, built from a
recipe on a tiny BERT, trained with the Trainer, evaluated, saved and loaded back."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from _sentence_toy import topic_documents
from pydantic import Field

from textcl.core.losses import info_nce, retrieval_top1
from textcl.core.method import get_method_class, register_method
from textcl.core.recipe import load_recipe
from textcl.core.trainer import Trainer
from textcl.objectives._mlm import MLMOptions
from textcl.objectives._sentence_common import PositionDataset, SentenceObjective
from textcl.objectives.base import TextConfig, TextMethod
from textcl.sentences import SentenceDataSection

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# ---------------------------------------------------------------- the whole toy objective
class ReversalObjective(MLMOptions):
    temperature: float = Field(0.1, gt=0)


class ReversalConfig(TextConfig):
    data: SentenceDataSection
    objective: ReversalObjective = ReversalObjective()


class _Sentences(PositionDataset):
    def example(self, d: int, s: int, rng: np.random.Generator) -> dict[str, Any]:
        return {"query": self.corpus.sentence(d, s)}


@register_method("reversal")
class Reversal(SentenceObjective):
    """Toy: each sentence retrieves its own words in reverse order among the batch's."""

    config_class = ReversalConfig
    title = "Toy: reversed-sentence retrieval"

    def train_dataset(self) -> torch.utils.data.Dataset:
        return self.mlm_dataset(_Sentences(self.train_corpus, self.train_corpus.positions(), self.seed))

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [ex["query"] for ex in examples]
        batch = {"queries": self.encoder.pad_token_ids(ids), "keys": self.encoder.pad_token_ids([i[::-1] for i in ids])}
        return self.add_mlm(batch, ids, examples)

    def embedding_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"queries": batch["queries"], "keys": batch["keys"]}

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        q, k = embeddings["queries"], embeddings["keys"]
        return {"loss": info_nce(q, k, temperature=self.cfg.objective.temperature), "top1": retrieval_top1(q, k)}

    def heldout_metrics(self) -> dict[str, float]:
        ids = [self.eval_corpus.sentence(int(d), int(s)) for d, s in self.eval_corpus.positions()]
        return {"top1": float(retrieval_top1(self.embed_ids(ids), self.embed_ids([i[::-1] for i in ids])))}


# ---------------------------------------------------------------- using it
def _recipe(tmp_path, tiny_bert_dir, **objective):
    docs = topic_documents(tmp_path / "docs.jsonl", n_docs=24)
    recipe = {
        "method": "reversal", "output_dir": str(tmp_path / "run"), "seed": 3,
        "model": {"name_or_path": str(tiny_bert_dir), "max_seq_length": 16},
        "data": {"documents": str(docs), "held_out_fraction": 0.2, "max_tokens": 12,
                 "cache_dir": str(tmp_path / "cache")},
        "objective": {"temperature": 0.1, **objective},
        "train": {"batch_size": 16, "max_steps": 12, "lr": 3e-3, "log_every_n_steps": 1},
    }
    path = tmp_path / "reversal.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return load_recipe(path)


def test_a_toy_objective_trains_saves_and_loads(tmp_path, tiny_bert_dir):
    from textcl.embed import Embedder

    recipe = _recipe(tmp_path, tiny_bert_dir)
    torch.manual_seed(recipe.seed)
    method = get_method_class("reversal").from_recipe(recipe)
    assert isinstance(method, TextMethod) and method.mlm_model is None
    before = method.evaluate()
    trainer = Trainer(method, recipe.train, recipe.output_dir, seed=recipe.seed)
    after = trainer.fit()
    losses = [r["loss"] for r in trainer.history if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.3, losses
    assert set(before) == {"reversal_heldout_top1"} and after["reversal_heldout_top1"] >= before["reversal_heldout_top1"]

    out = tmp_path / "model"
    method.save_model(out, method.card_info())
    card = (out / "README.md").read_text()
    assert "Toy: reversed-sentence retrieval" in card and "training documents" in card
    texts = ["Red blue green.", "The king and the queen."]
    method.encoder.eval()
    with torch.no_grad():
        ours = torch.nn.functional.normalize(method.encoder.embed(method.encoder.tokenize(texts)), dim=1)
    np.testing.assert_allclose(Embedder.load(out).encode(texts), ours.numpy(), atol=1e-5)


def test_the_base_adds_the_mlm_term_and_gradcache(tmp_path, tiny_bert_dir):
    from textcl.core.gradcache import GradCache, supports_gradcache

    recipe = _recipe(tmp_path, tiny_bert_dir, mlm_weight=0.5)
    torch.manual_seed(0)
    method = get_method_class("reversal").from_recipe(recipe)
    assert method.mlm_model.base_model is method.encoder.transformer and supports_gradcache(method)
    ds = method.train_dataset()
    batch = method.collate([ds[i] for i in range(8)])
    method.eval()  # no dropout: the forwards below compute the same function
    with torch.no_grad():
        sides = {k: method.encoder(v, project=True) for k, v in method.embedding_inputs(batch).items()}
        contrastive = method.loss_from_embeddings(sides, batch)["loss"]
    out = method(batch)  # loss = contrastive + mlm_weight * MLM
    assert float(out["loss"].detach()) == pytest.approx(float(contrastive + 0.5 * out["mlm_loss"]), rel=1e-5)
    method.zero_grad(set_to_none=True)
    out["loss"].backward()
    plain = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    method.zero_grad(set_to_none=True)
    cached = GradCache(method, 3).step(batch)
    assert float(cached["loss"].detach()) == pytest.approx(float(out["loss"].detach()), rel=1e-5)
    for name, grad in plain.items():
        torch.testing.assert_close(method.get_parameter(name).grad, grad, atol=1e-5, rtol=1e-4)
