"""Reading a YAML config file (a recipe, a pipeline config) into a plain mapping.

The steps before validation, each with its own one-line ``RecipeError`` naming the file:
the file's text (missing, a directory, binary, not UTF-8: :func:`read_config_text`), its
YAML (malformed, not a mapping: :func:`parse_config_yaml`), ``--set KEY=VALUE``
overrides (:func:`apply_overrides`) and ``${VAR}`` / ``${VAR:-default}`` expansion
(:func:`substitute_env`); :func:`read_config` runs them in that order. What the mapping
must hold is not known here: :func:`textcl.core.config_errors.validate_config` checks it
against a pydantic model.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from textcl.core.errors import RecipeError

__all__ = [
    "apply_overrides",
    "parse_config_yaml",
    "read_config",
    "read_config_text",
    "substitute_env",
]


def read_config_text(path: str | Path, what: str = "recipe") -> str:
    """The text of a YAML config file; ``RecipeError`` (one line) if it is missing, a
    directory, unreadable, binary or not UTF-8."""
    source = str(path)
    p = Path(path)
    if p.is_dir():
        raise RecipeError(f"{source}: is a directory, not a {what} file — give the path of a .yaml file")
    if not p.is_file():
        raise RecipeError(f"{source}: {what} file not found")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{source}: cannot be read ({exc.strerror or exc}) — check the file's permissions") from None
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise RecipeError(f"{source}: line {line}: binary data (a NUL byte), not YAML text — give the path of a {what} .yaml file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(
            f"{source}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}) — save the {what} as UTF-8"
        ) from None


#: ``${NAME}``, or ``${NAME:-default}`` (the default used when NAME is unset).
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(node: Any, loc: str, source: str) -> Any:
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{loc}.{k}" if loc else str(k), source) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{loc}[{i}]", source) for i, v in enumerate(node)]
    if isinstance(node, str):

        def repl(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1))
            if value is None:
                if m.group(2) is not None:
                    return m.group(2)
                raise RecipeError(
                    f"{source}: {loc}: environment variable {m.group(1)} is not set "
                    f"-- export it (e.g. export {m.group(1)}=../shared/data) or edit the value"
                )
            return value

        return _ENV.sub(repl, node)
    return node


def _parse_override(item: str, source: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise RecipeError(f"{source}: --set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
    key, _, raw = item.partition("=")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _apply_override(data: dict[str, Any], keys: list[str], value: Any, item: str, source: str) -> None:
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"{source}: --set {item}: {'.'.join(keys[: i + 1])} is not a mapping")
        node = child
    node[keys[-1]] = value


def substitute_env(data: Any, source: str) -> Any:
    """``data`` with ``${VAR}`` / ``${VAR:-default}`` replaced in every string (nested mappings
    and lists too); ``RecipeError`` naming ``source`` and the key when a variable is unset."""
    return _expand_env(data, "", source)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str) -> None:
    """Apply ``--set KEY=VALUE`` items to ``data`` in place: dotted keys reach into (and create)
    nested mappings, values are parsed as YAML (``1e-4`` a number, ``[a, b]`` a list)."""
    for item in overrides:
        keys, value = _parse_override(item, source)
        _apply_override(data, keys, value, item, source)


def parse_config_yaml(text: str, source: str, what: str = "recipe",
                      keys: str = "method, model, data, ...") -> dict[str, Any]:
    """The mapping the YAML ``text`` of a config file holds (an empty file: ``{}``).
    ``RecipeError`` naming ``source`` when it is malformed (with line and column) or not a
    mapping (``what``: the kind of file, ``keys``: its top-level keys, for the message)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{source}: malformed YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: the {what} must be a mapping of keys ({keys})")
    return data


def read_config(path: str | Path, overrides: Iterable[str] = (), what: str = "recipe",
                keys: str = "method, model, data, ...") -> dict[str, Any]:
    """Read a YAML config file (a recipe, a pipeline config), apply ``--set`` overrides and
    expand ``${VAR}``: the raw mapping, ready for ``validate_config``. Every problem raises
    ``RecipeError`` naming the file (``read_config_text``, ``parse_config_yaml``)."""
    source = str(path)
    data = copy.deepcopy(parse_config_yaml(read_config_text(path, what), source, what, keys))
    apply_overrides(data, overrides, source)
    return substitute_env(data, source)
