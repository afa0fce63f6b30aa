"""The review file, data/selfinstruct/review.jsonl: one row per generated pair and a person's decision on it.

A row: {id, status, note, instruction, answer, subject, difficulty, nearest, provenance[, original]}.
`status` is pending (not looked at yet), accepted, rejected or edited (the person rewrote it; `original`
keeps what the model wrote); `note` is theirs. `nearest` is the most similar instruction that existed when
the pair was generated, with its ROUGE-L and where it is; `provenance` names the endpoint, the model, the
prompt templates' hash and the request the pair came from. The file is git-tracked: decisions are part of
the project's history, and prepare reads it (format `selfinstruct`) when selfinstruct is enabled.

The selfinstruct stage merges each run's pairs into the file; `python -m tools.review` records decisions.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ta import paths
from ta.config import Prepare, PrepareSource, SelfInstruct
from ta.data.formats import REVIEW_STATUSES as STATUSES
from ta.data.formats import REVIEWED
from ta.errors import SelfInstructError

Row = dict[str, Any]


def taken_statuses(require_review: bool) -> tuple[str, ...]:
    """The statuses prepare takes: reviewed ones, or (review not required) every one but rejected."""
    return REVIEWED if require_review else ("pending", *REVIEWED)


def with_review_file(prepare: Prepare, params: SelfInstruct) -> Prepare:
    """prepare's params with the review file as one more SFT source when selfinstruct is on (else as they are)."""
    if not params.enabled:
        return prepare
    reviewed = PrepareSource(path=str(paths.REVIEW_FILE), format="selfinstruct")
    return dataclasses.replace(prepare, sft_sources=[*prepare.sft_sources, reviewed])


def read_review(path: Path) -> list[Row]:
    """Every row, checked: a broken row stops with file:line and what is wrong (a person edits this file)."""
    if not path.is_file():
        return []
    rows, ids = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SelfInstructError(f"{where}: malformed JSON at column {err.colno}: {err.msg}") from None
        problem = row_problem(row)
        if problem:
            raise SelfInstructError(f"{where}: {problem}")
        if row["id"] in ids:
            raise SelfInstructError(f"{where}: id {row['id']!r} appears twice")
        ids.add(row["id"])
        rows.append(row)
    return rows


def row_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    for name in ("id", "instruction", "answer", "note"):
        if not isinstance(row.get(name), str):
            return f'field "{name}" should be a string'
    if row.get("status") not in STATUSES:
        return f'field "status" is {row.get("status")!r}; use one of {", ".join(STATUSES)}'
    return None


def write_review(path: Path, rows: list[Row]) -> None:
    """All rows, atomically (a crash never leaves half a file), one JSON object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(tmp, path)


def merge(existing: list[Row], generated: list[Row]) -> list[Row]:
    """The review file after a run: decided rows always stay (a decision is never thrown away), pending ones
    only while a run still generates them; new pairs follow, pending, in the order they were generated."""
    fresh = {row["id"]: row for row in generated}
    merged = [
        row if row["status"] != "pending" else fresh[row["id"]]
        for row in existing
        if row["status"] != "pending" or row["id"] in fresh
    ]
    seen = {row["id"] for row in merged}
    return merged + [row for row in generated if row["id"] not in seen]


def status_counts(rows: list[Row]) -> dict[str, int]:
    return {status: sum(row["status"] == status for row in rows) for status in STATUSES}


# ------------------------------------------------------------------------------------------ decisions


def decide(row: Row, status: str, note: str = "") -> Row:
    """The row with a person's decision (accepted or rejected) and note; accepting a pair someone rewrote
    keeps it `edited` (its text is not the model's)."""
    if status == "accepted" and row.get("original"):
        status = "edited"
    return {**row, "status": status, "note": note or row.get("note", "")}


def edited(row: Row, instruction: str, answer: str, note: str) -> Row:
    """The row rewritten by a person: status edited, the model's own text kept under `original`."""
    original = row.get("original") or {"instruction": row["instruction"], "answer": row["answer"]}
    return {**row, "status": "edited", "note": note, "instruction": instruction, "answer": answer, "original": original}


EDIT_SECTIONS = ("instruction", "answer", "note")
EDIT_HELP = "# Edit the pair below; lines starting with # are ignored. Save and quit to keep it; empty it to cancel."


def edit_text(row: Row) -> str:
    """The text a person edits: one `### <section>` heading per field."""
    parts = [EDIT_HELP]
    for name in EDIT_SECTIONS:
        parts += [f"### {name}", row.get(name, "").strip(), ""]
    return "\n".join(parts)


def parse_edit(text: str) -> dict[str, str] | None:
    """The fields of an edited text (None: it was emptied, the edit is cancelled). A missing or empty
    instruction or answer is a SelfInstructError: the reviewer is asked again."""
    if not text.strip():
        return None
    fields: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("### ") and line[4:].strip() in EDIT_SECTIONS:
            current = line[4:].strip()
            fields[current] = []
        elif current is not None and not line.startswith("#"):
            fields[current].append(line)
    result = {name: "\n".join(fields.get(name, [])).strip() for name in EDIT_SECTIONS}
    for name in ("instruction", "answer"):
        if not result[name]:
            raise SelfInstructError(f"the edited {name} is empty (keep the '### {name}' heading and write under it)")
    return result
