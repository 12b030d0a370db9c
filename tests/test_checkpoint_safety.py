"""Checkpoints hold no pickle, verify themselves on resume, and resume exactly.

A planted pickle is never unpickled; a corrupted newest checkpoint is skipped (with a
warning naming the file) for the previous intact one; a checkpoint that lacks a piece is a
clear error; the first log record after a resume equals the uninterrupted run's.
"""

import json
import logging
import pickle
import shutil

import pytest
import torch
from _toy import Toy, ToyConfig
from safetensors import safe_open

from textcl.core import checkpoint
from textcl.core.checkpoint import CheckpointError
from textcl.core.recipe import TrainConfig
from textcl.core.trainer import Trainer
from textcl.train import main


class Interrupt(Exception):
    pass


class KillAt:
    """A kill right after step ``n`` (after its checkpoint is written)."""

    def __init__(self, n: int):
        self.n = n

    def on_step_end(self, trainer):
        if trainer.state.step == self.n:
            raise Interrupt


def _toy():
    torch.manual_seed(0)
    return Toy(ToyConfig.model_validate({"model": {"dropout": 0.2}}))


def _cfg(**kw):
    base = dict(batch_size=8, lr=0.05, optimizer="adamw", scheduler="cosine", warmup_steps=2,
                log_every_n_steps=1, max_steps=12, save_every_n_steps=3)
    base.update(kw)
    return TrainConfig(**base)


def _killed(out, kill_at=9, **kw):
    """A run killed after step ``kill_at``; its checkpoints are the last two multiples of 3."""
    with pytest.raises(Interrupt):
        Trainer(_toy(), _cfg(**kw), out, seed=7, callbacks=[KillAt(kill_at)]).fit()
    return out / "checkpoints"


def _resume(out, **kw):
    method = _toy()
    trainer = Trainer(method, _cfg(**kw), out, seed=7)
    trainer.fit(resume=True)
    return trainer


def _assert_same_weights(a, b):
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def _log(out):
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    trainer = Trainer(_toy(), _cfg(), out, seed=7)
    trainer.fit()
    return trainer


class _Payload:
    """Unpickling this creates ``marker`` (as ``os.system("touch ...")`` would)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(directory, marker):
    """Malicious pickles under the names accelerate's ``save_state`` used."""
    payload = pickle.dumps(_Payload(marker))
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl"):
        (directory / name).write_bytes(payload)
    for name in ("optimizer.bin", "scheduler.bin"):
        torch.save(_Payload(marker), directory / name)
    assert not marker.exists()


@pytest.fixture
def no_unpickling(monkeypatch):
    """Records every torch.load / pickle.load(s) call during the test."""
    calls = []

    def spy(name, real):
        def wrapper(*args, **kwargs):
            calls.append((name, kwargs.get("weights_only")))
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(torch, "load", spy("torch.load", torch.load))
    monkeypatch.setattr(pickle, "load", spy("pickle.load", pickle.load))
    monkeypatch.setattr(pickle, "loads", spy("pickle.loads", pickle.loads))
    return calls


# --------------------------------------------------------------------------- no pickle
def test_checkpoint_files_are_safetensors_or_json(tmp_path):
    Trainer(_toy(), _cfg(max_steps=3), tmp_path, seed=7).fit()
    ckpt = tmp_path / "checkpoints" / "step_00000003"
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["manifest.json", "model.safetensors", "rank_0.json", "rank_0.safetensors",
                     "state.json", "state.safetensors"]
    for path in ckpt.iterdir():  # each file is what its name says, so none is a pickle
        data = path.read_bytes()
        if path.suffix == ".json":
            json.loads(data)
        else:  # safetensors: an 8-byte little-endian header length, a JSON header, raw bytes
            n = int.from_bytes(data[:8], "little")
            json.loads(data[8 : 8 + n])
            with safe_open(str(path), "pt") as fh:
                list(fh.keys())
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert sorted(manifest["files"]) == [n for n in names if n != "manifest.json"]


def test_planted_pickles_are_never_unpickled(tmp_path, uninterrupted, no_unpickling):
    ckpts = _killed(tmp_path / "run")
    marker = tmp_path / "PWNED"
    _plant(ckpts / "step_00000009", marker)
    no_unpickling.clear()
    resumed = _resume(tmp_path / "run")
    assert not marker.exists()
    assert no_unpickling == []  # nothing went through torch.load or pickle
    _assert_same_weights(uninterrupted.method, resumed.method)  # the planted files changed nothing


def test_pickle_based_checkpoint_is_refused_not_loaded(tmp_path, no_unpickling, capsys):
    out = tmp_path / "run"
    old = out / "checkpoints" / "step_00000004"  # what an older textcl left: no manifest, pickles
    old.mkdir(parents=True)
    marker = tmp_path / "PWNED"
    _plant(old, marker)
    (old / "model.safetensors").write_bytes(b"")
    no_unpickling.clear()
    with pytest.raises(CheckpointError, match="older textcl .pickle-based.; not loaded — restart with --overwrite"):
        _resume(out)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: toy\noutput_dir: {out}\ntrain: {{batch_size: 8, max_steps: 4}}\n")
    assert main([str(recipe), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {old}: checkpoint from an older textcl"), err
    assert not marker.exists() and no_unpickling == []


# --------------------------------------------------------------------------- exact resume
def test_first_log_record_after_resume_equals_uninterrupted(tmp_path):
    # Logged every 4 steps, killed at 6: the window open at the checkpoint holds steps 5-6.
    cfg = dict(log_every_n_steps=4)
    Trainer(_toy(), _cfg(**cfg), tmp_path / "full", seed=7).fit()
    _killed(tmp_path / "run", kill_at=6, **cfg)
    _resume(tmp_path / "run", **cfg)
    full = [r for r in _log(tmp_path / "full") if "loss" in r]
    resumed = [r for r in _log(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in resumed] == [r["step"] for r in full] == [4, 8, 12]
    for a, b in zip(full, resumed):
        timing = ("examples_per_sec", "train_seconds")
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_manifest", "missing_file"])
def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, uninterrupted, caplog, damage):
    ckpts = _killed(tmp_path / "run")
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000006", "step_00000009"]
    # The reference: the same run resumed from step 6 with step 9 never written.
    shutil.copytree(tmp_path / "run", tmp_path / "from6")
    shutil.rmtree(tmp_path / "from6" / "checkpoints" / "step_00000009")
    reference = _resume(tmp_path / "from6")

    latest = ckpts / "step_00000009"
    bad = {"flip": "model.safetensors", "truncate": "state.safetensors", "no_manifest": "manifest.json",
           "missing_file": "rank_0.json"}[damage]
    if damage == "flip":
        data = bytearray((latest / bad).read_bytes())
        data[-3] ^= 0xFF
        (latest / bad).write_bytes(bytes(data))
    elif damage == "truncate":
        (latest / bad).write_bytes((latest / bad).read_bytes()[:-17])
    else:
        (latest / bad).unlink()

    with caplog.at_level(logging.WARNING, logger="textcl"):
        resumed = _resume(tmp_path / "run")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(latest / bad) in w and "not intact" in w for w in warnings), warnings
    assert resumed.last_checkpoint.name == "step_00000012"
    _assert_same_weights(reference.method, resumed.method)
    _assert_same_weights(uninterrupted.method, resumed.method)
    assert [r["step"] for r in _log(tmp_path / "run") if "loss" in r] == list(range(1, 13))


def test_no_intact_checkpoint_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: toy\noutput_dir: {out}\n"
                      "train: {batch_size: 8, max_steps: 4, save_every_n_steps: 2, lr: 0.01}\n")
    assert main([str(recipe)]) == 0
    for ckpt in (out / "checkpoints").iterdir():
        path = ckpt / "model.safetensors"
        path.write_bytes(path.read_bytes()[:10])
    capsys.readouterr()
    assert main([str(recipe), "--resume"]) == 2
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(line) == 1 and f"error: {out / 'checkpoints'}: no intact checkpoint" in line[0], err
    assert line[0].endswith("— restart with --overwrite")


# --------------------------------------------------------------------------- missing pieces
@pytest.mark.parametrize("name", ["rank_0.safetensors", "rank_0.json"])
def test_missing_rng_state_in_an_intact_checkpoint_is_an_error(tmp_path, capsys, name):
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: toy\noutput_dir: {out}\n"
                      "train: {batch_size: 8, max_steps: 4, save_every_n_steps: 2, lr: 0.01}\n")
    assert main([str(recipe)]) == 0
    latest = out / "checkpoints" / "step_00000004"
    (latest / name).unlink()
    checkpoint.write_manifest(latest)  # the manifest matches: the checkpoint is "intact"
    assert checkpoint.verify(latest) is None
    capsys.readouterr()
    assert main([str(recipe), "--resume"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert err == [f"error: {latest / name}: process 0's RNG state is missing from the checkpoint — "
                   "restart with --overwrite"]
    with pytest.raises(CheckpointError, match="RNG state is missing"):
        _resume(out)


def test_resume_with_another_process_count_is_an_error(tmp_path):
    latest = _killed(tmp_path / "run") / "step_00000009"
    doc = json.loads((latest / "state.json").read_text())
    doc["tree"]["world_size"] = 2
    (latest / "state.json").write_text(json.dumps(doc))
    checkpoint.write_manifest(latest)
    with pytest.raises(CheckpointError, match="written by 2 processes, resumed with 1 — resume with 2 processes"):
        _resume(tmp_path / "run")


def test_manifest_names_only_files_inside_the_checkpoint(tmp_path):
    latest = _killed(tmp_path / "run") / "step_00000009"
    doc = json.loads((latest / "manifest.json").read_text())
    doc["files"]["../step_00000006/model.safetensors"] = {"size": 1, "sha256": "0"}
    (latest / "manifest.json").write_text(json.dumps(doc))
    assert "invalid file name" in checkpoint.verify(latest)


# --------------------------------------------------------------------------- state encoding
def test_optimizer_state_round_trips_through_json_and_safetensors(tmp_path):
    from textcl.core.optim import LARS

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    for opt in (torch.optim.AdamW(net.parameters(), lr=0.1, betas=(0.8, 0.9)),
                LARS(net.parameters(), lr=0.1, momentum=0.9)):
        for _ in range(2):
            net(torch.randn(5, 3)).sum().backward()
            opt.step()
        state = {"optimizer": opt.state_dict(), "key": ("a", 1, 2.5, None, True)}
        checkpoint._write_bundle(tmp_path, "s", state)
        back = checkpoint._read_bundle(tmp_path, "s")
        assert back["key"] == state["key"]
        assert back["optimizer"]["param_groups"] == [
            {k: v for k, v in g.items()} for g in state["optimizer"]["param_groups"]]
        assert back["optimizer"]["state"].keys() == state["optimizer"]["state"].keys()  # int keys stay ints
        for i, entry in state["optimizer"]["state"].items():
            for k, v in entry.items():
                assert torch.equal(back["optimizer"]["state"][i][k], v), (i, k)
        opt.load_state_dict(back["optimizer"])


# --------------------------------------------------------------------------- NaN message
def test_nan_message_is_not_drawn_into_the_progress_bar(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: toy\noutput_dir: {tmp_path / 'run'}\nobjective: {{nan_at_step: 3}}\n"
                      "train: {batch_size: 8, max_steps: 6}\n")
    assert main([str(recipe)]) == 3
    err = capsys.readouterr().err
    at = err.index("error: non-finite loss")
    assert at == 0 or err[at - 1] == "\n", repr(err[max(0, at - 80) : at + 20])
    assert "\r" not in err[at:]  # the closed bar is not redrawn over the message
