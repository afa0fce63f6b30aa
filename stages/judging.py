"""prepare's per-row judgement: a chunk of raw rows in, their Verdicts out, already rendered to text.

Runs in prepare's worker processes, so everything here is pure given its inputs: parse, normalise to the
internal conversation form, scrub PII, run the row filters (tokens counted only where a bound cannot
decide, stages/token_bounds.py), then the kept row's id, MinHash bands, statistics and output lines.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages import filters, token_bounds
from stages.data import (
    LineBlock,
    Message,
    RawRow,
    Record,
    RowRejected,
    Sample,
    dumpb,
    loads_quietly,
    parse_jsonl_line,
)
from stages.formats import normalise, to_alpaca, to_chat, to_guide_pair
from stages.params import Prepare


class PrepareError(ValueError):
    """A problem for the user (missing tokenizer, misplaced source); main() prints it and exits 2."""


@dataclass
class Verdicts:
    """What happened to a chunk of rows (all from one file), column by column, already rendered to text:
    a chunk travels between processes as a few lists and arrays instead of thousands of objects.

    Row i was kept (so far: duplicates and the mix are decided later) when reasons[i] is None. The
    judge's kept rows also have the columns from `kept` on, indexed by their position in `kept`."""

    file: str
    lines: list[int] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    rows: list[bytes] = field(default_factory=list)  # each row as read (JSON), for the rejects file
    kept: list[int] = field(default_factory=list)  # the rows the judge kept
    ids: list[str] = field(default_factory=list)
    bands: Any = None  # uint64 array: a kept row's LSH band hashes per line (no columns: near-dup off)
    kinds: list[str] = field(default_factory=list)  # sft | pref
    tokens: list[int] = field(default_factory=list)  # token length, -1 where not counted (statistics)
    openings: list[str] = field(default_factory=list)
    # output lines, newline included: the trainers' row (system prompt added); the guide's Alpaca or
    # instruction/chosen/rejected row
    chat: list[bytes] = field(default_factory=list)
    guide: list[bytes] = field(default_factory=list)
    redacted: dict[str, int] = field(default_factory=dict)  # PII kind -> replacements made in the chunk
    still: list[int] = field(default_factory=list)  # final(), set once the decisions over the set are taken

    def add(self, line: int, reason: str | None, detail: str, row: bytes) -> None:
        self.lines.append(line)
        self.reasons.append(reason)
        self.details.append(detail)
        self.rows.append(row)

    def source(self, i: int) -> str:
        return f"{self.file}:{self.lines[i]}"

    def final(self) -> list[int]:
        """Positions in `kept` of the rows still kept (after the decisions over the set)."""
        reasons = self.reasons
        return [k for k, i in enumerate(self.kept) if reasons[i] is None]

    def rejected(self) -> list[int]:
        return [i for i, reason in enumerate(self.reasons) if reason is not None]


@dataclass(frozen=True)
class Judge:
    """The per-row part of prepare: normalise, scrub, filter, key, render. Pure, so it runs in workers."""

    rules: filters.Rules
    redact_pii: bool
    near_dup: tuple[int, int, int]  # (num_perm, bands, rows per band); num_perm 0 = off
    guide_only: bool = False  # the guide's CLI writes only the guide's forms; the stage, the trainers' too

    def chunk(
        self, items: LineBlock | list[RawRow], file: str, fmt: str, columns: dict[str, str], every: int
    ) -> Verdicts:
        """Verdicts for a chunk of rows. Tokens are counted only where a bound cannot decide a filter, and
        for the length statistics in one of `every` kept rows (by their id); the texts to count go to the
        tokenizer in one batch, as do the kept rows' MinHash signatures."""
        verdicts = Verdicts(file)
        read = [
            (len(verdicts.lines) - 1, sample)
            for item in (items.rows() if isinstance(items, LineBlock) else items)
            if (sample := self.read(item, file, fmt, columns, verdicts)) is not None
        ]
        counter = self.rules.tokens
        owns = [filters.own_text(sample) for _, sample in read]
        lows = counter.at_least_many(owns)
        counter.prefill([own for own, low in zip(owns, lows, strict=True) if low < self.rules.min_tokens])
        passed = []
        for i, sample in read:
            failing = filters.first_failing(sample, self.rules)
            if failing is None:
                passed.append((i, sample))
            else:
                verdicts.reasons[i], verdicts.details[i] = failing
        contents = self.finish(verdicts, passed)
        # token lengths for the statistics: every kept row, or one in `every` by its id
        counted = [k for k, row_id in enumerate(verdicts.ids) if every == 1 or int(row_id[:8], 16) % every == 0]
        lengths = counter.count_many([filters.own_text(passed[k][1]) for k in counted])
        for k, tokens in zip(counted, lengths, strict=True):
            verdicts.tokens[k] = tokens
        num_perm, bands, rows = self.near_dup
        if num_perm and contents:
            verdicts.bands = filters.band_hashes_many(contents, num_perm, bands, rows)
        return verdicts

    def read(self, item: RawRow, file: str, fmt: str, columns: dict[str, str], verdicts: Verdicts) -> Sample | None:
        """Parse and normalise one row into `verdicts`: its sample, or None when it is rejected already."""
        if isinstance(item, tuple) and isinstance(value := loads_quietly(item[1]), dict):
            line, row_json = item  # a well-formed JSONL line, the common case: no Record needed
        else:
            record = item if isinstance(item, Record) else parse_jsonl_line(file, *item)
            if record.error is not None:
                error = record.error
                verdicts.add(record.line, error.reason, str(error), json.dumps(error.raw, ensure_ascii=False).encode())
                return None
            line, value, row_json = record.line, record.value, record.raw or _json_bytes(record.value)
        try:
            sample = normalise(value, fmt, columns)
        except RowRejected as err:
            verdicts.add(line, err.reason, err.detail, row_json)
            return None
        verdicts.add(line, None, "", row_json)
        if self.redact_pii:
            sample = filters.scrub_sample(sample, verdicts.redacted)
        return sample

    def finish(self, verdicts: Verdicts, passed: list[tuple[int, Sample]]) -> list[str]:
        """The rows that passed the row filters (row i, its sample): their ids, statistics and output
        lines, column by column. Returns their normalised contents (for their MinHash)."""
        samples = [sample for _, sample in passed]
        contents, users = filters.contents(samples)
        verdicts.kept = [i for i, _ in passed]
        verdicts.ids = ids = [filters.row_id(content) for content in contents]
        verdicts.kinds = ["pref" if sample.is_preference else "sft" for sample in samples]
        verdicts.tokens = [-1] * len(samples)  # counted afterwards, for a sample of the rows
        verdicts.openings = [normalised_opening(text) for text in users]
        system_prompt = self.rules.system_prompt
        verdicts.chat = (
            [b""] * len(samples)
            if self.guide_only
            else [
                dumpb(
                    {
                        "id": row_id,
                        "source": verdicts.source(i),
                        **to_chat(filters.with_system_prompt(sample, system_prompt)),
                    }
                )
                + b"\n"
                for (i, sample), row_id in zip(passed, ids, strict=True)
            ]
        )
        verdicts.guide = [  # the stage writes only SFT rows in the guide's form
            dumpb(to_guide_pair(sample) if sample.is_preference else to_alpaca(sample)) + b"\n"
            if self.guide_only or not sample.is_preference
            else b""
            for sample in samples
        ]
        return contents


def _json_bytes(value: Any) -> bytes:
    """A parsed row as JSON text again; a lone surrogate (from a \\ud800 escape) is written as that escape."""
    return json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "backslashreplace")


OPENING_CHARS = re.compile(r"[^\s\d]{1,3}")


def normalised_opening(text: str) -> str:
    """How an instruction (already through filters.normalise_text) starts: its first two words, or its
    first three characters for Chinese."""
    words = text.split(" ", 2)
    if len(words) > 1 and len(words[0]) <= 20 and words[0].isascii():
        return " ".join(words[:2])
    match = OPENING_CHARS.match(text)
    return match.group(0) if match else text[:3]


class TokenizerCounter(filters.TokenCounter):
    """Token counts with the base model's tokenizer (its Rust backend: the same ids as tokenizer(text)).

    Most rows are nowhere near a limit, and token_bounds proves it from their byte length without
    tokenizing. The texts that still need counting in a chunk are counted in one batch call (prefill);
    a templated conversation is rendered and counted only when its bound could pass max_tokens."""

    def __init__(self, tokenizer_dir: Path) -> None:
        if not (tokenizer_dir / "tokenizer_config.json").is_file():
            raise PrepareError(
                f"{tokenizer_dir}: no tokenizer here; run the base stage first (dvc repro base) or pass --tokenizer DIR"
            )
        from stages.models import load_tokenizer

        self.tokenizer = load_tokenizer(tokenizer_dir)
        if not self.tokenizer.chat_template:
            raise PrepareError(f"{tokenizer_dir}: the tokenizer has no chat_template; max_tokens counts templated text")
        self.backend = self.tokenizer.backend_tokenizer
        self.bounds = token_bounds.TokenBounds.of(self.backend.to_str())
        self.skeletons = token_bounds.Skeletons(self.render)
        self.known: dict[str, int] = {}
        self.lows: dict[str, int] = {}
        self.rooms: dict[tuple[tuple[str, ...], int], int] = {}
        super().__init__(self.count, self.count_chat)

    def prefill(self, texts: list[str]) -> None:
        encodings = self.backend.encode_batch_fast(texts, add_special_tokens=False) if texts else []
        self.known = {text: len(encoding) for text, encoding in zip(texts, encodings, strict=True)}

    def count(self, text: str) -> int:
        known = self.known.get(text)
        return known if known is not None else len(self.backend.encode(text, add_special_tokens=False))

    def count_many(self, texts: list[str]) -> list[int]:
        """count() of many texts: those not counted already, in one batch."""
        missing = [text for text in texts if text not in self.known]
        encodings = self.backend.encode_batch_fast(missing, add_special_tokens=False) if missing else []
        self.known.update(zip(missing, map(len, encodings), strict=True))
        return [self.known[text] for text in texts]

    def at_least_many(self, texts: list[str]) -> list[int]:
        lows = self.bounds.at_least_many(texts)
        self.lows = dict(zip(texts, lows, strict=True))  # the filters ask again, one text at a time
        return lows

    def at_least(self, text: str) -> int:
        low = self.lows.get(text)
        return low if low is not None else self.bounds.at_least(text)

    def render(self, messages: list[Message]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def count_chat(self, messages: list[Message]) -> int:
        return self.count(self.render(messages))

    def count_chat_over(self, messages: list[Message], limit: int) -> int | None:
        roles = tuple([m["role"] for m in messages])
        room = self.rooms.get((roles, limit))
        if room is None:
            room = self.rooms[roles, limit] = self._room(roles, limit)
        if sum([len(m["content"]) for m in messages]) <= room:  # short enough whatever the characters are
            return None
        skeleton = self.skeletons.text(messages)
        if skeleton is not None:
            segments = 2 * len(messages) + 2
            most = self.bounds.at_most(skeleton + "".join(m["content"] for m in messages), segments)
            if most is not None and most <= limit:
                return None
        tokens = self.count_chat(messages)
        return tokens if tokens > limit else None

    def _room(self, roles: tuple[str, ...], limit: int) -> int:
        """The most characters of content a conversation with these roles can have and still be within
        `limit` tokens whatever the characters are (-1: no such bound). The template's own text is the
        skeleton; a stretch of text on each side of a special token may start with a prefix piece."""
        skeleton = self.skeletons.text([{"role": role, "content": ""} for role in roles])
        segments = 2 * len(roles) + 2
        if skeleton is None or (most := self.bounds.at_most_for(len(skeleton), segments)) is None or most > limit:
            return -1
        low, high = 0, limit  # a character makes at least one token: the room is below limit
        while low < high:  # the largest room whose bound still fits
            middle = (low + high + 1) // 2
            fits = (self.bounds.at_most_for(len(skeleton) + middle, segments) or limit + 1) <= limit
            low, high = (middle, high) if fits else (low, middle - 1)
        return low


def make_judge(params: Prepare, counter: filters.TokenCounter, guide_only: bool = False) -> Judge:
    rules = filters.Rules(
        params.min_tokens, params.max_tokens, tuple(params.refusal_patterns), params.system_prompt, counter
    )
    near = (0, 0, 0)
    if params.near_dup_threshold > 0:
        try:
            bands = filters.lsh_bands(params.near_dup_threshold, params.near_dup_num_perm)
        except ValueError as err:
            raise PrepareError(f"params.yaml: prepare: {err}; raise near_dup_num_perm") from None
        near = (params.near_dup_num_perm, *bands)
    return Judge(rules, params.redact_pii, near, guide_only)
