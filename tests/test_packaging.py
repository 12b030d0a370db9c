"""pyproject.toml installs every package, and vision/ only as textcl.vision (never a top-level ``vision``)."""

from __future__ import annotations

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_the_package_list_names_every_package_folder():
    config = _setuptools()
    roots = {"textcl": REPO / "textcl", **{name: REPO / d for name, d in config["package-dir"].items()}}
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                rel = init.parent.relative_to(root).parts
                found.add(".".join((name, *rel)))
    assert found == set(config["packages"])
    assert config["package-dir"] == {"textcl.vision": "vision"}
    assert all(p == "textcl" or p.startswith("textcl.") for p in config["packages"])


def test_vision_imports_as_textcl_vision():
    import textcl.vision.methods.simclr as simclr
    from textcl.core.method import get_method_class

    assert Path(simclr.__file__).resolve() == REPO / "vision" / "methods" / "simclr.py"
    assert get_method_class("simclr") is simclr.SimCLR
