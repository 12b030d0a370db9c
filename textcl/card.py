"""Model cards (README.md) for models trained with textcl."""

from __future__ import annotations

import math
import re
from typing import Any

TAGS = ["sentence-transformers", "feature-extraction", "sentence-similarity", "contrastive-learning"]

TEXTCL_BIBTEX = """@software{textcl,
  title = {textcl: contrastive self-supervised representation learning},
  author = {{textcl developers}},
  note = {Python library, version %s}
}"""

_PLACEHOLDER = "path/to/this/model"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _yaml_scalar(value: str) -> str:
    """A YAML string that stays a string (quoted when it would not)."""
    import json

    # JSON strings are valid YAML double-quoted scalars; quote anything that could be
    # read as another type or as YAML syntax (a hub id like "org/name" is fine bare).
    plain = value and all(c.isalnum() or c in "-_./" for c in value) and value[0] not in "-."
    lowered = value.lower()
    if plain and lowered not in {"true", "false", "yes", "no", "on", "off", "null", "~"}:
        try:
            float(value)
        except ValueError:
            return value
    return json.dumps(value, ensure_ascii=False)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _front_matter(info: dict[str, Any]) -> list[str]:
    lines = ["---", "library_name: textcl", "tags:"]
    lines += [f"- {tag}" for tag in TAGS]
    lines.append("pipeline_tag: sentence-similarity")
    # Only hub ids: the hub rejects local paths in base_model (the body still shows them).
    if info.get("base_model") and _HUB_ID.match(str(info["base_model"])):
        lines.append(f"base_model: {_yaml_scalar(str(info['base_model']))}")
    lines.append("---")
    return lines


def render_model_card(info: dict[str, Any]) -> str:
    """Markdown model card for a trained text encoder.

    ``info`` keys, all optional (missing ones are left out): ``objective``,
    ``objective_citation`` (BibTeX or plain text; ``citation`` is accepted too),
    ``base_model``, ``pooling``, ``dim``, ``max_seq_length``, ``data`` (Markdown),
    ``recipe_yaml`` (the resolved recipe as YAML text), ``metrics`` (flat {name: value}).
    """
    from textcl import __version__

    out = _front_matter(info)
    out += ["", "# Sentence encoder trained with textcl", ""]

    dim = info.get("dim")
    intro = "A [sentence-transformers](https://www.sbert.net) model trained with textcl: it maps text to "
    intro += f"{dim}-dimensional dense vectors" if dim else "dense vectors"
    out += [intro + " for semantic similarity, search and clustering.", ""]

    facts = [
        ("Objective", info.get("objective")),
        ("Base encoder", f"`{info['base_model']}`" if info.get("base_model") else None),
        ("Pooling", info.get("pooling")),
        ("Embedding dimension", dim),
        ("Max sequence length", f"{info['max_seq_length']} tokens" if info.get("max_seq_length") else None),
    ]
    facts = [(k, v) for k, v in facts if v not in (None, "")]
    out += ["## Model description", ""]
    if facts:
        out += [f"- **{k}:** {v}" for k, v in facts]
    else:
        out.append("- Text encoder trained with a contrastive self-supervised objective.")
    out += [
        "",
        "Any projection head used during training is not part of this model: it outputs the "
        "pooled encoder representation.",
        "",
    ]

    if info.get("data"):
        out += ["## Training data", "", str(info["data"]).strip(), ""]

    recipe = info.get("recipe_yaml")
    if recipe:
        if not isinstance(recipe, str):
            import yaml

            recipe = yaml.safe_dump(recipe, sort_keys=False)
        out += ["## Training recipe", "", "```yaml", recipe.rstrip("\n"), "```", ""]

    metrics = info.get("metrics")
    if metrics:
        out += ["## Metrics", "", "| Metric | Value |", "|---|---|"]
        out += [f"| {_cell(str(k))} | {_cell(_format_value(v))} |" for k, v in metrics.items()]
        out.append("")

    out += [
        "## Usage",
        "",
        "With textcl:",
        "",
        "```python",
        "from textcl import Embedder",
        "",
        f'model = Embedder.load("{_PLACEHOLDER}")',
        'vectors = model.encode(["A first sentence.", "Another sentence."])',
        "scores = model.similarity([\"A first sentence.\"], [\"Another sentence.\"])",
        "```",
        "",
        "With sentence-transformers:",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{_PLACEHOLDER}")',
        'vectors = model.encode(["A first sentence.", "Another sentence."])',
        "```",
        "",
    ]

    citation = info.get("objective_citation") or info.get("citation")
    out += ["## Citation", ""]
    out.append(
        "If you use this model, please cite textcl and the paper of its training objective:"
        if citation
        else "If you use this model, please cite textcl:"
    )
    out += ["", "```bibtex", TEXTCL_BIBTEX % __version__, "```", ""]
    if citation:
        citation = str(citation).strip()
        if citation.startswith("@"):
            out += ["```bibtex", citation, "```", ""]
        else:
            out += [citation, ""]
    return "\n".join(out)
