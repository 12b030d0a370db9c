"""Every bad-recipe case: one clear message naming the file and key, exit code 2."""

import os
from pathlib import Path

import _toy  # noqa: F401  (registers the "toy" method)
import pytest

from textcl.core.recipe import RecipeError, load_recipe
from textcl.train import main

GOOD = "method: toy\noutput_dir: {out}\ntrain: {{batch_size: 8, max_steps: 2}}\n"


def _recipe(tmp_path, text):
    p = tmp_path / "recipe.yaml"
    p.write_text(text.format(out=tmp_path / "out"))
    return str(p)


CASES = [
    # (recipe text, extra args, expected fragments)
    ("method: toy\noutput_dir: {out}\ntrian: {{}}\n", [], ["trian: unknown key", "did you mean 'train'"]),
    ("method: toy\noutput_dir: {out}\ntrain: {{bach_size: 8}}\n", [],
     ["train.bach_size: unknown key", "did you mean 'batch_size'"]),
    ("method: toy\noutput_dir: {out}\ntrain: {{batch_size: big}}\n", [], ["train.batch_size", "integer", "'big'"]),
    ("method: toy\noutput_dir: {out}\ntrain: {{lr: -1}}\n", [], ["train.lr", "greater than 0"]),
    ("method: toy\noutput_dir: {out}\ntrain: {{optimizer: adam}}\n", [], ["train.optimizer", "'adamw'"]),
    ("method: toy\noutput_dir: {out}\ntrain: [1, 2\n", [], ["malformed YAML at line 4"]),
    ("method: toyy\noutput_dir: {out}\n", [], ["method: unknown method 'toyy'", "did you mean 'toy'"]),
    ("output_dir: {out}\n", [], ["method: required key is missing"]),
    ("method: toy\noutput_dir: {out}\nobjective: {{nan_at_stp: 1}}\n", [],
     ["objective.nan_at_stp: unknown key", "did you mean 'nan_at_step'"]),
    ("method: toy\noutput_dir: ${{TEXTCL_TEST_UNSET_VAR}}/x\n", [],
     ["output_dir: environment variable TEXTCL_TEST_UNSET_VAR is not set"]),
    (GOOD, ["--set", "train.batch_size"], ["expected KEY=VALUE"]),
    (GOOD, ["--set", "train.batch_size=0"], ["train.batch_size", "greater than or equal to 1"]),
    ("method: declutr\noutput_dir: {out}\ndata: {{documents: /nonexistent/docs.jsonl}}\n", [],
     ["data.documents: file not found: /nonexistent/docs.jsonl"]),
    ("method: declutr\noutput_dir: {out}\n", [], ["data.documents: required key is missing"]),
    ("method: declutr\noutput_dir: {out}\ndata: {{documents: textcl://data/gutenberg_sample.jsonl.gz}}\n"
     "objective: {{num_anchor: 2}}\n", [], ["objective.num_anchor: unknown key", "did you mean 'num_anchors'"]),
    ("method: declutr\noutput_dir: {out}\ndata: {{documents: textcl://data/gutenberg_sample.jsonl.gz}}\n"
     "objective: {{min_span_len: 64, max_span_len: 32}}\n", [], ["objective", "min_span_len (64) must be <="]),
    # the successor task's keys are not the order-invariant variant's
    ("method: permutation-pirl\noutput_dir: {out}\ndata: {{documents: textcl://data/gutenberg_sample.jsonl.gz}}\n"
     "objective: {{in_batch_negatives: true}}\n", [], ["objective.in_batch_negatives: unknown key"]),
]


@pytest.mark.parametrize("text,args,fragments", CASES)
def test_bad_recipe_exit_2_with_message(tmp_path, capsys, text, args, fragments):
    path = _recipe(tmp_path, text)
    assert main([path, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ")
    for fragment in fragments:
        assert fragment in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written for a bad recipe


def test_missing_recipe_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "recipe file not found" in capsys.readouterr().err


def test_overrides_env_and_resolved_dump(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTCL_TEST_OUT", str(tmp_path / "envout"))
    path = _recipe(tmp_path, "method: toy\noutput_dir: ${{TEXTCL_TEST_OUT}}/run\n")
    r = load_recipe(path, ["train.lr=3e-4", "model.dim=6", "seed=5"])
    assert r.train.lr == pytest.approx(3e-4) and r.config.model.dim == 6 and r.seed == 5
    assert str(r.output_dir) == str(tmp_path / "envout" / "run")
    dumped = r.to_yaml()
    assert "lr: 0.0003" in dumped and "dim: 6" in dumped and "warmup_steps: 0" in dumped  # defaults filled


def test_env_default_syntax(tmp_path):
    path = _recipe(tmp_path, "method: toy\noutput_dir: ${{TEXTCL_TEST_UNSET_VAR:-fallback}}/x\n")
    assert str(load_recipe(path).output_dir) == "fallback/x"


def test_recipe_error_is_raised_programmatically(tmp_path):
    with pytest.raises(RecipeError, match="did you mean 'train'"):
        load_recipe(_recipe(tmp_path, "method: toy\noutput_dir: x\ntrian: {{}}\n"))


_SHIPPED = sorted(
    str(p.relative_to(Path(__file__).resolve().parents[1]))
    for p in (Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml")
    if not p.name.startswith("pipeline")  # the scratch pipeline's own configs, not training recipes
)
_PIPELINES = sorted(
    str(p.relative_to(Path(__file__).resolve().parents[1]))
    for p in (Path(__file__).resolve().parents[1] / "recipes").rglob("pipeline*.yaml")
)


@pytest.mark.parametrize("config", _PIPELINES)
def test_every_shipped_pipeline_config_validates(config, monkeypatch):
    """Each scratch-pipeline config parses, and its train recipe (if any) exists."""
    from textcl.scratch import load_pipeline_config

    repo = Path(__file__).resolve().parents[1]
    data = Path(os.environ.get("TEXTCL_DATA", repo.parent / "shared" / "data"))
    if not (data / "corpora").is_dir():
        pytest.skip("the data dir is not available")
    monkeypatch.setenv("TEXTCL_DATA", str(data))
    cfg = load_pipeline_config(repo / config)
    assert cfg.train.recipe is None or (repo / cfg.train.recipe).is_file()


@pytest.mark.parametrize("recipe", _SHIPPED)
def test_every_shipped_recipe_validates(recipe, tmp_path, monkeypatch):
    """Each recipe in recipes/ parses with its method's schema (keys, types, files)."""
    from textcl.core.recipe import load_recipe

    repo = Path(__file__).resolve().parents[1]
    data = Path(os.environ.get("TEXTCL_DATA", repo.parent / "shared" / "data"))
    if not (data / "corpora").is_dir() and "quickstart" not in recipe:
        pytest.skip("the data dir is not available")
    monkeypatch.setenv("TEXTCL_DATA", str(data))
    pairs = tmp_path / "pairs.jsonl"  # CERT's back-translation file is made by a command, not shipped
    pairs.write_text('{"id": "a", "text": "x", "translations": ["y"]}\n')
    monkeypatch.setenv("TEXTCL_CERT_PAIRS", str(pairs))
    r = load_recipe(repo / recipe)
    assert r.method and r.config is not None


def test_resolved_recipe_reproduces_a_time_budgeted_run(tmp_path):
    """The written recipe.yaml holds what was set (defaults as comments), so loading it again
    gives the same settings *and* the same set keys: ``train.epochs`` stays a default, and the
    time-budgeted schedule (no epoch cap) is kept."""
    src = _recipe(tmp_path, "method: toy\noutput_dir: {out}\ntrain: {{max_minutes: 15, lr: 0.1}}\n")
    first = load_recipe(src, ["train.batch_size=8"])
    text = first.to_yaml()
    assert "# --set train.batch_size=8" in text and "#   train.epochs: 1" in text
    again = tmp_path / "again.yaml"
    again.write_text(text)
    second = load_recipe(again)
    assert second.resolved == first.resolved
    assert second.train.model_fields_set == first.train.model_fields_set
    assert "epochs" not in second.train.model_fields_set and second.train.batch_size == 8
