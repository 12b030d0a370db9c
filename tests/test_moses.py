"""sacremoses in textcl: the Moses punctuation normaliser of back-translation (that both
backends apply it: tests/test_backtranslation.py), and ``data.normalize: moses`` for SGNS
corpora (Moses' English tokenizer)."""

from __future__ import annotations

import json

import pytest
from sacremoses import MosesPunctNormalizer, MosesTokenizer

from textcl.augment.backtranslation import moses_punct_normalizer
from textcl.core.recipe import RecipeError, load_recipe
from textcl.corpus import iter_sentences, load_corpus, normalize_text

ODD = [
    "He said \u201cwait\u201d \u2014 and left\u2026",  # curly quotes, em dash, ellipsis
    "Hello  ,  world !  \u00abquoted\u00bb",  # odd spacing, guillemets
    "Full\uff0cwidth\uff1a punctuation\uff01",  # full-width comma, colon, bang
    "It's 3.14 \u2013 or so",  # en dash
    "zero\u200bwidth and a bell\x07",  # non-printing characters
]


def _moses(lang):
    """sacremoses called directly, set up as OPUS-MT's preprocess.sh runs the Moses scripts."""
    return MosesPunctNormalizer(lang=lang, pre_replace_unicode_punct=True, post_remove_control_chars=True).normalize


@pytest.mark.parametrize("lang", ["en", "pt", "de", None])
def test_punct_normalizer_is_moses(lang):
    normalize = moses_punct_normalizer(lang)
    reference = _moses(lang or "")
    for text in ODD:
        assert normalize(text) == reference(text) != text
    assert normalize("") == ""  # sacremoses itself would return a list
    # What it does: straight quotes, spaced dashes, single spaces, ASCII punctuation.
    en = moses_punct_normalizer("en")
    assert [en(t) for t in ODD] == [
        'He said "wait" - and left...', 'Hello , world ! "quoted"', "Full,width: punctuation!",
        "It's 3.14 - or so", "zerowidth and a bell",
    ]


# ------------------------------------------------------------------ SGNS: data.normalize: moses
LINES = [
    "He said, \u201cDon't go\u2014it's 3.14 miles!\u201d",
    "",
    "  (Really?)  I can't & won't\u2026  ",
    "AT&T's e-mail: info@example.com costs $5.",
]


def test_moses_normalize_tokenises_like_sacremoses(tmp_path):
    tokenizer = MosesTokenizer(lang="en")
    for line in LINES:
        assert normalize_text(line, "moses").split() == tokenizer.tokenize(line, escape=False)
    assert normalize_text(LINES[0], "moses").split()[:4] == ["He", "said", ",", "\u201c"]  # case kept

    expected = [tokenizer.tokenize(line, escape=False) for line in LINES if line.strip()]
    txt = tmp_path / "c.txt"
    txt.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    jl = tmp_path / "c.jsonl"
    jl.write_text("".join(json.dumps({"text": line}) + "\n" for line in LINES), encoding="utf-8")
    for path in (txt, jl):  # the block reader and the datasets reader
        assert list(iter_sentences(path, "moses")) == expected
    corpus = load_corpus(txt, normalize="moses", min_count=1)
    words = corpus.vocab.words
    assert [words[i] for i in corpus.ids[corpus.offsets[0]:corpus.offsets[1]]] == expected[0]
    assert {"'t", ",", "&", "3.14"} <= set(words) and "&amp;" not in words  # escape=False
    # the default is unchanged: whitespace tokens as written
    assert list(iter_sentences(txt))[0] == LINES[0].split()


def test_sgns_recipe_takes_normalize_moses(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    path = tmp_path / "r.yaml"
    text = f"method: sgns\noutput_dir: {tmp_path / 'run'}\ndata: {{corpus: {corpus}, normalize: NORM}}\n"
    path.write_text(text.replace("NORM", "moses"))
    assert load_recipe(path).config.data.normalize == "moses"
    assert load_recipe(path.write_text(text.replace("NORM", "none")) and path).config.data.normalize == "none"
    path.write_text(text.replace("NORM", "mosez"))
    with pytest.raises(RecipeError, match="data.normalize: .*'moses'"):
        load_recipe(path)
