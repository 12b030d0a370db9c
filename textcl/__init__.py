"""textcl: contrastive self-supervised representation learning, text first.

Importing ``textcl`` is cheap: heavy modules (torch, transformers) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Embedder", "ModelLoadError", "TextEncoder", "info_nce", "push_to_hub", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from textcl.core.losses import info_nce
    from textcl.embed import Embedder
    from textcl.encoders import ModelLoadError, TextEncoder
    from textcl.hub import push_to_hub

_LAZY = {
    "Embedder": "textcl.embed",
    "ModelLoadError": "textcl.encoders",
    "TextEncoder": "textcl.encoders",
    "info_nce": "textcl.core.losses",
    "push_to_hub": "textcl.hub",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'textcl' has no attribute {name!r}")
