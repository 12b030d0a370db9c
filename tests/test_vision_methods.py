"""Each vision method trains through the real trainer / CLI on tiny synthetic images, and
the hook-driven state (momentum encoder, queue, memory bank, prototypes) follows its rule."""

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from textcl.core.method import get_method_class
from textcl.core.recipe import TrainConfig, load_recipe
from textcl.core.trainer import Trainer
from textcl.train import main
from textcl.vision.backbones import load_backbone

TINY_MODEL = {"arch": "resnet_small", "width": 0.125, "channels_last": True}
TINY_DATA = {"source": "synthetic", "image_size": 16, "synthetic_train": 64, "synthetic_test": 32, "knn_k": 10}
OBJECTIVES = {
    "simclr": {"augment": {"size": 16}},
    "npid": {"num_negatives": 32, "augment": {"size": 16}},
    "pirl": {"num_negatives": 32, "loss": "infonce", "patch_size": 6, "augment": {"size": 16}},
    "moco": {"queue_size": 48, "augment": {"size": 16}},
    "swav": {"num_prototypes": 8, "projection_hidden_dim": 32, "freeze_prototypes_steps": 1, "num_local_crops": 2,
             "queue_length": 32, "global_crop": {"size": 16}, "local_crop": {"size": 8, "scale": [0.05, 0.3]}},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: on shared cores, OpenMP threads spin-wait each other (10-100x slower).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _recipe(tmp_path, method, train=None, **sections):
    recipe = {
        "method": method, "output_dir": str(tmp_path / "run"), "seed": 0, "model": TINY_MODEL, "data": TINY_DATA,
        "objective": OBJECTIVES[method],
        "train": {"batch_size": 16, "max_steps": 3, "optimizer": "sgd", "lr": 0.05, "log_every_n_steps": 1,
                  "save_every_n_steps": 3, **(train or {})},
    }
    recipe.update(sections)
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _method(tmp_path, name, **objective):
    recipe = load_recipe(_recipe(tmp_path, name), [f"objective.{k}={v}" for k, v in objective.items()])
    torch.manual_seed(0)
    return get_method_class(name).from_recipe(recipe), recipe


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_method_trains_through_the_cli_and_writes_knn_metrics(tmp_path, name):
    assert main([_recipe(tmp_path, name)]) == 0
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["knn_top1"] <= 1.0 and "initial/knn_top1" in metrics
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log if "loss" in r)
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))  # no pickles
    backbone = load_backbone(out)  # model.safetensors + config.json + textcl_backbone.json
    assert backbone(torch.rand(2, 3, 16, 16)).shape == (2, backbone.dim)
    assert "knn_top1" in (out / "README.md").read_text()
    assert (out / "checkpoints" / "step_00000003").is_dir()


def test_simclr_improves_knn_over_random_init(tmp_path):
    recipe = _recipe(
        tmp_path, "simclr",
        train={"batch_size": 64, "max_steps": 40, "optimizer": "adamw", "lr": 0.003, "weight_decay": 1e-4,
               "scheduler": "cosine", "log_every_n_steps": 10, "save_every_n_steps": None},
        data={**TINY_DATA, "synthetic_train": 256, "synthetic_test": 128, "knn_k": 20},
        objective={"augment": {"size": 16, "scale": [0.3, 1.0]}},
    )
    assert main([recipe]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["knn_top1"] > metrics["initial/knn_top1"] + 0.1, metrics  # 0.63 -> 0.88 when written


def test_moco_step_momentum_update_and_enqueue(tmp_path):
    method, _ = _method(tmp_path, "moco", momentum=0.9)
    ds = method.train_dataset()
    batch = method.collate([ds[i] for i in range(16)])
    method.train()
    ptr = int(method.queue.ptr)
    out = method(batch)
    keys = method._pending[0].clone()
    assert not keys.requires_grad
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    out["loss"].backward()
    assert all(p.grad is None for p in method.key_backbone.parameters())  # keys carry no gradient
    key_before = [p.clone() for p in method.key_backbone.parameters()]
    opt.step()
    method.after_optimizer_step(1)
    for k0, q, k in zip(key_before, method.backbone.parameters(), method.key_backbone.parameters()):
        assert torch.equal(k, k0 * 0.9 + q * (1 - 0.9))
    assert int(method.queue.ptr) == (ptr + 16) % 48
    assert torch.equal(method.queue.queue[ptr : ptr + 16], keys)


def test_npid_bank_update_after_step(tmp_path):
    method, _ = _method(tmp_path, "npid", bank_momentum=0.5)
    ds = method.train_dataset()
    batch = method.collate([ds[i] for i in (3, 7, 9, 20)])
    method.train()
    old = method.bank.bank.clone()
    out = method(batch)
    assert torch.isfinite(method.log_z[0])  # NCE normaliser estimated on the first batch
    v = method._pending[0][1].clone()
    out["loss"].backward()
    method.after_optimizer_step(1)
    idx = batch["index"]
    assert torch.allclose(method.bank.bank[idx], F.normalize(0.5 * old[idx] + 0.5 * v, dim=1), atol=1e-7)
    others = [i for i in range(len(old)) if i not in idx.tolist()]
    assert torch.equal(method.bank.bank[others], old[others])


def test_swav_prototypes_normalised_and_frozen_first_steps(tmp_path):
    method, recipe = _method(tmp_path, "swav", freeze_prototypes_steps=2)
    w0 = method.prototypes.weight.detach().clone()
    assert torch.allclose(w0.norm(dim=1), torch.ones(len(w0)), atol=1e-6)
    seen = []

    class Watch:
        def on_step_end(self, trainer):
            seen.append(method.prototypes.weight.detach().clone())

    cfg = TrainConfig(batch_size=16, max_steps=4, optimizer="sgd", lr=0.5, log_every_n_steps=1)
    Trainer(method, cfg, tmp_path / "swav", seed=0, callbacks=[Watch()]).fit()
    # steps 1-2: frozen (up to re-normalising unit rows); step 3: learning
    assert torch.allclose(seen[0], w0, atol=1e-7) and torch.allclose(seen[1], w0, atol=1e-7)
    assert (seen[2] - w0).abs().max() > 1e-4
    for w in seen:
        assert torch.allclose(w.norm(dim=1), torch.ones(len(w)), atol=1e-6)


def test_vision_recipe_errors_are_recipe_errors(tmp_path):
    bad = _recipe(tmp_path, "simclr", model={**TINY_MODEL, "arhc": "resnet18"})
    assert main([bad]) == 2
    missing = _recipe(tmp_path, "npid", data={"source": "npz", "path": str(tmp_path / "nope.npz")})
    assert main([missing]) == 2


class _Interrupt(Exception):
    pass


class _KillAt:
    def __init__(self, n):
        self.n = n

    def on_step_end(self, trainer):
        if trainer.state.step == self.n:
            raise _Interrupt


@pytest.mark.parametrize("name", ["moco", "npid"])
def test_resume_equals_uninterrupted_with_queue_and_bank(tmp_path, name):
    # Queue, pointer, memory bank, NCE normaliser and momentum encoder are buffers or
    # parameters: checkpointed, so a killed-and-resumed run ends bit-for-bit equal.
    cfg = TrainConfig(batch_size=16, max_steps=6, optimizer="sgd", lr=0.05, save_every_n_steps=2,
                      log_every_n_steps=1)
    full, _ = _method(tmp_path, name)
    Trainer(full, cfg, tmp_path / "full", seed=3).fit()
    first, _ = _method(tmp_path, name)
    with pytest.raises(_Interrupt):
        Trainer(first, cfg, tmp_path / "resumed", seed=3, callbacks=[_KillAt(3)]).fit()
    again, _ = _method(tmp_path, name)
    Trainer(again, cfg, tmp_path / "resumed", seed=3).fit(resume=True)
    for (key, a), b in zip(full.state_dict().items(), again.state_dict().values()):
        assert torch.allclose(a.double(), b.double(), rtol=0, atol=0, equal_nan=True), key  # bit-equal


def test_eval_rows_carry_training_time_for_the_knn_curve(tmp_path):
    # benchmarks.vision plots kNN against training minutes from these rows.
    assert main([_recipe(tmp_path, "simclr", eval={"every_n_steps": 1})]) == 0
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval/knn_top1" in r]
    assert [r["step"] for r in evals] == [1, 2, 3]
    seconds = [r["train_seconds"] for r in evals]
    assert seconds[0] > 0 and seconds == sorted(seconds)


def test_vision_benchmark_budget_and_curve_spacing():
    from benchmarks.vision import METHODS, budget_minutes, eval_interval

    assert all(budget_minutes(m, None) == 15 for m in METHODS)  # the CPU recipes' train.max_minutes
    assert budget_minutes("simclr", 2.5) == 2.5
    # 15 minutes at 1.5 s/step = 600 steps; 10 points -> every 60 steps.
    assert eval_interval(15, {"s_per_step": 1.5}, 10) == 60
    assert eval_interval(0.01, {"s_per_step": 1.5}, 10) == 1


def test_vision_benchmark_update_replaces_only_the_rerun_methods():
    from benchmarks.vision import merge_rows

    def row(method, knn):
        return {"method": method, "knn_top1": knn, "knn_curve": []}

    previous = {"rows": [{"method": "random init", "knn_top1": 0.3}, row("simclr", 0.47), row("swav", 0.41),
                         row("moco", 0.46)], "command": "first", "earlier_commands": ["zeroth"]}
    merged, history = merge_rows(previous, [{"method": "random init", "knn_top1": 0.3}, row("swav", 0.45)], ["swav"])
    assert [(r["method"], r["knn_top1"]) for r in merged] == [
        ("random init", 0.3), ("simclr", 0.47), ("moco", 0.46), ("swav", 0.45)]
    assert history == ["zeroth", "first"]
