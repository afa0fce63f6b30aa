"""Reading rows from files and writing them (ta/data/io.py): JSONL in blocks of lines, JSON arrays element by
element, structural damage named by file and line, one output form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ta.data import io
from ta.data.io import read_records, write_jsonl
from ta.errors import DataError
from tests.helpers import PREPARE_FIXTURES as FIXTURES


def test_json_array_rows_keep_the_line_they_start_on() -> None:
    # alpaca_history.json is indented by json.dump(indent=2): "[" on line 1, the first object on line 2.
    lines = [record.line for record in read_records(FIXTURES / "alpaca_history.json")]
    text = (FIXTURES / "alpaca_history.json").read_text(encoding="utf-8").splitlines()
    assert lines[0] == 2
    assert text[lines[1] - 1].strip() == "{"
    assert text[lines[1]].strip().startswith('"instruction": "比较两个分数的大小"')


def test_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + '{"question": "问", "answer": "答"}\n'.encode())
    assert [r.value for r in read_records(path)] == [{"question": "问", "answer": "答"}]


@pytest.mark.parametrize(
    ("content", "reason", "message"),
    [
        (b'{"question": "a", "answer": "b"}\n\n{"question": "a",\n', "malformed_json", "bad.jsonl:3: malformed JSON"),
        (b'{"question": "a", "answer": "b"}\n{"question": "\xff\xfe"}\n', "not_utf8", "bad.jsonl:2: not UTF-8"),
        (
            b'{"question": "a", "answer": "b"}\n["a", "b"]\n',
            "wrong_top_level",
            "bad.jsonl:2: expected a JSON object per line, got list",
        ),
        (b'{\n  "rows": [1, 2]\n}\n', "wrong_top_level", "bad.jsonl:1: the file is one JSON object"),
    ],
)
def test_structural_damage_names_file_and_line(tmp_path: Path, content: bytes, reason: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        list(read_records(path))
    assert err.value.reason == reason
    assert str(err.value).startswith(str(tmp_path / message)) or str(err.value).startswith(message)


def test_skip_mode_yields_the_damaged_line_as_an_error_record(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"question": "a", "answer": "b"}\nnot json\n{"question": "c", "answer": "d"}\n')
    records = list(read_records(path, on_error="skip"))
    assert [(r.line, r.error is None) for r in records] == [(1, True), (2, False), (3, True)]
    assert records[1].error is not None and records[1].error.raw == "not json"


def test_json_array_with_a_non_object_element(tmp_path: Path) -> None:
    path = tmp_path / "arr.json"
    path.write_text('[\n  {"question": "a", "answer": "b"},\n  "oops"\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"arr.json:3: expected a JSON object in the array, got str"):
        list(read_records(path))


def test_write_jsonl_is_utf8_one_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "out" / "rows.jsonl"
    assert write_jsonl(path, [{"a": "中文"}, {"b": 1}]) == 2
    assert path.read_bytes() == '{"a":"中文"}\n{"b":1}\n'.encode()
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [{"a": "中文"}, {"b": 1}]
    # A lone surrogate (valid as a JSON escape, not as UTF-8) is written escaped, not lost.
    write_jsonl(path, [{"a": "\ud800x"}])
    assert path.read_bytes() == b'{"a":"\\ud800x"}\n'


LINES = st.lists(st.sampled_from(['{"a": 1}', '{"b": "二"}', "", "  ", "\r", '{"c": 3}\r', "not json"]), max_size=40)


@settings(max_examples=150, deadline=None)
@given(lines=LINES, rows=st.integers(1, 7), read_bytes=st.integers(1, 40), bom=st.booleans(), end=st.booleans())
def test_line_blocks_give_every_line_once_with_its_number(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], rows: int, read_bytes: int, bom: bool, end: bool
) -> None:
    """Whatever the read size and block size: the non-blank lines, numbered as a plain split numbers
    them, each in the block of `rows` lines it falls in."""
    path = tmp_path_factory.mktemp("blocks") / "rows.jsonl"
    raw = ("\n".join(lines) + ("\n" if end else "")).encode("utf-8")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + raw)
    expected = [(n, line.rstrip(b"\r")) for n, line in enumerate(raw.split(b"\n"), 1) if line.strip()]
    old, io.READ_BYTES = io.READ_BYTES, read_bytes
    try:
        blocks = list(io._line_blocks(path, rows))
    finally:
        io.READ_BYTES = old
    assert [row for block in blocks for row in block.rows()] == expected
    for block in blocks:
        assert all(block.first <= n < block.first + rows for n, _ in block.rows())


def test_json_array_is_read_in_chunks_of_records(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"question": str(i), "answer": "a"} for i in range(5)], indent=1), encoding="utf-8")
    chunks = list(io.read_chunks(path, 2))
    assert [len(chunk) for chunk in chunks] == [2, 2, 1]
    assert [record.value["question"] for chunk in chunks for record in chunk] == ["0", "1", "2", "3", "4"]


def test_what_write_jsonl_writes_read_jsonl_reads_back(tmp_path: Path) -> None:
    rows = [{"问": "二", "n": 2, "nested": {"list": [1, None, True]}}, {"empty": ""}]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    assert io.read_jsonl(tmp_path / "rows.jsonl") == rows
