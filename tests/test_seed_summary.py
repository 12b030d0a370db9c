"""benchmarks.seed_summary: rows gathered across seed files, means and margins by hand."""

from __future__ import annotations

import json

import pytest

from benchmarks.seed_summary import main


def _point(sts: float, transfer: float, steps: int) -> dict:
    raw = {"sts_avg": sts, "transfer_avg": transfer, "transfer": {"mr": transfer}, "stsb_dev": 60.0}
    return {"steps": steps, "raw": raw, "whitened": {**raw, "sts_avg": sts + 8}}


def _file(path, rows: dict) -> str:
    path.write_text(json.dumps({"benchmark": "compare_objectives", "rows": rows}))
    return str(path)


def test_means_margins_and_seeds_above_the_start(tmp_path, capsys):
    start = {"status": "done", "sts_avg": 52.0, "transfer_avg": 78.5, "stsb_dev": 62.0, "transfer": {"mr": 78.5}}
    a = _file(tmp_path / "a.json", {
        "start": start, "start+whiten": {"status": "done", "sts_avg": 60.0},
        # The longest budget is the row's point, whatever the key order.
        "x": {"status": "done", "points": {"10": _point(54.0, 78.7, 600), "5": _point(50.0, 70.0, 300)}},
        "broken": {"status": "failed"},
    })
    b = _file(tmp_path / "b.json", {"x": {"status": "done", "points": {"10": _point(53.0, 78.2, 580)}}})
    report = main(["--file", f"42={a}", "--file", f"43={b}", "--start", "start",
                   "--out", str(tmp_path / "s.json"), "--plot"])
    assert report["start"]["raw"]["transfer_avg"] == 78.5 and report["start"]["whitened"]["sts_avg"] == 60.0
    assert set(report["rows"]) == {"x"}
    x = report["rows"]["x"]
    assert x["seeds"]["42"]["steps"] == 600 and x["seeds"]["43"]["raw"]["sts_avg"] == 53.0
    assert x["transfer_avg"]["mean"] == pytest.approx((78.7 + 78.2) / 2)
    assert x["transfer_avg"]["margin"] == pytest.approx((78.7 + 78.2) / 2 - 78.5)
    assert x["transfer_avg"]["seeds_above_start"] == 1 and x["sts_avg"]["seeds_above_start"] == 2
    assert json.loads((tmp_path / "s.json").read_text())["rows"]["x"]["sts_avg"]["n"] == 2
    assert (tmp_path / "s.png").stat().st_size > 0
    assert "1/2 above" in capsys.readouterr().out


def test_a_missing_start_or_file_is_one_error_line(tmp_path, capsys):
    a = _file(tmp_path / "a.json", {"x": {"status": "done", "points": {"10": _point(54.0, 78.7, 600)}}})
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\x00\x01\xff")
    for argv, message in (
        (["--file", f"42={a}", "--start", "nope"], "no file holds a finished row 'nope'"),
        (["--file", f"42={tmp_path / 'missing.json'}"], "missing.json: cannot read"),
        (["--file", f"42={binary}"], "bin.json: not a UTF-8 text file"),
    ):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--out", str(tmp_path / "s.json")])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
