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
    # recipe.yaml (written next to the model, uploaded with it) keeps the recipe's portable
    # spellings of packaged and $TEXTCL_DATA files, and loads back to the same run.
    from textcl.core.recipe import load_recipe

    written = (run_dir / "recipe.yaml").read_text(encoding="utf-8")
    assert "documents: ${TEXTCL_DATA}/corpora/docs.jsonl" in written
    assert "path: textcl://data/sts_sample.jsonl" in written
    assert str(tmp_path / "shared") not in written and str(data_path("sts_sample.jsonl")) not in written
    again = load_recipe(run_dir / "recipe.yaml")
    assert again.resolved == load_recipe(tmp_path / "recipe.yaml").resolved


# ------------------------------------------------------------------------ recipe.yaml


def test_recipe_yaml_writes_packaged_and_shared_paths_as_spelled(tmp_path, monkeypatch):
    from textcl.core.recipe import load_recipe

    shared = tmp_path / "shared"
    (shared / "sts").mkdir(parents=True)
    shutil.copy(data_path("sts_sample.jsonl"), shared / "sts" / "mine.jsonl")
    monkeypatch.setenv("TEXTCL_DATA", str(shared))
    other = tmp_path / "other.jsonl"
    shutil.copy(data_path("sts_sample.jsonl"), other)
    source = tmp_path / "recipe.yaml"
    source.write_text(
        f"method: declutr\noutput_dir: {tmp_path / 'run'}\n"
        "data: {documents: textcl://data/gutenberg_sample.jsonl.gz}\n"
        "eval:\n  evaluators:\n"
        "    - {name: sts, path: '${TEXTCL_DATA}/sts/mine.jsonl'}\n"
        f"    - {{name: sts, path: {shared / 'sts' / 'mine.jsonl'}, prefix: spelled_out}}\n"
        f"    - {{name: sts, path: {other}}}\n"
    )
    first = load_recipe(source, [f"data.documents={data_path('gutenberg_sample.jsonl.gz')}"])
    text = first.to_yaml()
    body = yaml.safe_load(text)
    assert body["data"]["documents"] == "textcl://data/gutenberg_sample.jsonl.gz"
    assert [e["path"] for e in body["eval"]["evaluators"]] == [
        "${TEXTCL_DATA}/sts/mine.jsonl", "${TEXTCL_DATA}/sts/mine.jsonl", str(other)]  # others as given
    assert "--set data.documents=textcl://data/gutenberg_sample.jsonl.gz" in text
    assert str(data_path("gutenberg_sample.jsonl.gz")) not in text and str(shared) not in text
    again = tmp_path / "again.yaml"
    again.write_text(text)
    second = load_recipe(again)
    assert second.resolved == first.resolved and second.user_set == first.user_set


# ------------------------------------------------------------------------ other card kinds


def test_sgns_card_names_its_corpus_portably(tmp_path, monkeypatch):
    from textcl.train import run

    monkeypatch.delenv("TEXTCL_DATA", raising=False)
    corpus = tmp_path / "elsewhere" / "words.txt"
    corpus.parent.mkdir()
    corpus.write_text("".join(f"w{i % 7} w{(i * 3) % 7} w{(i + 2) % 7} w{i % 5}\n" for i in range(60)))
    recipe = tmp_path / "sgns.yaml"
    recipe.write_text(f"""
method: sgns
output_dir: {tmp_path / 'run'}
model: {{dim: 8, save_text: false}}
data: {{corpus: {corpus}, min_count: 1}}
objective: {{window: 2, negative: 2, sample: 0.0, threads: 1}}
train: {{batch_size: 1, epochs: 1, optimizer: sgd, lr: 0.025, cpu: true, momentum: 0.0, weight_decay: 0.0,
        max_grad_norm: null}}
eval: {{before_training: false}}
""")
    run(str(recipe), [])
    card = (tmp_path / "run" / "README.md").read_text(encoding="utf-8")
    for needle in _forbidden(tmp_path):
        assert needle not in card, f"SGNS card names {needle}"
    facts = f"words.txt (sha256 {_sha256(corpus)}, {corpus.stat().st_size:,} bytes, 60 lines)"
    assert f"`{facts}` (normalize:" in card  # training data
    block = card.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block)["data"]["corpus"] == facts and yaml.safe_load(block)["output_dir"] == "run"


def test_vision_card_names_its_npz_portably(tmp_path, monkeypatch):
    import numpy as np

    from textcl.train import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    npz = tmp_path / "elsewhere" / "tiny.npz"
    npz.parent.mkdir()
    np.savez_compressed(npz, x_train=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8), y_train=np.arange(16) % 2,
                        x_test=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), y_test=np.arange(8) % 2,
                        classes=np.array(["a", "b"]))
    recipe = tmp_path / "simclr.yaml"
    recipe.write_text(yaml.safe_dump({
        "method": "simclr", "output_dir": str(tmp_path / "run"), "seed": 0,
        "model": {"arch": "resnet_small", "width": 0.125},
        "data": {"source": "npz", "path": str(npz), "knn_k": 4},
        "objective": {"augment": {"size": 16}},
        "train": {"batch_size": 8, "max_steps": 1, "optimizer": "sgd", "lr": 0.05, "threads": 1},
        "eval": {"before_training": False},
    }))
    assert main([str(recipe)]) == 0
    card = (tmp_path / "run" / "README.md").read_text(encoding="utf-8")
    for needle in _forbidden(tmp_path):
        assert needle not in card, f"vision card names {needle}"
    facts = f"tiny.npz (sha256 {_sha256(npz)}, {npz.stat().st_size:,} bytes)"
    assert f"(npz: `{facts}`)" in card
    block = card.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block)["data"]["path"] == facts


def test_whitening_json_and_card_name_the_source_portably(tmp_path):
    from tests._tiny import tiny_encoder
    from textcl.whitening import whiten_model

    src = tmp_path / "models" / "tiny"
    tiny_encoder(tmp_path, normalize=True).save(src, model_card=f"# tiny\n\ntrained on {tmp_path}/corpus/x.txt\n")
    texts = [f"sentence number {i} about {w}" for i in range(40) for w in ("cats", "dogs", "rain")]
    facts = whiten_model(src, texts, tmp_path / "white", dim=4, max_texts=100, device="cpu")
    written = json.loads((tmp_path / "white" / "whitening.json").read_text())
    assert written == json.loads(json.dumps(facts))
    assert written["source_model"].startswith("tiny/ (local directory, ")
    card = (tmp_path / "white" / "README.md").read_text(encoding="utf-8")
    for needle in _forbidden(tmp_path):
        assert needle not in json.dumps(written) and needle not in card
    assert card.startswith("# tiny") and "trained on x.txt" in card and "## Whitening" in card


def test_scratch_cards_and_json_hold_no_absolute_path(tmp_path, monkeypatch):
    import numpy as np

    from textcl.scratch import load_pipeline_config, run_pipeline
    from textcl.word_vectors import WordVectors

    shared = tmp_path / "shared"
    (shared / "corpora").mkdir(parents=True)
    monkeypatch.setenv("TEXTCL_DATA", str(shared))
    words = "the old man walked to the door and looked out at the sea while his dog slept".split()
    corpus = shared / "corpora" / "lines.txt"
    corpus.write_text("".join(" ".join(words[i % 7 : i % 7 + 6]) + ".\n" for i in range(120)))
    vectors = tmp_path / "elsewhere" / "vectors.txt"
    vectors.parent.mkdir()
    WordVectors(list(dict.fromkeys(words))[:8], np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)).save(vectors)
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"output_dir: {tmp_path / 'out'}\n"
        "tokenizer: {files: ['${TEXTCL_DATA}/corpora/lines.txt'], vocab_size: 60, min_frequency: 1}\n"
        f"sgns: {{vectors: {vectors}}}\n"
        "model: {layers: 1, hidden: 16, heads: 2, intermediate: 32, max_position: 32}\n"
        f"mlm: {{enabled: true, max_minutes: null, max_steps: 2, batch_size: 8, max_length: 16, "
        f"heldout_sentences: 8, eval_every_steps: 2, threads: 1, files: [{corpus}]}}\n"
    )
    run_pipeline(load_pipeline_config(config))
    out = tmp_path / "out"
    written = {p: p.read_text(encoding="utf-8") for p in sorted(out.rglob("*"))
               if p.name in {"README.md", "pipeline.json", "scratch.json", "embedding_init.json",
                             "mlm_metrics.json", "tokenizer_stats.json"}}
    assert {p.relative_to(out).as_posix() for p in written} >= {
        "pipeline.json", "tokenizer/tokenizer_stats.json", "base-random/README.md", "base-random/scratch.json",
        "base-sgns/README.md", "base-sgns/embedding_init.json", "base-mlm/README.md", "base-mlm/mlm_metrics.json"}
    for path, text in written.items():
        for needle in _forbidden(tmp_path):
            assert needle not in text, f"{path.relative_to(out)} names {needle}"
    vector_facts = f"vectors.txt (sha256 {_sha256(vectors)}"
    assert json.loads(written[out / "base-sgns" / "embedding_init.json"])["vectors"].startswith(vector_facts)
    assert f"SGNS vectors `{vector_facts}" in written[out / "base-sgns" / "README.md"]
    for name in ("base-random", "base-sgns"):
        assert json.loads(written[out / name / "scratch.json"])["tokenizer"].startswith("tokenizer/ (local directory")
        assert "WordPiece tokenizer from `tokenizer/ (local directory" in written[out / name / "README.md"]
    mlm = json.loads(written[out / "base-mlm" / "mlm_metrics.json"])
    assert mlm["start"].startswith("base-sgns/ (local directory") and mlm["steps"] == 2
    assert mlm["config"]["files"] == ["${TEXTCL_DATA}/corpora/lines.txt"]
    assert written[out / "base-mlm" / "README.md"].startswith("# Small BERT") and "`base-sgns/ (local" in written[out / "base-mlm" / "README.md"]
    assert json.loads(written[out / "tokenizer" / "tokenizer_stats.json"])["files"] == ["${TEXTCL_DATA}/corpora/lines.txt"]
    summary = json.loads(written[out / "pipeline.json"])
    assert summary["config"]["output_dir"] == "out"
    assert {k: v["output"] for k, v in summary["stages"].items()} == {
        "tokenizer": "tokenizer", "sgns": vector_facts + f", {vectors.stat().st_size:,} bytes, 9 lines)",
        "base-random": "base-random", "base-sgns": "base-sgns", "base-mlm": "base-mlm"}
    # A second run skips every stage (outputs exist; nothing is read back from pipeline.json).
    again = run_pipeline(load_pipeline_config(config))
    assert {v["status"] for k, v in again["stages"].items() if k != "sgns"} == {"skipped"}
