"""Whitening of sentence embeddings (BERT-whitening, Su et al. 2021; WhiteningBERT, Huang et al. 2021).

Embeddings of an encoder trained for minutes (or not at all) are anisotropic: a few
directions carry most of the variance, so cosine similarity is dominated by them. Fitting
``x -> (x - mean) @ U diag(1/sqrt(lambda))`` on embeddings of *unlabelled* in-domain text
(``U``, ``lambda``: eigenvectors / values of their covariance) makes the covariance the
identity; keeping the top ``k`` components also reduces the dimension. No labels and no
evaluation data are involved -- only sentences of the training corpus.

The transform is one affine layer, saved as a sentence-transformers ``Dense`` module with
identity activation between Pooling and Normalize, so a whitened model loads with one call
in sentence-transformers and in textcl (``Embedder.load``)::

    python -m textcl.whitening runs/neighbour --corpus corpus.txt.gz --out runs/neighbour-whitened

Training from a whitened model drops the layer (training changes the features it was fitted
to); fit it again afterwards.

The layer itself, :class:`Whitening`, lives in :mod:`textcl.whitening_layer` beside the
encoder (which loads it); this module fits it through :class:`textcl.embed.Embedder` and is
imported by nothing in ``textcl`` below it. Its names stay importable from here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textcl.core.io import atomic_write_json, replace_dir
from textcl.embed import Embedder
from textcl.fit_texts import read_texts, sample_texts  # noqa: F401 (re-exported)
from textcl.whitening_layer import IDENTITY, Whitening, check_identity_dense, logger  # noqa: F401 (re-exported)

__all__ = ["Whitening", "read_texts", "whiten_model"]

CITATION = """@article{su2021whitening,
  title = {Whitening Sentence Representations for Better Semantics and Faster Retrieval},
  author = {Su, Jianlin and Cao, Jiarun and Liu, Weijie and Ou, Yangyiwen},
  journal = {arXiv preprint arXiv:2103.15316},
  year = {2021}
}"""

#: The file a whitened model keeps the fit's facts in.
FIT_FILE = "whitening.json"


def whiten_model(
    model: str | Path,
    texts: Sequence[str],
    out: str | Path,
    *,
    dim: int | None = None,
    max_dim: int | None = None,
    max_texts: int | None = 20_000,
    seed: int = 0,
    batch_size: int = 64,
    device: str | None = None,
    show_progress: bool | None = None,
    bow_weight: float | None = None,
) -> dict[str, Any]:
    """Fit whitening on ``texts`` embedded by ``model`` and write the whitened model to ``out``.

    ``bow_weight`` first sets the model's residual bag-of-words path (see
    :class:`textcl.st_modules.BagOfWordsResidual`; ``None`` keeps what the model has), so the
    layer is fitted to, and saved after, that path.

    ``dim`` keeps exactly that many components (at most the embedding width); ``max_dim``
    keeps at most that many, all of a narrower model's (give one of the two).

    ``max_texts`` distinct texts are drawn with ``seed``. ``out`` is written to a temporary
    directory and renamed into place, so an interrupted run never leaves a half model.
    Returns the fit's facts (also written to ``out/whitening.json``).
    """
    from textcl.card import portable_card_info

    if dim is not None and max_dim is not None:
        raise ValueError("give dim or max_dim, not both")
    chosen = sample_texts(texts, max_texts, seed)
    if len(chosen) < 2:
        raise ValueError(f"whitening needs at least 2 distinct non-empty texts, got {len(chosen)}")
    embedder = Embedder.load(str(model), device=device)
    if bow_weight is not None:
        if bow_weight < 0:
            raise ValueError(f"bow_weight must be >= 0, got {bow_weight}")
        embedder.encoder.bow_weight = float(bow_weight)
    if embedder.encoder.output_layer is not None:
        raise ValueError(f"{model} already ends with a Dense/whitening layer; whiten the model it was made from")
    start = time.perf_counter()
    x = embedder.encode(chosen, batch_size=batch_size, normalize=False, show_progress=show_progress)
    encode_s = time.perf_counter() - start
    if max_dim is not None:
        dim = min(max_dim, x.shape[1])
    layer = Whitening.fit(x, dim)
    fit_s = time.perf_counter() - start - encode_s
    encoder = embedder.encoder
    encoder.output_layer = layer.to(encoder.device)
    facts = {
        # Written with the model: a local source model by name and counts, never by its path.
        "source_model": portable_card_info({"base_model": str(model)})["base_model"],
        "bow_weight": embedder.encoder.bow_weight,
        "texts": len(chosen),
        "seed": seed,
        "in_dim": layer.in_features,
        "dim": layer.out_features,
        "variance_kept": float(layer.explained.sum()),  # type: ignore[union-attr]
        "top_component_variance": float(layer.explained[0]),  # type: ignore[index]
        "encode_seconds": encode_s,
        "fit_seconds": fit_s,
    }
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{int(time.time() * 1e6)}")
    card = _card(Path(model), facts)
    encoder.save(tmp, model_card=card)
    atomic_write_json(tmp / FIT_FILE, facts)
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(tmp, out)
    return facts


def _card(model: Path, facts: dict[str, Any]) -> str:
    """The source model's card (if any) with a section on the whitening appended; local paths
    in it (a card written before cards were portable) written by :func:`textcl.card.portable_text`."""
    from textcl.card import portable_text

    source = model / "README.md"
    text = source.read_text(encoding="utf-8") if source.is_file() else "# Sentence encoder\n"
    return portable_text(text.rstrip("\n")) + (
        "\n\n## Whitening\n\n"
        f"The pooled embedding goes through a whitening layer (BERT-whitening, Su et al. 2021) fitted "
        f"with `textcl.whitening` on {facts['texts']:,} unlabelled sentences (seed {facts['seed']}): "
        f"`(x - mean) @ U diag(1/sqrt(lambda))`, keeping {facts['dim']} of {facts['in_dim']} "
        f"dimensions ({100 * facts['variance_kept']:.1f}% of the variance). It is stored as a "
        "sentence-transformers `Dense` module with identity activation. Fine-tuning this model "
        "drops the layer; refit it afterwards.\n\n"
        f"```bibtex\n{CITATION}\n```\n"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m textcl.whitening",
        description="Fit BERT-whitening on unlabelled sentences and write a whitened copy of a model.",
    )
    p.add_argument("model", help="textcl / sentence-transformers model directory (or hub name)")
    p.add_argument("--corpus", required=True,
                   help=".txt[.gz] (one sentence per line) or a document corpus .jsonl[.gz] / hf://name")
    p.add_argument("--out", required=True, help="directory for the whitened model (replaced atomically)")
    p.add_argument("--dim", type=int, default=None, help="components kept (default: all)")
    p.add_argument("--sentences", type=int, default=20_000, help="distinct sentences fitted on (default 20000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-field", default="text")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--bow-weight", type=float, default=None,
                   help="set the residual bag-of-words path (pooled += w * mean input embeddings) before fitting")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry point; prints the fit's facts as JSON."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        texts = read_texts(args.corpus, text_field=args.text_field)
        facts = whiten_model(
            args.model, texts, args.out, dim=args.dim, max_texts=args.sentences, seed=args.seed,
            batch_size=args.batch_size, device=args.device, bow_weight=args.bow_weight,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(facts, indent=2))
    return facts


if __name__ == "__main__":
    main()
