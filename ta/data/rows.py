"""prepare's per-row work: a chunk of raw rows in, their RowDecisions out, already rendered to text.

Runs in prepare's worker processes, so everything here is pure given its inputs: parse, normalise to the
internal conversation form, scrub PII, run the row filters (tokens counted only where a bound cannot
decide, ta/data/token_bounds.py), then each passing row's id, MinHash bands, statistics and output lines.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ta.config import Prepare
from ta.data import filters, minhash, pii
from ta.data.formats import REVIEWED, normalise, to_alpaca, to_chat, to_guide_pair
from ta.data.io import LineBlock, RawRow, Record, dumpb, loads_quietly, parse_jsonl_line, strict_json_bytes
from ta.data.normalise import contents
from ta.data.samples import RowRejected, Sample, own_text, with_system_prompt
from ta.data.split import row_id
from ta.data.tokens import TokenCounter
from ta.errors import ParamsError


@dataclass
class RowDecisions:
    """What happened to a chunk of rows (all from one file), column by column, already rendered to text:
    a chunk travels between processes as a few lists and arrays instead of thousands of objects.

    Row i is still in (so far: duplicates and the mix are decided later) while reject_reasons[i] is None.
    The rows that passed the row filters (`passed`, positions of rows) also have the columns from `ids`
    on, indexed by their position in `passed`. `kept` is set once the decisions over the set are taken."""

    file: str
    lines: list[int] = field(default_factory=list)
    reject_reasons: list[str | None] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    rows: list[bytes] = field(default_factory=list)  # each row as read (JSON), for the rejects file
    passed: list[int] = field(default_factory=list)  # the rows that passed the row filters
    ids: list[str] = field(default_factory=list)
    bands: Any = None  # uint64 array: a passing row's LSH band hashes per line (no columns: near-dup off)
    kinds: list[str] = field(default_factory=list)  # sft | pref
    tokens: list[int] = field(default_factory=list)  # token length, -1 where not counted (statistics)
    openings: list[str] = field(default_factory=list)
    # output lines, newline included: the trainers' row (system prompt added); the guide's Alpaca or
    # instruction/chosen/rejected row
    chat: list[bytes] = field(default_factory=list)
    guide: list[bytes] = field(default_factory=list)
    redacted: dict[str, int] = field(default_factory=dict)  # PII kind -> replacements made in the chunk
    kept: list[int] = field(default_factory=list)  # positions in `passed` kept in the end

    def add(self, line: int, reason: str | None, detail: str, row: bytes) -> None:
        self.lines.append(line)
        self.reject_reasons.append(reason)
        self.details.append(detail)
        self.rows.append(row)

    def reject(self, i: int, reason: str, detail: str) -> None:
        self.reject_reasons[i], self.details[i] = reason, detail

    def source(self, i: int) -> str:
        return f"{self.file}:{self.lines[i]}"

    def passing(self) -> list[int]:
        """Positions in `passed` of the rows not rejected so far."""
        reasons = self.reject_reasons
        return [k for k, i in enumerate(self.passed) if reasons[i] is None]

    def rejected(self) -> list[int]:
        return [i for i, reason in enumerate(self.reject_reasons) if reason is not None]


@dataclass(frozen=True)
class RowProcessor:
    """The per-row part of prepare: normalise, scrub, filter, key, render. Pure, so it runs in workers."""

    rules: filters.Rules
    redact_pii: bool
    near_dup: tuple[int, int, int]  # (num_perm, bands, rows per band); num_perm 0 = off
    guide_only: bool = False  # the guide's CLI writes only the guide's forms; the stage, the trainers' too
    review_statuses: tuple[str, ...] = REVIEWED  # the statuses taken from a `selfinstruct` source

    def process_chunk(
        self, items: LineBlock | list[RawRow], file: str, fmt: str, columns: dict[str, str], every: int
    ) -> RowDecisions:
        """Decisions for a chunk of rows. Tokens are counted only where a bound cannot decide a filter, and
        for the length statistics in one of `every` passing rows (by their id); the texts to count go to the
        tokenizer in one batch, as do the passing rows' MinHash signatures."""
        decisions = RowDecisions(file)
        read = [
            (len(decisions.lines) - 1, sample)
            for item in (items.rows() if isinstance(items, LineBlock) else items)
            if (sample := self.read(item, file, fmt, columns, decisions)) is not None
        ]
        counter = self.rules.tokens
        owns = [own_text(sample) for _, sample in read]
        lows = counter.at_least_many(owns)
        counter.prefill([own for own, low in zip(owns, lows, strict=True) if low < self.rules.min_tokens])
        passed = []
        for i, sample in read:
            failing = filters.first_failing(sample, self.rules)
            if failing is None:
                passed.append((i, sample))
            else:
                decisions.reject(i, *failing)
        passed, normalised, users = self.without_equal_answers(decisions, passed)
        self.finish(decisions, passed, normalised, users)
        # token lengths for the statistics: every passing row, or one in `every` by its id
        counted = [k for k, key in enumerate(decisions.ids) if every == 1 or int(key[:8], 16) % every == 0]
        lengths = counter.count_many([own_text(passed[k][1]) for k in counted])
        for k, tokens in zip(counted, lengths, strict=True):
            decisions.tokens[k] = tokens
        num_perm, bands, rows = self.near_dup
        if num_perm and normalised:
            decisions.bands = minhash.band_hashes_many(normalised, num_perm, bands, rows)
        return decisions

    def read(
        self, item: RawRow, file: str, fmt: str, columns: dict[str, str], decisions: RowDecisions
    ) -> Sample | None:
        """Parse and normalise one row into `decisions`: its sample, or None when it is rejected already."""
        fast = isinstance(item, tuple) and isinstance(value := loads_quietly(item[1]), dict)
        if fast:
            line, row_json = item  # a well-formed JSONL line, the common case: no Record needed
        else:
            record = item if isinstance(item, Record) else parse_jsonl_line(file, *item)
            if record.error is not None:
                error = record.error
                as_read = json.dumps(error.raw, ensure_ascii=False).encode("utf-8", "backslashreplace")
                decisions.add(record.line, error.reason, str(error), as_read)
                return None
            line, value, row_json = record.line, record.value, record.raw or strict_json_bytes(record.value)
        try:
            sample = normalise(value, fmt, columns)
            if not fast:  # read by the json module (or from the hub): orjson refuses lone surrogates, it does not
                check_encodable(sample, f"{file}:{line}")
        except RowRejected as err:
            decisions.add(line, err.reason, err.detail, row_json)
            return None
        if fmt == "selfinstruct" and (status := value.get("status")) not in self.review_statuses:
            reason = "review_rejected" if status == "rejected" else "review_pending"
            note = f": {value['note']}" if isinstance(value.get("note"), str) and value["note"] else ""
            decisions.add(line, reason, f'status "{status}"{note}', row_json)
            return None
        decisions.add(line, None, "", row_json)
        if self.redact_pii:
            sample = pii.scrub_sample(sample, decisions.redacted)
        return sample

    def without_equal_answers(
        self, decisions: RowDecisions, passed: list[tuple[int, Sample]]
    ) -> tuple[list[tuple[int, Sample]], list[str], list[str]]:
        """The rows that passed the row filters with their normalised contents and last user turns
        (ta/data/normalise.py), less the preference pairs whose two answers are the same text once
        normalised: they carry no preference (`no_preference`). A pair's content ends with its chosen and
        rejected answers as two lines, normalised already in one batch with everything else."""
        normalised, users = contents([sample for _, sample in passed])
        keep = []
        for k, ((i, sample), content) in enumerate(zip(passed, normalised, strict=True)):
            if sample.is_preference and same_answers(content):
                decisions.reject(i, "no_preference", "chosen and rejected are the same answer once normalised")
            else:
                keep.append(k)
        if len(keep) == len(passed):
            return passed, normalised, users
        return [passed[k] for k in keep], [normalised[k] for k in keep], [users[k] for k in keep]

    def finish(
        self, decisions: RowDecisions, passed: list[tuple[int, Sample]], normalised: list[str], users: list[str]
    ) -> None:
        """The rows that passed (row i, its sample; their normalised contents and last user turns): their
        ids, statistics and output lines, column by column."""
        samples = [sample for _, sample in passed]
        decisions.passed = [i for i, _ in passed]
        decisions.ids = ids = [row_id(content) for content in normalised]
        decisions.kinds = ["pref" if sample.is_preference else "sft" for sample in samples]
        decisions.tokens = [-1] * len(samples)  # counted afterwards, for a sample of the rows
        decisions.openings = [normalised_opening(text) for text in users]
        system_prompt = self.rules.system_prompt
        decisions.chat = (
            [b""] * len(samples)
            if self.guide_only
            else [
                dumpb(
                    {
                        "id": sample_row_id,
                        "source": decisions.source(i),
                        **to_chat(with_system_prompt(sample, system_prompt)),
                    }
                )
                + b"\n"
                for (i, sample), sample_row_id in zip(passed, ids, strict=True)
            ]
        )
        decisions.guide = [  # the stage writes only SFT rows in the guide's form
            dumpb(to_guide_pair(sample) if sample.is_preference else to_alpaca(sample)) + b"\n"
            if self.guide_only or not sample.is_preference
            else b""
            for sample in samples
        ]


def same_answers(content: str) -> bool:
    """Whether a pair's normalised content (ta/data/split.py: one "role:text" line a part, text without line
    breaks) ends with the same chosen and rejected text."""
    _, chosen, rejected = content.rsplit("\n", 2)
    return chosen.removeprefix("chosen:") == rejected.removeprefix("rejected:")


def check_encodable(sample: Sample, where: str) -> None:
    """Every text of the sample is Unicode that UTF-8 can hold: a \\ud800 escape in JSON gives a lone
    surrogate, which no tokenizer or output file takes (orjson refuses such lines; the json module does not)."""
    texts = [m["content"] for m in sample.messages] + [t for t in (sample.chosen, sample.rejected) if t is not None]
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            code = ord(text[err.start])
            raise RowRejected(
                "not_utf8", f"{where}: a text holds the lone surrogate \\u{code:04x}, not a character; fix the escape"
            ) from None


OPENING_CHARS = re.compile(r"[^\s\d]{1,3}")


def normalised_opening(text: str) -> str:
    """How an instruction (already normalised, ta/data/normalise.py) starts: its first two words, or its
    first three characters for Chinese."""
    words = text.split(" ", 2)
    if len(words) > 1 and len(words[0]) <= 20 and words[0].isascii():
        return " ".join(words[:2])
    match = OPENING_CHARS.match(text)
    return match.group(0) if match else text[:3]


def make_row_processor(
    params: Prepare, counter: TokenCounter, guide_only: bool = False, review_statuses: tuple[str, ...] = REVIEWED
) -> RowProcessor:
    rules = filters.Rules(
        params.min_tokens, params.max_tokens, tuple(params.refusal_patterns), params.system_prompt, counter
    )
    near = (0, 0, 0)
    if params.near_dup_threshold > 0:
        try:
            bands = minhash.lsh_bands(params.near_dup_threshold, params.near_dup_num_perm)
        except ValueError as err:
            raise ParamsError(f"params.yaml: prepare: {err}; raise near_dup_num_perm") from None
        near = (params.near_dup_num_perm, *bands)
    return RowProcessor(rules, params.redact_pii, near, guide_only, review_statuses)
