"""Reading, normalising and writing conversation data, shared by the stages.

Every supported layout (the guide's raw Q&A, Alpaca, ShareGPT, OpenAI messages; the guide's preference
pairs, ShareGPT-style pairs, HH-RLHF strings, UltraFeedback binarized and as published) is turned into
one internal form, `Sample`: a list of chat messages (the whole conversation for SFT, the prompt for a
preference pair) plus the chosen/rejected answers for pairs. Structural damage in a file (bad JSON, not
UTF-8, wrong top-level type) raises `DataError` with `file:line: ...`; a row whose content is unusable
(missing field, wrong type, wrong roles) raises `RowRejected` with a reason code, so the caller can
reject just that row.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

Message = dict[str, str]


class DataError(ValueError):
    """A structural problem in an input file; the message starts with `file:line:`."""

    def __init__(self, message: str, reason: str = "malformed_json", line: int = 0, raw: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.line = line
        self.raw = raw


class RowRejected(ValueError):
    """A row whose content cannot be used; `reason` is its reject reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class Sample:
    """One conversation. SFT: `messages` ends with the assistant answer. Preference: `messages` is the
    prompt (ends with a user turn) and `chosen`/`rejected` are the two assistant answers."""

    messages: list[Message]
    chosen: str | None = None
    rejected: str | None = None

    @property
    def is_preference(self) -> bool:
        return self.chosen is not None


@dataclass
class Record:
    """One input row: where it came from and its parsed JSON value (or the structural error)."""

    file: str
    line: int
    value: Any = None
    error: DataError | None = None
    raw: str = ""  # the line as read, when there is one (JSONL)

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


def read_raw_rows(path: str | Path) -> Iterator[RawRow]:
    """The rows of a file, as cheaply as possible: JSONL lines stay (line number, bytes) so that parsing
    can happen in worker processes; a JSON array is parsed here, element by element (it is one value)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    if head.lstrip()[:1] == b"[":
        data = path.read_bytes()
        yield from _read_json_array(str(path), data[3:] if data.startswith(b"\xef\xbb\xbf") else data)
        return
    lines = iter_lines(path)
    for line_no, raw in lines:  # the first row tells a JSONL file from one pretty-printed object
        if parse_jsonl_line(str(path), line_no, raw).error is not None and _is_one_object(path):
            raise DataError(
                f"{path}:{line_no}: the file is one JSON object; expected one object per line "
                "(JSONL) or an array of objects",
                "wrong_top_level",
                line_no,
            )
        yield line_no, raw
        break
    yield from lines


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
            return Record(file, line_no, value, raw=raw.decode("utf-8"))
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
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return Record(
            file,
            line_no,
            error=DataError(
                f"{file}:{line_no}: malformed JSON at column {err.colno}: {err.msg}", "malformed_json", line_no, text
            ),
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
    return Record(file, line_no, value, raw=text)


def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of each non-blank line; splits on \\n only (U+2028 is valid inside JSON).
    Reads 4 MiB at a time."""
    with open(path, "rb") as f:
        line_no, rest = 1, b""
        while block := f.read(1 << 22):
            if line_no == 1 and not rest and block.startswith(b"\xef\xbb\xbf"):
                block = block[3:]
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            yield from [(n, raw.rstrip(b"\r")) for n, raw in enumerate(lines, line_no) if raw.strip()]
            line_no += len(lines)
        if rest.strip():
            yield line_no, rest.rstrip(b"\r")


def _is_one_object(path: Path) -> bool:
    """Whether a file whose first line is not JSON is one pretty-printed object (a common mistake)."""
    if path.stat().st_size > 256 * 2**20:  # a big file is data, not one object: do not read it whole
        return False
    try:
        return isinstance(json.loads(path.read_bytes()), dict)
    except (ValueError, UnicodeDecodeError):
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
    try:
        return orjson.dumps(row).decode("utf-8")
    except TypeError:
        return json.dumps(row, separators=(",", ":"))


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


# ------------------------------------------------------------------------------------ format detection

SFT_FORMATS = ("qa", "alpaca", "sharegpt", "openai", "firefly")
PREFERENCE_FORMATS = ("pairs", "sharegpt_pairs", "hh_rlhf", "ultrafeedback", "ultrafeedback_raw")


def detect_format(row: dict[str, Any]) -> str | None:
    """Name the layout of one row from its keys, or None when no known layout fits."""
    keys = set(row)
    if {"chosen", "rejected"} <= keys:
        if "conversations" in keys:
            return "sharegpt_pairs"
        if "prompt" in keys and isinstance(row["chosen"], list):
            return "ultrafeedback"
        if "instruction" in keys:
            return "pairs"
        if isinstance(row["chosen"], str) and "\n\nHuman:" in row["chosen"]:
            return "hh_rlhf"
        return None
    if {"instruction", "completions"} <= keys:
        return "ultrafeedback_raw"
    if {"question", "answer"} <= keys:
        return "qa"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "openai"
    if {"input", "target"} <= keys:
        return "firefly"
    return None


def is_preference_format(fmt: str) -> bool:
    return fmt in PREFERENCE_FORMATS


# ----------------------------------------------------------------------------------------- normalisers


def _field(row: dict[str, Any], name: str, optional: bool = False) -> str:
    if name not in row or row[name] is None:
        if optional:
            return ""
        raise RowRejected("missing_field", f'field "{name}" is missing')
    value = row[name]
    if not isinstance(value, str):
        raise RowRejected("wrong_type", f'field "{name}" should be a string, got {type(value).__name__}')
    return value


def _list_field(row: dict[str, Any], name: str) -> list[Any]:
    if name not in row or row[name] is None:
        raise RowRejected("missing_field", f'field "{name}" is missing')
    if not isinstance(row[name], list):
        raise RowRejected("wrong_type", f'field "{name}" should be a list, got {type(row[name]).__name__}')
    return row[name]


def _check_roles(messages: list[Message], ends_with: str, where: str) -> list[Message]:
    """System first (optional), then user/assistant alternating from user, ending with `ends_with`."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    expected = "user"
    for i, message in enumerate(turns):
        if message["role"] != expected:
            raise RowRejected("bad_roles", f"{where}: turn {i + 1} is {message['role']!r}, expected {expected!r}")
        expected = "assistant" if expected == "user" else "user"
    if not turns or turns[-1]["role"] != ends_with:
        raise RowRejected("bad_roles", f"{where}: the conversation must end with a {ends_with} turn")
    return messages


def _alpaca_user_turn(row: dict[str, Any], instruction_key: str = "instruction", input_key: str = "input") -> str:
    instruction = _field(row, instruction_key)
    extra = _field(row, input_key, optional=True)
    return f"{instruction}\n{extra}" if extra.strip() else instruction


def _history(row: dict[str, Any]) -> list[Message]:
    """Alpaca `history`: [[question, answer], ...] before the current turn (LLaMA-Factory's layout)."""
    if row.get("history") is None:
        return []
    messages: list[Message] = []
    for i, pair in enumerate(_list_field(row, "history")):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise RowRejected("wrong_type", f'field "history[{i}]" should be [question, answer] strings')
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages


def _system(row: dict[str, Any]) -> list[Message]:
    system = _field(row, "system", optional=True)
    return [{"role": "system", "content": system}] if system.strip() else []


def from_qa(row: dict[str, Any]) -> Sample:
    messages = [
        {"role": "user", "content": _field(row, "question")},
        {"role": "assistant", "content": _field(row, "answer")},
    ]
    return Sample(messages)


def from_alpaca(row: dict[str, Any]) -> Sample:
    messages = (
        _system(row)
        + _history(row)
        + [
            {"role": "user", "content": _alpaca_user_turn(row)},
            {"role": "assistant", "content": _field(row, "output")},
        ]
    )
    return Sample(messages)


def from_firefly(row: dict[str, Any]) -> Sample:
    return Sample(
        [{"role": "user", "content": _field(row, "input")}, {"role": "assistant", "content": _field(row, "target")}]
    )


SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}


def _sharegpt_turn(turn: Any, where: str) -> Message:
    if not isinstance(turn, dict):
        raise RowRejected("wrong_type", f"{where} should be an object with from/value")
    for key in ("from", "value"):
        if key not in turn:
            raise RowRejected("missing_field", f'{where}: field "{key}" is missing')
        if not isinstance(turn[key], str):
            raise RowRejected("wrong_type", f'{where}: field "{key}" should be a string')
    role = SHAREGPT_ROLES.get(turn["from"].lower())
    if role is None:
        raise RowRejected("bad_roles", f"{where}: unknown speaker {turn['from']!r}")
    return {"role": role, "content": turn["value"]}


def _sharegpt_messages(row: dict[str, Any]) -> list[Message]:
    turns = _list_field(row, "conversations")
    messages = _system(row) + [_sharegpt_turn(t, f"conversations[{i}]") for i, t in enumerate(turns)]
    return messages


def from_sharegpt(row: dict[str, Any]) -> Sample:
    return Sample(_check_roles(_sharegpt_messages(row), "assistant", "conversations"))


def _openai_messages(value: list[Any], name: str) -> list[Message]:
    messages = []
    for i, message in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            raise RowRejected("wrong_type", f"{where} should be an object with role/content")
        for key in ("role", "content"):
            if key not in message:
                raise RowRejected("missing_field", f'{where}: field "{key}" is missing')
            if not isinstance(message[key], str):
                raise RowRejected("wrong_type", f'{where}: field "{key}" should be a string')
        if message["role"] not in ("system", "user", "assistant"):
            raise RowRejected("bad_roles", f"{where}: unknown role {message['role']!r}")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def from_openai(row: dict[str, Any]) -> Sample:
    return Sample(_check_roles(_openai_messages(_list_field(row, "messages"), "messages"), "assistant", "messages"))


def from_pairs(row: dict[str, Any]) -> Sample:
    prompt = _system(row) + _history(row) + [{"role": "user", "content": _alpaca_user_turn(row)}]
    return Sample(prompt, chosen=_field(row, "chosen"), rejected=_field(row, "rejected"))


def from_sharegpt_pairs(row: dict[str, Any]) -> Sample:
    prompt = _check_roles(_sharegpt_messages(row), "user", "conversations")
    chosen = _sharegpt_turn(row["chosen"], "chosen")
    rejected = _sharegpt_turn(row["rejected"], "rejected")
    for name, turn in (("chosen", chosen), ("rejected", rejected)):
        if turn["role"] != "assistant":
            raise RowRejected("bad_roles", f"{name}: expected an assistant turn, got {turn['role']!r}")
    return Sample(prompt, chosen=chosen["content"], rejected=rejected["content"])


HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def _hh_messages(text: str, name: str) -> list[Message]:
    parts = HH_TURN.split(text)
    if parts[0].strip():
        raise RowRejected("bad_roles", f'{name}: text before the first "\\n\\nHuman:"')
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": said} for who, said in zip(parts[1::2], parts[2::2], strict=True)]


def from_hh_rlhf(row: dict[str, Any]) -> Sample:
    chosen = _check_roles(_hh_messages(_field(row, "chosen"), "chosen"), "assistant", "chosen")
    rejected = _check_roles(_hh_messages(_field(row, "rejected"), "rejected"), "assistant", "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise RowRejected("bad_roles", "chosen and rejected do not share the same conversation before the answer")
    return Sample(chosen[:-1], chosen=chosen[-1]["content"], rejected=rejected[-1]["content"])


def from_ultrafeedback(row: dict[str, Any]) -> Sample:
    prompt_text = _field(row, "prompt")
    chosen = _openai_messages(_list_field(row, "chosen"), "chosen")
    rejected = _openai_messages(_list_field(row, "rejected"), "rejected")
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if not messages or messages[-1]["role"] != "assistant":
            raise RowRejected("bad_roles", f"{name}: must end with an assistant turn")
    prompt = chosen[:-1] or [{"role": "user", "content": prompt_text}]
    if rejected[:-1] and rejected[:-1] != prompt:
        raise RowRejected("bad_roles", "chosen and rejected do not share the same conversation before the answer")
    return Sample(
        _check_roles(prompt, "user", "prompt"), chosen=chosen[-1]["content"], rejected=rejected[-1]["content"]
    )


def from_ultrafeedback_raw(row: dict[str, Any]) -> Sample:
    """openbmb/UltraFeedback as published: several rated completions per instruction. Binarised the
    usual way: the best overall_score is chosen, the worst rejected (the first one on a tie)."""
    instruction = _field(row, "instruction")
    rated = []
    for i, completion in enumerate(_list_field(row, "completions")):
        if not isinstance(completion, dict):
            raise RowRejected("wrong_type", f"completions[{i}] should be an object")
        score, response = completion.get("overall_score"), completion.get("response")
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not isinstance(response, str):
            raise RowRejected("wrong_type", f"completions[{i}] needs a numeric overall_score and a response string")
        rated.append((score, i, response))
    if len(rated) < 2 or max(rated)[0] == min(rated)[0]:
        raise RowRejected("no_pair", "fewer than two completions with different overall_score")
    best = max(rated, key=lambda r: (r[0], -r[1]))
    worst = min(rated, key=lambda r: (r[0], r[1]))
    return Sample([{"role": "user", "content": instruction}], chosen=best[2], rejected=worst[2])


NORMALISERS: dict[str, Callable[[dict[str, Any]], Sample]] = {
    "qa": from_qa,
    "alpaca": from_alpaca,
    "firefly": from_firefly,
    "sharegpt": from_sharegpt,
    "openai": from_openai,
    "pairs": from_pairs,
    "sharegpt_pairs": from_sharegpt_pairs,
    "hh_rlhf": from_hh_rlhf,
    "ultrafeedback": from_ultrafeedback,
    "ultrafeedback_raw": from_ultrafeedback_raw,
}


def normalise(row: dict[str, Any], fmt: str, columns: dict[str, str] | None = None) -> Sample:
    """Turn one row of layout `fmt` into a Sample; `columns` renames a source's columns first."""
    if columns:
        row = {columns.get(key, key): value for key, value in row.items()}
    return NORMALISERS[fmt](row)


# ------------------------------------------------------------------------------------ target formats


def to_alpaca(sample: Sample) -> dict[str, Any]:
    """The guide's target form: instruction/input/output, plus `history` (and `system`) for multi-turn."""
    system = [m["content"] for m in sample.messages if m["role"] == "system"]
    turns = [m for m in sample.messages if m["role"] != "system"]
    row: dict[str, Any] = {"instruction": turns[-2]["content"], "input": "", "output": turns[-1]["content"]}
    if len(turns) > 2:
        row["history"] = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)]
    if system:
        row["system"] = system[0]
    return row


def to_guide_pair(sample: Sample) -> dict[str, Any]:
    """The guide's preference form: instruction/chosen/rejected (+ history/system when present)."""
    system = [m["content"] for m in sample.messages if m["role"] == "system"]
    turns = [m for m in sample.messages if m["role"] != "system"]
    row: dict[str, Any] = {"instruction": turns[-1]["content"], "chosen": sample.chosen, "rejected": sample.rejected}
    if len(turns) > 1:
        row["history"] = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 1, 2)]
    if system:
        row["system"] = system[0]
    return row


def to_chat(sample: Sample) -> dict[str, Any]:
    """The trainers' form (TRL conversational): `messages`, or `prompt`/`chosen`/`rejected`."""
    if sample.is_preference:
        return {
            "prompt": sample.messages,
            "chosen": [{"role": "assistant", "content": sample.chosen}],
            "rejected": [{"role": "assistant", "content": sample.rejected}],
        }
    return {"messages": sample.messages}
