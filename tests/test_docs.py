"""The documentation: ``mkdocs build --strict`` succeeds without a warning, the generated
pages are there, and the README stays short, portable and keeps CI's test command."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"

# An absolute local path: a POSIX path under a usual root, a home directory, or a drive letter.
_ABSOLUTE = re.compile(
    r"(?<![\w.:/~-])(?:/(?:work|home|root|tmp|Users|mnt|opt|var|private|srv|data)/[\w.~-]+"
    r"|[A-Za-z]:\\[\w.-]+)"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built by ``mkdocs build --strict`` from the repository root, once per module."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip('mkdocs is not installed (pip install -e ".[docs]"); the docs build is not checked')
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # Material's end-of-life banner, not a docs problem
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    warnings = [line for line in log.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", line)]
    assert not warnings, "mkdocs printed warnings:\n" + "\n".join(warnings)
    return out


def _text(html: Path) -> str:
    return re.sub(r"<[^>]+>", " ", html.read_text(encoding="utf-8"))


def test_strict_build_has_every_page(site):
    for page in ("index.html", "getting-started/index.html", "reference/recipes/index.html",
                 "benchmarks/index.html", "api/embed/index.html", "multi-gpu/index.html"):
        assert (site / page).is_file(), page


def test_recipe_reference_is_generated_from_every_registered_method(site):
    from textcl.core.method import available_methods, get_method_class

    page = _text(site / "reference" / "recipes" / "index.html")
    for name in available_methods():
        cls = get_method_class(name)
        if not cls.__module__.startswith("textcl."):
            continue  # registered by a test module in this process (e.g. tests/_inbatch.py), not by textcl
        assert f"method: {name}" in page, name
        for section in cls.config_class.model_fields.values():
            sub = section.annotation
            for key in getattr(sub, "model_fields", {}):
                assert key in page, f"{name}: {key} missing from the recipe reference"
    for key in ("batch_size", "max_minutes", "mixed_precision", "every_n_steps", "repo_id"):
        assert key in page


def test_benchmark_plots_are_served_without_copies_in_docs(site):
    pngs = sorted(p.name for p in RESULTS.glob("*.png"))
    assert pngs
    for name in pngs:
        assert (site / "assets" / "results" / name).is_file(), name
    assert not list(DOCS.rglob("*.png")), "plots belong in benchmarks/results/, not docs/"


def test_built_site_holds_no_absolute_local_path(site):
    needles = {str(ROOT), str(Path.home())} - {"/", ""}
    for html in site.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        for needle in needles:
            assert needle not in text, f"{html.relative_to(site)} contains {needle}"


def test_readme_is_short_portable_and_keeps_the_ci_command():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert not _ABSOLUTE.findall(text), _ABSOLUTE.findall(text)
    for needle in {str(ROOT), str(Path.home())} - {"/", ""}:
        assert needle not in text
    # .ci/run runs the README's test command verbatim.
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    marker = next(i for i, line in enumerate(ci) if "the README's test command, verbatim" in line)
    command = ci[marker + 1].strip()
    assert command == 'pip install torch==2.13.0 && pip install -e ".[dev]" && python -m pytest'
    assert command in text.splitlines()


def _doc_sources() -> list[Path]:
    return [README, *sorted(p for p in DOCS.rglob("*.md"))]


def test_docs_cite_results_files_that_exist_and_no_internal_issue_numbers():
    cited = re.compile(r"benchmarks/results/([\w.-]+\.(?:json|png))")
    for path in _doc_sources():
        text = path.read_text(encoding="utf-8")
        for name in cited.findall(text):
            assert (RESULTS / name).is_file(), f"{path.name} cites missing benchmarks/results/{name}"
        assert not re.search(r"\bissues?\s+#?\d+", text, re.IGNORECASE), f"{path.name} names an issue number"
        assert not _ABSOLUTE.findall(text), f"{path.name}: {_ABSOLUTE.findall(text)}"
