"""Sentence permutation: passages and labels, decoding, Kendall's tau, the loss by hand,
and training a tiny BERT on a corpus whose order is learnable."""

import json
import math
import random

import numpy as np
import pytest
import torch

from textcl.objectives.permutation import (
    PermutationConfig,
    SentencePermutation,
    ShuffledPassageDataset,
    decode_orders,
    kendall_tau,
    successor_targets,
)
from textcl.objectives.permutation_pirl import PermutationPIRL
from textcl.sentences import SentenceDocument
from textcl.train import main


def _toy_ids(lengths):
    """Token ids where sentence s of document d is the single token ``1000 * d + s``."""
    return [[[1000 * d + s] for s in range(n)] for d, n in enumerate(lengths)]


def test_labels_invert_shuffle_and_passages_stay_in_one_document():
    lengths = [3, 7, 12, 2, 5, 9]
    ids = _toy_ids(lengths)
    ds = ShuffledPassageDataset(ids, k=3, seed=5)
    # non-overlapping windows; the 2-sentence document gives none
    assert len(ds) == sum(n // 3 for n in lengths)
    starts = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            doc, start = item["doc"], item["start"]
            original = ids[doc][start : start + 3]
            assert len(original) == 3  # never runs past the end of the document
            # un-shuffling with the labels gives the original passage
            assert [item["sentences"][j] for j in item["order"]] == original
            tokens = [s[0] for s in item["sentences"]]
            assert {t // 1000 for t in tokens} == {doc}  # one document only
            assert sorted(t % 1000 for t in tokens) == list(range(start, start + 3))  # consecutive
            starts.add((doc, start))
    # the per-epoch offset moves passage boundaries where a document has slack (7 = 2 * 3 + 1)
    assert {(1, 0), (1, 1)} <= starts


def test_successor_targets():
    # order[i] = shuffled position of original sentence i
    order = torch.tensor([[2, 0, 1], [0, 1, 2]])
    # row 0: pos 2 (orig 0) -> pos 0 (orig 1) -> pos 1 (orig 2) -> END (3)
    assert successor_targets(order).tolist() == [[1, 3, 0], [1, 2, 3]]


def test_seeded_determinism():
    ids = _toy_ids([20, 31, 17])
    a, b = ShuffledPassageDataset(ids, 5, seed=1), ShuffledPassageDataset(ids, 5, seed=1)
    assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]
    b.set_epoch(1)
    assert [a[i]["order"] for i in range(len(a))] != [b[i]["order"] for i in range(len(b))]
    c = ShuffledPassageDataset(ids, 5, seed=2)
    assert [a[i]["order"] for i in range(len(a))] != [c[i]["order"] for i in range(len(c))]
    # the held-out stream is its own fixed sequence
    d = ShuffledPassageDataset(ids, 5, seed=1, stream=1)
    assert [a[i]["order"] for i in range(len(a))] != [d[i]["order"] for i in range(len(d))]


def _scores_for(true_orders, k, good=0.0, bad=-5.0):
    """Transition log-scores that favour exactly the transitions of ``true_orders``."""
    s = torch.full((len(true_orders), k + 1, k + 1), bad)
    for p, order in enumerate(true_orders):
        nodes = [0] + [j + 1 for j in order] + [0]
        for a, b in zip(nodes[:-1], nodes[1:]):
            s[p, a, b] = good
    return s


@pytest.mark.parametrize("k", [5, 9])  # exact search and greedy
def test_decoding_finds_the_encoded_order(k):
    rng = random.Random(0)
    truth = [rng.sample(range(k), k) for _ in range(6)]
    pred = decode_orders(_scores_for(truth, k))
    assert pred.tolist() == truth


def test_exact_search_beats_greedy():
    # START -> sentence 2 looks best locally, but every path through it first is poor;
    # the best total is START -> 0 -> 1 -> 2 -> END (-1.3 vs <= -20.1).
    s = torch.full((1, 4, 4), -10.0)
    s[0, 0, 3], s[0, 0, 1] = -0.1, -1.0
    s[0, 1, 2], s[0, 2, 3], s[0, 3, 0] = -0.1, -0.1, -0.1
    assert decode_orders(s).tolist() == [[0, 1, 2]]
    assert decode_orders(s, exact_max=0).tolist()[0][0] == 2  # greedy takes the bait


def test_kendall_tau():
    ident = torch.tensor([[0, 1, 2, 3, 4]])
    assert kendall_tau(ident, ident).item() == 1.0
    assert kendall_tau(ident.flip(1), ident).item() == -1.0
    # one swapped adjacent pair of 4: 5 concordant, 1 discordant of 6 pairs
    assert kendall_tau(torch.tensor([[1, 0, 2, 3]]), torch.tensor([[0, 1, 2, 3]])).item() == pytest.approx(4 / 6)
    from scipy.stats import kendalltau

    g = torch.Generator().manual_seed(0)
    a = torch.stack([torch.randperm(6, generator=g) for _ in range(20)])
    b = torch.stack([torch.randperm(6, generator=g) for _ in range(20)])
    ours = kendall_tau(a, b)
    ref = [kendalltau(a[i].argsort().numpy(), b[i].argsort().numpy()).statistic for i in range(20)]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)


def _method(tmp_path, k=3, temperature=1.0, in_batch=False):
    from tests._tiny import tiny_encoder

    docs_file = tmp_path / "d.jsonl"
    docs_file.write_text('{"text": "x"}\n')
    cfg = PermutationConfig.model_validate({
        "data": {"documents": str(docs_file), "held_out_fraction": 0.0},
        "objective": {"passage_sentences": k, "temperature": temperature, "in_batch_negatives": in_batch},
    })
    docs = [SentenceDocument(str(i), [f"sentence {j} of {i}." for j in range(6)]) for i in range(3)]
    return SentencePermutation(tiny_encoder(tmp_path), cfg, docs, seed=0)


def test_loss_equals_hand_computed_value(tmp_path):
    m = _method(tmp_path, k=3, temperature=1.0)
    # shuffled positions 0, 1, 2 hold original sentences 2, 0, 1: order = [1, 2, 0]
    e = torch.eye(3)
    # the encoder is random but the head starts as the identity; use 3-d embeddings
    m.successor_head = type(m.successor_head)(3)
    m.start_marker.data = torch.tensor([0.0, 1.0, 1.0])
    m.end_marker.data = torch.tensor([1.0, 1.0, 0.0])
    batch = {"order": torch.tensor([[1, 2, 0]]), "doc": torch.tensor([0])}
    out = m.loss_from_embeddings({"sentences": e}, batch)
    c = 1 / math.sqrt(2)  # cos(e_i, END) for i in {0, 1}, cos(START, e_i) for i in {1, 2}
    expected = [
        math.log(2 + math.exp(c)) - c,  # pos 0 (last sentence) -> END, vs pos 1, pos 2
        math.log(2 + math.exp(c)),  # pos 1 (first) -> pos 2, vs pos 0 and END (c)
        math.log(3),  # pos 2 -> pos 0; pos 1 and END both at cosine 0
        math.log(1 + 2 * math.exp(c)) - c,  # START -> pos 1, vs pos 0 (0) and pos 2 (c)
    ]
    assert out["loss"].item() == pytest.approx(sum(expected) / 4, abs=1e-6)

    # the decoding scores are the same softmax: their mean target log-prob is -loss
    with torch.no_grad():
        t = m.transition_scores(e)
    targets = [t[0, 1, 0], t[0, 2, 3], t[0, 3, 1], t[0, 0, 2]]
    assert -sum(float(x) for x in targets) / 4 == pytest.approx(out["loss"].item(), abs=1e-6)


def test_in_batch_negatives_ignore_same_document(tmp_path):
    torch.manual_seed(0)
    e = torch.randn(6, 8)
    m = _method(tmp_path, k=3, temperature=0.5, in_batch=True)
    m.successor_head = type(m.successor_head)(8)
    m.start_marker.data, m.end_marker.data = torch.randn(8), torch.randn(8)
    order = torch.tensor([[0, 1, 2], [2, 0, 1]])
    same_doc = m.loss_from_embeddings({"sentences": e}, {"order": order, "doc": torch.tensor([4, 4])})
    m.cfg.objective.in_batch_negatives = False
    alone = m.loss_from_embeddings({"sentences": e}, {"order": order, "doc": torch.tensor([4, 4])})
    m.cfg.objective.in_batch_negatives = True
    other_doc = m.loss_from_embeddings({"sentences": e}, {"order": order, "doc": torch.tensor([4, 5])})
    # same document: the other passage is ignored, so in-batch == passage-only
    assert same_doc["loss"].item() == pytest.approx(alone["loss"].item(), abs=1e-6)
    # other document: its 3 sentences are extra negatives for the 6 sentence queries
    assert other_doc["loss"].item() > alone["loss"].item()


def test_same_text_as_the_successor_is_not_a_negative(tmp_path):
    torch.manual_seed(1)
    e = torch.randn(6, 8)
    m = _method(tmp_path, k=3, temperature=0.5, in_batch=True)
    m.successor_head = type(m.successor_head)(8)
    m.start_marker.data, m.end_marker.data = torch.randn(8), torch.randn(8)
    order, doc = torch.tensor([[0, 1, 2], [0, 1, 2]]), torch.tensor([0, 1])
    unique = torch.arange(6)
    dup = unique.clone()
    dup[4] = dup[1]  # sentence 4 (other document) has the text of sentence 1, successor of sentence 0
    args = (e, order, doc, True)
    base = m._successor_loss(*args, reduction="none")[0]
    assert torch.equal(m._successor_loss(*args, text_key=unique, reduction="none")[0], base)
    with_dup = m._successor_loss(*args, text_key=dup, reduction="none")[0]
    # only query 0 (whose successor text repeats) and query 3 (its own successor, 4, repeats
    # sentence 1's text: sentence 1 stops being its negative) change, and both lose a negative
    changed = (with_dup - base).abs() > 1e-7
    assert changed.nonzero().flatten().tolist() == [0, 3]
    assert bool((with_dup[changed] < base[changed]).all())


def test_forward_equals_loss_from_embeddings(tmp_path):
    m = _method(tmp_path, k=3)
    ds = m.train_dataset()
    batch = m.collate([ds[i] for i in range(2)])
    m.eval()
    a = m(batch)
    b = m.loss_from_embeddings({k: m.encoder(v, project=True) for k, v in m.embedding_inputs(batch).items()}, batch)
    assert a["loss"].item() == pytest.approx(b["loss"].item(), abs=1e-6)
    assert m.examples_in(batch) == 2


ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"]
FILLER = ["apples", "rivers", "stones", "clouds", "horses", "lamps", "ships", "roads", "birds", "walls"]


def _ordered_corpus(path, n_docs=64, seed=0):
    """Documents of 10 sentences whose position word makes the order learnable."""
    rng = random.Random(seed)
    rows = []
    for d in range(n_docs):
        sents = [f"The {o} part speaks of {rng.choice(FILLER)} and {rng.choice(FILLER)}." for o in ORDINALS]
        rows.append({"id": f"doc{d}", "text": " ".join(sents)})
    rows.append({"id": "short", "text": "Only one sentence here. And a second."})  # < k sentences
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_training_learns_the_order(tmp_path, tiny_bert_dir, one_thread):
    docs = tmp_path / "ordered.jsonl"
    _ordered_corpus(docs)
    recipe = tmp_path / "permutation.yaml"
    recipe.write_text(f"""
method: permutation
output_dir: {tmp_path / 'run'}
seed: 1
model: {{name_or_path: {tiny_bert_dir}, max_seq_length: 24}}
data: {{documents: {docs}, held_out_fraction: 0.25, max_tokens: 16, cache_dir: {tmp_path / 'cache'}}}
objective: {{passage_sentences: 4, temperature: 0.1}}
train: {{batch_size: 8, max_steps: 100, lr: 0.003, warmup_steps: 3, log_every_n_steps: 5}}
""")
    assert main([str(recipe)]) == 0
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0] - 0.5
    assert metrics["permutation_heldout_loss"] < metrics["initial/permutation_heldout_loss"] - 0.5
    # random order: exact 1/4! ~ 0.04, tau 0, successor top-1 1/4 (measured after 100 steps: 1.0, 1.0, 0.93)
    assert metrics["permutation_heldout_exact"] > max(0.7, metrics["initial/permutation_heldout_exact"] + 0.5)
    assert metrics["permutation_heldout_tau"] > 0.8
    assert metrics["permutation_heldout_successor_top1"] > 0.8
    card = (out / "README.md").read_text()
    assert "not part of this model" in card and "1 too few sentences" in card and "lewis" in card.lower()


def test_gradcache_matches_plain_backward(tmp_path):
    from textcl.core.gradcache import GradCache

    m = _method(tmp_path, k=3, in_batch=True)
    m.eval()  # no dropout: mini-batches compute exactly the same embeddings
    with torch.no_grad():  # a non-identity successor head, so every parameter matters
        m.successor_head.fc2.weight.normal_(0, 0.1)
    ds = m.train_dataset()
    batch = m.collate([ds[i] for i in range(4)])
    m(batch)["loss"].backward()
    plain = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    out = GradCache(m, mini_batch_size=5).step(batch)
    assert out["loss"].item() == pytest.approx(m(batch)["loss"].item(), abs=1e-5)
    for name, grad in plain.items():
        torch.testing.assert_close(dict(m.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)
    assert {"successor_head.fc1.weight", "start_marker", "end_marker"} <= set(plain)


def test_pirl_variant_views_and_training(tmp_path, tiny_bert_dir, one_thread):
    m = _method(tmp_path, k=3)
    m.cfg.objective.variant = "pirl"
    pirl = PermutationPIRL(m.encoder, m.cfg, [SentenceDocument("a", [f"s {j}." for j in range(6)])])
    assert not hasattr(pirl, "successor_head")  # no unused parameters under DDP
    pirl.chunk_tokens = None  # one padded batch, rows in example order
    ds = pirl.train_dataset()
    items = [ds[i] for i in range(2)]
    batch = pirl.collate(items)
    assert set(pirl.embedding_inputs(batch)) == {"sentences", "passages"}
    tok = pirl.encoder.tokenizer
    for row, item in enumerate(items):  # the permuted view: the shuffled sentences as one text
        expected = [tok.cls_token_id] + [t for s in item["sentences"] for t in s] + [tok.sep_token_id]
        assert batch["passages"]["input_ids"][row, : len(expected)].tolist() == expected

    docs = tmp_path / "ordered.jsonl"
    _ordered_corpus(docs)
    recipe = tmp_path / "pirl.yaml"
    recipe.write_text(f"""
method: permutation
output_dir: {tmp_path / 'run'}
seed: 1
model: {{name_or_path: {tiny_bert_dir}, max_seq_length: 64}}
data: {{documents: {docs}, held_out_fraction: 0.25, max_tokens: 16, cache_dir: {tmp_path / 'cache'}}}
objective: {{passage_sentences: 4, temperature: 0.1, variant: pirl}}
train: {{batch_size: 8, max_steps: 40, lr: 0.002, warmup_steps: 3, log_every_n_steps: 5}}
""")
    assert main([str(recipe)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["permutation_pirl_heldout_loss"] < metrics["initial/permutation_pirl_heldout_loss"] - 0.3
    assert metrics["permutation_pirl_heldout_top1"] > metrics["initial/permutation_pirl_heldout_top1"]
    assert "PIRL" in (tmp_path / "run" / "README.md").read_text()


def test_old_pirl_spelling_builds_the_pirl_method(tmp_path, tiny_bert_dir, one_thread):
    from textcl.core.method import get_method_class
    from textcl.core.recipe import load_recipe

    docs = tmp_path / "ordered.jsonl"
    _ordered_corpus(docs, n_docs=8)
    methods = []
    for name, extra in (("permutation", ", variant: pirl"), ("permutation-pirl", "")):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(f"""
method: {name}
output_dir: {tmp_path / name}
model: {{name_or_path: {tiny_bert_dir}, max_seq_length: 64}}
data: {{documents: {docs}, held_out_fraction: 0.25, max_tokens: 16, cache_dir: {tmp_path / 'cache'}}}
objective: {{passage_sentences: 4, temperature: 0.1{extra}}}
""")
        torch.manual_seed(0)
        methods.append(get_method_class(name).from_recipe(load_recipe(recipe)))
    old, new = methods
    assert type(old) is type(new) is PermutationPIRL
    ds_old, ds_new = old.train_dataset(), new.train_dataset()
    old.eval(), new.eval()
    with torch.no_grad():
        a = old(old.collate([ds_old[i] for i in range(4)]))["loss"]
        b = new(new.collate([ds_new[i] for i in range(4)]))["loss"]
    assert a.item() == b.item()
    assert old.card_info() == new.card_info() and old.evaluate() == new.evaluate()


class _Heads(torch.nn.Module):
    """The parts of SentencePermutation that its loss uses, without an encoder."""

    _successor_loss = SentencePermutation._successor_loss

    def __init__(self, dim):
        super().__init__()
        from types import SimpleNamespace

        from textcl.objectives.permutation import SuccessorHead

        torch.manual_seed(0)
        self.embed = torch.nn.Linear(5, dim)
        self.successor_head = SuccessorHead(dim)
        torch.nn.init.normal_(self.successor_head.fc2.weight, std=0.2)
        self.start_marker = torch.nn.Parameter(torch.randn(dim))
        self.end_marker = torch.nn.Parameter(torch.randn(dim))
        self.cfg = SimpleNamespace(objective=SimpleNamespace(temperature=0.2))


def _ddp_data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4 * 3, 5, generator=g)  # 4 passages of 3 sentences
    order = torch.stack([torch.randperm(3, generator=g) for _ in range(4)])
    doc = torch.tensor([0, 1, 1, 2])  # document 1 spans both ranks' halves
    text = torch.arange(12)
    text[9] = text[4]  # a repeated sentence text across the two halves
    return x, order, doc, text


def _ddp_worker(rank, world, port, out_dir):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m = _Heads(6)
        x, order, doc, text = _ddp_data()
        p, s = slice(2 * rank, 2 * rank + 2), slice(6 * rank, 6 * rank + 6)
        loss, _ = m._successor_loss(m.embed(x[s]), order[p], doc[p], True, text_key=text[s])
        loss.backward()
        grads = []
        for param in m.parameters():
            dist.all_reduce(param.grad)  # DDP averages over ranks
            grads.append(param.grad / world)
        total = loss.detach().clone()
        dist.all_reduce(total)
        torch.save({"loss": total / world, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_double_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    m = _Heads(6)
    x, order, doc, text = _ddp_data()
    loss, _ = m._successor_loss(m.embed(x), order, doc, True, text_key=text)
    loss.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["loss"].item() == pytest.approx(loss.item(), abs=1e-6)
        for g, param in zip(got["grads"], m.parameters()):
            torch.testing.assert_close(g, param.grad, atol=1e-6, rtol=1e-5)
