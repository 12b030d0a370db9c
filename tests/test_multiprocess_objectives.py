"""Multi-process proofs on CPU with 2 gloo processes, through the real Trainer and CLI:

* MoCo's and CERT's queues are identical on both ranks after training steps (the queues are
  excluded from DDP's buffer broadcast, so only the all-gathered enqueue keeps them equal),
  and CERT's queue after step 1 holds exactly the keys of a 1-process run with 2x the batch;
* a 2-process run killed after step 2 and resumed in fresh processes ends with the same
  weights, queue and optimizer position as an uninterrupted 2-process run;
* ``python -m textcl.train`` under ``torchrun`` (2 processes) completes for every text
  objective, and only rank 0 writes into ``output_dir`` (rank 1 writes exactly its own RNG
  state into each checkpoint, as a resume needs).

Process groups meet through a FileStore (``init_method="file://..."``) or torchrun's
``--standalone`` rendezvous (an OS-assigned port), so no test picks a TCP port that another
test running at the same time could take.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from textcl.core.method import get_method_class
from textcl.core.recipe import load_recipe
from textcl.core.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
WORLD = 2
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers
def _init(rank: int, store: str) -> None:
    """Join a 2-process gloo group through a file store; Accelerate then finds it
    initialised and uses it (MULTI_CPU from RANK / WORLD_SIZE / LOCAL_RANK)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)


def _build(recipe_path: str, overrides: list[str] = ()):
    from accelerate.utils import set_seed

    recipe = load_recipe(recipe_path, list(overrides))
    set_seed(recipe.seed)  # as textcl.train: heads and the queue's random start
    return recipe, get_method_class(recipe.method).from_recipe(recipe)


def _write_recipe(path: Path, recipe: dict) -> str:
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _moco_recipe(tmp_path: Path, **train) -> str:
    return _write_recipe(tmp_path / "moco.yaml", {
        "method": "moco", "output_dir": str(tmp_path / "moco"), "seed": 0,
        "model": {"arch": "resnet_small", "width": 0.125},
        "data": {"source": "synthetic", "image_size": 16, "synthetic_train": 64, "synthetic_test": 16,
                 "knn_bank": 16, "knn_queries": 16, "knn_k": 5},
        "objective": {"queue_size": 48, "augment": {"size": 16}},
        "train": {"batch_size": 8, "max_steps": 2, "optimizer": "sgd", "lr": 0.05, "log_every_n_steps": 1,
                  "cpu": True, **train},
    })


def _pairs_file(path: Path, n: int = 40) -> Path:
    """Sentences of 4 colour/animal words and a "translation" into other words."""
    import numpy as np

    source = "red green blue black white brown pink gold cat dog horse cow bird fish lion wolf".split()
    target = "house river forest city garden bridge tower castle apple bread cheese honey salt rice corn tea".split()
    rng, rows, seen = np.random.default_rng(0), [], set()
    while len(rows) < n:
        idx = rng.choice(len(source), size=4, replace=False)
        text = " ".join(source[i] for i in idx)
        if text not in seen:
            seen.add(text)
            rows.append({"id": f"p{len(rows)}", "text": text, "translations": [" ".join(target[i] for i in idx)]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cert_recipe(tmp_path: Path, model_dir: Path, **train) -> str:
    return _write_recipe(tmp_path / "cert.yaml", {
        "method": "cert", "output_dir": str(tmp_path / "cert"), "seed": 1,
        "model": {"name_or_path": str(model_dir), "max_seq_length": 16, "pooling": "mean"},
        "data": {"pairs": str(_pairs_file(tmp_path / "pairs.jsonl")), "held_out_fraction": 0.2},
        "objective": {"queue_size": 32, "momentum": 0.99, "temperature": 0.05},
        "train": {"batch_size": 4, "max_steps": 2, "lr": 1e-4, "log_every_n_steps": 1, "cpu": True, **train},
    })


class _QueueAfterStep:
    """Keeps a copy of the queue (oldest first) after each step."""

    def __init__(self, method):
        self.method, self.seen = method, []

    def on_step_end(self, trainer) -> None:
        self.seen.append(self.method.queue.ordered().clone())


class _KillAt:
    """A kill right after step ``n`` (its checkpoint written), on every rank."""

    class Killed(Exception):
        pass

    def __init__(self, n: int):
        self.n = n

    def on_step_end(self, trainer) -> None:
        if trainer.state.step == self.n:
            raise self.Killed


def _state(method, trainer) -> dict:
    return {"state": {k: v.clone() for k, v in method.state_dict().items()}, "step": trainer.state.step,
            "lr": trainer.scheduler.get_last_lr()[0]}


# --------------------------------------------------------------------------- queues
def _queues_worker(rank: int, store: str, moco: str, cert: str, out: str) -> None:
    _init(rank, store)
    try:
        saved = {}
        for name, recipe_path in (("moco", moco), ("cert", cert)):
            recipe, method = _build(recipe_path, [f"output_dir={out}/{name}"])
            start = method.queue.ordered().clone()
            snap = _QueueAfterStep(method)
            Trainer(method, recipe.train, recipe.output_dir, seed=recipe.seed, callbacks=[snap]).fit()
            q = method.queue
            saved[name] = {"start": start, "after": snap.seen, "ptr": int(q.ptr), "filled": int(q.filled),
                           "params": [p.detach().clone() for p in method.parameters()]}
        torch.save(saved, os.path.join(out, f"queues{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_moco_and_cert_queues_identical_on_both_ranks(tmp_path, tiny_bert_dir):
    moco, cert = _moco_recipe(tmp_path), _cert_recipe(tmp_path, tiny_bert_dir)
    mp.spawn(_queues_worker, args=(str(tmp_path / "store"), moco, cert, str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"queues{r}.pt", weights_only=True) for r in range(WORLD))
    for name, batch in (("moco", 8), ("cert", 4)):
        a, b = r0[name], r1[name]
        new = WORLD * batch  # keys enqueued per step: every rank's, all-gathered
        assert a["ptr"] == b["ptr"] == 2 * new, name
        for step in range(2):
            assert torch.equal(a["after"][step], b["after"][step]), (name, step)
        # the queue really moved: its newest 2 x new entries replaced the random start
        assert not torch.allclose(a["after"][1][-2 * new :], a["start"][-2 * new :]), name
        assert torch.equal(a["after"][1][: -new], a["after"][0][new:]), name  # FIFO: step 1 keys shifted on
        for p, q in zip(a["params"], b["params"]):  # and DDP kept the weights equal
            assert torch.equal(p, q), name

    # CERT's keys come from the dropout-free momentum encoder, which step 1 has not moved
    # yet: the 2-process queue after step 1 == a 1-process run with batch 2 x 4, in order.
    recipe, single = _build(cert, [f"output_dir={tmp_path / 'single'}", "train.batch_size=8", "train.max_steps=1"])
    Trainer(single, recipe.train, recipe.output_dir, seed=recipe.seed).fit()
    assert torch.allclose(r0["cert"]["after"][0], single.queue.ordered(), atol=1e-6)


# --------------------------------------------------------------------------- resume
def _resume_worker(rank: int, store: str, recipe_path: str, out: str, phase: str) -> None:
    _init(rank, store)
    try:
        if phase == "first":
            recipe, method = _build(recipe_path, [f"output_dir={out}/full"])
            full = Trainer(method, recipe.train, recipe.output_dir, seed=recipe.seed)
            full.fit()
            torch.save(_state(method, full), os.path.join(out, f"full{rank}.pt"))
            recipe, method = _build(recipe_path, [f"output_dir={out}/resumed"])
            killed = Trainer(method, recipe.train, recipe.output_dir, seed=recipe.seed, callbacks=[_KillAt(2)])
            try:
                killed.fit()
            except _KillAt.Killed:
                pass
        else:  # fresh processes, a fresh method: as after a real kill
            recipe, method = _build(recipe_path, [f"output_dir={out}/resumed"])
            resumed = Trainer(method, recipe.train, recipe.output_dir, seed=recipe.seed)
            resumed.fit(resume=True)
            torch.save(_state(method, resumed), os.path.join(out, f"resumed{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_resume_under_two_processes_equals_uninterrupted(tmp_path):
    # MoCo: momentum encoder, queue, BatchNorm buffers (DDP-broadcast), per-rank RNG
    # (augmentations) and the lr schedule all have to come back.
    recipe = _moco_recipe(tmp_path, max_steps=4, save_every_n_steps=2, scheduler="cosine", warmup_steps=1)
    for phase in ("first", "resume"):
        mp.spawn(_resume_worker, args=(str(tmp_path / f"store-{phase}"), recipe, str(tmp_path), phase),
                 nprocs=WORLD, join=True)
    for rank in range(WORLD):
        full = torch.load(tmp_path / f"full{rank}.pt", weights_only=True)
        resumed = torch.load(tmp_path / f"resumed{rank}.pt", weights_only=True)
        assert resumed["step"] == full["step"] == 4 and resumed["lr"] == full["lr"]
        assert full["state"].keys() == resumed["state"].keys()
        for key, value in full["state"].items():
            assert torch.equal(value, resumed["state"][key]), (rank, key)
    log = [json.loads(x) for x in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]  # written once, by rank 0
    full_log = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log if "loss" in r] == [r["loss"] for r in full_log if "loss" in r]


# --------------------------------------------------------------------------- torchrun CLI
# Under torchrun, each worker runs textcl.train as __main__ exactly as `python -m` does
# (runpy), once per recipe given -- one launch for every objective, so the workers' start-up
# (~5 s of imports) is paid once -- and records every write under $TEXTCL_TEST_WATCH:
# Python-level opens for writing, renames, mkdir, removals (audit hooks), plus torch.save
# and safetensors' save_file, which write from native code and raise no audit event
# (wrapped before anything imports them).
_DRIVER = r"""
import json, os, runpy, sys

WATCH = os.path.realpath(os.environ["TEXTCL_TEST_WATCH"])
writes = []


def record(path, what):
    try:
        p = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return
    if p == WATCH or p.startswith(WATCH + os.sep):
        writes.append([what, os.path.relpath(p, WATCH)])


def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if path is None or isinstance(path, int):
            return
        if (mode is not None and any(c in mode for c in "wax+")) or (
                mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)):
            record(path, "open")
    elif event in ("os.rename", "shutil.copyfile", "shutil.move"):
        record(args[1], event)
    elif event == "os.mkdir" and not os.path.exists(args[0]):
        record(args[0], event)
    elif event in ("os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"):
        record(args[0], event)


sys.addaudithook(hook)
import safetensors.torch  # noqa: E402
import torch  # noqa: E402


def wrap(fn, name):
    def wrapper(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            record(f, name)
        return fn(obj, f, *args, **kwargs)
    return wrapper


torch.save = wrap(torch.save, "torch.save")
safetensors.torch.save_file = wrap(safetensors.torch.save_file, "safetensors.save_file")
module, recipes = sys.argv[1], sys.argv[2:]
try:
    for recipe in recipes:
        print("== textcl.train", recipe, flush=True)
        sys.argv = [module, recipe]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
finally:
    with open(os.environ["TEXTCL_TEST_WRITES"] + "." + os.environ.get("RANK", "0") + ".json", "w") as fh:
        json.dump(writes, fh)
"""
TEXT_OBJECTIVES = ("nsp", "neighbour", "permutation", "declutr", "cert")


def _text_recipe(tmp_path: Path, name: str, model_dir: Path, docs: Path) -> dict:
    """A tiny recipe without ``train.cpu`` (as a user writes one): 2 steps, a checkpoint."""
    common = {"method": name, "output_dir": str(tmp_path / "runs" / name), "seed": 3,
              "train": {"batch_size": 4, "max_steps": 2, "lr": 1e-3, "log_every_n_steps": 1,
                        "save_every_n_steps": 2, "threads": 1},
              "eval": {"before_training": False}}
    model = {"name_or_path": str(model_dir), "max_seq_length": 32}
    sentences = {"documents": str(docs), "held_out_fraction": 0.25, "max_tokens": 12,
                 "cache_dir": str(tmp_path / "cache")}
    return common | {
        "nsp": {"model": model, "data": sentences, "objective": {"eval_queries_per_document": 1}},
        "neighbour": {"model": model, "data": sentences, "objective": {"eval_queries_per_document": 1}},
        "permutation": {"model": model, "data": sentences, "objective": {"passage_sentences": 3}},
        "declutr": {"model": model, "data": {"documents": str(docs), "held_out_fraction": 0.25},
                    "objective": {"num_anchors": 1, "num_positives": 1, "min_span_len": 8, "max_span_len": 16}},
        "cert": {"model": {**model, "max_seq_length": 16},
                 "data": {"pairs": str(_pairs_file(tmp_path / "pairs.jsonl")), "held_out_fraction": 0.2},
                 "objective": {"queue_size": 32}},
    }[name]


def _torchrun(args: list[str], env: dict[str, str], timeout: float = 150) -> subprocess.CompletedProcess:
    """torchrun --standalone (its own free port) with 2 CPU processes; the whole process
    group is killed on a timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun timed out after {timeout} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


def test_train_cli_under_torchrun_every_text_objective(tmp_path, tiny_bert_dir, small_documents):
    recipes = [_write_recipe(tmp_path / f"{name}.yaml", _text_recipe(tmp_path, name, tiny_bert_dir, small_documents))
               for name in TEXT_OBJECTIVES]
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TEXTCL_TEST_WATCH": str(runs), "TEXTCL_TEST_WRITES": str(tmp_path / "writes")}
    env.pop("ACCELERATE_USE_CPU", None)  # as a user runs it: no CPU flag, no train.cpu
    done = _torchrun([str(driver), "textcl.train", *recipes], env)
    first_error = done.stdout.find("Traceback")
    assert done.returncode == 0, done.stdout[first_error : first_error + 4000] if first_error >= 0 else done.stdout[-4000:]
    assert done.stdout.count("model saved to") == len(TEXT_OBJECTIVES)  # printed by rank 0 only

    writes = {r: json.loads((tmp_path / f"writes.{r}.json").read_text()) for r in range(WORLD)}
    assert {Path(path).parts[:1] for _, path in writes[1]} <= {(n,) for n in TEXT_OBJECTIVES}, writes[1]
    for name in TEXT_OBJECTIVES:
        out = runs / name
        rank1 = sorted({path for _, path in writes[1] if Path(path).parts[:1] == (name,)})
        # rank 1's only writes: its RNG state in the checkpoint (kept per process for resume);
        # a run without a process group would have written everything as a second rank 0
        assert rank1 == [f"{name}/checkpoints/.tmp-step_00000002/rank_1.{ext}" for ext in ("json", "safetensors")], (
            name, rank1)
        rank0 = {Path(path).name for _, path in writes[0] if Path(path).parts[:1] == (name,)}
        assert {"model.safetensors", "log.jsonl", "metrics.json", "README.md", "rank_0.json", "manifest.json"} <= rank0, name
        log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log if "loss" in r] == [1, 2], name  # one line per step: one writer
        assert json.loads((out / "metrics.json").read_text()), name  # the final evaluation
        checkpoint = out / "checkpoints" / "step_00000002"
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [checkpoint.name], name
        assert {"rank_0.json", "rank_1.json", "rank_1.safetensors"} <= {p.name for p in checkpoint.iterdir()}, name
