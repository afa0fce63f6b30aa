"""Rows in and out of files: JSONL and JSON arrays read as cheaply as possible, written in one form.

A JSONL file is read in blocks of lines (parsed later, in prepare's worker processes); a JSON array is
parsed element by element so each row keeps the line it starts on. Structural damage in a file (bad JSON,
not UTF-8, wrong top-level type) is a `DataError` with `file:line: ...`, raised or carried on the row's
`Record` (so prepare can reject just that row under `on_error: skip`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

from ta.errors import DataError


@dataclass
class Record:
    """One input row: where it came from and its parsed JSON value (or the structural error)."""

    file: str
    line: int
    value: Any = None
    error: DataError | None = None
    raw: bytes = b""  # the line as read, when there is one (JSONL)

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"


# --------------------------------------------------------------------------------------------- reading


def read_records(path: str | Path, on_error: str = "stop") -> Iterator[Record]:
    """Yield every row of a JSONL file or a JSON array file with its 1-based line number.

    With on_error="stop" the first structural problem raises DataError; with "skip" it is yielded as a
    Record carrying the error, so the caller can reject it and go on."""
    for item in read_raw_rows(path):
        record = item if isinstance(item, Record) else parse_jsonl_line(str(path), *item)
        if record.error is not None and on_error == "stop":
            raise record.error
        yield record


RawRow = tuple[int, bytes] | Record
BOM = b"\xef\xbb\xbf"
READ_BYTES = 1 << 22  # a JSONL file is read 4 MiB at a time


@dataclass(frozen=True)
class LineBlock:
    """Consecutive lines of a JSONL file as one bytes object, blank ones included so that numbering holds:
    a chunk travels to a worker process as one buffer instead of thousands of small objects."""

    first: int  # line number of the first line
    data: bytes

    def rows(self) -> list[tuple[int, bytes]]:
        """(line number, raw bytes) of each non-blank line; lines end at \n only (U+2028 is valid in JSON)."""
        return [(n, raw.rstrip(b"\r")) for n, raw in enumerate(self.data.split(b"\n"), self.first) if raw.strip()]


def read_chunks(path: str | Path, rows: int) -> Iterator[LineBlock | list[RawRow]]:
    """The rows of a file, a chunk at a time and as cheaply as possible: a JSONL file as LineBlocks of
    `rows` lines (parsed later, in worker processes); a JSON array as lists of `rows` Records (it is one
    value, parsed here element by element)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.removeprefix(BOM).lstrip()[:1] == b"[":
        data = path.read_bytes().removeprefix(BOM)
        yield from chunked(_read_json_array(str(path), data), rows)
        return
    blocks = _line_blocks(path, rows)
    for block in blocks:
        _check_first_row(path, block)
        yield block
        break
    yield from blocks


def chunked(rows: Iterable[RawRow], size: int) -> Iterator[list[RawRow]]:
    """Lists of `size` rows (the last one shorter)."""
    rows = iter(rows)
    while chunk := list(islice(rows, size)):
        yield chunk


def read_raw_rows(path: str | Path) -> Iterator[RawRow]:
    """The rows of a file one by one: (line number, bytes) for JSONL, Records for a JSON array."""
    for chunk in read_chunks(path, 10_000):
        yield from chunk.rows() if isinstance(chunk, LineBlock) else chunk


def _line_blocks(path: Path, rows: int) -> Iterator[LineBlock]:
    """Blocks of `rows` lines, read READ_BYTES at a time; a UTF-8 BOM at the start is dropped. A block is
    cut where its last line ends: the newlines of a whole buffer are found at once (numpy), so there is
    no object per line here."""
    import numpy as np

    with open(path, "rb") as f:
        line_no, buffer = 1, f.read(max(READ_BYTES, len(BOM))).removeprefix(BOM)
        while True:
            newlines = np.flatnonzero(np.frombuffer(buffer, dtype=np.uint8) == ord("\n"))
            start = 0
            for end in newlines[rows - 1 :: rows].tolist():  # where each whole block's last line ends
                yield LineBlock(line_no, buffer[start:end])
                line_no, start = line_no + rows, end + 1
            more = f.read(READ_BYTES)
            if not more:
                if buffer[start:].strip():
                    yield LineBlock(line_no, buffer[start:])
                return
            buffer = buffer[start:] + more


def _check_first_row(path: Path, block: LineBlock) -> None:
    """The first row tells a JSONL file from one pretty-printed JSON object (a common mistake)."""
    for line_no, raw in block.rows()[:1]:
        if parse_jsonl_line(str(path), line_no, raw).error is not None and _is_one_object(path):
            raise DataError(
                f"{path}:{line_no}: the file is one JSON object; expected one object per line "
                "(JSONL) or an array of objects",
                "wrong_top_level",
                line_no,
            )


def loads_quietly(raw: bytes) -> Any:
    """orjson's reading of a line, None where it fails (parse_jsonl_line then says why)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def parse_jsonl_line(file: str, line_no: int, raw: bytes) -> Record:
    """Parse one JSONL line into a Record (value or structural error). Pure, so workers can run it.

    orjson reads well-formed lines (several times faster); anything it refuses goes through the json
    module, which accepts a little more (NaN, integers past 64 bits) and explains what is wrong."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:
        if isinstance(value, dict):
            return Record(file, line_no, value, raw=raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return Record(
            file,
            line_no,
            error=DataError(
                f"{file}:{line_no}: not UTF-8 (byte {err.start + 1} of the line is {raw[err.start]:#04x}); "
                "re-encode the file as UTF-8",
                "not_utf8",
                line_no,
                raw.decode("utf-8", "replace"),
            ),
        )
    constants: list[str] = []  # NaN, Infinity: the json module reads them, but they are not JSON
    try:
        value = json.loads(text, parse_constant=lambda name: constants.append(name) or float(name))
    except json.JSONDecodeError as err:
        return Record(
            file,
            line_no,
            error=DataError(
                f"{file}:{line_no}: malformed JSON at column {err.colno}: {err.msg}", "malformed_json", line_no, text
            ),
        )
    except RecursionError:
        return Record(
            file,
            line_no,
            error=DataError(f"{file}:{line_no}: malformed JSON: nested too deeply", "malformed_json", line_no, text),
        )
    if not isinstance(value, dict):
        return Record(
            file,
            line_no,
            error=DataError(
                f"{file}:{line_no}: expected a JSON object per line, got {type(value).__name__}",
                "wrong_top_level",
                line_no,
                text,
            ),
        )
    # a row with NaN is written to the rejects file again, strictly (strict_json_bytes), not as read
    return Record(file, line_no, value, raw=b"" if constants else raw)


def strict_json_bytes(value: Any) -> bytes:
    """A parsed value as strict JSON text: NaN and infinities (which the json module reads) become the
    strings "NaN", "Infinity", "-Infinity"; a lone surrogate (from a \\ud800 escape) is written as that escape."""
    text = json.dumps(_finite(value), ensure_ascii=False, allow_nan=False, default=str)
    return text.encode("utf-8", "backslashreplace")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _is_one_object(path: Path) -> bool:
    """Whether a file whose first line is not JSON is one pretty-printed object (a common mistake)."""
    if path.stat().st_size > 256 * 2**20:  # a big file is data, not one object: do not read it whole
        return False
    try:
        return isinstance(json.loads(path.read_bytes()), dict)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


def _read_json_array(file: str, data: bytes) -> Iterator[Record]:
    """A JSON array is parsed element by element so each row keeps the line it starts on."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{file}:{line_no}: not UTF-8 (byte {data[err.start]:#04x}); re-encode the file as UTF-8",
            "not_utf8",
            line_no,
        ) from None
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == "]":
            if text[pos + 1 :].strip():
                raise DataError(
                    f"{file}:{_line_of(text, pos + 1)}: unexpected text after the closing ']'",
                    "malformed_json",
                    _line_of(text, pos + 1),
                )
            return
        line_no = _line_of(text, pos)
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            # Inside an array one bad element leaves no safe place to resume: always stop.
            raise DataError(
                f"{file}:{err.lineno}: malformed JSON at column {err.colno}: {err.msg}", "malformed_json", err.lineno
            ) from None
        except RecursionError:
            raise DataError(f"{file}:{line_no}: malformed JSON: nested too deeply", "malformed_json", line_no) from None
        if isinstance(value, dict):
            yield Record(file, line_no, value)
        else:
            yield Record(
                file,
                line_no,
                error=DataError(
                    f"{file}:{line_no}: expected a JSON object in the array, got {type(value).__name__}",
                    "wrong_top_level",
                    line_no,
                    json.dumps(value, ensure_ascii=False),
                ),
            )
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            raise DataError(
                f"{file}:{_line_of(text, pos)}: malformed JSON: expected ',' or ']' in the array",
                "malformed_json",
                _line_of(text, pos),
            )


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


# --------------------------------------------------------------------------------------------- writing


def dumps(row: dict[str, Any]) -> str:
    """The one JSON line form every output uses: compact UTF-8 text, keys in the order given. A string
    with a lone surrogate (valid in JSON as an escape, not as UTF-8) is written escaped."""
    return dumpb(row).decode("utf-8")


def dumpb(row: dict[str, Any]) -> bytes:
    """dumps() as UTF-8 bytes, ready for a file opened in binary mode."""
    try:
        return orjson.dumps(row)
    except TypeError:
        return json.dumps(row, separators=(",", ":")).encode("ascii")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSONL (parent folders created); return how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(dumps(row) + "\n")
            count += 1
    return count


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file written by this project; structural problems raise DataError with file:line."""
    return [record.value for record in read_records(path)]
