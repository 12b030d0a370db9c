"""What the from-scratch stages build: a WordPiece tokenizer from raw text and a random BERT.

:func:`train_wordpiece_tokenizer` (stage ``tokenizer`` of ``python -m textcl.scratch``)
trains a BERT WordPiece vocabulary on a corpus read by :func:`_iter_texts`, the reader
the MLM stage uses too; :func:`build_bert` (stage ``base-random``) saves a random-init
``BertModel`` with that tokenizer as a sentence-transformers directory, with the model
card of :func:`_base_card` (also written for ``base-sgns``).

These are plain functions of their arguments, usable without a pipeline config; the
stage order, skipping and resuming live in :mod:`textcl.scratch`, the config in
:mod:`textcl.scratch_config`.
"""

from __future__ import annotations

import gzip
import logging
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SPECIAL_TOKENS", "build_bert", "train_wordpiece_tokenizer"]

# The pipeline's logger: the builders log as the rest of the pipeline does.
logger = logging.getLogger("textcl.scratch")

#: BERT's special tokens, ids 0-4 of every vocabulary trained here.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _iter_texts(files: Sequence[str | Path], text_field: str = "text") -> Iterator[str]:
    """Lines of ``.txt[.gz]`` files (one text each) and texts of ``.jsonl[.gz]`` documents."""
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer corpus {path} not found -- fix the path")
        suffixes = [s for s in path.suffixes if s != ".gz"]
        if suffixes and suffixes[-1] in (".jsonl", ".json"):
            from textcl.documents import load_documents

            for doc in load_documents(str(path), text_field=text_field, id_field=None):
                yield from (line for line in doc.text.splitlines() if line.strip())
            continue
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.strip():
                    yield line.rstrip("\n")


def train_wordpiece_tokenizer(
    files: Sequence[str | Path] | str | Path,
    vocab_size: int = 16000,
    out_dir: str | Path = "runs/scratch/tokenizer",
    lowercase: bool = True,
    min_frequency: int = 2,
    *,
    max_lines: int | None = None,
    text_field: str = "text",
    model_max_length: int = 512,
    show_progress: bool = True,
) -> Any:
    """Train a BERT WordPiece vocabulary on ``files`` and save it as a ``BertTokenizerFast`` dir.

    ``files``: ``.txt[.gz]`` (one text per line) or ``.jsonl[.gz]`` (``text_field``), read in
    order, at most ``max_lines`` texts. BERT's normalisation (``lowercase`` also strips accents,
    as uncased BERT) and pre-tokenisation, specials ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0-4).
    ``out_dir`` gets ``tokenizer.json``, ``tokenizer_config.json`` and ``vocab.txt`` (for tools
    that read only that). Returns the tokenizer reloaded from ``out_dir``.

    The saved directory is reloaded and its vocabulary size asserted: transformers 5.x builds a
    5-token vocabulary from ``BertTokenizerFast(vocab_file=...)`` without a word of warning.
    A corpus too small for ``vocab_size`` gives fewer tokens (logged as a warning).
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import AutoTokenizer, BertTokenizerFast

    if isinstance(files, (str, Path)):
        files = [files]
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be > {len(SPECIAL_TOKENS)}, got {vocab_size}")
    # BERT's pipeline, spelled out: normaliser (clean control chars, split CJK, lowercase and
    # strip accents when uncased), whitespace + punctuation pre-tokeniser, WordPiece, "##" decoder.
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    texts: Iterable[str] = _iter_texts(files, text_field)
    if max_lines is not None:
        from itertools import islice

        texts = islice(texts, max_lines)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        show_progress=show_progress, continuing_subword_prefix="##",
    )
    backend.train_from_iterator(texts, trainer=trainer, length=max_lines)
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    trained = backend.get_vocab_size()
    if trained < vocab_size:
        logger.warning(
            "the corpus gave %d WordPiece tokens, fewer than the %d asked for (too little text "
            "or min_frequency %d too high)", trained, vocab_size, min_frequency,
        )
    # From the trained tokenizers object, so normaliser, pre-tokeniser and decoder are exactly
    # the trained ones (never from vocab_file=: see the docstring).
    tok = BertTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", do_lower_case=lowercase, model_max_length=model_max_length,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    # vocab.txt too, for tools that read only that (ids in order, one token a line).
    vocab = sorted(backend.get_vocab().items(), key=lambda kv: kv[1])
    (out / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in vocab), encoding="utf-8")
    loaded = AutoTokenizer.from_pretrained(str(out))
    if len(loaded) != trained:
        raise RuntimeError(
            f"{out}: the saved tokenizer loads with {len(loaded)} tokens, the trained one has "
            f"{trained}; refusing to continue with a broken vocabulary"
        )
    return loaded



def build_bert(
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    layers: int = 4,
    hidden: int = 256,
    heads: int = 4,
    intermediate: int = 1024,
    max_position: int = 128,
    seed: int = 0,
    *,
    dropout: float = 0.1,
) -> Path:
    """A random-init ``BertModel`` (BERT's own init, ``torch.manual_seed(seed)``) with the
    tokenizer of ``tokenizer_dir``, saved to ``out_dir`` as a sentence-transformers directory
    (mean pooling, Normalize, ``max_seq_length = max_position``).

    It loads with ``textcl.encoders.TextEncoder.from_pretrained(out_dir)``, ``textcl.Embedder``,
    ``benchmarks.models.load_model`` and ``SentenceTransformer``. Written to a temporary
    directory and renamed, so ``out_dir`` is complete whenever it exists. Returns ``out_dir``.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from textcl.core.io import replace_dir
    from textcl.encoders import TextEncoder

    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_position,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng: building a model must not move the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    encoder = TextEncoder(model, tokenizer, pooling="mean", max_seq_length=max_position, normalize=True)
    out = Path(out_dir)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    encoder.save(tmp, model_card=_base_card(config, seed, Path(tokenizer_dir), None))
    # Kept with the model: a local tokenizer named portably (textcl.card), never by its path.
    _write_json(tmp / "scratch.json", {"seed": seed, "tokenizer": _named(tokenizer_dir), "config": config.to_diff_dict()})
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(tmp, out)
    return out


def _base_card(config: Any, seed: int, tokenizer_dir: Path, init: dict[str, Any] | None) -> str:
    """The card of base-random / base-sgns; the tokenizer and the SGNS vectors named portably
    (:func:`textcl.card.portable_path`), never by an absolute local path."""
    from textcl.card import portable_text

    lines = [
        "# Small BERT from scratch (textcl)",
        "",
        f"Random-init `BertModel` ({config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, intermediate {config.intermediate_size}, "
        f"{config.max_position_embeddings} positions, vocabulary {config.vocab_size}), seed {seed}, "
        f"WordPiece tokenizer from `{_named(tokenizer_dir)}`. Mean pooling. Built by `python -m textcl.scratch`.",
    ]
    if init:
        lines += [
            "",
            f"Input embeddings: {init['covered']} of {init['vocab_size']} tokens "
            f"({100 * init['coverage']:.1f}%) initialised from SGNS vectors `{_named(init.get('vectors', ''))}` "
            f"(first {init['dims_copied']} dims, scale {init['scale']:.4g}).",
        ]
    lines += ["", "Not trained: a starting point for the objectives in `recipes/text/scratch/`.", ""]
    return portable_text("\n".join(lines))


def _named(path: str | Path) -> str:
    """An existing local path as :func:`textcl.card.portable_path` names it; anything else
    (already portable, e.g. ``embedding_init.json``'s ``vectors``) as it is."""
    from textcl.card import portable_path

    text = str(path)
    return portable_path(text) if text and Path(text).expanduser().exists() else text


def _write_json(path: Path, data: Any) -> None:
    """Written atomically: a killed stage never leaves half a JSON file behind."""
    from textcl.core.io import atomic_write_json

    atomic_write_json(path, data)
