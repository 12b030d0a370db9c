"""The model card (``README.md``) written beside SGNS word vectors
(:meth:`textcl.objectives.skipgram.SGNS.save_model`)."""

from __future__ import annotations

from typing import Any

__all__ = ["CITATION", "render_word_vectors_card"]

CITATION = """@inproceedings{mikolov2013distributed,
  title = {Distributed Representations of Words and Phrases and their Compositionality},
  author = {Mikolov, Tomas and Sutskever, Ilya and Chen, Kai and Corrado, Greg and Dean, Jeffrey},
  booktitle = {Advances in Neural Information Processing Systems 26 (NIPS 2013)},
  pages = {3111--3119},
  year = {2013}
}"""


def render_word_vectors_card(info: dict[str, Any]) -> str:
    """Markdown model card for SGNS word vectors (``card_info`` plus ``metrics``/``recipe_yaml``);
    local paths written portably (:func:`textcl.card.portable_card_info`), never absolute."""
    from textcl import __version__
    from textcl.card import TEXTCL_BIBTEX, portable_card_info, portable_text

    info = portable_card_info(info)
    out = [
        "---", "library_name: textcl", "tags:", "- word2vec", "- word-embeddings",
        "- skip-gram", "- contrastive-learning", "---", "",
        "# Word vectors trained with textcl", "",
        f"{info.get('vocabulary', '?')} words x {info.get('dim', '?')} dimensions, trained with "
        f"{info.get('objective', 'SGNS')}. `vectors.bin` (and `vectors.txt`) are in the word2vec "
        "binary (text) format, most frequent word first.", "",
    ]
    if info.get("settings"):
        out += ["## Training", "", str(info["settings"]), ""]
    if info.get("data"):
        out += ["## Training data", "", str(info["data"]), ""]
    if info.get("recipe_yaml"):
        out += ["## Training recipe", "", "```yaml", str(info["recipe_yaml"]).rstrip("\n"), "```", ""]
    metrics = info.get("metrics")
    if metrics:
        out += ["## Metrics", "", "| Metric | Value |", "|---|---|"]
        out += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        out.append("")
    out += [
        "## Usage", "", "```python",
        "from textcl.word_vectors import WordVectors", "",
        'wv = WordVectors.load("path/to/this/model")   # reads vectors.bin',
        'print(wv.most_similar("king", topn=5))',
        "",
        "from gensim.models import KeyedVectors",
        'kv = KeyedVectors.load_word2vec_format("path/to/this/model/vectors.bin", binary=True)',
        "```", "",
        "## Citation", "", "```bibtex", TEXTCL_BIBTEX % __version__, "```", "",
        "```bibtex", str(info.get("objective_citation", CITATION)).strip(), "```", "",
    ]
    return portable_text("\n".join(out))

