"""prepare's per-row judgement: one raw row in, one Verdict out, already rendered to text.

Runs in prepare's worker processes, so everything here is pure given its inputs: parse, normalise to the
internal conversation form, scrub PII, run the row filters (tokens counted only where a bound cannot
decide, stages/token_bounds.py), then the kept row's id, MinHash bands, statistics and output lines.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages import filters, token_bounds
from stages.data import Message, RawRow, Record, RowRejected, Sample, dumps, parse_jsonl_line
from stages.formats import normalise, to_alpaca, to_chat, to_guide_pair
from stages.params import Prepare


class PrepareError(ValueError):
    """A problem for the user (missing tokenizer, misplaced source); main() prints it and exits 2."""


@dataclass
class Verdict:
    """What happened to one input row, already rendered to text so it travels cheaply between
    processes. `reason` None means kept (so far: duplicates and the mix are decided later)."""

    source: str  # file:line
    line: int
    reason: str | None
    detail: str
    row_json: str  # the row as read, for the rejects file
    id: str = ""
    kind: str = ""  # sft | pref
    bands: tuple[int, ...] = ()
    counted: bool = False  # whether `tokens` was counted (for the length statistics)
    tokens: int = 0
    opening: str = ""
    chat_json: str = ""  # the trainers' row (system prompt added)
    redacted: dict[str, int] = field(default_factory=dict)  # PII kind -> replacements made
    guide_json: str = ""  # the guide's Alpaca / instruction-chosen-rejected row

    def __reduce__(self) -> tuple[type[Verdict], tuple[Any, ...]]:
        """Pickled as the tuple of its fields: a worker's chunk of verdicts travels several times faster."""
        return Verdict, tuple(self.__dict__.values())


@dataclass(frozen=True)
class Judge:
    """The per-row part of prepare: normalise, scrub, filter, key, render. Pure, so it runs in workers."""

    rules: filters.Rules
    redact_pii: bool
    near_dup: tuple[int, int, int]  # (num_perm, bands, rows per band); num_perm 0 = off
    guide_only: bool = False  # the guide's CLI writes only the guide's forms; the stage, the trainers' too

    def chunk(self, items: list[RawRow], file: str, fmt: str, columns: dict[str, str], every: int) -> list[Verdict]:
        """Verdicts for a chunk of rows. Tokens are counted only where a bound cannot decide a filter, and
        for the length statistics in one of `every` kept rows (by a hash of the text); the texts to count
        go to the tokenizer in one batch, as do the kept rows' MinHash signatures."""
        read = [self.read(item, file, fmt, columns) for item in items]
        counter, texts = self.rules.tokens, []
        for verdict, sample in read:
            if sample is not None:
                own = filters.own_text(sample)
                verdict.counted = every == 1 or zlib.crc32(own.encode("utf-8")) % every == 0
                if verdict.counted or counter.at_least(own) < self.rules.min_tokens:
                    texts.append(own)
        counter.prefill(texts)
        verdicts = [(verdict, "") if sample is None else self.finish(verdict, sample) for verdict, sample in read]
        num_perm, bands, rows = self.near_dup
        kept = [(verdict, content) for verdict, content in verdicts if verdict.reason is None]
        if num_perm and kept:
            all_bands = filters.band_hashes_many([content for _, content in kept], num_perm, bands, rows)
            for (verdict, _), row_bands in zip(kept, all_bands, strict=True):
                verdict.bands = tuple(row_bands)
        return [verdict for verdict, _ in verdicts]

    def read(self, item: RawRow, file: str, fmt: str, columns: dict[str, str]) -> tuple[Verdict, Sample | None]:
        """Parse and normalise one row: a reject verdict, or a pending verdict and the sample."""
        record = item if isinstance(item, Record) else parse_jsonl_line(file, *item)
        if record.error is not None:
            error = record.error
            raw = json.dumps(error.raw, ensure_ascii=False)
            return Verdict(record.source, record.line, error.reason, str(error), raw), None
        row_json = record.raw or json.dumps(record.value, ensure_ascii=False, default=str)
        try:
            sample = normalise(record.value, fmt, columns)
        except RowRejected as err:
            return Verdict(record.source, record.line, err.reason, err.detail, row_json), None
        verdict = Verdict(record.source, record.line, None, "", row_json)
        if self.redact_pii:
            sample = filters.scrub_sample(sample, verdict.redacted)
        return verdict, sample

    def finish(self, verdict: Verdict, sample: Sample) -> tuple[Verdict, str]:
        """Run the row filters; a kept row gets its id, statistics and output lines. Returns the verdict
        and the row's normalised content (for its MinHash)."""
        failing = filters.first_failing(sample, self.rules)
        if failing is not None:
            verdict.reason, verdict.detail = failing
            return verdict, ""
        turns = filters.normalised_turns(sample)
        content = filters.content_text(sample, turns)
        verdict.id = filters.row_id(content)
        verdict.kind = "pref" if sample.is_preference else "sft"
        if verdict.counted:
            verdict.tokens = self.rules.tokens.count(filters.own_text(sample))
        verdict.opening = normalised_opening(next((text for role, text in reversed(turns) if role == "user"), ""))
        if not self.guide_only:
            with_system = filters.with_system_prompt(sample, self.rules.system_prompt)
            verdict.chat_json = dumps({"id": verdict.id, "source": verdict.source, **to_chat(with_system)})
        if self.guide_only or not sample.is_preference:  # the stage writes only SFT rows in the guide's form
            verdict.guide_json = dumps(to_guide_pair(sample) if sample.is_preference else to_alpaca(sample))
        return verdict, content


OPENING_CHARS = re.compile(r"[^\s\d]{1,3}")


def normalised_opening(text: str) -> str:
    """How an instruction (already through filters.normalise_text) starts: its first two words, or its
    first three characters for Chinese."""
    words = text.split(" ")
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
        super().__init__(self.count, self.count_chat)

    def prefill(self, texts: list[str]) -> None:
        encodings = self.backend.encode_batch_fast(texts, add_special_tokens=False) if texts else []
        self.known = {text: len(encoding) for text, encoding in zip(texts, encodings, strict=True)}

    def count(self, text: str) -> int:
        known = self.known.get(text)
        return known if known is not None else len(self.backend.encode(text, add_special_tokens=False))

    def at_least(self, text: str) -> int:
        return self.bounds.at_least(text)

    def render(self, messages: list[Message]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def count_chat(self, messages: list[Message]) -> int:
        return self.count(self.render(messages))

    def count_chat_over(self, messages: list[Message], limit: int) -> int | None:
        skeleton = self.skeletons.text(messages)
        if skeleton is not None:
            # the template's own text plus the contents; a stretch of text on each side of a special token
            segments = 2 * len(messages) + 2
            chars = len(skeleton) + sum(len(m["content"]) for m in messages)
            most = self.bounds.at_most_for(chars, segments)
            if most is not None and most <= limit:  # short enough whatever the characters are
                return None
            most = self.bounds.at_most(skeleton + "".join(m["content"] for m in messages), segments)
            if most is not None and most <= limit:
                return None
        tokens = self.count_chat(messages)
        return tokens if tokens > limit else None


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
