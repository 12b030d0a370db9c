"""YAML recipe -> typed, validated ``Recipe``.

Every problem with a recipe (malformed YAML, unknown key, wrong type, bad value,
missing file, unset environment variable) raises ``RecipeError`` with one message
naming the recipe file and the key path, plus the nearest valid key when a key is
unknown. ``textcl.train`` prints it and exits with status 2, without a traceback.

Recipe layout::

    method: declutr          # registry name
    output_dir: runs/x
    seed: 42
    model: {...}             # } validated by the method's own config class
    data: {...}              # }
    objective: {...}         # }
    train: {...}             # TrainConfig (shared by every method)
    eval: {...}              # EvalConfig
    hub: {...}               # HubConfig: upload the finished model (optional)

String values may use ``${ENV_VAR}`` (or ``${ENV_VAR:-default}``); paths may use
``textcl://data/NAME`` for files shipped in the package.

This module holds the recipe itself: its top level, :class:`Recipe` and
:func:`load_recipe`. The parts it is made of live beside it, one concern each, and are
re-exported here, where callers have always imported them from:
:mod:`textcl.core.config_files` (reading a YAML file: text, YAML, ``--set``, ``${VAR}``),
:mod:`textcl.core.recipe_sections` (the shared ``train:`` / ``eval:`` / ``hub:`` sections,
``InputFile``, ``OutputDir``) and :mod:`textcl.core.config_errors` (validation into one
``RecipeError`` line per problem).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

# Re-exported: these names lived here before the split, and callers import them from here.
from textcl.core.config_errors import validate_config
from textcl.core.config_files import (
    apply_overrides,
    parse_config_yaml,
    read_config,
    read_config_text,
    substitute_env,
)
from textcl.core.errors import RecipeError
from textcl.core.recipe_sections import (  # noqa: F401
    EvalConfig,
    EvaluatorConfig,
    HubConfig,
    InputFile,
    OutputDir,
    TrainConfig,
    _Strict,
    resolve_input_path,
)

__all__ = [
    "EvalConfig",
    "EvaluatorConfig",
    "HubConfig",
    "InputFile",
    "OutputDir",
    "Recipe",
    "RecipeError",
    "TrainConfig",
    "apply_overrides",
    "flat_config",
    "load_recipe",
    "parse_config_yaml",
    "read_config",
    "read_config_text",
    "resolve_input_path",
    "substitute_env",
    "validate_config",
]


class _TopLevel(_Strict):
    method: str
    output_dir: OutputDir
    seed: int = 42
    model: dict[str, Any] = {}
    data: dict[str, Any] = {}
    objective: dict[str, Any] = {}
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    hub: HubConfig = HubConfig()


class Recipe:
    """A validated recipe: shared sections typed here, method sections typed by the method."""

    def __init__(self, path: str, top: _TopLevel, method_config: BaseModel, resolved: dict[str, Any],
                 user_set: dict[str, Any] | None = None, overrides: list[str] | None = None):
        self.path = path
        self.method = top.method
        self.output_dir = Path(top.output_dir)
        self.seed = top.seed
        self.train = top.train
        self.eval = top.eval
        self.hub = top.hub
        #: The method's config object with ``.model``, ``.data``, ``.objective``.
        self.config = method_config
        self.resolved = resolved
        #: What the recipe file and ``--set`` gave (the rest are defaults).
        self.user_set = resolved if user_set is None else user_set
        self.overrides = list(overrides or [])

    def to_yaml(self) -> str:
        """The recipe as run: the keys the recipe and ``--set`` gave, as YAML, then every default
        that was filled in, as comments. Loading it gives the same run: a default written as a
        key would count as set (e.g. ``train.epochs``, which caps a time-budgeted run only when
        set). Packaged data files are written ``textcl://data/NAME`` and files under
        ``$TEXTCL_DATA`` ``${TEXTCL_DATA}/...``, as a recipe spells them (the file is published
        with the model); other paths as given, so the file still runs."""
        source = Path(self.path)  # no absolute local path in a published card
        lines = [f"# resolved from {source.name if source.is_absolute() else source}"]
        roots = _data_roots()
        if self.overrides:
            lines.append("# --set " + " --set ".join(_spelled_override(o, roots) for o in self.overrides))
        user_set = _spelled(self.user_set, roots)
        text = "\n".join(lines) + "\n" + yaml.safe_dump(user_set, sort_keys=False, allow_unicode=True)
        given = dict(_flatten(self.user_set))
        defaults = [(k, _spelled(v, roots)) for k, v in _flatten(self.resolved) if k not in given]
        if defaults:
            text += "# defaults (not set; filled in by the schemas):\n" + "".join(
                f"#   {k}: {json.dumps(v)}\n" for k, v in defaults
            )
        return text


def _data_roots() -> list[tuple[Path, str]]:
    """(root, spelling) of the folders a recipe names portably: the packaged data folder
    (``textcl://data``), then ``$TEXTCL_DATA`` when set (as written and resolved)."""
    from textcl.data import DATA_DIR

    roots = [(Path(DATA_DIR), "textcl://data")]
    shared = os.environ.get("TEXTCL_DATA", "").strip()
    if shared:
        local = Path(shared).expanduser()
        for root in dict.fromkeys([Path(os.path.abspath(local)), local.resolve()]):
            if root.parent != root:  # never the filesystem root: every path would move under it
                roots.append((root, "${TEXTCL_DATA}"))
    return roots


def _spelled(node: Any, roots: list[tuple[Path, str]]) -> Any:
    """``node`` with every absolute path to a packaged data file written ``textcl://data/NAME``
    and every one inside ``$TEXTCL_DATA`` written ``${TEXTCL_DATA}/...`` -- the spellings a
    recipe uses, which load back to the same paths (mappings and lists walked; any other
    value, other paths included, as it is)."""
    if isinstance(node, dict):
        return {k: _spelled(v, roots) for k, v in node.items()}
    if isinstance(node, list):
        return [_spelled(v, roots) for v in node]
    if not isinstance(node, str) or not os.path.isabs(node):
        return node
    from textcl.data import data_path

    path = Path(os.path.normpath(node))
    for root, prefix in roots:
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            continue
        if prefix == "${TEXTCL_DATA}":
            return prefix if rel == "." else f"{prefix}/{rel}"
        try:
            if data_path(rel) == path.resolve():
                return f"{prefix}/{rel}"
        except (FileNotFoundError, OSError):
            continue
    return node


def _spelled_override(override: str, roots: list[tuple[Path, str]]) -> str:
    """A ``--set key=value`` whose value is a path, spelled as :func:`_spelled` does."""
    key, sep, value = override.partition("=")
    return f"{key}{sep}{_spelled(value, roots)}" if sep else override


def _flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``[("a.b", 1)]`` (lists and scalars are leaves)."""
    if isinstance(node, dict) and node:
        return [kv for k, v in node.items() for kv in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    return [(prefix, node)]


def flat_config(resolved: dict[str, Any]) -> dict[str, bool | int | float | str | None]:
    """A resolved recipe as one level of dotted keys (``{"train.lr": 2e-05, ...}``), the run
    config trackers store. Lists and empty mappings become JSON text: TensorBoard's hparams
    and MLflow's params take scalars only."""
    return {
        key: value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)
        for key, value in _flatten(resolved)
    }


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override, expand and validate a recipe file. Raises ``RecipeError``."""
    source = str(path)
    top = validate_config(_TopLevel, read_config(path, overrides or []), source)

    from textcl.core.method import get_method_class

    try:
        cls = get_method_class(top.method)
    except KeyError as exc:
        raise RecipeError(f"{source}: method: {exc.args[0]}") from None
    sections = {"model": top.model, "data": top.data, "objective": top.objective}
    method_config = validate_config(cls.config_class, sections, source)
    if top.train.mini_batch_size is not None:
        from textcl.core.gradcache import check_gradcache_support

        check_gradcache_support(cls, name=top.method, source=source)

    resolved = {
        "method": top.method,
        "output_dir": top.output_dir,
        "seed": top.seed,
        **method_config.model_dump(mode="json"),
        "train": top.train.model_dump(mode="json"),
        "eval": top.eval.model_dump(mode="json"),
        "hub": top.hub.model_dump(mode="json"),
    }
    user_set = {
        "method": top.method,
        "output_dir": top.output_dir,
        **({"seed": top.seed} if "seed" in top.model_fields_set else {}),
        **method_config.model_dump(mode="json", exclude_unset=True),
        **{k: getattr(top, k).model_dump(mode="json", exclude_unset=True)
           for k in ("train", "eval", "hub") if k in top.model_fields_set},
    }
    return Recipe(source, top, method_config, resolved, user_set, list(overrides or []))
