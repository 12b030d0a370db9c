"""Griffe extension for the API pages: textcl's docstrings use Sphinx roles
(``:class:`~textcl.encoders.TextEncoder```) and reST double backticks; Markdown shows the
roles verbatim. This rewrites them as Markdown code spans before the docstring is parsed.

Loaded by mkdocstrings (``extensions:`` in ``mkdocs.yml``); this folder is not a site page.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc|const|py:\w+):`(~?)([^`]+)`")


def rst_to_markdown(text: str) -> str:
    """``:class:`~a.B``` -> `` `B` ``, ``:func:`a.f``` -> `` `a.f` `` (a ``~`` keeps the last
    component, as Sphinx does); reST literals stay code spans in Markdown."""

    def role(match: re.Match[str]) -> str:
        target = match.group(2)
        if match.group(1):
            target = target.rsplit(".", 1)[-1]
        return f"`{target}`"

    return _ROLE.sub(role, text)


class RstRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring as Markdown code spans."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Called for each loaded object; edits its docstring text in place."""
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
