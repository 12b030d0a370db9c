"""Model cards name data portably: packaged files as ``textcl://data/<file>``, files under
``$TEXTCL_DATA`` as ``${TEXTCL_DATA}/<path>``, any other file by name + sha256 + counts --
never by an absolute local path (the card is published with the model)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from textcl.card import portable_card_info, portable_path, portable_text, render_model_card
from textcl.data import data_path

ROOT = Path(__file__).resolve().parents[1]


def _forbidden(tmp_path: Path) -> list[str]:
    """Absolute local paths no card may contain: the repository, the test's tmp dir, $HOME."""
    paths = {str(ROOT), str(ROOT.resolve()), str(tmp_path), str(tmp_path.resolve()), str(Path.home())}
    return sorted(p for p in paths if len(p) > 1)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------ portable_path


def test_packaged_and_shared_data_paths(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "corpora").mkdir(parents=True)
    (shared / "corpora" / "c.txt").write_text("a\nb\n")
    monkeypatch.setenv("TEXTCL_DATA", str(shared))
    assert portable_path(data_path("sts_sample.jsonl")) == "textcl://data/sts_sample.jsonl"
    assert portable_path(str(shared / "corpora" / "c.txt")) == "${TEXTCL_DATA}/corpora/c.txt"
    for kept in ("textcl://data/x.jsonl", "hf://org/set:train", "${TEXTCL_DATA}/a/b.txt"):
        assert portable_path(kept) == kept


def test_other_files_by_name_hash_and_counts(tmp_path, monkeypatch):
    monkeypatch.delenv("TEXTCL_DATA", raising=False)
    plain = tmp_path / "docs.jsonl"
    plain.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n')
    assert portable_path(plain) == f"docs.jsonl (sha256 {_sha256(plain)}, {plain.stat().st_size} bytes, 3 lines)"
    packed = tmp_path / "corpus.txt.gz"
    with gzip.open(packed, "wt") as fh:
        fh.write("one\ntwo\n")
    assert portable_path(str(packed)).endswith(", 2 lines)")
    assert f"sha256 {_sha256(packed)}" in portable_path(str(packed))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert portable_path(model) == "model/ (local directory, 1 files, 2 bytes)"
    assert portable_path(tmp_path / "gone" / "file.txt") == "file.txt"


def test_text_keeps_urls_and_relative_paths(tmp_path):
    text = (
        f"see https://host.org/a/b/c, hf://org/set, textcl://data/x.jsonl, runs/quickstart and "
        f"{tmp_path}/missing/file.jsonl."
    )
    out = portable_text(text)
    assert "https://host.org/a/b/c" in out and "hf://org/set" in out and "textcl://data/x.jsonl" in out
    assert "runs/quickstart" in out and out.endswith(" file.jsonl.") and str(tmp_path) not in out


def test_render_model_card_sanitises_what_it_receives(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "pairs.jsonl").write_text("{}\n")
    monkeypatch.setenv("TEXTCL_DATA", str(shared))
    other = tmp_path / "elsewhere" / "docs.jsonl"
    other.parent.mkdir()
    other.write_text("{}\n{}\n")
    recipe = (
        f"method: declutr\noutput_dir: {tmp_path / 'run'}\nmodel:\n  name_or_path: {tmp_path / 'elsewhere'}\n"
        f"data:\n  documents: {other}\n  pairs: \"{shared / 'pairs.jsonl'}\"\n"
        f"# defaults (not set; filled in by the schemas):\n#   eval.path: \"{data_path('sts_sample.jsonl')}\"\n"
    )
    card = render_model_card({
        "objective": "DeCLUTR", "base_model": str(tmp_path / "elsewhere"), "recipe_yaml": recipe,
        "data": f"2 documents from `{other}`; eval on {data_path('sts_sample.jsonl')}",
        "metrics": {"sts_spearman": 1.0},
    })
    for needle in _forbidden(tmp_path):
        assert needle not in card
    front = yaml.safe_load(card.split("---")[1])
    assert "base_model" not in front  # a local directory is not a hub id
    block = card.split("```yaml\n", 1)[1].split("```", 1)[0]
    parsed = yaml.safe_load(block)
    assert parsed["output_dir"] == "run"
    assert parsed["data"]["documents"].startswith(f"docs.jsonl (sha256 {_sha256(other)}")
    assert parsed["data"]["pairs"] == "${TEXTCL_DATA}/pairs.jsonl"
    assert '#   eval.path: "textcl://data/sts_sample.jsonl"' in block
    assert "eval on textcl://data/sts_sample.jsonl" in card


def test_portable_card_info_for_other_renderers(tmp_path, monkeypatch):
    monkeypatch.delenv("TEXTCL_DATA", raising=False)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a b c\n")
    info = {"data": f"`{corpus}` (normalize: a-z)", "recipe_yaml": f"data:\n  corpus: {corpus}\n",
            "base_model": "sentence-transformers/all-MiniLM-L6-v2", "dim": 8}
    out = portable_card_info(info)
    assert out["data"].startswith(f"`corpus.txt (sha256 {_sha256(corpus)}, 6 bytes, 1 lines)`")
    assert yaml.safe_load(out["recipe_yaml"])["data"]["corpus"].startswith("corpus.txt (sha256 ")
    assert out["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and out["dim"] == 8
    assert info["data"].startswith(f"`{corpus}`")  # the input is not modified


# ------------------------------------------------------------------------ a real run


@pytest.fixture
def run_dir(tmp_path, monkeypatch, tiny_bert_dir, small_documents) -> Path:
    """A DeCLUTR run of the real CLI: base model and data under tmp_path, data in three kinds
    of places (``$TEXTCL_DATA``, the package, elsewhere)."""
    from textcl.train import main

    shared = tmp_path / "shared"
    (shared / "corpora").mkdir(parents=True)
    shutil.copy(small_documents, shared / "corpora" / "docs.jsonl")
    monkeypatch.setenv("TEXTCL_DATA", str(shared))
    model = tmp_path / "models" / "tiny-bert"
    shutil.copytree(tiny_bert_dir, model)
    elsewhere = tmp_path / "elsewhere" / "my_sts.jsonl"
    elsewhere.parent.mkdir()
    rows = data_path("sts_sample.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    elsewhere.write_text("\n".join(rows) + "\n", encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
method: declutr
output_dir: {tmp_path / 'run'}
seed: 3
model: {{name_or_path: {model}, max_seq_length: 32}}
data: {{documents: '${{TEXTCL_DATA}}/corpora/docs.jsonl', held_out_fraction: 0.25}}
objective: {{num_anchors: 1, num_positives: 1, min_span_len: 8, max_span_len: 16}}
train: {{batch_size: 4, max_steps: 2, lr: 0.001, threads: 1, log_every_n_steps: 1}}
eval:
  evaluators:
    - {{name: sts, path: textcl://data/sts_sample.jsonl, prefix: packaged}}
    - {{name: sts, path: {elsewhere}, prefix: local}}
""")
    assert main([str(recipe)]) == 0
    return tmp_path / "run"


def test_trained_card_and_metrics_hold_no_absolute_path(run_dir, tmp_path):
    card = (run_dir / "README.md").read_text(encoding="utf-8")
    metrics = (run_dir / "metrics.json").read_text(encoding="utf-8")
    for needle in _forbidden(tmp_path):
        assert needle not in card, f"model card names {needle}"
        assert needle not in metrics, f"metrics.json names {needle}"
    assert set(json.loads(metrics)) >= {"packaged_spearman", "local_spearman"}
    assert "${TEXTCL_DATA}/corpora/docs.jsonl" in card  # data line and recipe
    assert "textcl://data/sts_sample.jsonl" in card
    local = tmp_path / "elsewhere" / "my_sts.jsonl"
    assert f"my_sts.jsonl (sha256 {_sha256(local)}, {local.stat().st_size:,} bytes, 40 lines)" in card
    assert "tiny-bert/ (local directory" in card
    block = card.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block)["model"]["name_or_path"].startswith("tiny-bert/")
