"""Bad input gets one ``error: ...`` line on stderr and exit status 2, never a traceback.

The table test runs each CLI on one bad input built in ``tmp_path``: in-process through its
``main(argv)`` for most rows, by subprocess for a few (what ``python -m`` itself prints).
Then: the output-directory lock, refusing to replace a model, interrupted model installs,
and the library API (``Embedder.load`` / ``Embedder.encode`` raise, they do not exit).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import _toy  # noqa: F401  (registers the "toy" method)
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root holds benchmarks/

from benchmarks import compare_objectives, glue, senteval, sgns_speed, speed, vision, words  # noqa: E402
from textcl import Embedder, ModelLoadError  # noqa: E402
from textcl.core.io import INSTALL_MARKER, install_dir_contents  # noqa: E402
from textcl.core.lock import LOCK_NAME, DirLock, OutputDirError  # noqa: E402
from textcl.scratch import main as scratch_main  # noqa: E402
from textcl.train import main as train_main  # noqa: E402

# --------------------------------------------------------------------------- bad files


def _latin1(path: Path) -> Path:
    path.write_bytes("a caf\xe9 by the sea\n".encode("latin-1"))
    return path


def _binary(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    return path


def _truncated_gz(path: Path, line: str = "one two three four five six\n") -> Path:
    data = gzip.compress((line * 20000).encode())  # > 64 KiB: the error comes at the end
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_vectors(path: Path) -> Path:
    text = "20000 2\n" + "".join(f"w{i} 0.5 0.25\n" for i in range(20000))
    data = gzip.compress(text.encode())
    path.write_bytes(data[: len(data) // 2])
    return path


def _not_gzip(path: Path) -> Path:
    path.write_text("plain text, not gzip\n")
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _bad_json_line(path: Path) -> Path:
    path.write_text('{"id": 1, "text": "fine"}\n{"id": 2, "text": "fine too"}\n{"id": 3, text: oops}\n')
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def _corrupt_model(tmp: Path, tiny_bert_dir: Path) -> Path:
    model = tmp / "corrupt-model"
    shutil.copytree(tiny_bert_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return model


# --------------------------------------------------------------------------- recipes


def _toy_recipe(tmp: Path, output_dir: object = None, **train: object) -> str:
    out = tmp / "run" if output_dir is None else output_dir
    steps = {"batch_size": 8, "max_steps": 2, "save_every_n_steps": 2, **train}
    path = tmp / "toy.yaml"
    path.write_text(f"method: toy\noutput_dir: {json.dumps(str(out))}\ntrain: {json.dumps(steps)}\n")
    return str(path)


def _declutr_recipe(tmp: Path, model: object, docs: Path) -> str:
    path = tmp / "declutr.yaml"
    path.write_text(f"""
method: declutr
output_dir: {tmp / 'run'}
model: {{name_or_path: {model}, max_seq_length: 32}}
data: {{documents: {docs}, held_out_fraction: 0.25}}
objective: {{num_anchors: 1, num_positives: 1, min_span_len: 8, max_span_len: 16}}
train: {{batch_size: 2, max_steps: 1}}
""")
    return str(path)


def _nsp_recipe(tmp: Path, model: Path, docs: Path) -> str:
    path = tmp / "nsp.yaml"
    path.write_text(f"""
method: nsp
output_dir: {tmp / 'run'}
model: {{name_or_path: {model}, max_seq_length: 32}}
data: {{documents: {docs}, cache_dir: {tmp / 'cache'}}}
train: {{batch_size: 2, max_steps: 1}}
""")
    return str(path)


def _sgns_recipe(tmp: Path, corpus: Path) -> str:
    path = tmp / "sgns.yaml"
    path.write_text(f"""
method: sgns
output_dir: {tmp / 'run'}
model: {{dim: 8}}
data: {{corpus: {corpus}, min_count: 1}}
train: {{batch_size: 1, max_steps: 1, optimizer: sgd, cpu: true, max_grad_norm: null, weight_decay: 0.0,
        momentum: 0.0}}
eval: {{before_training: false}}
""")
    return str(path)


def _pipeline(tmp: Path, output_dir: object) -> str:
    """A scratch pipeline config (its tokenizer corpus is never read when the errors come first)."""
    path = tmp / "pipeline.yaml"
    path.write_text(f"output_dir: {json.dumps(str(output_dir))}\ntokenizer: {{files: [{_write(tmp / 'c.txt', b'a b')}]}}\n")
    return str(path)


def _data_dir(tmp: Path, *files: str) -> Path:
    """A data directory holding (empty) ``files``: enough for the CLIs' up-front checks."""
    root = tmp / "data"
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).touch()
    return root


_WORD_FILES = (*words.SIMILARITY_FILES.values(), words.ANALOGY_FILE)

# --------------------------------------------------------------------------- the table


@dataclass
class Row:
    """One bad input: ``build(tmp, tiny_bert_dir)`` makes it and returns (main, argv)."""

    id: str
    build: Callable[[Path, Path], tuple[Callable[..., object], list[str]]]
    expect: str  # a fragment of the error line


def _train(recipe: str, *args: str) -> tuple[Callable[..., object], list[str]]:
    return train_main, [recipe, *args]


ROWS = [
    # ---- the recipe file
    Row("recipe-not-utf8", lambda t, m: _train(str(_latin1(t / "r.yaml"))), "line 1: not UTF-8 text (byte 0xe9)"),
    Row("recipe-binary", lambda t, m: _train(str(_binary(t / "r.yaml"))), "line 3: binary data (a NUL byte), not YAML text"),
    Row("recipe-nul-bytes", lambda t, m: _train(str(_write(t / "r.yaml", b"method: toy\n\x00\x00"))),
        "line 2: binary data (a NUL byte)"),
    Row("recipe-directory", lambda t, m: _train(str(_directory(t / "r.yaml"))), "is a directory, not a recipe file"),
    Row("scratch-config-not-utf8", lambda t, m: (scratch_main, [str(_latin1(t / "p.yaml"))]),
        "line 1: not UTF-8 text (byte 0xe9) — save the pipeline config as UTF-8"),
    Row("scratch-output-dir-empty", lambda t, m: (scratch_main, [_pipeline(t, "")]), "output_dir: is empty (got '')"),
    Row("scratch-output-dir-is-file", lambda t, m: (scratch_main, [_pipeline(t, _write(t / "f", b"x"))]),
        "is a file, not a directory"),
    # ---- output_dir, found before the model loads
    Row("output-dir-empty", lambda t, m: _train(_toy_recipe(t, "")), "output_dir: is empty (got '') — set a directory"),
    Row("output-dir-is-file", lambda t, m: _train(_toy_recipe(t, _write(t / "f.txt", b"x"))),
        "is a file, not a directory"),
    Row("output-dir-under-file", lambda t, m: _train(_toy_recipe(t, _write(t / "f.txt", b"x") / "run")),
        "which is a file"),
    pytest.param(Row("output-dir-not-writable", lambda t, m: _train(_toy_recipe(t, "/sys/textcl-bad-input/run")),
                     "cannot be created"),
                 marks=pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs (read-only)")),
    Row("output-dir-file-with-model", lambda t, m: _train(_declutr_recipe(t, m, _write(t / "d.txt", b"x")),
                                                          "--set", f"output_dir={_write(t / 'f', b'x')}"),
        "is a file, not a directory"),
    # ---- the model
    Row("model-missing-path", lambda t, m: _train(_declutr_recipe(t, t / "no-such-model", _write(t / "d.txt", b"x"))),
        "no-such-model: no such model directory"),
    Row("model-missing-hub-name", lambda t, m: _train(_declutr_recipe(t, "no-such-org/no-such-model",
                                                                      _write(t / "d.txt", b"x"))),
        "no-such-org/no-such-model: neither a local directory nor in the local Hugging Face cache"),
    Row("model-empty-dir", lambda t, m: _train(_declutr_recipe(t, _directory(t / "empty-model"),
                                                               _write(t / "d.txt", b"x"))),
        "not a model directory (no config.json or modules.json)"),
    Row("model-corrupt-weights", lambda t, m: _train(_declutr_recipe(t, _corrupt_model(t, m), _write(t / "d.txt", b"x"))),
        "the safetensors weights cannot be read"),
    # ---- document corpora: declutr (textcl.documents)
    Row("documents-empty-txt", lambda t, m: _train(_declutr_recipe(t, m, _empty(t / "d.txt"))), "d.txt: the file is empty"),
    Row("documents-empty-jsonl", lambda t, m: _train(_declutr_recipe(t, m, _empty(t / "d.jsonl"))), "d.jsonl: the file is empty"),
    Row("documents-binary", lambda t, m: _train(_declutr_recipe(t, m, _binary(t / "d.txt"))), "d.txt: line 1: not UTF-8"),
    Row("documents-latin1", lambda t, m: _train(_declutr_recipe(t, m, _latin1(t / "d.jsonl"))),
        "d.jsonl: line 1: not UTF-8 (byte 0xe9) — re-encode the file as UTF-8"),
    Row("documents-truncated-gz", lambda t, m: _train(_declutr_recipe(t, m, _truncated_gz(t / "d.txt.gz"))),
        "d.txt.gz: the gzip data is truncated or corrupt"),
    Row("documents-not-gzip", lambda t, m: _train(_declutr_recipe(t, m, _not_gzip(t / "d.jsonl.gz"))),
        "d.jsonl.gz: not gzip data"),
    Row("documents-invalid-json-line", lambda t, m: _train(_declutr_recipe(t, m, _bad_json_line(t / "d.jsonl"))),
        "d.jsonl: line 3: invalid JSON"),
    Row("documents-directory", lambda t, m: _train(_declutr_recipe(t, m, _directory(t / "d.jsonl"))),
        "d.jsonl: is a directory, not a file"),
    # ---- sentence corpora: nsp (textcl.sentences)
    Row("sentences-latin1", lambda t, m: _train(_nsp_recipe(t, m, _latin1(t / "d.txt"))), "d.txt: line 1: not UTF-8"),
    Row("sentences-truncated-gz", lambda t, m: _train(_nsp_recipe(t, m, _truncated_gz(t / "d.jsonl.gz", '{"text": "a b"}\n'))),
        "d.jsonl.gz: the gzip data is truncated or corrupt"),
    Row("sentences-invalid-json-line", lambda t, m: _train(_nsp_recipe(t, m, _bad_json_line(t / "d.jsonl"))),
        "d.jsonl: line 3: invalid JSON"),
    Row("sentences-directory", lambda t, m: _train(_nsp_recipe(t, m, _directory(t / "d.txt"))), "is a directory, not a file"),
    # ---- word corpora: sgns (textcl.corpus)
    Row("corpus-empty", lambda t, m: _train(_sgns_recipe(t, _empty(t / "c.txt"))), "c.txt: the file is empty"),
    Row("corpus-binary", lambda t, m: _train(_sgns_recipe(t, _write(t / "c.txt", b"one two\nthree\x00four\n"))),
        "c.txt: line 2: binary data (a NUL byte)"),
    Row("corpus-latin1", lambda t, m: _train(_sgns_recipe(t, _latin1(t / "c.txt"))), "c.txt: line 1: not UTF-8 (byte 0xe9)"),
    Row("corpus-truncated-gz", lambda t, m: _train(_sgns_recipe(t, _truncated_gz(t / "c.txt.gz"))),
        "c.txt.gz: the gzip data is truncated or corrupt"),
    Row("corpus-not-gzip", lambda t, m: _train(_sgns_recipe(t, _not_gzip(t / "c.txt.gz"))), "c.txt.gz: not gzip data"),
    Row("corpus-invalid-json-line", lambda t, m: _train(_sgns_recipe(t, _bad_json_line(t / "c.jsonl"))),
        "c.jsonl: line 3: invalid JSON"),
    Row("corpus-directory", lambda t, m: _train(_sgns_recipe(t, _directory(t / "c.txt"))), "is a directory, not a file"),
    # ---- benchmarks
    Row("words-missing-vectors", lambda t, m: (words.main, [str(t / "nope.bin"), "--data-dir", str(_data_dir(t, *_WORD_FILES))]),
        "word vectors file"),
    Row("words-malformed-vectors", lambda t, m: (words.main, [str(_write(t / "v.txt", b"not a header\n")),
                                                               "--data-dir", str(_data_dir(t, *_WORD_FILES))]),
        "expected a word2vec header"),
    Row("words-missing-data-dir", lambda t, m: (words.main, [str(t / "v.txt"), "--data-dir", str(t / "nope")]),
        "data directory"),
    Row("glue-missing-model", lambda t, m: (glue.main, [str(t / "no-such-model"), "--tasks", "rte", "--data-dir",
                                                        str(_data_dir(t, *glue.TASKS["rte"].files))]),
        "no-such-model: no such model directory"),
    Row("glue-half-installed-model", lambda t, m: (glue.main, [str(_half_installed(t, m)), "--tasks", "rte", "--data-dir",
                                                               str(_data_dir(t, *glue.TASKS["rte"].files))]),
        "incomplete model"),
    Row("glue-missing-data-dir", lambda t, m: (glue.main, [str(m), "--tasks", "rte", "--data-dir", str(t / "nope")]),
        "nope does not exist"),
    Row("senteval-missing-model", lambda t, m: (senteval.main, [str(t / "no-such-model"), "--tasks", "sts12", "--data-dir",
                                                                str(_data_dir(t, "sts/sts12/test.jsonl"))]),
        "no-such-model: no such model directory"),
    Row("senteval-corrupt-model", lambda t, m: (senteval.main, [str(_corrupt_model(t, m)), "--tasks", "sts12", "--data-dir",
                                                                str(_data_dir(t, "sts/sts12/test.jsonl"))]),
        "the safetensors weights cannot be read"),
    Row("senteval-missing-data-dir", lambda t, m: (senteval.main, [str(m), "--tasks", "sts12", "--data-dir", str(t / "nope")]),
        "nope does not exist"),
    Row("speed-missing-model", lambda t, m: (speed.main, ["encode", "--model", str(t / "no-such-model")]),
        "no-such-model: no such model directory"),
    Row("speed-missing-texts", lambda t, m: (speed.main, ["encode", "--model", str(m), "--texts", str(t / "nope.txt")]),
        "nope.txt: file not found"),
    Row("compare-objectives-missing-data-dir", lambda t, m: (compare_objectives.main, ["--data-dir", str(t / "nope")]),
        "nope does not exist"),
    Row("vision-missing-data-dir", lambda t, m: (vision.main, ["--data-dir", str(t / "nope")]), "nope does not exist"),
    Row("sgns-speed-missing-data-dir", lambda t, m: (sgns_speed.main, ["--data-dir", str(t / "nope")]), "nope does not exist"),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _half_installed(tmp: Path, tiny_bert_dir: Path) -> Path:
    """A model directory whose install stopped after a few renames (no config.json / modules.json)."""
    from _tiny import tiny_encoder

    src, dest = tmp / "new-model", tmp / "half"
    tiny_encoder(tmp).save(src)
    _interrupted_install(src, dest, after=3)
    return dest


def _interrupted_install(src: Path, dest: Path, after: int) -> None:
    """install_dir_contents, killed after ``after`` renames."""
    import textcl.core.io as io

    real, calls = os.replace, []

    def replace(a: object, b: object) -> None:
        if str(b).startswith(str(dest)) and INSTALL_MARKER not in str(b):
            calls.append(b)
            if len(calls) > after:
                raise KeyboardInterrupt
        real(a, b)

    io.os.replace = replace  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            install_dir_contents(src, dest)
    finally:
        io.os.replace = real  # type: ignore[assignment]


def _run_cli(main: Callable[..., object], argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _assert_one_error_line(code: object, err: str, expect: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert expect in lines[0], (expect, lines[0])
    return lines[0]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_bad_input_is_one_line_and_exit_2(row: Row, tmp_path: Path, tiny_bert_dir: Path,
                                           capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEXTCL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # anything written by mistake lands here
    main, argv = row.build(tmp_path, tiny_bert_dir)
    capsys.readouterr()
    code, err = _run_cli(main, argv, capsys)
    _assert_one_error_line(code, err, row.expect)


# What `python -m` prints itself: no logging, no progress bars, no second line.
SUBPROCESS_ROWS = [
    ("textcl.train", lambda t, m: [str(_latin1(t / "r.yaml"))], "not UTF-8 text"),
    ("textcl.train", lambda t, m: [_declutr_recipe(t, m, _binary(t / "d.txt"))], "d.txt: line 1: not UTF-8"),
    ("textcl.train", lambda t, m: [_declutr_recipe(t, t / "nope", _write(t / "d.txt", b"x"))], "no such model directory"),
    ("benchmarks.glue", lambda t, m: [str(m), "--tasks", "rte", "--data-dir", str(t / "nope")], "nope does not exist"),
    ("benchmarks.words", lambda t, m: [str(_truncated_vectors(t / "v.txt.gz")), "--data-dir",
                                       str(_data_dir(t, *_WORD_FILES))], "v.txt.gz: cannot load word vectors"),
]


@pytest.mark.parametrize(("module", "build", "expect"), SUBPROCESS_ROWS,
                         ids=["train-recipe-not-utf8", "train-binary-documents", "train-missing-model",
                              "glue-missing-data-dir", "words-missing-vectors"])
def test_bad_input_by_subprocess(module: str, build: Callable[[Path, Path], list[str]], expect: str,
                                 tmp_path: Path, tiny_bert_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("TEXTCL_DATA", None)
    proc = subprocess.run([sys.executable, "-m", module, *build(tmp_path, tiny_bert_dir)], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=120)
    _assert_one_error_line(proc.returncode, proc.stderr, expect)


# --------------------------------------------------------------------------- the lock


def _lock_record(pid: int, host: str | None = None, **extra: object) -> str:
    from textcl.core.lock import _boot_id, _process_start

    return json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-01T00:00:00+00:00",
                       "boot_id": _boot_id(), "process_start": _process_start(pid), "token": "t", **extra})


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_held_lock_stops_a_second_run_naming_the_holder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    record = _lock_record(os.getpid())
    (out / LOCK_NAME).write_text(record)
    code, err = _run_cli(train_main, [_toy_recipe(tmp_path, out)], capsys)
    line = _assert_one_error_line(code, err, f"is in use by another run (pid {os.getpid()} on {socket.gethostname()}")
    assert str(out / LOCK_NAME) in line
    assert (out / LOCK_NAME).read_text() == record  # the holder's lock is left alone
    assert not (out / "recipe.yaml").exists()  # and nothing was written


def test_the_scratch_pipeline_locks_its_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "scratch"
    root.mkdir()
    (root / LOCK_NAME).write_text(_lock_record(os.getpid()))
    code, err = _run_cli(scratch_main, [_pipeline(tmp_path, root)], capsys)
    _assert_one_error_line(code, err, f"output_dir: {root} is in use by another run (pid {os.getpid()}")
    assert not (root / "tokenizer").exists()


def test_a_lock_held_on_another_host_is_not_taken_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(_lock_record(_dead_pid(), host="elsewhere.example"))
    code, err = _run_cli(train_main, [_toy_recipe(tmp_path, out)], capsys)
    _assert_one_error_line(code, err, "on elsewhere.example")


def test_a_stale_lock_is_taken_over_and_released(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    out.mkdir()
    pid = _dead_pid()
    (out / LOCK_NAME).write_text(_lock_record(pid))
    with caplog.at_level("WARNING", logger="textcl"):
        assert train_main([_toy_recipe(tmp_path, out)]) == 0
    assert f"taking over the stale lock of pid {pid}" in caplog.text
    assert (out / "toy.safetensors").is_file()
    assert not (out / LOCK_NAME).exists()


def test_a_lock_from_before_a_reboot_or_of_a_recycled_pid_is_stale(tmp_path: Path) -> None:
    lock = DirLock(tmp_path, "x")
    assert lock._is_stale(json.loads(_lock_record(os.getpid(), boot_id="another-boot")))
    assert not lock._is_stale(json.loads(_lock_record(os.getpid())))
    if json.loads(_lock_record(os.getpid()))["process_start"] is not None:  # Linux /proc
        assert lock._is_stale(json.loads(_lock_record(os.getpid(), process_start="1")))


@pytest.mark.parametrize("case", ["success", "non-finite loss", "too little data", "interrupt"])
def test_the_lock_is_released_after_a_run_and_after_an_error(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    args = {"success": [], "non-finite loss": ["--set", "objective.nan_at_step=1"],
            "too little data": ["--set", "data.n=4"], "interrupt": []}[case]
    if case == "interrupt":
        import textcl.core.trainer as trainer

        def stop(*_: object, **__: object) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(trainer.Trainer, "fit", stop)
    code = train_main([_toy_recipe(tmp_path, out), *args])
    assert code == {"success": 0, "non-finite loss": 3, "too little data": 2, "interrupt": 130}[case]
    assert out.is_dir() and not (out / LOCK_NAME).exists()


def _try_lock(directory: str, start: object, done: object, results: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    lock = DirLock(directory, "dir")
    try:
        lock.acquire()
    except OutputDirError as exc:
        results.put(("refused", str(exc)))  # type: ignore[attr-defined]
        return
    results.put(("held", os.getpid()))  # type: ignore[attr-defined]
    done.wait(60)  # hold it until every process has tried  # type: ignore[attr-defined]
    lock.release()


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_of_runs_started_at_once_exactly_one_takes_the_lock(stale: bool, tmp_path: Path) -> None:
    if stale:
        (tmp_path / LOCK_NAME).write_text(_lock_record(_dead_pid()))
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    n = 4
    start, done, results = ctx.Barrier(n), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_try_lock, args=(str(tmp_path), start, done, results)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=60) for _ in range(n)]
    finally:
        done.set()
        for p in procs:
            p.join(timeout=60)
    held = [o for o in outcomes if o[0] == "held"]
    assert len(held) == 1, outcomes
    assert all(f"pid {held[0][1]}" in msg for kind, msg in outcomes if kind == "refused"), outcomes
    assert not (tmp_path / LOCK_NAME).exists()  # released by its holder


def test_release_leaves_a_lock_that_was_taken_over(tmp_path: Path) -> None:
    lock = DirLock(tmp_path, "dir")
    lock.acquire()
    other = _lock_record(os.getpid(), token="someone-else")
    (tmp_path / LOCK_NAME).write_text(other)
    lock.release()
    assert (tmp_path / LOCK_NAME).read_text() == other


# --------------------------------------------------------------------------- replacing a model


def _digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("checkpoints", [True, False], ids=["with-checkpoints", "without-checkpoints"])
def test_a_finished_model_is_not_replaced_without_overwrite(checkpoints: bool, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    recipe = _toy_recipe(tmp_path, out)
    assert train_main([recipe]) == 0
    if not checkpoints:
        shutil.rmtree(out / "checkpoints")
    before = _digests(out)
    capsys.readouterr()
    code, err = _run_cli(train_main, [recipe], capsys)
    _assert_one_error_line(code, err, "--resume" if checkpoints else "already holds a model (metrics.json) — pass --overwrite")
    if not checkpoints:  # nothing to resume from: --resume would train afresh, so it is refused too
        code, err = _run_cli(train_main, [recipe, "--resume"], capsys)
        _assert_one_error_line(code, err, "holds a model (metrics.json) but no checkpoint to resume from")
    assert _digests(out) == before  # every file as it was
    assert train_main([recipe, "--overwrite", "--set", "seed=5"]) == 0
    assert _digests(out)["toy.safetensors"] != before["toy.safetensors"]


def test_a_directory_of_other_files_is_not_written_into(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "project"
    out.mkdir()
    (out / "README.md").write_text("my project\n")
    code, err = _run_cli(train_main, [_toy_recipe(tmp_path, out)], capsys)
    _assert_one_error_line(code, err, "is a directory of other files (README.md), not a textcl run")
    assert (out / "README.md").read_text() == "my project\n"


# --------------------------------------------------------------------------- interrupted installs


@pytest.mark.parametrize("after", [0, 3, 100])
def test_an_interrupted_install_does_not_load(after: int, tmp_path: Path) -> None:
    from _tiny import tiny_encoder
    from transformers import AutoConfig

    old, new = tmp_path / "old", tmp_path / "new"
    tiny_encoder(tmp_path, seed=1).save(old)
    tiny_encoder(tmp_path, seed=2).save(new)
    n_entries = len(list(new.iterdir()))
    dest = tmp_path / "out"
    shutil.copytree(old, dest)
    (dest / "checkpoints").mkdir()  # the other files of an output dir stay where they are
    _interrupted_install(new, dest, after=min(after, n_entries - 2))
    assert (dest / INSTALL_MARKER).exists() and not (dest / "modules.json").exists()
    assert not (dest / "config.json").exists()  # plain transformers cannot load it either
    with pytest.raises(ModelLoadError, match="incomplete model: its install was interrupted") as err:
        Embedder.load(dest)
    assert "\n" not in str(err.value)
    with pytest.raises((OSError, ValueError)):  # no config.json: transformers finds no model there
        AutoConfig.from_pretrained(str(dest))
    install_dir_contents(new, dest)  # what --resume does: install again
    assert not (dest / INSTALL_MARKER).exists() and (dest / "checkpoints").is_dir()
    assert Embedder.load(dest, device="cpu").dim == Embedder.load(old, device="cpu").dim


def test_sentence_transformers_files_without_modules_json_do_not_load(tmp_path: Path) -> None:
    from _tiny import tiny_encoder

    tiny_encoder(tmp_path).save(tmp_path / "m")
    (tmp_path / "m" / "modules.json").unlink()  # a directory cut short by an older textcl
    with pytest.raises(ModelLoadError, match="incomplete model.*modules.json is missing"):
        Embedder.load(tmp_path / "m")


# --------------------------------------------------------------------------- library API


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (lambda t, m: t / "missing", "missing: no such model directory — fix the path"),
        (lambda t, m: _directory(t / "empty"), "empty: not a model directory"),
        (lambda t, m: _corrupt_model(t, m), "the safetensors weights cannot be read"),
        (lambda t, m: _write(t / "model.safetensors", b"x"), "is a file, not a model directory"),
        (lambda t, m: "", "the model name or path is empty"),
        (lambda t, m: "no-such-org/no-such-model", "nor in the local Hugging Face cache"),
    ],
    ids=["missing", "empty-dir", "corrupt-weights", "a-file", "empty-name", "offline-hub-name"],
)
def test_embedder_load_raises_one_line(make: Callable[[Path, Path], object], expect: str, tmp_path: Path,
                                       tiny_bert_dir: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        Embedder.load(make(tmp_path, tiny_bert_dir))
    assert expect in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)  # callers catching ValueError keep working


@pytest.mark.parametrize("texts", [None, 123, b"bytes", bytearray(b"x")], ids=["None", "int", "bytes", "bytearray"])
def test_embedder_encode_rejects_non_text(texts: object, tiny_bert_dir: Path) -> None:
    embedder = Embedder.load(tiny_bert_dir, device="cpu")
    with pytest.raises(TypeError, match=r"texts must be a str or a list of str, got "):
        embedder.encode(texts)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\] is bytes, expected str"):
        embedder.encode(["fine", b"bytes"])  # type: ignore[list-item]
