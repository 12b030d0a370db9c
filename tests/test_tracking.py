"""train.report_to: Accelerate's trackers get log.jsonl's scalars at the same steps (TensorBoard,
offline), the recipe as the run config; unknown or uninstalled trackers are recipe errors."""

from __future__ import annotations

import json

import pytest
from _toy import Toy, ToyConfig  # noqa: F401  (registers the "toy" method)

from textcl.core.recipe import RecipeError, TrainConfig, load_recipe
from textcl.core.trainer import Trainer
from textcl.train import main

pytest.importorskip("tensorboard")


def _events(run_dir):
    """scalar tag -> [(step, value)] over every event file under ``run_dir`` (TensorBoard's
    own reader, which also applies the purge of a resumed run)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events_dir] = {p.parent for p in run_dir.rglob("events.out.tfevents.*") if "loss" in _tags(p.parent)}
    acc = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _tags(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return acc.Tags()["scalars"]


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _recipe(tmp_path, out, tracker="tensorboard"):
    path = tmp_path / "r.yaml"
    path.write_text(f"""
method: toy
output_dir: {out}
train: {{batch_size: 8, max_steps: 6, log_every_n_steps: 2, lr: 0.01, report_to: [{tracker}]}}
eval: {{every_n_steps: 3}}
""")
    return str(path)


def test_tensorboard_gets_the_log_jsonl_scalars_at_the_same_steps(tmp_path):
    out = tmp_path / "run"
    assert main([_recipe(tmp_path, out)]) == 0
    log = _log(out)
    series = _events(out / "tracking")
    train_rows = [r for r in log if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    # float32 in the event file
    assert [s for s, _ in series["loss"]] == [r["step"] for r in train_rows]
    assert [v for _, v in series["loss"]] == pytest.approx([r["loss"] for r in train_rows], rel=1e-6)
    assert [v for _, v in series["lr"]] == pytest.approx([r["lr"] for r in train_rows], rel=1e-6)
    # eval records (every 3 steps and at the end) land at their steps too
    eval_rows = [r for r in log if "eval/toy_mse" in r]
    assert [s for s, _ in series["eval/toy_mse"]] == [r["step"] for r in eval_rows] == [3, 6]
    assert [v for _, v in series["eval/toy_mse"]] == pytest.approx([r["eval/toy_mse"] for r in eval_rows], rel=1e-6)
    # the resolved recipe, flattened, is the run's config (Accelerate keeps a copy as YAML)
    import yaml

    [hparams] = list((out / "tracking").rglob("hparams.yml"))
    config = yaml.safe_load(hparams.read_text())
    assert config["train.lr"] == 0.01 and config["method"] == "toy"
    assert config["train.report_to"] == '["tensorboard"]'  # lists as JSON text: TensorBoard takes scalars
    # the tracker files stay out of the model upload
    from textcl.hub import files_to_upload

    assert not [f for f in files_to_upload(out) if f.startswith("tracking/")]


class _Interrupt(Exception):
    pass


class _KillAt:
    def __init__(self, n):
        self.n = n

    def on_step_end(self, trainer):
        if trainer.state.step == self.n:
            raise _Interrupt


def test_resumed_run_shows_each_step_once(tmp_path):
    # Killed after step 5 with the last checkpoint at step 4: log.jsonl drops step 5's line,
    # and TensorBoard purges the events past step 4 (purge_step), so both agree.
    cfg = TrainConfig(batch_size=8, max_steps=8, lr=0.01, log_every_n_steps=1, save_every_n_steps=4,
                      report_to=["tensorboard"])
    out = tmp_path / "run"
    with pytest.raises(_Interrupt):
        Trainer(Toy(ToyConfig()), cfg, out, seed=1, callbacks=[_KillAt(5)]).fit()
    Trainer(Toy(ToyConfig()), cfg, out, seed=1).fit(resume=True)
    log = [r for r in _log(out) if "loss" in r]
    series = _events(out / "tracking")
    assert [r["step"] for r in log] == list(range(1, 9))
    assert [s for s, _ in series["loss"]] == list(range(1, 9))
    assert [v for _, v in series["loss"]] == pytest.approx([r["loss"] for r in log], rel=1e-6)


def test_tracker_names_are_checked_in_the_recipe(tmp_path, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(RecipeError) as err:
        load_recipe(_recipe(tmp_path, out, tracker="tensorbord"))
    message = str(err.value)
    assert "train.report_to[0]: unknown tracker (got 'tensorbord')" in message
    assert "did you mean 'tensorboard'" in message and "wandb" in message and "\n" not in message

    # A tracker whose package is missing: named with its pip package before anything loads
    # (Accelerate alone would drop it with a debug message and log nowhere).
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    recipe = _recipe(tmp_path, out)
    with pytest.raises(RecipeError, match=r"train.report_to\[0\]: the tensorboard tracker needs the "
                                          r"'tensorboard' package.*pip install tensorboard"):
        load_recipe(recipe)
    assert main([recipe]) == 2 and not out.exists()
    with pytest.raises(ValueError, match="pip install comet-ml"):
        TrainConfig(report_to=["comet_ml"])


def test_report_to_defaults_to_none_and_takes_a_single_name():
    assert TrainConfig().report_to == []
    assert TrainConfig(report_to="none").report_to == []
    assert TrainConfig(report_to="tensorboard").report_to == ["tensorboard"]


def test_no_tracker_writes_no_tracking_dir(tmp_path):
    cfg = TrainConfig(batch_size=8, max_steps=2, lr=0.01)
    t = Trainer(Toy(ToyConfig()), cfg, tmp_path / "run", seed=1)
    t.fit()
    assert t.accelerator.log_with == [] and not (tmp_path / "run" / "tracking").exists()


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    cfg = TrainConfig(batch_size=4, max_steps=4, lr=0.05, cpu=True, log_every_n_steps=1, report_to=["tensorboard"])
    torch.manual_seed(0)
    trainer = Trainer(Toy(ToyConfig()), cfg, out_dir, seed=11)
    trainer.fit()
    trainer.accelerator.wait_for_everyone()  # the process group outlives the trackers
    torch.distributed.destroy_process_group()


def test_two_processes_one_tracker_writer(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, port, str(out)), nprocs=2, join=True)
    event_files = [p for p in (out / "tracking").rglob("events.out.tfevents.*") if "loss" in _tags(p.parent)]
    assert len(event_files) == 1  # rank 0 only
    log = [r for r in _log(out) if "loss" in r]
    series = _events(out / "tracking")
    assert [s for s, _ in series["loss"]] == [r["step"] for r in log] == [1, 2, 3, 4]
    # the logged loss is the mean over both processes, the same number log.jsonl holds
    assert [v for _, v in series["loss"]] == pytest.approx([r["loss"] for r in log], rel=1e-6)
