"""GradCache (train.mini_batch_size): same loss and gradients as one backward through the
whole batch (dropout on), bounded memory, 2 processes x B == 1 process x 2B, and the trainer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _inbatch import InBatchPairs, tiny_text_encoder

from textcl.core import gradcache
from textcl.core.gradcache import GradCache, split_features
from textcl.core.recipe import RecipeError, TrainConfig, load_recipe
from textcl.core.trainer import NonFiniteLossError, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
TESTS = Path(__file__).resolve().parent


def _grads(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


def _run(method: torch.nn.Module, step, seed: int = 5):
    """(loss, every parameter gradient, RNG state after) of one forward + backward."""
    method.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = step()
    return float(out["loss"].detach()), _grads(method), torch.get_rng_state()


def _uncached(method, batch):
    def step():
        out = method(batch)
        out["loss"].backward()
        return out

    return step


def _assert_same(ref, got, atol=1e-5):
    loss, grads, _ = ref
    assert got[0] == pytest.approx(loss, abs=atol)
    assert set(got[1]) == set(grads) and len(grads) > 10
    for name, g in grads.items():
        assert torch.allclose(got[1][name], g, atol=atol), (name, (got[1][name] - g).abs().max())


# ----------------------------------------------------------------------------- splitting


def test_split_features_orders_trims_and_restores():
    enc = tiny_text_encoder()
    seqs = [[300] * n for n in (3, 9, 1, 6, 9, 2)]
    padded = enc.pad_token_ids(seqs)  # 6 rows x 11 columns ([CLS] 9 tokens [SEP])
    pieces, order = split_features(padded, 4)
    # longest first, each mini-batch re-padded to its own longest row
    assert [p["input_ids"].shape for p in pieces] == [(4, 11), (2, 4)]
    assert pieces[0]["attention_mask"].sum(1).tolist() == [11, 11, 8, 5]
    stacked = torch.cat([p["attention_mask"].sum(1) for p in pieces])
    assert stacked.index_select(0, order).tolist() == [5, 11, 3, 8, 11, 4]  # batch order again

    chunked = enc.pad_token_ids(seqs, chunk_tokens=40)  # length-bucketed chunks of 2, 3, 1 rows
    pieces, order = split_features(chunked, 2)
    assert [p["input_ids"].shape[0] for p in chunked["chunks"]] == [2, 3, 1]
    assert [tuple(p["input_ids"].shape) for p in pieces] == [(2, 11), (2, 8), (1, 4), (1, 3)]
    assert pieces[0] is chunked["chunks"][0]  # a chunk that fits is used as it is
    assert torch.equal(order, chunked["order"])

    rows, none = split_features(torch.arange(10).view(5, 2), 2)
    assert [r.shape[0] for r in rows] == [2, 2, 1] and none is None
    with pytest.raises(TypeError, match="side 'x'"):
        split_features([[1, 2]], 2, "x")


# ----------------------------------------------------------------------------- equality


def test_gradcache_equals_uncached_batch_with_dropout():
    method = InBatchPairs(tiny_text_encoder(dropout=0.1), n=32, chunk_rows=8)
    batch = method.collate([method.data[i] for i in range(32)])
    method.train()  # dropout in the transformer (hidden and attention)
    ref = _run(method, _uncached(method, batch))
    # Mini-batches = the forward's own chunks: the same dropout masks, replayed.
    got = _run(method, lambda: GradCache(method, 8).step(batch))
    _assert_same(ref, got)
    assert torch.equal(got[2], ref[2])  # the RNG ends where the uncached step leaves it
    # Without the replay the second pass draws other masks: gradients are wrong.
    wrong = _run(method, lambda: GradCache(method, 8, replay_rng=False).step(batch))
    assert wrong[0] == pytest.approx(ref[0], abs=1e-6)
    assert max((wrong[1][k] - ref[1][k]).abs().max() for k in ref[1]) > 1e-2


@pytest.mark.parametrize("chunk_rows", [8, None])
@pytest.mark.parametrize("mini_batch_size", [3, 5])
def test_gradcache_equals_uncached_for_any_mini_batch_size(chunk_rows, mini_batch_size):
    # Mini-batches that cut the forward's chunks (or the padded batch, re-sorted by length)
    # draw other dropout masks, so compare without dropout.
    method = InBatchPairs(tiny_text_encoder(dropout=0.1), n=32, chunk_rows=chunk_rows).eval()
    batch = method.collate([method.data[i] for i in range(32)])
    _assert_same(_run(method, _uncached(method, batch)),
                 _run(method, lambda: GradCache(method, mini_batch_size).step(batch)))


def test_gradcache_under_bf16_autocast():
    # CPU bf16 autocast (mixed_precision: bf16): the same loss; gradients equal up to bf16
    # rounding (GradCache hands the loss float32 embeddings and casts the cached gradient
    # back to bf16 at the encoder output, where the uncached path rounds the same gradient).
    method = InBatchPairs(tiny_text_encoder(dropout=0.1), n=32, chunk_rows=8).train()
    batch = method.collate([method.data[i] for i in range(32)])

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def uncached():
        with autocast():
            out = method(batch)
        out["loss"].backward()
        return out

    loss, grads, _ = _run(method, uncached)
    got_loss, got, _ = _run(method, lambda: GradCache(method, 8, autocast=autocast).step(batch))
    assert got_loss == pytest.approx(loss, abs=1e-6)
    for name, g in grads.items():
        assert (got[name] - g).norm() <= 0.02 * g.norm() + 1e-6, name


def _declutr(tmp_path, tiny_bert_dir, docs, mlm=0.0, **train):
    text = f"""
method: declutr
output_dir: {tmp_path / 'run'}
seed: 3
model: {{name_or_path: {tiny_bert_dir}, max_seq_length: 32, forward_chunk_tokens: 64}}
data: {{documents: {docs}, held_out_fraction: 0.25}}
objective: {{num_anchors: 2, num_positives: 2, min_span_len: 8, max_span_len: 24,
             temperature: 0.1, mlm_weight: {mlm}}}
"""
    path = tmp_path / "declutr.yaml"
    path.write_text(text)
    recipe = load_recipe(path, [f"train.{k}={v}" for k, v in train.items()])
    from textcl.objectives.declutr import DeCLUTR

    torch.manual_seed(0)
    return DeCLUTR.from_recipe(recipe), recipe


def test_declutr_with_mlm_gradcache_equals_forward(tmp_path, tiny_bert_dir, small_documents):
    # 64 padded tokens per chunk and spans of 10-26 tokens: chunks of <= 6 rows, so
    # mini-batches of 8 are the forward's own chunks. The MLM term is the auxiliary loss.
    method, _ = _declutr(tmp_path, tiny_bert_dir, small_documents, mlm=0.5)
    ds = method.train_dataset()
    batch = method.collate([ds[i] for i in range(8)])
    assert max(len(c["input_ids"]) for c in batch["anchors"]["chunks"]) <= 8
    method.train()
    ref = _run(method, _uncached(method, batch))
    got = _run(method, lambda: GradCache(method, 8).step(batch))
    _assert_same(ref, got)
    assert torch.equal(got[2], ref[2])


REPO = TESTS.parent


def _objective(name, tmp_path, tiny_bert_dir, documents):
    """A sentence objective from its shipped recipe, on the tiny BERT and a small corpus."""
    sets = [f"model.name_or_path={tiny_bert_dir}", "model.max_seq_length=32", "eval.evaluators=[]"]
    if name == "cert":
        import json

        pairs = tmp_path / "pairs.jsonl"
        words = "the cat sat on a mat while rain fell over quiet hills and old roads".split()
        rows = [{"id": str(i), "text": " ".join(words[i % 7 : i % 7 + 6]) + f" {i}",
                 "translations": [" ".join(reversed(words[i % 7 : i % 7 + 6])) + f" {i}"]} for i in range(40)]
        pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
        sets += [f"data.pairs={pairs}", "objective.queue_size=16", "objective.in_batch_negatives=true"]
    else:
        sets += [f"data.documents={documents}", "data.max_tokens=12", f"data.cache_dir={tmp_path / 'cache'}"]
    from textcl.core.method import get_method_class

    recipe = load_recipe(REPO / "recipes" / "text" / f"{name}.yaml", sets)
    torch.manual_seed(0)
    return get_method_class(name).from_recipe(recipe)


@pytest.mark.parametrize("name", ["nsp", "neighbour", "permutation", "cert"])
def test_sentence_objectives_gradcache_equals_forward(name, tmp_path, tiny_bert_dir, small_documents):
    # Every in-batch text objective implements the protocol: cached == uncached, for
    # mini-batches that cut the batch (dropout off) and, with dropout on, for mini-batches
    # that are the forward's own chunks (mini_batch_size >= the largest chunk).
    method = _objective(name, tmp_path, tiny_bert_dir, small_documents)
    ds = method.train_dataset()
    batch = method.collate([ds[i] for i in range(6)])
    for train, mini_batch_size in ((False, 3), (True, 10_000)):
        method.train(train)
        if hasattr(method, "_pending"):
            method._pending.clear()  # CERT's keys waiting for the queue
        ref = _run(method, _uncached(method, batch))
        if hasattr(method, "_pending"):
            method._pending.clear()
        _assert_same(ref, _run(method, lambda m=mini_batch_size: GradCache(method, m).step(batch)))


# ----------------------------------------------------------------------------- trainer


def _fit(method, tmp_path, name, **kw):
    cfg = dict(batch_size=4, max_steps=3, lr=0.5, optimizer="sgd", scheduler="constant", log_every_n_steps=1, cpu=True)
    cfg.update(kw)
    Trainer(method, TrainConfig(**cfg), tmp_path / name, seed=1).fit()
    return {k: v.clone() for k, v in method.state_dict().items()}


@pytest.mark.parametrize("accumulation", [1, 2])
def test_trainer_with_mini_batch_size_equals_without(tmp_path, tiny_bert_dir, small_documents, accumulation):
    kw = dict(batch_size=4 // accumulation, gradient_accumulation_steps=accumulation)
    plain = _fit(_declutr(tmp_path, tiny_bert_dir, small_documents)[0], tmp_path, "plain", **kw)
    cached = _fit(_declutr(tmp_path, tiny_bert_dir, small_documents)[0], tmp_path, "cached",
                  mini_batch_size=8, **kw)
    for name, p in plain.items():
        assert torch.allclose(cached[name], p, atol=1e-5), name
    initial = _declutr(tmp_path, tiny_bert_dir, small_documents)[0].state_dict()
    moved = max(float((plain[k] - initial[k]).abs().max()) for k in plain if plain[k].is_floating_point())
    assert moved > 1e-4  # the 3 steps did train


def test_trainer_nan_check_with_gradcache(tmp_path):
    method = InBatchPairs(tiny_text_encoder(), n=32, chunk_rows=4, nan_at_call=2)
    cfg = TrainConfig(batch_size=8, max_steps=3, lr=1e-3, mini_batch_size=4, cpu=True, save_every_n_steps=1)
    trainer = Trainer(method, cfg, tmp_path, seed=1)
    with pytest.raises(NonFiniteLossError, match="at step 2.*step_00000001"):
        trainer.fit()
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "checkpoints" / "step_00000001" / "model.safetensors"))
    for name, p in method.state_dict().items():
        assert torch.equal(saved[name], p), name  # the NaN step changed nothing


def test_train_cpu_mmap_threshold_reaches_gradcache(tmp_path, monkeypatch):
    # train.cpu_mmap_threshold: the pin's size (default 128 KiB) or null (glibc's dynamic
    # threshold: faster, more memory); the trainer hands it to its GradCache.
    import textcl.core.trainer as trainer_module

    seen = []

    def recording(method, mini_batch_size, accelerator, cpu_mmap_threshold=gradcache.CPU_MMAP_THRESHOLD):
        seen.append(cpu_mmap_threshold)
        return gradcache.GradCache(method, mini_batch_size, cpu_mmap_threshold=None)  # no pin in this process

    monkeypatch.setattr(trainer_module, "gradcache_for_training", recording)
    for name, extra in (("default", {}), ("dynamic", {"cpu_mmap_threshold": None}), ("1mib", {"cpu_mmap_threshold": 1 << 20})):
        cfg = TrainConfig(batch_size=8, max_steps=1, lr=1e-3, mini_batch_size=4, cpu=True, **extra)
        Trainer(InBatchPairs(tiny_text_encoder(), n=16), cfg, tmp_path / name, seed=1).fit()
    assert seen == [128 * 1024, None, 1 << 20]
    with pytest.raises(ValueError, match="cpu_mmap_threshold"):
        TrainConfig(cpu_mmap_threshold=100)


def test_mini_batch_size_needs_the_protocol(tmp_path):
    from _toy import Toy, ToyConfig

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: toy\noutput_dir: {tmp_path}\ntrain: {{mini_batch_size: 4}}\n")
    with pytest.raises(RecipeError, match="train.mini_batch_size: method 'toy' does not implement"):
        load_recipe(recipe)
    with pytest.raises(RecipeError, match="train.mini_batch_size"):
        Trainer(Toy(ToyConfig()), TrainConfig(batch_size=8, mini_batch_size=4, max_steps=1), tmp_path).fit()
    with pytest.raises(RecipeError, match="mini_batch_size.*greater than or equal to 1"):
        load_recipe(recipe, ["train.mini_batch_size=0"])

    # BatchNorm makes a row's embedding depend on its mini-batch: refused, not silently wrong.
    method = InBatchPairs(tiny_text_encoder(), n=8)
    method.encoder.projection = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16))
    batch = method.collate([method.data[i] for i in range(8)])
    with pytest.raises(ValueError, match="BatchNorm"):
        GradCache(method.train(), 4).step(batch)


# ----------------------------------------------------------------------------- memory

_MEMORY_CHILD = """
import sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from _inbatch import InBatchPairs, tiny_text_encoder
from textcl.core.gradcache import GradCache

def status(key):  # kB
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

m = InBatchPairs(tiny_text_encoder(0.1), n=512, min_len=30, max_len=30).train()
small = m.collate([m.data[i] for i in range(4)])
m(small)["loss"].backward()  # warm-up: allocator and kernels set up before measuring
batch = m.collate([m.data[i] for i in range(512)])
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM (the peak) to the current RSS
if {mini_batch_size}:
    GradCache(m, {mini_batch_size}).step(batch)
else:
    m(batch)["loss"].backward()
print((status("VmHWM") - before) / 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_peak_memory_batch_512_mini_batch_32_far_below_uncached():
    # Peak resident memory of one training step of 512 pairs of 32-token sequences, each
    # setting in a fresh process: torch's CPU allocations are invisible to tracemalloc, not
    # to the kernel's RSS high-water mark (VmHWM, reset right before the step; getrusage's
    # ru_maxrss would also count the forked pytest process's memory).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {m: subprocess.Popen([sys.executable, "-c", _MEMORY_CHILD.format(tests=str(TESTS), mini_batch_size=m)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for m in (0, 32)}
    mb = {}
    for m, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        mb[m] = float(out.strip().splitlines()[-1])
    assert mb[0] > 150, mb  # the uncached step holds every activation of 2 x 512 sequences
    assert mb[32] < mb[0] / 5, mb


_MALLOC_CHILD = """
import ctypes
import sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from _inbatch import InBatchPairs, tiny_text_encoder
from textcl.core import gradcache, malloc_tuning

def status(key):  # kB
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

m = InBatchPairs(tiny_text_encoder(0.1, hidden=128), n=256, min_len=2, max_len=38).train()
cache = gradcache.GradCache(m, 32, cpu_mmap_threshold={threshold})
torch.manual_seed(0)
cache.step(m.collate([m.data[i] for i in range(32)]))  # warm-up (and the pin, if any)
batch = m.collate([m.data[i] for i in range(256)])  # 8 mini-batches per side, 8 widths
ctypes.CDLL(None).malloc_trim(0)  # the warm-up's free heap pages back: not counted as held
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
torch.manual_seed(1)
loss = float(cache.step(batch)["loss"].detach())
print(malloc_tuning.pinned_mmap_threshold(), (status("VmHWM") - before) / 1024, loss.hex())
"""


def _glibc() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    except OSError:
        return False


@pytest.mark.skipif(not (Path("/proc/self/clear_refs").exists() and _glibc()), reason="needs Linux, glibc")
def test_pinned_mmap_threshold_halves_the_cpu_step_peak_and_changes_no_number():
    # glibc's dynamic mmap threshold puts every activation on the heap after the first
    # freed one, and mini-batches of other widths leave holes that stay resident: unpinned,
    # the step's peak RSS was about twice the pinned one here (BERT-base-size models too,
    # docs/benchmarks/gradcache-memory.md). Same loss to the bit: only where memory lives changes.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(OMP_NUM_THREADS="1")
    procs = {t: subprocess.Popen([sys.executable, "-c", _MALLOC_CHILD.format(tests=str(TESTS), threshold=t)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for t in (None, 128 * 1024)}
    got = {}
    for t, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
        pinned, mb, loss = out.strip().splitlines()[-1].split()
        got[t] = (pinned, float(mb), loss)
    assert got[None][0] == "None" and got[128 * 1024][0] == str(128 * 1024)
    assert got[None][2] == got[128 * 1024][2]
    assert got[128 * 1024][1] < 0.75 * got[None][1], got


def test_pin_leaves_a_users_malloc_setting_alone():
    code = ("from textcl.core.malloc_tuning import pin_malloc_mmap_threshold as pin; "
            "print(pin(), pin(), pin(1 << 20))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 0, plain.stderr[-2000:]
    expected = "True True False" if sys.platform.startswith("linux") and _glibc() else "False False False"
    assert plain.stdout.split() == expected.split()  # pinned once; another value is not forced over it
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    user = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert user.returncode == 0, user.stderr[-2000:]
    assert user.stdout.split() == ["False", "False", "False"]


def test_gradcache_keeps_the_malloc_names_it_had():
    from textcl.core import gradcache, malloc_tuning

    assert gradcache.pin_malloc_mmap_threshold is malloc_tuning.pin_malloc_mmap_threshold
    assert gradcache.CPU_MMAP_THRESHOLD == malloc_tuning.CPU_MMAP_THRESHOLD == 128 * 1024


# ----------------------------------------------------------------------------- 2 processes

B = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    method = InBatchPairs(tiny_text_encoder(dropout=0.0), n=32, chunk_rows=2)
    trainer = Trainer(method, _ddp_config(4, mini_batch_size=3), out_dir, seed=11)  # joins the gloo group

    # One GradCache step on this rank's B pairs (mini-batches of 3 cut the chunks of 4).
    probe = InBatchPairs(tiny_text_encoder(dropout=0.0), n=world * B, chunk_rows=4)
    batch = probe.collate([probe.data[i] for i in range(rank * B, (rank + 1) * B)])
    out = GradCache(probe, 3).step(batch)  # averages the gradients over the ranks
    loss = out["loss"].detach().clone()
    dist.all_reduce(loss)
    torch.save({"loss": loss / world, "grads": _grads(probe)}, os.path.join(out_dir, f"step{rank}.pt"))

    trainer.fit()
    torch.save(method.state_dict(), os.path.join(out_dir, f"w{rank}.pt"))
    trainer.accelerator.wait_for_everyone()
    dist.destroy_process_group()


def _ddp_config(batch_size: int, **kw) -> TrainConfig:
    return TrainConfig(batch_size=batch_size, max_steps=2, lr=0.5, optimizer="sgd", scheduler="constant",
                       cpu=True, gradient_accumulation_steps=2, **kw)


def test_two_processes_with_gradcache_equal_one_process_double_batch(tmp_path):
    (tmp_path / "ddp").mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)

    # GradCache step: each rank's loss and averaged gradients == one process on 2B pairs.
    method = InBatchPairs(tiny_text_encoder(dropout=0.0), n=2 * B)
    batch = method.collate([method.data[i] for i in range(2 * B)])
    loss, grads, _ = _run(method, _uncached(method, batch))
    for rank in range(2):
        got = torch.load(tmp_path / "ddp" / f"step{rank}.pt", weights_only=True)
        _assert_same((loss, grads, None), (float(got["loss"]), got["grads"], None))

    # The trainer (Accelerate + DDP, 2 accumulated micro-steps per optimizer step): GradCache
    # bypasses DDP's reducer and averages gradients itself, once per optimizer step.
    single = InBatchPairs(tiny_text_encoder(dropout=0.0), n=32, chunk_rows=2)
    Trainer(single, _ddp_config(8), tmp_path / "single", seed=11).fit()
    w0 = torch.load(tmp_path / "ddp" / "w0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "ddp" / "w1.pt", weights_only=True)
    for name, p in single.state_dict().items():
        assert torch.allclose(w0[name], p, atol=1e-5), name
        assert torch.equal(w0[name], w1[name]), name
