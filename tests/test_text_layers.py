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
    "textcl.fit_texts",
    "textcl.batching",
    "textcl.model_location",
    "textcl.whitening_layer",
    "textcl.st_folder",
    "textcl.encoder_levers",
    "textcl.encoders",
    "textcl.st_modules",
    "textcl.embed",
    "textcl.whitening",
]

#: Modules split into parts (issue 18), each with the modules that took over part of it, bottom
#: up as TEXT_STACK: a part imports only from parts before it (and from modules not listed).
SPLIT_STACKS = {
    "documents": [
        "textcl.data_files", "textcl.arrow_columns", "textcl.arrow_cache", "textcl.documents",
        "textcl.sentence_split", "textcl.sentences",
    ],
    "scratch": ["textcl.scratch_mlm", "textcl.scratch_config", "textcl.scratch_build", "textcl.scratch"],
    "recipe": [
        "textcl.core.config_files", "textcl.core.config_errors", "textcl.core.recipe_sections",
        "textcl.core.recipe",
    ],
}

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
    "textcl.documents": [
        "ArrowInts", "ArrowLists", "DataError", "Document", "DocumentCorpus", "MIN_ROWS_PER_PROCESS", "RowView",
        "__all__", "_features", "_is_json", "as_document_corpus", "cached_map", "check_data_file",
        "complete_files", "datasets_quiet", "default_num_proc", "diagnose_data_file", "fingerprint_of",
        "held_out_split", "load_documents", "logger", "map_processes", "map_to_files", "read_column",
        "read_problem", "source_dataset", "split_key", "text_problem", "tokenizer_fingerprint",
    ],
    "textcl.sentences": [
        "ArrowInts", "ArrowLists", "DataError", "InputFile", "MethodConfig", "RowView", "SPLITTER",
        "SentenceDataSection", "SentenceDocument", "SentenceDocuments", "SentenceTokens", "SplitStats",
        "__all__", "_features", "_split_batch", "as_sentence_documents", "cached_map", "check_data_file",
        "complete_files", "default_cache_dir", "fingerprint_of", "load_sentence_documents", "logger",
        "map_to_files", "read_column", "source_dataset", "split_key", "split_sentences", "splitter_version",
        "text_key", "tokenize_sentence_dataset", "tokenize_sentences", "tokenizer_fingerprint",
    ],
    "textcl.scratch": [
        "BASE_ENV", "DEFAULT_CONFIG", "DEFAULT_CORPUS", "EmbeddingStage", "MLMStage", "MLM_CHECKPOINT",
        "ModelStage", "OutputDir", "PipelineConfig", "SPECIAL_TOKENS", "STAGES", "SgnsStage", "TokenizerStage",
        "TrainStage", "__all__", "_DOWNSTREAM", "_Strict", "_base_card", "_iter_texts", "_parser", "_paths",
        "_run_stages", "_stage_base_sgns", "_stage_mlm", "_stage_sgns", "_stage_tokenizer", "_stage_train",
        "_train_done", "_write_json", "build_bert", "load_pipeline_config", "logger", "main", "run_pipeline",
        "scratch_mlm", "train_mlm", "train_wordpiece_tokenizer",
    ],
    "textcl.core.recipe": [
        "EvalConfig", "EvaluatorConfig", "HubConfig", "InputFile", "OutputDir", "Recipe", "RecipeError",
        "TrainConfig", "__all__", "_Strict", "_TopLevel", "_flatten", "apply_overrides", "flat_config",
        "load_recipe", "parse_config_yaml", "read_config", "read_config_text", "resolve_input_path",
        "substitute_env", "validate_config",
    ],
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


@pytest.mark.parametrize("stack", sorted(SPLIT_STACKS))
def test_split_parts_import_only_downwards(stack):
    graph = _imports()
    parts = SPLIT_STACKS[stack]
    for i, mod in enumerate(parts):
        above = set(parts[i + 1:])
        assert not graph[mod] & above, f"{mod} imports {sorted(graph[mod] & above)} from above it"


def test_core_imports_only_core_and_packaged_data():
    """textcl.core stays modality- and objective-free: no objectives, encoders, corpora or vision."""
    graph = _imports()
    for mod, deps in graph.items():
        if mod.startswith("textcl.core"):
            outside = sorted(d for d in deps if not d.startswith("textcl.core") and d != "textcl.data")
            assert not outside, f"{mod} imports {outside}"


def test_split_reexports_are_the_same_objects():
    from textcl import (
        arrow_cache,
        arrow_columns,
        data_files,
        documents,
        scratch,
        scratch_build,
        scratch_config,
        sentence_split,
        sentences,
    )
    from textcl.core import config_errors, config_files, recipe, recipe_sections

    assert documents.DataError is data_files.DataError and sentences.DataError is data_files.DataError
    assert documents.cached_map is arrow_cache.cached_map and documents.RowView is arrow_columns.RowView
    assert documents.ArrowLists is arrow_columns.ArrowLists and documents.map_processes is arrow_cache.map_processes
    assert sentences.split_sentences is sentence_split.split_sentences
    assert scratch.PipelineConfig is scratch_config.PipelineConfig and scratch.build_bert is scratch_build.build_bert
    assert recipe.TrainConfig is recipe_sections.TrainConfig and recipe.InputFile is recipe_sections.InputFile
    assert recipe.read_config is config_files.read_config and recipe.validate_config is config_errors.validate_config


def test_split_modules_stay_small():
    for mod in TEXT_STACK + [m for parts in SPLIT_STACKS.values() for m in parts]:
        file = PACKAGE.parent / (mod.replace(".", "/") + ".py")
        lines = len(file.read_text(encoding="utf-8").splitlines())
        assert lines <= 500, f"{file.name}: {lines} lines"


def test_python_m_textcl_whitening_still_runs():
    out = subprocess.run(
        [sys.executable, "-m", "textcl.whitening", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m textcl.whitening")
