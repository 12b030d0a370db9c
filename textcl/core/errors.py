"""The error every recipe and config problem raises, below every module that raises it
(``textcl.core.recipe`` re-exports it; ``textcl.core.gradcache`` raises it without
importing the recipe module, which imports gradcache)."""

from __future__ import annotations

__all__ = ["RecipeError"]


class RecipeError(Exception):
    """A recipe problem, already phrased for the user."""
