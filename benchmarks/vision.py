"""Contrastive image methods on CIFAR-10 at CPU scale: kNN and linear-probe accuracy.

    python -m benchmarks.vision [--methods simclr npid pirl moco swav] [--budget-minutes M]
        [--jobs J] [--curve-points P] [--data-dir DIR] [--out F.json] [--plot] [--threads T]
        [--probe-train N] [--probe-test N] [--augment-speed] [--update]

Each method runs its CPU recipe ``recipes/vision/<method>_cifar10_cpu.yaml`` through
``textcl.train.run`` -- the same trainer and CLI path as any recipe -- into
``runs/vision-bench/<method>/``, for the recipe's ``train.max_minutes`` (15) or
``--budget-minutes M`` of training time: the trainer stops on the clock and its lr
schedule follows the elapsed fraction of the budget, so every method anneals within the
same wall-clock budget whatever its step cost (evaluation time is not counted). A few
calibration steps measure seconds per step first, to space ``--curve-points`` kNN
evaluations (the recipe's own 5000-image bank) over the run: the kNN-over-training curve.
``--jobs 2`` trains two methods at a time, one torch thread each (one core each on a
2-core machine: with 2 threads on busy cores, one small-tensor run was 4-5x slower).

Protocol (same for every row, independent of the recipes' own kNN): frozen backbone
features (no augmentation) of ``--probe-train`` training images (class-stratified, seed 0)
and ``--probe-test`` test images; weighted kNN (k=200, cosine, t=0.1, InstDisc) and a
linear probe (L2 logistic regression, L-BFGS, standardised features). A random-init
backbone of the same architecture is the floor. ``images/s`` = training images per
second (log.jsonl ``examples_per_sec``; each image gives the method's views).
``--augment-speed`` also times the SimCLR view pipeline in plain torch vs kornia.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._cli import cli_main
from benchmarks.common import add_data_dir_argument, environment, resolve_data_dir, write_report

METHODS = ("simclr", "npid", "pirl", "moco", "swav")
RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "vision"
CIFAR = "vision/cifar10.npz"
KNN_K, KNN_T = 200, 0.1


def recipe_path(method: str) -> Path:
    return RECIPES / f"{method}_cifar10_cpu.yaml"


# --------------------------------------------------------------------------- budget
def calibrate(recipe_file: Path, overrides: list[str], steps: int = 2) -> dict[str, float]:
    """Seconds per optimizer step (after one warm-up step) and eval images per second."""
    from textcl.core.method import get_method_class
    from textcl.core.optim import build_optimizer
    from textcl.core.recipe import load_recipe

    recipe = load_recipe(recipe_file, overrides)
    torch.manual_seed(recipe.seed)
    method = get_method_class(recipe.method).from_recipe(recipe)
    ds = method.train_dataset()
    b = recipe.train.batch_size
    batch = method.collate([ds[i] for i in range(b)])
    opt = build_optimizer(method.parameter_groups(recipe.train.weight_decay), recipe.train)
    method.train()
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        method(batch)["loss"].backward()
        method.before_optimizer_step(step)
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_optimizer_step(step + 1)
        times.append(time.perf_counter() - start)
    method.eval()
    from textcl.vision.evaluate import extract_features

    images = method.knn_data.x_train[:512]
    start = time.perf_counter()
    extract_features(method.backbone, images, 512)
    eval_ips = len(images) / (time.perf_counter() - start)
    n_eval = len(method.knn_data.y_train) + len(method.knn_data.y_test)
    # NPID / PIRL with bank_init: features encode the training set once before step 1.
    init_s = method.num_train / eval_ips if not bool(getattr(method, "bank_ready", True)) else 0.0
    return {"s_per_step": float(np.median(times[1:])), "eval_images_per_s": eval_ips,
            "knn_eval_s": n_eval / eval_ips, "init_s": init_s}


def eval_interval(minutes: float, cal: dict[str, float], points: int) -> int:
    """Steps between kNN evaluations so that about ``points`` fall inside the budget."""
    return max(1, round(minutes * 60 / cal["s_per_step"] / max(points, 1)))


def budget_minutes(method: str, budget: float | None) -> float:
    """``budget``, else the CPU recipe's ``train.max_minutes``."""
    import yaml

    if budget is not None:
        return budget
    minutes = yaml.safe_load(recipe_path(method).read_text()).get("train", {}).get("max_minutes")
    if not minutes:
        raise SystemExit(f"{recipe_path(method)}: no train.max_minutes; pass --budget-minutes")
    return float(minutes)


# --------------------------------------------------------------------------- evaluation
def probe_sets(data_dir: Path, n_train: int, n_test: int) -> Any:
    from textcl.vision.data import load_cifar10_npz

    return load_cifar10_npz(data_dir / CIFAR).subset(n_train, n_test, seed=0)


def evaluate_backbone(backbone: torch.nn.Module, probe: Any) -> dict[str, float]:
    from textcl.vision.evaluate import extract_features, knn_accuracy, linear_probe_accuracy

    backbone.eval()
    start = time.perf_counter()
    ftr = extract_features(backbone, probe.x_train, 512)
    fte = extract_features(backbone, probe.x_test, 512)
    ytr, yte = torch.as_tensor(probe.y_train), torch.as_tensor(probe.y_test)
    knn = knn_accuracy(fte, yte, ftr, ytr, k=KNN_K, temperature=KNN_T)
    linear = linear_probe_accuracy(ftr, ytr, fte, yte)
    return {"knn_top1": knn, "linear_top1": linear, "eval_s": time.perf_counter() - start}


def run_method(
    method: str, runs_dir: Path, budget: float | None, probe: Any, curve_points: int = 10,
    threads: int | None = None, sets: list[str] | None = None,
) -> dict[str, Any]:
    """Train one method for its budget; the row: steps, speed, peak memory, kNN curve, probes."""
    import resource

    from textcl.train import run
    from textcl.vision.backbones import load_backbone

    if threads:
        torch.set_num_threads(threads)
    minutes = budget_minutes(method, budget)
    out = runs_dir / method
    overrides = [f"output_dir={out}", f"train.max_minutes={minutes:g}", "train.max_steps=null", *(sets or [])]
    row: dict[str, Any] = {"method": method, "recipe": str(recipe_path(method).relative_to(RECIPES.parent.parent)),
                           "budget_minutes": minutes, "overrides": list(sets or [])}
    cal = calibrate(recipe_path(method), overrides)
    row["calibration"] = cal
    if curve_points:
        overrides.append(f"eval.every_n_steps={eval_interval(minutes, cal, curve_points)}")
    start = time.perf_counter()
    run(str(recipe_path(method)), overrides, overwrite=True)
    row["wall_s"] = time.perf_counter() - start
    # ru_maxrss: KiB on Linux; the process's high-water mark (one method per process with --jobs).
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    train_rows = [r for r in log if "examples_per_sec" in r]
    row["steps"] = train_rows[-1]["step"] if train_rows else 0
    row["train_seconds"] = train_rows[-1].get("train_seconds") if train_rows else None
    row["images_per_s"] = float(np.mean([r["examples_per_sec"] for r in train_rows])) if train_rows else None
    row["final_loss"] = train_rows[-1]["loss"] if train_rows else None
    row["run_metrics"] = json.loads((out / "metrics.json").read_text())
    curve = [(0.0, row["run_metrics"].get("initial/knn_top1"))]
    curve += [(r.get("train_seconds"), r["eval/knn_top1"]) for r in log if "eval/knn_top1" in r]
    row["knn_curve"] = [{"train_seconds": t, "knn_top1": k} for t, k in curve if t is not None and k is not None]
    row.update(evaluate_backbone(load_backbone(out), probe))
    return row


def _run_in_process(args: tuple[Any, ...]) -> dict[str, Any]:
    method, data, *rest = args
    os.environ["TEXTCL_DATA"] = data
    print(f"== {method} (process {os.getpid()})", flush=True)
    return run_method(method, *rest)


def random_init_row(probe: Any) -> dict[str, Any]:
    """The floor: the CPU recipes' backbone, untrained (seed 42, as the recipes)."""
    import yaml

    from textcl.vision.backbones import build_backbone

    model = yaml.safe_load(recipe_path("simclr").read_text())["model"]
    torch.manual_seed(42)
    row: dict[str, Any] = {"method": "random init", "steps": 0, "wall_s": 0.0, "images_per_s": None}
    row.update(evaluate_backbone(build_backbone(model), probe))
    return row


# --------------------------------------------------------------------------- augmentation speed
def augment_speed(batch: int = 512, rounds: int = 5) -> dict[str, Any]:
    """SimCLR CIFAR view (crop, flip, jitter p=.8, gray p=.2, normalise) per second."""
    from textcl.vision.augment import CIFAR_MEAN, CIFAR_STD, AugmentConfig, ViewAugment

    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pipelines = {"torch (vision.augment)": ViewAugment(AugmentConfig())}
    try:
        import kornia
        import kornia.augmentation as K

        pipelines[f"kornia {kornia.__version__}"] = K.AugmentationSequential(
            K.RandomResizedCrop((32, 32), scale=(0.08, 1.0)), K.RandomHorizontalFlip(),
            K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2),
            K.Normalize(torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD)),
        )
    except ImportError:
        pass
    result: dict[str, Any] = {"batch": batch, "rounds": rounds, "images_per_s": {}}
    for name, fn in pipelines.items():
        fn(x)  # warm-up
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
        result["images_per_s"][name] = batch / float(np.median(times))
    return result


# --------------------------------------------------------------------------- report
def print_table(report: dict[str, Any]) -> None:
    p = report["protocol"]
    print(f"\nCIFAR-10, frozen backbone features: weighted kNN (k={KNN_K}, cosine, t={KNN_T}) and linear "
          f"probe; {p['probe_train']} train / {p['probe_test']} test images; {p['threads']} torch thread(s)")
    floor = report["rows"][0]["knn_top1"]
    print(f"{'method':12s} {'steps':>6s} {'kNN top-1':>10s} {'vs random':>10s} {'linear top-1':>13s} "
          f"{'wall s':>8s} {'images/s':>9s} {'peak MiB':>9s}")
    if any(r.get("overrides") for r in report["rows"]):
        print("recipe overrides: " + " ".join(next(r["overrides"] for r in report["rows"] if r.get("overrides"))))
    for r in report["rows"]:
        ips = f"{r['images_per_s']:9.1f}" if r.get("images_per_s") else f"{'-':>9s}"
        mem = f"{r['peak_rss_mb']:9.0f}" if r.get("peak_rss_mb") else f"{'-':>9s}"
        gain = f"{100 * (r['knn_top1'] - floor):+9.2f}" if r["steps"] else f"{'-':>9s}"
        print(f"{r['method']:12s} {r['steps']:6d} {100 * r['knn_top1']:9.2f}% {gain}  {100 * r['linear_top1']:12.2f}% "
              f"{r['wall_s']:8.1f} {ips} {mem}")
    if "augment_speed" in report:
        for name, ips in report["augment_speed"]["images_per_s"].items():
            print(f"augment {name}: {ips:.0f} images/s (batch {report['augment_speed']['batch']})")


def write_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    names = [r["method"] for r in rows]
    x = np.arange(len(rows))
    fig, (ax, curve_ax) = plt.subplots(1, 2, figsize=(max(6.0, 1.4 * len(rows) + 2) + 5.5, 3.8),
                                       gridspec_kw={"width_ratios": [1.3, 1]})
    ax.bar(x - 0.2, [100 * r["knn_top1"] for r in rows], 0.4, label="kNN top-1")
    ax.bar(x + 0.2, [100 * r["linear_top1"] for r in rows], 0.4, label="linear probe top-1")
    ax.set_xticks(x, names)
    ax.set_ylabel("CIFAR-10 test accuracy (%)")
    ax.set_title("CIFAR-10, CPU-budget contrastive pre-training, frozen features", fontsize=10)
    ax.legend(loc="lower right")
    for r in rows:
        if r.get("knn_curve"):
            pts = r["knn_curve"]
            curve_ax.plot([p["train_seconds"] / 60 for p in pts], [100 * p["knn_top1"] for p in pts],
                          marker="o", ms=3, label=r["method"])
    curve_ax.set_xlabel("training minutes")
    curve_ax.set_ylabel("kNN top-1 (%), recipe bank")
    curve_ax.set_title("kNN during training (recipe bank; minute 0 = the random init)", fontsize=10)
    curve_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merge_rows(previous: dict[str, Any], rows: list[dict[str, Any]], methods: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """``--update``: ``rows`` (random init first, then ``methods``) plus ``previous``' rows of the
    other methods, in METHODS order; and the commands that made the kept rows."""
    kept = [r for r in previous.get("rows", []) if "knn_curve" in r and r.get("method") not in methods]
    order = {m: i for i, m in enumerate(METHODS)}
    merged = rows[:1] + sorted(kept + rows[1:], key=lambda r: order.get(r.get("method"), len(order)))
    return merged, [*previous.get("earlier_commands", []), previous.get("command", "?")]


def _previous_report(out: Path) -> dict[str, Any] | None:
    """The report at ``out`` for ``--update`` (``None`` if there is none yet)."""
    if not out.is_file():
        return None
    try:
        return json.loads(out.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {out}: not valid JSON ({exc.msg}); move it away or drop --update") from None


@cli_main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.vision", description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="per method: training minutes (default: the recipe's train.max_minutes, 15)")
    p.add_argument("--jobs", type=int, default=1,
                   help="methods trained at a time, each in its own process with --threads threads")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override for every method (repeatable); use another --runs-dir and --out")
    p.add_argument("--curve-points", type=int, default=10,
                   help="kNN evaluations (recipe bank) spread over each run; 0: before and after only")
    add_data_dir_argument(p)
    p.add_argument("--out", type=Path, default=None, help="write all numbers to this JSON file")
    p.add_argument("--plot", action="store_true", help="also write a PNG bar chart next to --out")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on shared cores 2 OpenMP threads were 4x slower here)")
    p.add_argument("--probe-train", type=int, default=10000)
    p.add_argument("--probe-test", type=int, default=2000)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/vision-bench"))
    p.add_argument("--augment-speed", action="store_true", help="also time torch vs kornia augmentation")
    p.add_argument("--update", action="store_true",
                   help="keep the other methods' rows of an existing --out and replace only the rows of "
                   "--methods (e.g. one method rerun after a recipe change)")
    args = p.parse_args(argv)
    if args.plot and args.out is None:
        p.error("--plot needs --out")
    if args.update and args.out is None:
        p.error("--update needs --out")
    previous = _previous_report(args.out) if args.update else None
    data = resolve_data_dir(args.data_dir, CIFAR)
    os.environ["TEXTCL_DATA"] = str(data)  # the recipes read ${TEXTCL_DATA}
    torch.set_num_threads(args.threads)

    probe = probe_sets(data, args.probe_train, args.probe_test)
    rows = [random_init_row(probe)]
    jobs = [(m, str(data), args.runs_dir, args.budget_minutes, probe, args.curve_points, args.threads, args.sets)
            for m in args.methods]
    started = time.perf_counter()
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(args.jobs, len(jobs)), maxtasksperchild=1) as pool:
            rows += pool.map(_run_in_process, jobs, chunksize=1)
    else:
        rows += [_run_in_process(j) for j in jobs]
    command = "python -m benchmarks.vision " + shlex.join(argv)
    history: list[str] = []
    if previous is not None:
        rows, history = merge_rows(previous, rows, args.methods)
    report: dict[str, Any] = {
        "rows": rows,
        "protocol": {
            "knn": f"weighted kNN, k={KNN_K}, cosine, temperature {KNN_T} (InstDisc)",
            "linear": "multinomial logistic regression on standardised frozen features, L2 1e-4, L-BFGS 200 iterations",
            "features": "backbone global-pooled features, CIFAR mean/std normalisation, no augmentation",
            "probe_train": args.probe_train, "probe_test": args.probe_test, "threads": args.threads,
            "budget_minutes": args.budget_minutes, "jobs": args.jobs,
            "peak_memory": "peak resident memory (ru_maxrss) of the process that trained the method",
            "total_seconds": time.perf_counter() - started,
        },
        "command": command,
        "environment": environment(("kornia", "accelerate")),
    }
    if history:
        # Rows kept from these runs: their protocol entries (jobs, total_seconds) are the last run's.
        report["earlier_commands"] = history
    if args.augment_speed:
        report["augment_speed"] = augment_speed()
    elif previous is not None and "augment_speed" in previous:
        report["augment_speed"] = previous["augment_speed"]
    print_table(report)
    if args.out is not None:
        write_report(args.out, report)
        print(f"wrote {args.out}")
        if args.plot:
            write_plot(report, args.out.with_suffix(".png"))
            print(f"wrote {args.out.with_suffix('.png')}")
    return report


if __name__ == "__main__":
    main()
