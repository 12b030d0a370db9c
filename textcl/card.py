"""Model cards (README.md) for models trained with textcl.

A card is published with the model, so it never names an absolute local path: every path
it receives (in ``data``, ``base_model``, the recipe, metric names) is rewritten by
:func:`portable_path` -- a packaged file as ``textcl://data/<file>``, a file under
``$TEXTCL_DATA`` as ``${TEXTCL_DATA}/<path>``, any other local file as its name with its
sha256, size and line count, a local directory as its name with its file count.
:func:`portable_card_info` applies the same rules to the facts of other card renderers.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["TAGS", "TEXTCL_BIBTEX", "portable_card_info", "portable_path", "portable_text", "render_model_card"]

TAGS = ["sentence-transformers", "feature-extraction", "sentence-similarity", "contrastive-learning"]

TEXTCL_BIBTEX = """@software{textcl,
  title = {textcl: contrastive self-supervised representation learning},
  author = {{textcl developers}},
  note = {Python library, version %s}
}"""

_PLACEHOLDER = "path/to/this/model"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# ---------------------------------------------------------------------- portable paths
#: Text files whose lines are counted (rows of a corpus, pairs, ...), also gzip-compressed.
_LINE_SUFFIXES = {".jsonl", ".json", ".txt", ".csv", ".tsv", ".tok", ".yaml", ".yml", ".md"}
#: An absolute POSIX path (two or more components) or a Windows drive path inside free text;
#: never the tail of a URL (``https://host/a/b``, ``hf://x/y``, ``textcl://data/x``).
_ABS_PATH = re.compile(r"(?<![\w.:/~$}\])*+-])(?:/[^\s`'\"|<>(){}\[\],;*]+){2,}|(?<![\w])[A-Za-z]:\\[^\s`'\"|<>(){}\[\],;*]+")
_SCHEMES = ("textcl://", "hf://", "${")


def _inside(path: Path, root: Path) -> str | None:
    """``path`` relative to ``root`` (POSIX form) if it lies inside it, else ``None``."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return None
    return rel.as_posix()


def _data_roots() -> list[tuple[Path, str]]:
    """(resolved root, portable prefix): the packaged data folder, then ``$TEXTCL_DATA``."""
    from textcl.data import DATA_DIR

    roots = [(Path(DATA_DIR).resolve(), "textcl://data")]
    shared = os.environ.get("TEXTCL_DATA")
    if shared and shared.strip():
        try:
            roots.append((Path(shared).expanduser().resolve(), "${TEXTCL_DATA}"))
        except (OSError, RuntimeError):
            pass
    return roots


@functools.lru_cache(maxsize=256)
def _file_facts(path: str, size: int, mtime_ns: int) -> str:
    """``sha256 <hex>, <size> bytes[, <n> lines]`` of a file (cached by path, size and mtime)."""
    digest = hashlib.sha256()
    lines = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
            lines += block.count(b"\n")
    suffixes = [s.lower() for s in Path(path).suffixes]
    facts = f"sha256 {digest.hexdigest()}, {size:,} bytes"
    if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1 and suffixes[-2] in _LINE_SUFFIXES:
        try:
            with gzip.open(path, "rb") as fh:
                lines = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
        except (OSError, EOFError):
            return facts
        return facts + f", {lines:,} lines"
    if suffixes and suffixes[-1] in _LINE_SUFFIXES:
        return facts + f", {lines:,} lines"
    return facts


def _dir_facts(path: Path) -> str:
    """``local directory, <n> files, <size> bytes`` (hidden entries left out)."""
    count = total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
            count += 1
    return f"local directory, {count:,} files, {total:,} bytes"


def portable_path(path: str | os.PathLike[str]) -> str:
    """How a model card names a local file or directory, so it means the same on any machine.

    ``textcl://``, ``hf://`` and ``${VAR}`` references are kept. A path inside the packaged
    data folder becomes ``textcl://data/<file>``; inside ``$TEXTCL_DATA`` (when set),
    ``${TEXTCL_DATA}/<path>``. Any other existing file becomes
    ``<name> (sha256 <hex>, <size> bytes, <n> lines)`` (lines for text files, ``.gz`` ones
    decompressed), a directory ``<name>/ (local directory, <n> files, <size> bytes)``, and a
    path that does not exist its last component.
    """
    text = os.fspath(path)
    if not text or text.startswith(_SCHEMES):
        return text
    try:
        local = Path(text).expanduser()
        resolved = local.resolve()
    except (OSError, RuntimeError, ValueError):
        return Path(text).name or text
    for root, prefix in _data_roots():
        rel = _inside(resolved, root)
        if rel is not None:
            return prefix if rel == "." else f"{prefix}/{rel}"
    name = resolved.name or local.name or text
    try:
        if resolved.is_file():
            stat = resolved.stat()
            return f"{name} ({_file_facts(str(resolved), stat.st_size, stat.st_mtime_ns)})"
        if resolved.is_dir():
            return f"{name}/ ({_dir_facts(resolved)})"
    except OSError:
        pass
    return name


def portable_text(text: str) -> str:
    """``text`` with every absolute local path in it (POSIX paths of two or more components,
    ``~/...``, ``C:\\...``) replaced by :func:`portable_path`. Relative paths, URLs and
    ``textcl://`` / ``hf://`` references are left as they are."""
    if not text:
        return text
    # Known roots first: they may contain characters (spaces) that end a generic match.
    for root, prefix in _data_roots():
        for spelling in {str(root), os.path.normpath(str(root))}:
            if spelling and len(spelling) > 1 and spelling in text:
                end = r"(?=[/\\\s`'\"|<>(),;]|$)"
                text = re.sub(re.escape(spelling) + end, lambda _m, p=prefix: p, text)
    home = str(Path.home())
    if home and home != "/":
        text = re.sub(r"(?<![\w.:/])~(?=/)", lambda _m: home, text)

    def swap(match: re.Match[str]) -> str:
        found = match.group(0)
        tail = ""
        while found and found[-1] in ".:":  # sentence punctuation after a path
            tail = found[-1] + tail
            found = found[:-1]
        return portable_path(found) + tail

    return _ABS_PATH.sub(swap, text)


def _is_local_path(value: str) -> bool:
    """``value`` is spelled like a path (a separator or a file suffix, so a word such as
    ``sts`` or ``mean`` never counts) and names an existing local file or directory."""
    if not value or value.startswith(_SCHEMES) or "\n" in value:
        return False
    if not re.search(r"[/\\]|^~|\.[A-Za-z][\w]{0,7}$", value):
        return False
    try:
        return Path(value).expanduser().exists()
    except (OSError, ValueError):
        return False


_BACKTICKED = re.compile(r"`([^`\n]+)`")
_YAML_VALUE = re.compile(r"^(?P<lead>\s*(?:-\s+)?(?P<key>[\w.-]+):\s+)(?P<q>[\"']?)(?P<value>[^\"'#\n]+?)(?P=q)(?P<rest>\s*(?:#.*)?)$")


def _portable_markdown(text: str) -> str:
    """Backticked local paths (absolute or relative) and absolute paths anywhere in ``text``."""
    text = _BACKTICKED.sub(
        lambda m: f"`{portable_path(m.group(1))}`" if _is_local_path(m.group(1)) else m.group(0), text
    )
    return portable_text(text)


def _portable_yaml(text: str) -> str:
    """A resolved recipe with its local paths made portable: a value naming a local file or
    directory is rewritten by :func:`portable_path` (``output_dir`` keeps only its name when
    absolute), then every remaining absolute path."""

    def line(raw: str) -> str:
        match = _YAML_VALUE.match(raw)
        if not match:
            return raw
        value = match.group("value").strip()
        if match.group("key") == "output_dir":
            if not os.path.isabs(os.path.expanduser(value)):
                return raw
            new = Path(value).name or value
        elif _is_local_path(value):
            new = portable_path(value)
        else:
            return raw
        quote = match.group("q") or ('"' if _needs_quotes(new) else "")
        return f"{match.group('lead')}{quote}{new}{quote}{match.group('rest')}"

    return portable_text("\n".join(line(raw) for raw in text.split("\n")))


def _needs_quotes(value: str) -> bool:
    """A plain YAML scalar would not read back as this string."""
    return bool(re.search(r": |\s#|^[\[{&*!|>'\"%@`-]", value))


def _is_local_model(value: Any) -> bool:
    """A ``base_model`` that is a local path (existing or not), never a hub id."""
    text = str(value or "")
    return bool(text) and (
        _is_local_path(text) or os.path.isabs(os.path.expanduser(text)) or bool(re.match(r"^[A-Za-z]:[\\/]", text))
    )


def portable_card_info(info: dict[str, Any]) -> dict[str, Any]:
    """A copy of a card's facts with every local path written by :func:`portable_path`:
    a local ``base_model``, paths in ``data`` (backticked ones, relative too) and in the
    resolved ``recipe_yaml`` text, metric names. For renderers of other card kinds."""
    out = dict(info)
    if _is_local_model(out.get("base_model")):
        out["base_model"] = portable_path(str(out["base_model"]))
    if out.get("data"):
        out["data"] = _portable_markdown(str(out["data"]))
    recipe = out.get("recipe_yaml")
    if isinstance(recipe, str):
        out["recipe_yaml"] = _portable_yaml(recipe)
    metrics = out.get("metrics")
    if isinstance(metrics, dict):
        out["metrics"] = {portable_text(str(k)): v for k, v in metrics.items()}
    for key in ("objective", "pooling"):
        if isinstance(out.get(key), str):
            out[key] = portable_text(out[key])
    return out


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


def _front_matter(info: dict[str, Any], local_base: bool = False) -> list[str]:
    """The card's YAML header lines (``local_base``: the base model is a local path)."""
    lines = ["---", "library_name: textcl", "tags:"]
    lines += [f"- {tag}" for tag in TAGS]
    lines.append("pipeline_tag: sentence-similarity")
    # Only hub ids: the hub rejects local paths in base_model (the body still shows them).
    if info.get("base_model") and not local_base and _HUB_ID.match(str(info["base_model"])):
        lines.append(f"base_model: {_yaml_scalar(str(info['base_model']))}")
    lines.append("---")
    return lines


def render_model_card(info: dict[str, Any]) -> str:
    """Markdown model card for a trained text encoder.

    ``info`` keys, all optional (missing ones are left out): ``objective``,
    ``objective_citation`` (BibTeX or plain text; ``citation`` is accepted too),
    ``base_model``, ``pooling``, ``dim``, ``max_seq_length``, ``data`` (Markdown),
    ``recipe_yaml`` (the resolved recipe as YAML text), ``metrics`` (flat {name: value}).
    Local paths anywhere in them are written portably (:func:`portable_path`): the card
    never names an absolute local path.
    """
    from textcl import __version__

    if recipe := info.get("recipe_yaml"):
        if not isinstance(recipe, str):
            import yaml

            info = {**info, "recipe_yaml": yaml.safe_dump(recipe, sort_keys=False)}
    local_base = _is_local_model(info.get("base_model"))
    info = portable_card_info(info)
    out = _front_matter(info, local_base)
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
    return portable_text("\n".join(out))
