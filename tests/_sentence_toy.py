"""Synthetic sentence corpora shared by the sentence-objective tests."""

import json
import random
from pathlib import Path

from textcl.objectives._sentence_common import SentenceCorpus
from textcl.sentences import SentenceDocument


def toy_corpus(lengths: list[int]) -> SentenceCorpus:
    """Sentence s of document d is the single token 1000 + 100 d + s (easy to decode)."""
    docs = [SentenceDocument(f"doc{d}", [f"s{s}" for s in range(n)]) for d, n in enumerate(lengths)]
    return SentenceCorpus(docs, [[[1000 + 100 * d + s] for s in range(n)] for d, n in enumerate(lengths)])


def where(token_ids: list[int]) -> tuple[int, int]:
    """(document, sentence) of a toy_corpus sentence."""
    (t,) = token_ids
    return (t - 1000) // 100, (t - 1000) % 100


TOPICS = [
    "north south east west left right up down", "one two three four five six seven eight",
    "hand foot head arm leg eye ear nose", "table chair bed door window wall floor roof",
    "apple pear plum grape lemon melon cherry peach", "dog cat horse cow sheep goat pig mouse",
    "red blue green yellow purple orange pink brown", "car bus train boat ship plane truck bike",
    "king queen prince lord duke knight bishop lady", "river lake sea ocean pond stream bay shore",
    "bread cheese butter milk egg meat soup rice", "gold silver iron copper steel stone glass wood",
    "rain snow wind storm cloud fog ice frost", "church school house tower castle hall bridge mill",
    "doctor nurse lawyer judge teacher priest farmer soldier", "song music dance poem story play book letter",
]


def topic_documents(path: Path, n_docs: int = 64, n_topics: int = 16, n_sentences: int = 6) -> Path:
    """Documents about one topic each; consecutive sentences use disjoint halves of the
    topic's words, so a sentence and its neighbours share no word (a random encoder's
    lexical overlap does not find them) but do share a topic (what training can learn)."""
    rng = random.Random(0)
    rows = []
    for d in range(n_docs):
        words = TOPICS[d % n_topics].split()
        sentences = [" ".join(rng.sample(words[4 * (s % 2) : 4 * (s % 2) + 4], 3)).capitalize() + "."
                     for s in range(n_sentences)]
        rows.append({"id": f"doc{d}", "text": " ".join(sentences)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


