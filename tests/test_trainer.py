"""Trainer mechanics on a tiny regression method: resume, NaN, accumulation, hooks."""

import json

import pytest
import torch
from _toy import Toy, ToyConfig
from safetensors.torch import load_file

from textcl.core.recipe import TrainConfig
from textcl.core.trainer import NonFiniteLossError, Trainer, TrainingDataError
from textcl.train import main, run


class Interrupt(Exception):
    pass


class KillAt:
    """Simulates a kill right after step ``n`` (after its checkpoint is written)."""

    def __init__(self, n: int):
        self.n = n

    def on_step_end(self, trainer):
        if trainer.state.step == self.n:
            raise Interrupt


def _toy(**objective):
    torch.manual_seed(0)
    return Toy(ToyConfig.model_validate({"model": {"dropout": 0.2}, "objective": objective}))


def _cfg(**kw):
    base = dict(batch_size=8, lr=0.05, optimizer="adamw", scheduler="cosine", warmup_steps=2,
                log_every_n_steps=1)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_equals_uninterrupted(tmp_path):
    # 64 examples / batch 8 = 8 steps per epoch; 12 steps cross an epoch boundary,
    # the kill at step 6 lands mid-epoch; dropout makes the RNG state matter.
    cfg = _cfg(max_steps=12, save_every_n_steps=3)
    full = Trainer(_toy(), cfg, tmp_path / "full", seed=7)
    full.fit()

    a = _toy()
    with pytest.raises(Interrupt):
        Trainer(a, cfg, tmp_path / "resumed", seed=7, callbacks=[KillAt(6)]).fit()
    b = _toy()  # a fresh process would rebuild the method from the recipe
    resumed = Trainer(b, cfg, tmp_path / "resumed", seed=7)
    resumed.fit(resume=True)

    for (name, p), q in zip(full.method.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    log = [json.loads(x) for x in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == list(range(1, 13))  # no duplicated or missing steps after resume
    full_log = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in full_log if "loss" in r] == pytest.approx([r["loss"] for r in log if "loss" in r])
    # only the last K=2 checkpoints are kept
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [
        "step_00000009", "step_00000012"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    method = _toy(nan_at_step=5)
    trainer = Trainer(method, _cfg(max_steps=10, save_every_n_steps=2), tmp_path, seed=1)
    with pytest.raises(NonFiniteLossError, match="at step 5.*step_00000004"):
        trainer.fit()
    # parameters were not touched by the NaN step: equal to the step-4 checkpoint
    saved = load_file(str(tmp_path / "checkpoints" / "step_00000004" / "model.safetensors"))
    for name, p in method.state_dict().items():
        assert torch.equal(saved[name], p), name
    assert all(torch.isfinite(p).all() for p in method.parameters())


def test_gradient_accumulation_matches_big_batch(tmp_path):
    # MSE is a mean over examples, so 2 micro-batches of 8 == one batch of 16.
    a, b = _toy(), _toy()
    a.net[1].p = b.net[1].p = 0.0
    Trainer(a, _cfg(batch_size=16, max_steps=3, scheduler="constant", warmup_steps=0), tmp_path / "a").fit()
    Trainer(b, _cfg(batch_size=8, gradient_accumulation_steps=2, max_steps=3, scheduler="constant",
                    warmup_steps=0), tmp_path / "b").fit()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_hooks_and_epoch_order(tmp_path):
    m = _toy()
    Trainer(m, _cfg(max_steps=10), tmp_path, seed=3).fit()
    starts = [e for kind, e in m.hook_log if kind == "epoch_start"]
    steps = [s for kind, s in m.hook_log if kind == "after_step"]
    assert starts == [0, 1] and steps == list(range(1, 11))
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "examples_per_sec"} <= set(log[0])
    assert log[0]["lr"] == pytest.approx(0.05 / 2)  # first warmup step


def test_training_lowers_heldout_loss(tmp_path):
    m = _toy()
    before = m.evaluate()["toy_mse"]
    after = Trainer(m, _cfg(max_steps=40), tmp_path).fit()["toy_mse"]
    assert after < 0.5 * before


def test_too_little_data_is_a_clear_error(tmp_path):
    m = Toy(ToyConfig.model_validate({"data": {"n": 5}}))
    with pytest.raises(TrainingDataError, match="5 examples.*batch_size 8"):
        Trainer(m, _cfg(max_steps=2), tmp_path).fit()


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_cli_writes_output_dir_and_refuses_to_clobber(tmp_path, capsys):
    out = tmp_path / "run"
    recipe = _write(tmp_path / "r.yaml", f"""
method: toy
output_dir: {out}
train: {{batch_size: 8, max_steps: 4, save_every_n_steps: 2, lr: 0.01}}
""")
    assert main([recipe, "--set", "train.lr=0.02"]) == 0
    for name in ("recipe.yaml", "log.jsonl", "metrics.json", "README.md", "toy.safetensors", "initial_metrics.json"):
        assert (out / name).exists(), name
    assert "lr: 0.02" in (out / "recipe.yaml").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["toy_mse"] < metrics["initial/toy_mse"]
    assert not list(out.glob(".*tmp*"))  # temp dirs renamed away
    assert main([recipe]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([recipe, "--resume"]) == 0  # finished run: resumes at step 4, nothing to redo


def test_run_nan_exit_code(tmp_path, capsys):
    recipe = _write(tmp_path / "r.yaml", f"""
method: toy
output_dir: {tmp_path / 'run'}
objective: {{nan_at_step: 2}}
train: {{batch_size: 8, max_steps: 4}}
""")
    assert main([recipe]) == 3
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "step 2" in err
    assert not (tmp_path / "run" / "metrics.json").exists()
    with pytest.raises(NonFiniteLossError):
        run(recipe, overwrite=True)


def test_bf16_autocast_trains(tmp_path):
    # CPU autocast in bf16 (what `mixed_precision: bf16` gives on machines without a GPU)
    m = _toy()
    before = m.evaluate()["toy_mse"]
    after = Trainer(m, _cfg(max_steps=40, mixed_precision="bf16"), tmp_path).fit()["toy_mse"]
    assert after < 0.5 * before
    assert all(p.dtype == torch.float32 for p in m.parameters())  # master weights stay fp32


class _FakeClock:
    """perf_counter that advances exactly ``tick`` seconds per call: budget tests stay
    deterministic on a loaded machine."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_time_budget_stops_training_and_schedules_lr_by_elapsed_fraction(tmp_path, monkeypatch):
    import textcl.core.trainer as trainer_module

    monkeypatch.setattr(trainer_module.time, "perf_counter", _FakeClock(0.5))
    cfg = _cfg(max_minutes=5 / 60, epochs=100, warmup_steps=0, warmup_ratio=0.0, scheduler="linear")
    t = Trainer(_toy(), cfg, tmp_path / "budget", seed=7)
    t.fit()
    log = [json.loads(x) for x in (tmp_path / "budget" / "log.jsonl").read_text().splitlines()]
    rows = [r for r in log if "loss" in r]
    secs = [r["train_seconds"] for r in rows]
    # 8 steps per epoch x 100 epochs would be 800 steps; training stops at the first
    # step whose cumulative training time reaches the 5 s budget.
    assert secs[-1] >= 5.0 > secs[-2]
    assert t.state.step == len(rows) < 800
    # Linear decay over the budget: a step's lr is 0.05 * (1 - elapsed / budget), with
    # "elapsed" read after the previous step's update, i.e. between the logged
    # cumulative times of the two previous steps.
    lrs = [r["lr"] for r in rows]
    assert lrs[0] == pytest.approx(0.05)
    before = [0.0, 0.0] + secs
    for i in range(1, len(rows)):
        lo, hi = 0.05 * (1 - before[i + 1] / 5.0), 0.05 * (1 - before[i] / 5.0)
        assert lo - 1e-9 <= lrs[i] <= hi + 1e-9, (i, lrs[i], lo, hi)
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.02


def test_time_budget_is_kept_across_resume(tmp_path, monkeypatch):
    import textcl.core.trainer as trainer_module

    monkeypatch.setattr(trainer_module.time, "perf_counter", _FakeClock(0.5))
    cfg = _cfg(max_minutes=6 / 60, epochs=100, save_every_n_steps=2)
    with pytest.raises(Interrupt):
        Trainer(_toy(), cfg, tmp_path / "run", seed=7, callbacks=[KillAt(4)]).fit()
    resumed = Trainer(_toy(), cfg, tmp_path / "run", seed=7)
    resumed.fit(resume=True)
    uninterrupted = Trainer(_toy(), cfg, tmp_path / "full", seed=7)
    uninterrupted.fit()
    # The training time spent before the kill is restored from the checkpoint.
    assert resumed.state.step == uninterrupted.state.step
    for p, q in zip(uninterrupted.method.parameters(), resumed.method.parameters()):
        assert torch.equal(p, q)


def test_time_budget_without_epochs_runs_past_one_epoch(tmp_path, monkeypatch):
    import textcl.core.trainer as trainer_module

    monkeypatch.setattr(trainer_module.time, "perf_counter", _FakeClock(0.5))
    # 64 examples / batch 8 = 8 steps per epoch; the 20 s budget needs more than one epoch.
    t = Trainer(_toy(), _cfg(max_minutes=20 / 60), tmp_path / "unbounded", seed=7)
    t.fit()
    assert t.state.step > 8 and t.state.train_seconds >= 20.0
    # An explicit epoch count still caps a budgeted run.
    capped = Trainer(_toy(), _cfg(max_minutes=20 / 60, epochs=1), tmp_path / "capped", seed=7)
    capped.fit()
    assert capped.state.step == 8
