"""MkDocs hook: pages generated at build time, so they cannot drift from the code.

* ``reference/recipes.md``: every recipe key, walked from the pydantic schemas the recipe
  loader validates with (the shared top-level, ``train``, ``eval`` and ``hub`` sections, and
  the ``model`` / ``data`` / ``objective`` sections of every method in the registry of
  :mod:`textcl.core.method`): type, default, constraints and description of each field.
* ``assets/results/*.png``: the plots committed under ``benchmarks/results/``, served from
  the site without a second copy of the binaries in git.

Registered in ``mkdocs.yml`` under ``hooks:``; this folder is excluded from the site.
"""

from __future__ import annotations

import inspect
import json
import re
import textwrap
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
#: Site path of the committed benchmark plots.
RESULTS_URI = "assets/results"
RECIPES_URI = "reference/recipes.md"


# ---------------------------------------------------------------------- mkdocs events
def on_files(files: Any, config: Any) -> Any:
    """Add the generated recipe reference and the benchmark PNGs to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, RECIPES_URI, content=render_recipe_reference()))
    for png in sorted(RESULTS_DIR.glob("*.png")):
        files.append(File.generated(config, f"{RESULTS_URI}/{png.name}", abs_src_path=str(png)))
    return files


# ---------------------------------------------------------------------- schema walking
def _field_comment(owner: type, name: str) -> str:
    """The ``#`` / ``#:`` comment lines right above (or after) ``name:`` in ``owner``'s source:
    the description of a field that has no ``Field(description=...)``."""
    try:
        source = textwrap.dedent(inspect.getsource(owner))
    except (OSError, TypeError):
        return ""
    lines = source.splitlines()
    pattern = re.compile(rf"^\s+{re.escape(name)}\s*:")
    for i, line in enumerate(lines):
        if not pattern.match(line):
            continue
        above: list[str] = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            text = lines[j].strip().lstrip("#:").strip()
            if text.startswith("----"):  # a section rule, not a description
                break
            above.insert(0, text)
            j -= 1
        if above:
            return " ".join(above)
        code, sep, comment = line.partition("  #")
        if sep and code.count('"') % 2 == 0 and code.count("'") % 2 == 0:
            return comment.lstrip(":").strip()
        return ""
    return ""


def _defining_class(model: type[BaseModel], name: str) -> type:
    """The class in ``model``'s MRO whose body declares field ``name``."""
    for klass in model.__mro__:
        if name in getattr(klass, "__annotations__", {}):
            return klass
    return model


def _description(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    """The field's ``description``, else the comment next to it in the source."""
    if field.description:
        return field.description
    return _field_comment(_defining_class(model, name), name)


def _special_types() -> dict[int, str]:
    """Validators of the recipe's file/directory field types -> a readable type name."""
    from textcl.core import recipe

    named: dict[int, str] = {}
    for attr, label in (("InputFile", "input file"), ("OutputDir", "output directory")):
        alias = getattr(recipe, attr, None)
        for meta in typing.get_args(alias)[1:]:
            named[id(getattr(meta, "func", meta))] = label
    return named


def _type_name(annotation: Any) -> str:
    """A short, readable rendering of a field's annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin in (list, tuple, dict, set):
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "mapping"
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _constraints(field: FieldInfo, special: dict[int, str]) -> list[str]:
    """Bounds (``ge``/``gt``/``le``/``lt``) and the file/directory checks of a field."""
    out: list[str] = []
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    for meta in field.metadata:
        for attr, symbol in symbols.items():
            if getattr(meta, attr, None) is not None:
                out.append(f"{symbol} {getattr(meta, attr)}")
        func = getattr(meta, "func", None)
        if func is not None and id(func) in special:
            out.append(special[id(func)])
    return out


def _yaml_value(value: Any) -> str:
    """A default as it would be written in a recipe (JSON is valid YAML)."""
    if isinstance(value, BaseModel):
        return "(mapping below)"
    if isinstance(value, tuple):
        value = list(value)
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


def _nested_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(BaseModel class, is_list) if the field holds a section or a list of sections."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _nested_model(args[0])
    if origin in (typing.Union, types.UnionType):
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        return (models[0], False) if len(models) == 1 else (None, False)
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def _default_of(field: FieldInfo, parent_default: BaseModel | None, name: str) -> tuple[bool, Any]:
    """(required, default): the default seen through the parent's default instance, so a
    method's own defaults for a nested section (e.g. its augmentation) are the ones shown."""
    if parent_default is not None and hasattr(parent_default, name):
        return False, getattr(parent_default, name)
    if field.default is not PydanticUndefined:
        return False, field.default
    if field.default_factory is not None:
        return False, field.default_factory()  # type: ignore[call-arg]
    return True, None


def _doc_summary(klass: type) -> str:
    """The first paragraph of a class's own docstring (pydantic base docstrings skipped)."""
    doc = klass.__dict__.get("__doc__")
    if not doc or klass in (BaseModel,):
        return ""
    first = inspect.cleandoc(doc).split("\n\n", 1)[0]
    return _rst_to_md(" ".join(first.split()))


def _rst_to_md(text: str) -> str:
    """Sphinx roles (``:class:`~a.B```) and double backticks -> Markdown code spans."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _section_tables(
    model: type[BaseModel], prefix: str, default: BaseModel | None, special: dict[int, str]
) -> Iterator[tuple[str, str, list[str]]]:
    """(key path, summary, table rows) for ``model`` and every section nested in it."""
    rows: list[str] = []
    nested: list[tuple[str, type[BaseModel], BaseModel | None]] = []
    for name, field in model.model_fields.items():
        required, value = _default_of(field, default, name)
        sub, is_list = _nested_model(field.annotation)
        key = f"{prefix}.{name}" if prefix else name
        if sub is not None:
            sub_default = value if isinstance(value, BaseModel) else None
            nested.append((f"{key}[]" if is_list else key, sub, sub_default))
        type_name = _type_name(field.annotation)
        if sub is not None:
            type_name = "list of mappings" if is_list else "mapping"
        shown = "**required**" if required else f"`{_yaml_value(value)}`"
        if sub is not None and not is_list:
            shown = "see below" if not required else shown
        desc = _rst_to_md(_description(model, name, field))
        limits = ", ".join(_constraints(field, special))
        cells = [f"`{name}`", _cell(type_name), shown, _cell(limits), _cell(desc)]
        rows.append("| " + " | ".join(cells) + " |")
    yield prefix, _doc_summary(model), rows
    for key, sub, sub_default in nested:
        yield from _section_tables(sub, key, sub_default, special)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("\n", " ").replace("|", "\\|").replace("\\\\|", "\\|")


def _render_sections(model: type[BaseModel], prefix: str, default: BaseModel | None,
                     special: dict[int, str], level: int, anchor: str = "",
                     seen: dict[str, str] | None = None) -> list[str]:
    """Markdown tables of ``model`` and its nested sections. A section whose schema and
    defaults were already rendered (``seen``: signature -> anchor) becomes a link to it."""
    out: list[str] = []
    for key, summary, rows in _section_tables(model, prefix, default, special):
        if not rows:
            continue
        ident = f"{anchor}-{_slug(key)}" if anchor else _slug(key)
        out += ["#" * level + f" `{key}` {{#{ident}}}", ""]
        signature = key + "\n" + summary + "\n" + "\n".join(rows)
        if seen is not None and signature in seen:
            out += [f"Same keys and defaults as [`{key}` above](#{seen[signature]}).", ""]
            continue
        if seen is not None:
            seen[signature] = ident
        if summary:
            out += [summary, ""]
        out += ["| key | type | default | limits | description |", "|---|---|---|---|---|", *rows, ""]
    return out


def _slug(text: str) -> str:
    """An HTML id made of ``text``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


#: Descriptions of top-level keys whose schema field carries none.
_TOP_LEVEL_NOTES = {
    "output_dir": "directory of the run: the model, `recipe.yaml`, `log.jsonl`, `metrics.json`, "
    "the model card `README.md` and `checkpoints/`",
    "seed": "seeds Python, NumPy and torch; per-example randomness is keyed by (seed, epoch, index)",
    "model": "the method's section (see the method below)",
    "data": "the method's section (see the method below)",
    "objective": "the method's section (see the method below)",
}


def _top_level_model() -> type[BaseModel]:
    """The schema of a recipe's top level (``method``, ``output_dir``, ``train``, ...)."""
    from textcl.core import recipe

    for value in vars(recipe).values():
        if isinstance(value, type) and issubclass(value, BaseModel):
            if {"method", "output_dir", "train"} <= set(value.model_fields):
                return value
    raise RuntimeError("textcl.core.recipe has no top-level recipe schema (method, output_dir, train)")


def _method_entries() -> list[tuple[str, type]]:
    """(name, class) of every registered method: built-ins, entry points, runtime ones."""
    from textcl.core.method import available_methods, get_method_class

    return [(name, get_method_class(name)) for name in available_methods()]


def _citation_title(bibtex: str) -> str:
    """The ``title`` of a BibTeX entry (braces dropped), or ``""``."""
    match = re.search(r"(?:^|[\s,{])title\s*=\s*[{\"](.+?)[}\"]\s*,?\s*\n", bibtex)
    return " ".join(match.group(1).replace("{", "").replace("}", "").split()) if match else ""


def render_recipe_reference() -> str:
    """The Markdown of the recipe reference page (every method's sections and keys)."""
    from textcl.core.method import METHODS

    special = _special_types()
    top = _top_level_model()
    out = [
        "# Recipe reference",
        "",
        "<!-- Generated at build time by docs/hooks/textcl_docs.py from the pydantic schemas; "
        "do not edit. -->",
        "",
        "This page is generated from the schemas that `python -m textcl.train` validates a recipe "
        "with, so it always matches the installed code. A recipe is a YAML mapping with the "
        "top-level keys below; `train`, `eval` and `hub` are shared by every method, while "
        "`model`, `data` and `objective` are typed by the method named in `method:`. "
        "Unknown keys are errors. See [Recipes](../guide/recipes.md) for the file format "
        "(`${VAR}`, `textcl://data/NAME`, `hf://NAME`, `--set`).",
        "",
        "In the tables, *default* is what the schema fills in when the key is absent, "
        "*limits* the values the schema accepts.",
        "",
        "## Shared sections",
        "",
    ]
    shared_top: list[str] = []
    for name, field in top.model_fields.items():
        sub, _ = _nested_model(field.annotation)
        if sub is not None:
            continue
        required, value = _default_of(field, None, name)
        shown = "**required**" if required else f"`{_yaml_value(value)}`"
        limits = ", ".join(_constraints(field, special))
        desc = _description(top, name, field)
        if name == "method":
            desc = desc or "registry name of the method: " + ", ".join(f"`{m}`" for m in sorted(METHODS))
        desc = desc or _TOP_LEVEL_NOTES.get(name, "")
        shared_top.append(
            "| " + " | ".join([f"`{name}`", _cell(_type_name(field.annotation)), shown, limits, _cell(desc)]) + " |"
        )
    out += ["### Top level {#top-level}", "", "| key | type | default | limits | description |",
            "|---|---|---|---|---|", *shared_top, ""]
    for name, field in top.model_fields.items():
        sub, _ = _nested_model(field.annotation)
        if sub is not None:
            out += _render_sections(sub, name, None, special, level=3)

    entries = _method_entries()
    groups = [
        ("Text methods", [(n, c) for n, c in entries if not c.__module__.startswith("textcl.vision")]),
        ("Vision methods", [(n, c) for n, c in entries if c.__module__.startswith("textcl.vision")]),
    ]
    out += ["## Methods", "", "| method | class | paper |", "|---|---|---|"]
    for _, group in groups:
        for name, cls in group:
            paper = _citation_title(getattr(cls, "citation", "") or "")
            out.append(f"| [`{name}`](#{_anchor(name)}) | `{cls.__module__}.{cls.__qualname__}` | {_cell(paper)} |")
    out.append("")
    seen: dict[str, str] = {}
    for title, group in groups:
        out += [f"## {title}", ""]
        for name, cls in group:
            out += [f"### {name} {{#{_anchor(name)}}}", ""]
            out += [f"`method: {name}` — `{cls.__module__}.{cls.__qualname__}`.", ""]
            summary = _doc_summary(cls)
            if summary:
                out += [summary, ""]
            for section, field in cls.config_class.model_fields.items():
                sub, _ = _nested_model(field.annotation)
                if sub is None:
                    continue
                required, value = _default_of(field, None, section)
                default = value if isinstance(value, BaseModel) else None
                body = _render_sections(sub, section, default, special, level=4,
                                        anchor=_anchor(name), seen=seen)
                if required and body:
                    body.insert(2, f"The `{section}` section is required.\n")
                out += body
    return "\n".join(out).rstrip("\n") + "\n"


def _anchor(name: str) -> str:
    """The HTML id of a method's section on the page."""
    return "method-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


if __name__ == "__main__":  # pragma: no cover - manual preview
    print(render_recipe_reference())
