"""The text stack's shape: no import circle (lazy imports included), layers in order, old
import paths kept, modules of at most 500 lines."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "textcl"

#: Bottom up: each module may import only from modules before it in this list.
TEXT_STACK = [
    "textcl.pooling",
    "textcl.batching",
    "textcl.model_location",
    "textcl.whitening_layer",
    "textcl.st_folder",
    "textcl.encoders",
    "textcl.st_modules",
    "textcl.embed",
    "textcl.whitening",
]

#: Names each module had before the split (definitions and textcl imports), importable still.
OLD_NAMES = {
    "textcl.encoders": [
        "CPU_TOKENS_PER_FORWARD", "ModelLoadError", "PACKAGED_MODELS", "POOLING_MODES", "TextEncoder",
        "_DEFAULT_MAX_SEQ_LENGTH", "_HUB_ALIASES", "_HUB_PROBE_TIMEOUT_S", "_LEGACY_POOLING_KEYS", "_Location",
        "_MODEL_INPUTS", "_STLayout", "_ST_FILES", "_ST_TRANSFORMER_CONFIGS", "_cached_snapshot",
        "_explain_load_error", "_first_line", "_hub_reachable", "_in_hub_cache", "_length_limit", "_load_errors",
        "_load_transformer", "_looks_like_path", "_module_dir", "_offline_env", "_package_version",
        "_packaged_path", "_pooling_from_config", "_read_st_layout", "_write_json", "bow_mean",
        "check_model_dir", "cpu_token_budget", "locate_model", "logger", "plan_length_batches", "pool",
        "resolve_model_path",
    ],
    "textcl.whitening": [
        "CITATION", "FIT_FILE", "IDENTITY", "Whitening", "__all__", "_card", "_parser", "check_identity_dense",
        "logger", "main", "read_texts", "sample_texts", "whiten_model",
    ],
    "textcl.embed": ["Embedder", "TextEncoder", "_default_device", "cpu_token_budget", "plan_length_batches"],
    "textcl.st_modules": ["BagOfWordsResidual", "bow_mean"],
}


def _module_name(file: Path) -> str:
    parts = list(file.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> textcl modules it imports anywhere (top level or in a function), without
    ``if TYPE_CHECKING:`` blocks, which never run."""
    modules = {_module_name(f): f for f in PACKAGE.rglob("*.py")}

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts) or None

    def type_checking(node: ast.AST) -> bool:
        test = getattr(node, "test", None)
        return isinstance(node, ast.If) and (
            (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        )

    graph: dict[str, set[str]] = {}
    for mod, file in modules.items():
        package = mod if file.name == "__init__.py" else mod.rpartition(".")[0]
        out = graph.setdefault(mod, set())
        stack: list[ast.AST] = [ast.parse(file.read_text(encoding="utf-8"))]
        while stack:
            node = stack.pop()
            if type_checking(node):
                stack.extend(node.orelse)  # type: ignore[attr-defined]
                continue
            stack.extend(ast.iter_child_nodes(node))
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            out.update(r for t in targets if (r := resolve(t)) is not None and r != mod)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as a path a -> ... -> a, or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_import_circle_in_textcl_even_through_lazy_imports():
    graph = _imports()
    assert "textcl.encoders" in graph and "textcl.whitening" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_text_stack_imports_only_downwards():
    graph = _imports()
    for i, mod in enumerate(TEXT_STACK):
        above = set(TEXT_STACK[i + 1:])
        assert not graph[mod] & above, f"{mod} imports {sorted(graph[mod] & above)} from above it"
    # The whitening command line is the top: nothing in textcl imports it.
    importers = sorted(m for m, deps in graph.items() if "textcl.whitening" in deps)
    assert importers == [], importers


def test_the_test_sees_a_lazy_circle():
    """The graph counts imports inside functions: a lazy import back would be a circle."""
    graph = _imports()
    graph["textcl.model_location"] = graph["textcl.model_location"] | {"textcl.encoders"}
    assert _cycle(graph) is not None


@pytest.mark.parametrize("module", sorted(OLD_NAMES))
def test_old_import_paths_still_work(module):
    mod = importlib.import_module(module)
    missing = [name for name in OLD_NAMES[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lost {missing}"


def test_reexports_are_the_same_objects():
    from textcl import encoders, model_location, pooling, st_folder, whitening, whitening_layer

    assert encoders.ModelLoadError is model_location.ModelLoadError
    assert encoders.locate_model is model_location.locate_model
    assert encoders._hub_reachable is model_location._hub_reachable
    assert encoders._read_st_layout is st_folder._read_st_layout
    assert encoders.pool is pooling.pool
    assert whitening.Whitening is whitening_layer.Whitening
    assert whitening.check_identity_dense is whitening_layer.check_identity_dense
    import textcl

    assert textcl.ModelLoadError is encoders.ModelLoadError and textcl.TextEncoder is encoders.TextEncoder


def test_split_modules_stay_small():
    for mod in TEXT_STACK:
        file = PACKAGE.parent / (mod.replace(".", "/") + ".py")
        lines = len(file.read_text(encoding="utf-8").splitlines())
        assert lines <= 500, f"{file.name}: {lines} lines"


def test_python_m_textcl_whitening_still_runs():
    out = subprocess.run(
        [sys.executable, "-m", "textcl.whitening", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m textcl.whitening")
