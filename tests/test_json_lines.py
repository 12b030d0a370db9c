"""textcl.data_files.json_object_lines: the one JSON-lines row reader of the STS files, CERT's
pairs and the SentEval harness; its messages name FILE:LINE."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from textcl.data_files import DataError, json_object_lines


def test_rows_with_where_skipping_blank_lines_plain_and_gz(tmp_path: Path) -> None:
    text = '{"a": 1}\n\n  \n{"a": 2}\n'
    plain = tmp_path / "rows.jsonl"
    plain.write_text(text, encoding="utf-8")
    packed = tmp_path / "rows.jsonl.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as fh:
        fh.write(text)
    for path in (plain, packed):
        assert list(json_object_lines(path)) == [(f"{path}:1", {"a": 1}), (f"{path}:4", {"a": 2})]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"rows.jsonl:2: invalid JSON \(Expecting property name enclosed in double quotes\); make it"),
        ("[1, 2]", r"rows.jsonl:2: expected a JSON object, got list$"),
    ],
)
def test_bad_line_raises_the_given_error_naming_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        list(json_object_lines(path, hint="; make it"))
    with pytest.raises(ValueError) as err:
        list(json_object_lines(path, error=ValueError))
    assert type(err.value) is ValueError and "; make it" not in str(err.value)
