"""textcl.hub without network: the files an upload selects, refusal of unfinished runs, one-line
errors offline / unreachable (CLI exit 2), and the recipe's ``hub:`` upload at the end of a run."""

from __future__ import annotations

import json

import pytest
from _toy import Toy  # noqa: F401  (registers the "toy" method)
from huggingface_hub import HfApi, RepoUrl

from textcl import hub
from textcl.core.recipe import RecipeError, load_recipe
from textcl.train import main as train_main


def _recipe(tmp_path, out, hub_section=""):
    path = tmp_path / "r.yaml"
    path.write_text(f"""
method: toy
output_dir: {out}
train: {{batch_size: 8, max_steps: 4, save_every_n_steps: 2, lr: 0.01}}
{hub_section}
""")
    return str(path)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished toy run (with checkpoints and log) plus the clutter a run dir can hold."""
    tmp = tmp_path_factory.mktemp("hubrun")
    out = tmp / "run"
    assert train_main([_recipe(tmp, out)]) == 0
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text("{}")  # a model subfolder: uploaded
    (out / "tracking" / "run").mkdir(parents=True)
    (out / "tracking" / "run" / "events.out.tfevents.1").write_bytes(b"x")
    (out / ".DS_Store").write_bytes(b"x")
    (out / ".final-model.tmp").mkdir()
    (out / ".final-model.tmp" / "model.safetensors").write_bytes(b"x")
    (out / "wandb.lock").write_text("")
    return out


UPLOADED = ["1_Pooling/config.json", "README.md", "metrics.json", "recipe.yaml", "toy.safetensors"]


@pytest.fixture
def online(monkeypatch):
    """Pretend the network is there up to the first real request: not offline, a token, the
    probe answers. Any actual hub call must be patched by the test."""
    import textcl.model_location

    monkeypatch.setattr(textcl.model_location, "_offline_env", lambda: False)
    monkeypatch.setattr(textcl.model_location, "_hub_reachable", lambda *a, **k: True)
    monkeypatch.setenv("HF_TOKEN", "hf_test_not_a_token")


def test_files_to_upload_are_the_model_and_card_only(finished_run):
    assert (finished_run / "checkpoints").is_dir() and (finished_run / "log.jsonl").is_file()
    assert hub.files_to_upload(finished_run) == UPLOADED


def test_upload_folder_selects_exactly_files_to_upload(finished_run, online, monkeypatch):
    # huggingface_hub's own upload path, stopped by a network failure right after it has
    # chosen the files: what it would send is what files_to_upload says.
    import httpx2

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda self, **kw: None)  # a hub call for README.md
    selected = []
    original = HfApi._prepare_upload_folder_additions

    def additions(self, *args, **kwargs):
        selected.extend(op.path_in_repo for op in original(self, *args, **kwargs))
        raise httpx2.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "_prepare_upload_folder_additions", additions)
    with pytest.raises(hub.HubError) as err:
        hub.push_to_hub(finished_run, "me/model")
    assert sorted(selected) == hub.files_to_upload(finished_run) == UPLOADED
    message = str(err.value)
    assert message.startswith("me/model: cannot reach the Hugging Face Hub (ConnectError: [Errno -2]")
    assert "— check the network" in message and "\n" not in message


@pytest.mark.parametrize("setup, expected", [
    (lambda d: None, "not a finished textcl model (no model weights, README.md, metrics.json)"),
    (lambda d: (d / "checkpoints").mkdir() or (d / "toy.safetensors").write_bytes(b"x"),
     "not a finished textcl model (no README.md, metrics.json)"),
    (lambda d: (d / ".textcl-install-incomplete").write_text(""), "the model install was interrupted"),
])
def test_unfinished_dirs_are_refused(tmp_path, capsys, setup, expected):
    d = tmp_path / "out"
    d.mkdir()
    setup(d)
    with pytest.raises(hub.HubError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        hub.push_to_hub(d, "me/model")
    assert hub.main([str(d), "me/model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {d}: ") and err.count("\n") == 1 and " — " in err
    assert hub.main([str(tmp_path / "missing"), "me/model"]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_offline_is_one_line_and_exit_2(finished_run, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError, match=r"^me/model: offline mode is set \(HF_HUB_OFFLINE"):
        hub.push_to_hub(finished_run, "me/model", token="hf_x")
    assert hub.main([str(finished_run), "me/model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: me/model: offline mode is set") and err.count("\n") == 1
    assert not (finished_run / ".textcl.lock").exists()  # the CLI's lock is released


def test_huggingface_hubs_own_offline_error_is_one_line(finished_run, online):
    # Past textcl's own checks, huggingface_hub refuses by itself (it read HF_HUB_OFFLINE=1,
    # set by conftest, at import): its OfflineModeIsEnabled becomes one line.
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("huggingface_hub was imported online")
    with pytest.raises(hub.HubError, match=r"^me/model: huggingface_hub is in offline mode — unset HF_HUB_OFFLINE"):
        hub.push_to_hub(finished_run, "me/model")


def test_missing_token_and_unreachable_hub(finished_run, online, monkeypatch):
    import huggingface_hub

    import textcl.model_location

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(hub.HubError, match="no Hugging Face token — run hf auth login or export HF_TOKEN"):
        hub.push_to_hub(finished_run, "me/model")
    monkeypatch.setattr(textcl.model_location, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(hub.HubError, match="cannot reach the Hugging Face Hub at https://"):
        hub.push_to_hub(finished_run, "me/model", token="hf_x")


def test_dry_run_lists_the_files(finished_run, capsys):
    assert hub.main([str(finished_run), "me/model", "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == UPLOADED


# ------------------------------------------------------------------ the recipe option
def test_recipe_hub_section_is_validated(tmp_path):
    r = load_recipe(_recipe(tmp_path, tmp_path / "o", "hub: {repo_id: me/model, private: true}"))
    assert (r.hub.repo_id, r.hub.private) == ("me/model", True)
    assert load_recipe(_recipe(tmp_path, tmp_path / "o")).hub.repo_id is None
    with pytest.raises(RecipeError, match=r"hub.repo_id: not a valid repo id \(got 'me/bad name'\) — use 'user-or-org/name'"):
        load_recipe(_recipe(tmp_path, tmp_path / "o", "hub: {repo_id: 'me/bad name'}"))
    with pytest.raises(RecipeError, match="hub.token: unknown key"):  # a secret never goes in a recipe
        load_recipe(_recipe(tmp_path, tmp_path / "o", "hub: {repo_id: me/model, token: hf_x}"))


def test_run_fails_before_training_when_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    recipe = _recipe(tmp_path, out, "hub: {repo_id: me/model}")
    assert train_main([recipe]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {recipe}: hub.repo_id: me/model: offline mode is set") and err.count("\n") == 1
    assert not (out / "log.jsonl").exists()  # nothing trained


def test_run_uploads_the_finished_model(tmp_path, online, monkeypatch, capsys):
    out = tmp_path / "run"
    calls = []
    monkeypatch.setattr(HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw["private"]))
                        or RepoUrl(f"https://huggingface.co/{repo_id}"))

    def upload_folder(self, **kw):
        # Called once the model is installed: the card and metrics.json are there.
        calls.append(("upload", kw["repo_id"], sorted(hub.files_to_upload(kw["folder_path"]))))
        assert kw["ignore_patterns"] == list(hub.UPLOAD_IGNORE_PATTERNS)
        assert kw["commit_message"] == "Upload toy model trained with textcl"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert train_main([_recipe(tmp_path, out, "hub: {repo_id: me/model, private: true}")]) == 0
    assert calls == [
        ("create", "me/model", True),  # before training
        ("create", "me/model", True),
        ("upload", "me/model", ["README.md", "metrics.json", "recipe.yaml", "toy.safetensors"]),
    ]
    assert "model uploaded to https://huggingface.co/me/model" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["toy_mse"] > 0


def test_failed_upload_after_training_says_how_to_retry(tmp_path, online, monkeypatch, capsys):
    import httpx2

    out = tmp_path / "run"
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))

    def upload_folder(self, **kw):
        raise httpx2.ConnectError("connection reset")

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    recipe = _recipe(tmp_path, out, "hub: {repo_id: me/model}")
    assert train_main([recipe]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar's lines
    assert err.startswith(f"error: {recipe}: hub.repo_id: me/model: cannot reach the Hugging Face Hub "
                          "(ConnectError: connection reset) — check the network")
    assert f"the model is saved: upload it with python -m textcl.hub {out} me/model" in err
    assert (out / "toy.safetensors").exists() and (out / "metrics.json").exists()


def test_push_to_hub_is_exported():
    import textcl

    assert textcl.push_to_hub is hub.push_to_hub
