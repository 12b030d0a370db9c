"""SGNS: skip-gram with negative sampling (Mikolov et al., NIPS 2013), i.e. word2vec.

The first contrastive objective of NLP: a word's vector must score its context words (the
positives) above ``negative`` noise words drawn from the unigram distribution raised to
``ns_exponent`` (0.75). Per (input word ``c``, target word ``t``) pair and noise words
``n_1..n_K``::

    loss = -log sigma(u_t . v_c) - sum_k log sigma(-u_{n_k} . v_c)

with ``v`` the input table (initialised uniform(-0.5/dim, 0.5/dim)) and ``u`` the output
table (initialised to zeros); the input vectors are the word vectors written out.

Training data follow word2vec.c / gensim exactly: words below ``min_count`` are dropped;
each remaining token is kept with probability ``(sqrt(f / t) + 1) * t / f`` (``f`` its count,
``t = sample * total count``, gensim's formula); for each kept word ``i`` a window
``b ~ U{1..window}`` (``shrink_windows``) gives the pairs (input = word ``j``, target =
word ``i``) for ``0 < |j - i| <= b`` within the sentence -- as in word2vec.c and gensim the
context word's input vector predicts the centre word. A noise word equal to the target is
skipped. Plain SGD at rate ``alpha`` per pair, decayed linearly from ``train.lr`` (0.025) to
``train.lr * train.min_lr_ratio`` (0.0001) over all the words of all epochs.

The corpus is cut into chunks of ``data.chunk_words`` words (gensim's job size): chunk ``k``
holds the sentences starting in words ``[k * chunk_words, (k + 1) * chunk_words)`` of the
in-vocabulary token stream. A line longer than ``data.max_sentence_length`` words (default
10,000, gensim's ``LineSentence`` cap; word2vec.c's ``MAX_SENTENCE_LENGTH`` is 1,000) is read
as pieces of at most that many words, and context windows never cross a piece boundary. A
sentence longer than a quarter chunk is also cut where it crosses a multiple of
``chunk_words`` (:func:`~textcl.corpus.cut_at_chunk_grid`), so every chunk (but the last)
has 0.75-1.25 x ``chunk_words`` words whatever the line lengths; ordinary sentences are
never cut, so corpora of them are chunked as before. (Without that cut a chunk held the
whole pieces starting in it: on a one-line corpus two ~9,700-word pieces regularly fell into
one chunk, twice the words and pairs of a step -- with the torch backend, whose step is the
chunk's summed gradient, that tipped SGD into divergence and the float32 loss sum overflowed
to inf, weights still finite.) A dataset item is one chunk's windows: its kept token ids,
each one's context range ``[lo, hi)`` and a 64-bit noise key, drawn in numpy from a
generator seeded by (seed, epoch, chunk), so resumed runs see the same data. A pair's noise
words are a pure function of its centre's key and its rank among that centre's pairs
(SplitMix64 draws through the alias table, :func:`noise_words`): whoever makes the pairs
-- the numba kernel's threads or numpy for the torch backend -- makes the same ones, for
any thread count. The corpus stays on disk (:func:`~textcl.corpus.load_corpus` writes its
token ids and sentence offsets once, to ``data.cache_dir``): an item reads its chunk's slice
of them, so the training process holds the vocabulary-sized tables and the chunk
boundaries, never the token stream. Two backends apply the updates:

* ``numba`` (CPU, the default there): a compiled kernel makes the batch's pairs and noise
  words from the windows and runs word2vec's per-pair SGD on them, Hogwild over
  ``objective.threads`` threads each taking a contiguous run of centres (as gensim's
  workers take jobs); pairs are never materialised, which took a fifth of the CPU time
  when numpy made them serially beside the kernel. The method sets ``updates_in_forward``
  so the trainer skips backward and ``optimizer.step``. Same updates and loss as the
  autograd backend for pairs that share no rows (tested), sequential per pair otherwise
  (word2vec's semantics).
* ``torch`` (any device, the default on CUDA): the windows expanded to pairs and noise words
  in numpy (:func:`expand_pairs`, :func:`noise_words`); the loss above by autograd on
  ``F.embedding(sparse=True)`` rows, summed over the batch; ``SparseSGD`` adds
  ``-lr * grad`` to the touched rows with ``index_add_``. Every pair of a batch sees the
  parameters of the batch's start (mini-batch SGD), so use smaller ``chunk_words`` there.

The data live in :mod:`textcl.objectives._sgns_sampling`, both update paths in
:mod:`textcl.objectives._sgns_updates`. SGNS subclasses
:class:`~textcl.core.method.Method`, not :class:`~textcl.objectives.base.TextMethod`: it
trains two word-vector tables, not a transformer encoder, so that base's encoder, MLM term,
GradCache ``forward`` and sentence-transformers output have nothing to act on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from textcl.core.method import Method, MethodConfig
from textcl.core.recipe import InputFile
from textcl.corpus import (
    Corpus,
    Normalize,
    chunk_boundaries,
    cut_at_chunk_grid,
    load_corpus,
    longest_sentence,
)
from textcl.documents import DataError
from textcl.objectives._sgns_card import CITATION, render_word_vectors_card
from textcl.objectives._sgns_sampling import (
    alias_table,
    alias_thresholds,
    context_ranges,
    expand_pairs,
    keep_probabilities,
    noise_distribution,
    noise_words,
    skipgram_windows,
)
from textcl.objectives._sgns_updates import (
    SparseSGD,
    numba_available,
    sgd_pairs,
    sgd_windows,
    sgns_loss,
)
from textcl.word_vectors import WordVectors

__all__ = [
    "SGNS",
    "SGNSConfig",
    "SparseSGD",
    "alias_table",
    "context_ranges",
    "expand_pairs",
    "keep_probabilities",
    "noise_distribution",
    "noise_words",
    "sgd_pairs",
    "sgd_windows",
    "sgns_loss",
    "skipgram_windows",
]

logger = logging.getLogger("textcl")

# --------------------------------------------------------------------- recipe sections
class SGNSModel(MethodConfig):
    dim: int = Field(100, ge=1, description="vector size")
    save_text: bool = Field(True, description="also write vectors.txt next to vectors.bin")


class SGNSData(MethodConfig):
    corpus: InputFile
    normalize: Normalize = "none"
    text_field: str = Field("text", description="field of .jsonl / hf:// rows")
    min_count: int = Field(5, ge=1)
    max_vocab: int | None = Field(None, ge=2, description="keep at most the N most frequent words")
    max_sentences: int | None = Field(None, ge=1, description="read only the first N lines")
    max_sentence_length: int = Field(
        10_000, ge=2,
        description="lines with more words are read as pieces of at most this many (gensim's "
                    "LineSentence default); windows do not cross the pieces",
    )
    chunk_words: int = Field(10_000, ge=1, description="words per dataset item (gensim's job)")
    cache_dir: str | None = Field(
        None, description="where the corpus's token ids are written once and read from during training; "
        "default $TEXTCL_CACHE/sgns or ~/.cache/textcl/sgns"
    )
    # Word benchmarks computed by evaluate() (end of training / eval.every_n_steps).
    similarity_files: list[InputFile] = []
    analogy_file: InputFile | None = None
    analogy_restrict_vocab: int = Field(30_000, ge=1)


class SGNSObjective(MethodConfig):
    window: int = Field(5, ge=1)
    shrink_windows: bool = True
    negative: int = Field(5, ge=1)
    ns_exponent: float = 0.75
    sample: float = Field(1e-3, ge=0, lt=1, description="subsampling threshold; 0 = off")
    threads: int | None = Field(None, ge=1, description="default: torch.get_num_threads()")
    backend: Literal["auto", "numba", "torch"] = "auto"


class SGNSConfig(MethodConfig):
    model: SGNSModel = SGNSModel()
    data: SGNSData
    objective: SGNSObjective = SGNSObjective()


class _ChunkDataset(torch.utils.data.Dataset):
    """One item per corpus chunk: its pairs and noise words, seeded by (seed, epoch, chunk)."""

    def __init__(self, corpus: Corpus, offsets: np.ndarray, bounds: np.ndarray,
                 keep_prob: np.ndarray | None, noise: tuple[np.ndarray, np.ndarray],
                 objective: SGNSObjective, seed: int):
        self.corpus, self.offsets, self.bounds = corpus, offsets, bounds
        self.keep_prob, self.noise = keep_prob, noise
        self.objective, self.seed = objective, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, index: int) -> dict[str, Any]:
        obj, offsets = self.objective, self.offsets
        first, last = self.bounds[index], self.bounds[index + 1]
        edges = np.asarray(offsets[first : last + 1])  # one read of each when on disk
        ids = self.corpus.ids[edges[0] : edges[-1]]
        lengths = np.diff(edges)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        kept, lo, hi = skipgram_windows(ids, lengths, obj.window, rng, self.keep_prob, obj.shrink_windows)
        # One SplitMix64 key per centre: its pairs' noise words (noise_words) are drawn from
        # it wherever the pairs are made, by the fused kernel's threads or in numpy.
        keys = rng.integers(0, 2**64, len(kept), dtype=np.uint64)
        return {"ids": kept, "lo": lo, "hi": hi, "keys": keys, "words": len(ids)}


# --------------------------------------------------------------------- the method
class SGNS(Method):
    name = "sgns"
    config_class = SGNSConfig
    citation = CITATION

    def __init__(self, config: SGNSConfig, corpus: Corpus, seed: int = 42, backend: str = "numba",
                 threads: int | None = None):
        super().__init__()
        self.cfg, self.corpus, self.seed = config, corpus, seed
        self.backend = backend
        self.threads = threads or config.objective.threads or torch.get_num_threads()
        self.updates_in_forward = backend == "numba"
        obj, vocab = config.objective, corpus.vocab
        if longest_sentence(corpus.offsets) < 2:
            raise DataError(
                f"{corpus.source}: no sentence has two in-vocabulary words, so there is no "
                f"(word, context) pair; use a corpus with one sentence per line or lower data.min_count"
            )
        dim = config.model.dim
        g = torch.Generator().manual_seed(seed)
        # word2vec's initialisation: input uniform(-0.5/dim, 0.5/dim), output zeros.
        init = (torch.rand(len(vocab), dim, generator=g) - 0.5) / dim
        trainable = backend == "torch"
        self.input_vectors = nn.Parameter(init, requires_grad=trainable)
        self.output_vectors = nn.Parameter(torch.zeros(len(vocab), dim), requires_grad=trainable)
        self.keep_prob = keep_probabilities(vocab.counts, obj.sample) if obj.sample > 0 else None
        self.noise = alias_table(noise_distribution(vocab.counts, obj.ns_exponent))
        # Sentences (pieces of lines) as the chunks see them: the long ones cut at the chunk
        # grid, so every chunk holds 0.75-1.25 x chunk_words words (see cut_at_chunk_grid).
        self.offsets = cut_at_chunk_grid(corpus.offsets, config.data.chunk_words)
        self.bounds = chunk_boundaries(self.offsets, config.data.chunk_words)
        self._optimizer: torch.optim.Optimizer | None = None
        self.timing = {"update_s": 0.0, "pairs": 0}
        self._thresholds = alias_thresholds(self.noise[0])
        if backend == "numba":
            # Compile now, not inside the first training step (and its timing).
            scratch = np.zeros((len(vocab), dim), np.float32)
            sgd_windows(scratch, scratch.copy(), np.array([0, 1], np.int32), np.zeros(2, np.int32),
                        np.full(2, 2, np.int32), np.zeros(2, np.uint64), (self._thresholds, self.noise[1]),
                        obj.negative, 0.0)

    @classmethod
    def from_recipe(cls, recipe: Any) -> SGNS:
        from textcl.core.recipe import RecipeError

        cfg: SGNSConfig = recipe.config
        t = recipe.train
        problems = []
        if t.optimizer != "sgd":
            problems.append(f"train.optimizer: sgns trains with plain SGD, set it to sgd (got {t.optimizer!r})")
        if t.momentum != 0 or t.weight_decay != 0:
            problems.append("train.momentum and train.weight_decay: word2vec's SGD has none, set both to 0")
        if t.max_grad_norm is not None:
            problems.append("train.max_grad_norm: word2vec does not clip, set it to null")
        if t.mixed_precision != "no":
            problems.append("train.mixed_precision: sgns runs in float32, set it to no")
        backend = cfg.objective.backend
        if backend == "auto":
            cuda = torch.cuda.is_available() and not t.cpu
            backend = "torch" if cuda or not numba_available() else "numba"
        if backend == "numba":
            if not numba_available():
                problems.append("objective.backend: numba is not installed (pip install numba), or use torch")
            if t.gradient_accumulation_steps != 1:
                problems.append("train.gradient_accumulation_steps: the numba backend updates per batch, set it to 1")
        if problems:
            raise RecipeError("\n".join(f"{recipe.path}: {p}" for p in problems))
        d = cfg.data
        start = time.perf_counter()
        corpus = load_corpus(
            d.corpus, normalize=d.normalize, min_count=d.min_count, max_vocab=d.max_vocab,
            text_field=d.text_field, max_sentences=d.max_sentences,
            max_sentence_length=d.max_sentence_length, cache_dir=d.cache_dir,
        )
        logger.info(
            "sgns: %s: %d words (%d in vocabulary), %d sentences, vocabulary %d (%.1f s); backend %s",
            d.corpus, corpus.raw_words, corpus.words, corpus.sentences, len(corpus.vocab),
            time.perf_counter() - start, backend,
        )
        return cls(cfg, corpus, seed=recipe.seed, backend=backend)

    # ---- data
    def train_dataset(self) -> torch.utils.data.Dataset:
        return _ChunkDataset(self.corpus, self.offsets, self.bounds, self.keep_prob, self.noise,
                             self.cfg.objective, self.seed)

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """The chunks' windows end to end (numba: the kernel makes the pairs), or their pairs
        and noise words expanded (torch)."""
        shift = np.cumsum([0] + [len(ex["ids"]) for ex in examples[:-1]])
        ids = np.concatenate([ex["ids"] for ex in examples])
        lo = np.concatenate([ex["lo"] + s for ex, s in zip(examples, shift)]).astype(np.int32)
        hi = np.concatenate([ex["hi"] + s for ex, s in zip(examples, shift)]).astype(np.int32)
        keys = np.concatenate([ex["keys"] for ex in examples])
        words = torch.tensor([sum(ex["words"] for ex in examples)])
        if self.backend == "numba":
            return {"ids": torch.from_numpy(ids), "lo": torch.from_numpy(lo), "hi": torch.from_numpy(hi),
                    "keys": torch.from_numpy(keys), "words": words}
        context, centre, slot = expand_pairs(lo, hi)
        negatives = noise_words(self.noise, keys[centre], slot, self.cfg.objective.negative)
        return {"inputs": torch.from_numpy(ids[context]), "targets": torch.from_numpy(ids[centre]),
                "negatives": torch.from_numpy(negatives), "words": words}

    def examples_in(self, batch: dict[str, Any]) -> int:
        """Corpus words (in vocabulary, before subsampling): examples/s is words/s."""
        return int(batch["words"].sum())

    # ---- optimisation
    def configure_optimizer(self, train_config: Any) -> torch.optim.Optimizer:
        self._optimizer = SparseSGD([self.input_vectors, self.output_vectors], lr=train_config.lr)
        return self._optimizer

    def on_train_start(self, trainer: Any) -> None:
        acc = trainer.accelerator
        if acc.num_processes > 1:
            raise ValueError(
                "sgns trains in one process (word2vec's Hogwild threads, objective.threads); "
                "run python -m textcl.train without accelerate launch / torchrun"
            )
        if self.backend == "numba" and acc.device.type != "cpu":
            raise ValueError(
                f"objective.backend: numba runs on CPU but the trainer is on {acc.device}; "
                "set objective.backend: torch or train.cpu: true"
            )
        if acc.device.type == "cpu":
            torch.set_num_threads(self.threads)

    def _lr(self) -> float:
        if self._optimizer is None:
            raise RuntimeError("configure_optimizer was not called: train SGNS with the Trainer")
        return float(self._optimizer.param_groups[0]["lr"])

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        if self.backend == "numba":
            lo, hi = batch["lo"].numpy(), batch["hi"].numpy()
            pairs = int((hi.astype(np.int64) - lo - 1).sum())
            loss_value = sgd_windows(
                self.input_vectors.data.numpy(), self.output_vectors.data.numpy(), batch["ids"].numpy(),
                lo, hi, batch["keys"].numpy(), (self._thresholds, self.noise[1]),
                self.cfg.objective.negative, self._lr(), self.threads,
            )
            loss = torch.tensor(loss_value, dtype=torch.float64)
        else:
            pairs = len(batch["inputs"])
            loss = sgns_loss(self.input_vectors, self.output_vectors, batch["inputs"].long(),
                             batch["targets"].long(), batch["negatives"].long(), sparse=True)
        self.timing["update_s"] += time.perf_counter() - start
        self.timing["pairs"] += pairs
        return {
            "loss": loss,  # a sum over pairs: SGD at rate lr per pair, as word2vec
            "pair_loss": loss.detach() / max(1, pairs),
            "pairs": torch.tensor(float(pairs)),
        }

    # ---- evaluation and output
    def word_vectors(self) -> WordVectors:
        """The input vectors with the vocabulary (most frequent first)."""
        return WordVectors(self.corpus.vocab.words, self.input_vectors.detach().cpu().numpy())

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Word similarity (Spearman x100) and analogy accuracy (%) on the configured files."""
        from textcl.word_eval import evaluate_analogies, evaluate_word_similarity

        d = self.cfg.data
        if not d.similarity_files and d.analogy_file is None:
            return {}
        wv = self.word_vectors()
        metrics: dict[str, float] = {}
        for path in d.similarity_files:
            try:
                result = evaluate_word_similarity(wv, path)
            except ValueError:  # every pair out of vocabulary (a tiny corpus)
                continue
            if result["spearman"] is not None:
                metrics[f"{Path(path).stem}_spearman"] = result["spearman"]
        if d.analogy_file is not None:
            result = evaluate_analogies(wv, d.analogy_file, restrict_vocab=d.analogy_restrict_vocab)
            for key in ("total", "semantic", "syntactic"):
                if result[key] is not None:
                    metrics[f"analogy_{key}"] = result[key]
        return metrics

    def card_info(self) -> dict[str, Any]:
        c, d, o = self.corpus, self.cfg.data, self.cfg.objective
        return {
            "objective": "SGNS (skip-gram with negative sampling, word2vec)",
            "objective_citation": CITATION,
            "dim": self.cfg.model.dim,
            "vocabulary": len(c.vocab),
            "settings": (
                f"window {o.window} ({'shrunk uniformly' if o.shrink_windows else 'fixed'}), "
                f"{o.negative} negatives from unigram^{o.ns_exponent}, sample {o.sample}, "
                f"min_count {d.min_count}, backend {self.backend}, {self.threads} threads"
            ),
            "data": (
                f"`{d.corpus}` (normalize: {d.normalize}): {c.raw_words} words in "
                f"{c.raw_sentences} sentences; {c.words} in the {len(c.vocab)}-word vocabulary"
            ),
        }

    def save_model(self, path: Path, card_info: dict[str, Any]) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        wv = self.word_vectors()
        wv.save(path / "vectors.bin")
        if self.cfg.model.save_text:
            wv.save(path / "vectors.txt")
        (path / "README.md").write_text(render_word_vectors_card(card_info), encoding="utf-8")
