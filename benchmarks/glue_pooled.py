"""Pooled fine-tune mode of :mod:`benchmarks.glue` (``--mode finetune --head pooled``).

The cross-encoder mode puts a fresh CLS head on a model that was trained to be read through
mean pooling, with one untuned lr; on MiniLM it scored below the frozen probe. Here the
sentence vector is the sentence-transformers model's own output (its Transformer, its
Pooling module, its Normalize if it has one), exactly what the probe reads, and:

* single-sentence tasks: u -> StandardScaler-like fixed affine -> linear (1 logit, BCE);
* pair tasks: [u, v, |u-v|, u*v] -> the same linear head: the probe's features, so both
  modes read the same thing and differ only in whether the encoder moves;
* STS-B: cos(u, v) trained with MSE against gold / 5. No new weights: the model was trained
  for cosine similarity, so step 0 already scores the zero-shot cosine, and a fresh
  regression head on 2,000 rows would first have to relearn what cosine gives for free.

The linear head starts as a probe: a LogisticRegression on the frozen features of the rows
it trains on (C = the probe's pick, at most HEAD_INIT_C_MAX), folded into the layer. A fresh
head fed gradients through a moving encoder is what made the CLS run fall below the probe on
small data; starting from a probe means fine-tuning only has to improve on it (LP-FT, "linear
probe then fine-tune"). Features are centred per dimension but scaled per block (see
:func:`block_scaler`), not per dimension as in the probe.

The lr is picked from a grid on the probe's seeded 10% held-out part of *train* (the same
rows the probe picks C on); the chosen lr is then retrained on all train rows and scored on
eval. Eval rows are never seen before that last step.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks.glue_data import METRIC_LABELS, Split, Task, TaskData, score
from benchmarks.glue_probe import Encoder, features, holdout_split, probe_fit
from benchmarks.glue_scores import METRICS

LR_GRID = (2e-5, 5e-5, 1e-4)
HEAD_LR_FACTOR = 10.0  # the head's lr / the encoder's: a linear layer on standardised features moves slowly at 2e-5
WARMUP_FRACTION = 0.1
WEIGHT_DECAY = 0.01
HEAD_INIT_C_MAX = 0.01  # at most this C for the LogisticRegression the head starts from


def pair_features(u: Any, v: Any) -> Any:
    """[u, v, |u-v|, u*v] of two batches of sentence vectors (torch), as the probe builds them."""
    import torch

    return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)


def block_scaler(x: np.ndarray, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) per feature: the mean per dimension, and one scale per block (u, v,
    |u-v|, u*v), the mean of its dimensions' std.

    Not the probe's per-dimension std: some u*v dimensions vary by ~1e-4 on frozen vectors,
    and once the encoder moves, dividing by that turned small drifts into logits in the
    thousands (MRPC's loss went from 0.4 to 2,800 in 13 steps). A scale per block only puts
    the blocks on a common footing, which is what the head's lr needs.
    """
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    scale = np.concatenate([np.full(len(b), max(float(b.mean()), 1e-8)) for b in np.array_split(std, blocks)])
    return mean.astype(np.float32), scale.astype(np.float32)


def init_head(
    task: Task, x: np.ndarray, y: np.ndarray, strength: float, seed: int, cap: float | None = HEAD_INIT_C_MAX
) -> dict[str, np.ndarray]:
    """The head's starting point: a LogisticRegression (C = the probe's) on the frozen
    features of the rows it will train on, in :func:`block_scaler` units."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = block_scaler(x, 4 if len(task.fields) == 2 else 1)
    # Capped: the probe's own pick can be C=100 (CoLA), a head so sure of the train rows that
    # its loss rose (0.87 -> 1.34) as soon as the encoder moved under it.
    logreg = LogisticRegression(C=strength if cap is None else min(strength, cap), max_iter=2000, random_state=seed)
    logreg = logreg.fit((x - mean) / scale, y)
    return {"mean": mean, "scale": scale, "weight": logreg.coef_.astype(np.float32),
            "bias": logreg.intercept_.astype(np.float32)}


def _build(st: Any, task: Task, head_init: dict[str, np.ndarray] | None) -> Any:
    """The trainable model: the ST model plus (classification) a linear head starting at
    ``head_init`` (:func:`init_head`)."""
    import torch
    from torch import nn

    class PooledModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st
            self.pair = len(task.fields) == 2
            self.regression = task.regression
            if not task.regression:
                assert head_init is not None
                dim = head_init["mean"].shape[0]
                # The scaler stays fixed (buffers): it only sets the scale the head's lr acts on.
                self.register_buffer("mean", torch.from_numpy(head_init["mean"]))
                self.register_buffer("scale", torch.from_numpy(head_init["scale"]))
                self.head = nn.Linear(dim, 1)
                with torch.no_grad():
                    self.head.weight.copy_(torch.from_numpy(head_init["weight"]).reshape(1, dim))
                    self.head.bias.copy_(torch.from_numpy(head_init["bias"]).reshape(1))

        def embed(self, texts: Sequence[str]) -> torch.Tensor:
            """The model's own sentence vectors: Transformer -> Pooling (-> Normalize)."""
            feats = self.st.preprocess(list(texts))
            feats = {k: v.to(self.st.device) if isinstance(v, torch.Tensor) else v for k, v in feats.items()}
            return self.st(feats)["sentence_embedding"]

        def forward(self, rows: Sequence[tuple[str, ...]]) -> torch.Tensor:
            """One output per row: a logit, or (STS-B) the cosine of the pair."""
            if self.pair:
                # Both sides in one call: one padded batch is cheaper than two on CPU.
                emb = self.embed([r[0] for r in rows] + [r[1] for r in rows])
                u, v = emb[: len(rows)], emb[len(rows):]
                if self.regression:
                    return nn.functional.cosine_similarity(u, v, dim=-1)
                x = pair_features(u, v)
            else:
                x = self.embed([r[0] for r in rows])
            return self.head((x - self.mean) / self.scale).squeeze(-1)

    return PooledModel()


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def train_pooled(
    model: Any, split: Split, *, lr: float, epochs: float, batch_size: int, seed: int
) -> dict[str, Any]:
    """AdamW over the encoder (lr) and the head (HEAD_LR_FACTOR x lr), linear warmup then
    decay; returns the mean loss of the first and the last epoch-tenth, and the step count."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    per_epoch = math.ceil(len(split) / batch_size)
    steps = max(1, math.ceil(epochs * per_epoch))
    # Word embeddings stay fixed: half of MiniLM's weights, a sparse, rarely useful update on
    # 2,000 rows, and AdamW over them is a large share of a CPU step.
    word_emb = model.st[0].auto_model.get_input_embeddings().weight if hasattr(model.st[0], "auto_model") else None
    if word_emb is not None:
        word_emb.requires_grad_(False)
    head = [p for n, p in model.named_parameters() if n.startswith("head.") and p.requires_grad]
    body = [p for n, p in model.named_parameters() if not n.startswith("head.") and p.requires_grad]
    groups = [{"params": body, "lr": lr}]
    if head:
        groups.append({"params": head, "lr": lr * HEAD_LR_FACTOR})
    opt = torch.optim.AdamW(groups, weight_decay=WEIGHT_DECAY)
    warmup = max(1, int(WARMUP_FRACTION * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup))
    )
    y_all = torch.tensor(np.asarray(split.labels), dtype=torch.float32)
    if model.regression:
        y_all = y_all / 5.0  # gold in [0, 5] -> [0, 1], the range of a useful cosine
    loss_fn: Callable[..., Any] = torch.nn.MSELoss() if model.regression else torch.nn.BCEWithLogitsLoss()
    losses: list[float] = []
    # Dropout off: the head starts as a probe fit on dropout-free vectors, and in one or two
    # epochs over 2,000 rows overfitting is not what limits the score.
    model.eval()
    order: list[np.ndarray] = []
    for _ in range(steps):
        if not order:
            order = _batches(len(split), batch_size, rng)
        idx = order.pop(0)
        out = model([split.texts[i] for i in idx])
        loss = loss_fn(out, y_all[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # one bad batch must not wreck 100 steps
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    tenth = max(1, steps // 10)
    return {"steps": steps, "loss_first": round(float(np.mean(losses[:tenth])), 5),
            "loss_last": round(float(np.mean(losses[-tenth:])), 5)}


def predict_pooled(model: Any, split: Split, batch_size: int = 64) -> np.ndarray:
    """Eval outputs: class ids (logit > 0) or, for STS-B, cosines."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(split), batch_size):
            outs.append(model(split.texts[i:i + batch_size]).float().numpy())
    out = np.concatenate(outs) if outs else np.zeros(0, np.float32)
    return out if model.regression else (out > 0).astype(np.int64)


def load_st(ref: str, max_seq_length: int) -> Any:
    """The sentence-transformers model at ``ref`` on CPU (or CUDA if there), float32."""
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(ref, device="cuda" if torch.cuda.is_available() else "cpu")
    st.max_seq_length = min(max_seq_length, st.max_seq_length or max_seq_length)
    return st.float()


def finetune_pooled(
    st: Any,
    encoder: Encoder,
    data: TaskData,
    *,
    lr_grid: Sequence[float] = LR_GRID,
    epochs: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    head_c: float | None = None,
    log: Callable[[str], None] = print,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Pick the lr on held-out train, retrain on all train with it, predict eval.

    ``st`` is the sentence-transformers model (left unchanged: every fit starts from a copy);
    ``encoder`` gives the frozen vectors the probe and the head's initialisation read. Also
    fits the frozen probe on the same train rows and records its eval scores in
    ``details["probe_same_subsample"]``. ``head_c`` fixes the C of the head's starting
    LogisticRegression (default: the probe's pick, at most HEAD_INIT_C_MAX). Returns (eval
    labels, predictions, details).
    """
    task = data.task
    y_train = data.train.labels
    t0 = time.perf_counter()
    x_train, x_eval = features(encoder, [data.train, data.eval], batch_size=64)
    probe_model, probe_details = probe_fit(task, x_train, y_train, seed=seed)
    probe_scores = score(task, data.eval.labels, probe_model.predict(x_eval))
    probe_seconds = time.perf_counter() - t0
    log(f"  {task.display} frozen probe, same {len(y_train)} train rows: "
        + ", ".join(f"{METRIC_LABELS[m]} {v}" for m, v in probe_scores.items()) + f" ({probe_seconds:.0f} s)")
    # init_head caps C at HEAD_INIT_C_MAX; a fixed head_c is used as given.
    strength = probe_details.get("C") if head_c is None else head_c
    init_state = copy.deepcopy(st.state_dict())

    def fit(rows: np.ndarray, lr: float) -> tuple[Any, dict[str, Any]]:
        st.load_state_dict(init_state)
        # The head starts as a probe fit on these rows only (held-out rows stay unseen).
        head = None if task.regression else init_head(
            task, x_train[rows], y_train[rows], strength, seed, cap=HEAD_INIT_C_MAX if head_c is None else None
        )
        model = _build(st, task, head)
        info = train_pooled(model, data.train.take(rows.tolist()), lr=lr, epochs=epochs,
                            batch_size=batch_size, seed=seed)
        return model, info

    main = task.metrics[0]
    main_metric = METRICS[main]
    selection: dict[str, float] = {}
    selection_seconds: dict[str, float] = {}
    if len(lr_grid) > 1:
        fit_rows, hold_rows = holdout_split(len(y_train), seed)
        hold = data.train.take(hold_rows.tolist())
        for lr in lr_grid:
            t1 = time.perf_counter()
            model, _ = fit(fit_rows, lr)
            s = main_metric(hold.labels, predict_pooled(model, hold))
            selection[f"{lr:g}"] = -math.inf if math.isnan(s) else round(100 * s, 3)
            selection_seconds[f"{lr:g}"] = round(time.perf_counter() - t1, 1)
            log(f"  {task.display} lr {lr:g}: held-out train {METRIC_LABELS[main]} {selection[f'{lr:g}']} "
                f"({selection_seconds[f'{lr:g}']:.0f} s)")
        chosen = max(lr_grid, key=lambda v: selection[f"{v:g}"])  # ties: the first (smallest) lr
    else:
        chosen = lr_grid[0]
    t1 = time.perf_counter()
    model, info = fit(np.arange(len(y_train)), chosen)
    preds = predict_pooled(model, data.eval)
    st.load_state_dict(init_state)  # the caller's model is left as it came
    details: dict[str, Any] = {
        "head_c_fixed": head_c is not None,
        "head_init_c": None if task.regression else (min(strength, HEAD_INIT_C_MAX) if head_c is None else head_c),
        "head": "cosine" if task.regression else ("[u, v, |u-v|, u*v] -> linear" if len(task.fields) == 2
                                                   else "u -> linear"),
        "lr": chosen,
        "lr_grid": [float(v) for v in lr_grid],
        "lr_selection": selection,
        "lr_selection_seconds": selection_seconds,
        "selection_holdout_rows": int(round(len(y_train) - len(holdout_split(len(y_train), seed)[0]))),
        "final_fit_seconds": round(time.perf_counter() - t1, 1),
        "max_seq_length": int(st.max_seq_length),
        "epochs": epochs,
        "batch_size": batch_size,
        **info,
        "device": str(st.device),
        "probe_same_subsample": {**probe_scores, **{k: v for k, v in probe_details.items() if k != "feature_dim"},
                                 "seconds": round(probe_seconds, 1)},
    }
    return np.asarray(data.eval.labels), preds, details


def pooled_protocol(task: Task, details: dict[str, Any], seeds: Sequence[int]) -> str:
    """How the pooled fine-tune ran, for the protocol line."""
    grid = details["lr_grid"]
    pick = (f"lr {details['lr']:g} picked from {{{', '.join(f'{g:g}' for g in grid)}}} on the probe's seeded 10% "
            f"held-out part of train by {METRIC_LABELS[task.metrics[0]]}, then retrained on all train"
            if len(grid) > 1 else f"lr {details['lr']:g} fixed")
    head = "cos(u, v), MSE against gold/5"
    if not task.regression:
        c = details.get("head_init_c")
        how_c = f"C = min(the probe's C, {HEAD_INIT_C_MAX:g})" + (f" = {c:g}" if c is not None else "")
        if details.get("head_c_fixed"):
            how_c = f"C {c:g}, fixed by --head-c"
        head = (f"{details['head']} initialised from a LogisticRegression ({how_c}) on the frozen features of the "
                "rows it trains on, BCE")
    return (
        f"fine-tune the sentence-transformers model through its own pooling (u = its sentence vector), head "
        f"{head}; AdamW (head lr x{HEAD_LR_FACTOR:g}, weight decay {WEIGHT_DECAY:g}, word embeddings frozen, dropout off, "
        f"grad norm clipped at 1), "
        f"{WARMUP_FRACTION:.0%} warmup then linear decay, {details['epochs']:g} epoch(s) ({details['steps']} steps), "
        f"batch {details['batch_size']}, max_seq_length {details['max_seq_length']}; {pick}; "
        f"seed {', '.join(map(str, seeds))}"
    )


def st_dir(spec: str) -> str:
    """The sentence-transformers directory of ``spec`` (a path or hub name), which
    ``--head pooled`` needs: its Pooling module is what the head reads."""
    from pathlib import Path

    from benchmarks.glue_data import GlueError
    from textcl.encoders import ModelLoadError, locate_model

    try:
        ref = locate_model(spec)
    except ModelLoadError as err:
        raise GlueError(str(err)) from None
    modules = Path(ref) / "modules.json"
    if not modules.is_file() or "Pooling" not in modules.read_text(encoding="utf-8"):
        raise GlueError(f"{spec}: no modules.json with a Pooling module, so no pooling to fine-tune through "
                        "— give a sentence-transformers directory, or use --head cls")
    return str(ref)


def read_probe_baseline(path: Any) -> dict[str, Any]:
    """Per task, the scores and train size of a probe report (``--mode probe`` JSON)."""
    import json

    from benchmarks.glue_data import TASKS, GlueError

    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GlueError(f"{path}: cannot be read as JSON ({err}) — give a report written by --mode probe") from None
    if not isinstance(report, dict) or report.get("mode") != "probe":
        raise GlueError(f"{path}: mode: not a probe report — give a report written by --mode probe")
    out: dict[str, Any] = {"file": str(path), "command": report.get("command")}
    for name, task in TASKS.items():
        if isinstance(report.get(name), dict):
            details = report.get("details", {}).get(name, {})
            out[name] = {**{m: report[name].get(m) for m in task.metrics}, "n_train": details.get("n_train")}
    return out


def comparison(report: dict[str, Any], tasks: Sequence[Task], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Per task: fine-tune vs frozen probe on the same train rows vs (if given) the full-train
    probe, on every metric, and whether the fine-tune beats each on the task's main metric."""
    out: dict[str, Any] = {}
    first = report["models"][0]
    for task in tasks:
        runs = report["runs"].get(first, {}).get(task.name, {})
        if not runs:
            continue
        run = runs[min(runs, key=int)]
        same = run["details"]["probe_same_subsample"]
        entry: dict[str, Any] = {"lr": run["details"]["lr"], "n_train": run["details"]["n_train"]}
        for m in task.metrics:
            entry[m] = {"finetune": run["scores"][m], "probe_same_subsample": same.get(m)}
            if baseline and task.name in baseline:
                entry[m]["probe_full_train"] = baseline[task.name].get(m)
        main = task.metrics[0]
        ft = entry[main]["finetune"]
        entry["beats_probe_same_subsample"] = None if ft is None or same.get(main) is None else ft > same[main]
        full = entry[main].get("probe_full_train")
        if baseline and task.name in baseline:
            entry["beats_probe_full_train"] = None if ft is None or full is None else ft > full
            entry["probe_full_train_rows"] = baseline[task.name].get("n_train")
        out[task.name] = entry
    return out
