"""Validating a config mapping against its pydantic model, with errors people can act on.

pydantic's own ``ValidationError`` is a multi-line report in its own terms; a recipe's
author needs one line per problem naming the file and the key path (``train.lr``,
``eval.evaluators[0].path``), the value given, and for an unknown key the nearest valid
one. :func:`validate_config` turns the first into the second (a ``RecipeError``). Shared
by recipes (:mod:`textcl.core.recipe`) and the scratch pipeline config.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from textcl.core.errors import RecipeError

__all__ = ["validate_config"]


_Model = TypeVar("_Model", bound=BaseModel)


def validate_config(model: type[_Model], data: Any, source: str) -> _Model:
    """``model.model_validate(data)``; ``RecipeError`` with one line per problem naming
    ``source`` and the key path (and, for an unknown key, the nearest valid one)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, model, source)) from None


def _fields_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """Valid field names of the (nested) model at ``loc`` -- for 'did you mean'."""
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        model = _model_in(field.annotation)
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _format_errors(err: ValidationError, model: type[BaseModel], source: str, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = prefix + ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc)
        path = path.replace(".[", "[")
        if e["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            valid_txt = f" (valid keys: {', '.join(valid)})" if valid else ""
            lines.append(f"{source}: {path}: unknown key{hint}{valid_txt}")
        elif e["type"] == "missing":
            lines.append(f"{source}: {path}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            value = e.get("input")
            shown = f" (got {value!r})" if value is not None and not isinstance(value, (dict, list)) else ""
            # The value belongs to the "what" part of a message, before its " — fix".
            what, dash, fix = msg.partition(" — ")
            msg = f"{what}{shown}{dash}{fix}"
            # A whole-section rule (a model validator) has no key path of its own.
            lines.append(f"{source}: {path}: {msg}" if path else f"{source}: {msg}")
    return "\n".join(lines)
