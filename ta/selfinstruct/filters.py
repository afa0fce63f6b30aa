"""The Self-Instruct filters: what a reply must be, and what each generated pair must be, to reach review.

A reply is dropped whole when it was cut off (`truncated`: finish_reason "length") or when it is not the
JSON object the template asks for (`malformed`). Each pair in it then meets, in this order: `malformed`
(not an object with non-empty instruction and answer strings), `too_short` / `too_long` (characters of
the instruction or the answer), `needs_media` (the instruction asks about an image, a file, a link ...),
`refusal` (the answer contains a refusal pattern, e.g. "作为一个AI语言模型"), `too_similar` (ROUGE-L with
an instruction already in the pool at or above the threshold: the paper's novelty rule, exact copies
included). The first that fires is the pair's reject reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ta.config import SelfInstruct
from ta.selfinstruct.rouge import InstructionPool, Nearest

REPLY_REASONS = ["truncated", "malformed"]
PAIR_REASONS = ["too_short", "too_long", "needs_media", "refusal", "too_similar"]
REASONS = REPLY_REASONS + PAIR_REASONS

FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)


@dataclass(frozen=True)
class Reply:
    """What the endpoint answered to one request (as stored in the response cache)."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Verdict:
    """Why a reply or a pair was dropped."""

    reason: str
    detail: str


def reply_items(reply: Reply) -> tuple[list[Any], Verdict | None]:
    """The items of the reply's `pairs` list, or why the whole reply is unusable."""
    if reply.finish_reason == "length":
        return [], Verdict("truncated", f"the reply stopped at max_tokens ({reply.completion_tokens} tokens)")
    if reply.finish_reason == "content_filter":
        return [], Verdict("refusal", "the endpoint's content filter stopped the reply")
    value = json_value(reply.content)
    if isinstance(value, dict) and isinstance(value.get("pairs"), list):
        return value["pairs"], None
    if isinstance(value, list):
        return value, None
    shown = " ".join(reply.content.split())[:80]
    if value is None:
        return [], Verdict("malformed", f"not a JSON object: {shown!r}")
    return [], Verdict("malformed", f'no "pairs" list in the JSON: {shown!r}')


def json_value(text: str) -> Any:
    """The JSON value the text holds: the whole text, inside a ``` fence, or from its first { or [. Raw
    line breaks inside strings are accepted (strict=False): models write them, and they mean what they say."""
    fenced = FENCE.match(text)
    text = fenced.group(1) if fenced else text
    decoder = json.JSONDecoder(strict=False)
    try:
        return decoder.decode(text)
    except json.JSONDecodeError:
        pass
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return None
    try:
        return decoder.raw_decode(text, min(starts))[0]
    except json.JSONDecodeError:
        return None


def item_pair(item: Any) -> tuple[str, str] | Verdict:
    """(instruction, answer) of one item, stripped, or why it is malformed."""
    if not isinstance(item, dict):
        return Verdict("malformed", f"a pair should be an object, got {type(item).__name__}")
    fields = []
    for name in ("instruction", "answer"):
        value = item.get(name)
        if not isinstance(value, str) or not value.strip():
            got = "missing" if value is None else f"{type(value).__name__} {value!r}"[:60]
            return Verdict("malformed", f'field "{name}" should be a non-empty string, got {got}')
        fields.append(value.strip())
    return fields[0], fields[1]


class PairFilters:
    """The per-pair filters with their params, and the pool of instructions novelty is measured against."""

    def __init__(self, params: SelfInstruct, refusal_patterns: list[str], pool: InstructionPool) -> None:
        self.params = params
        self.pool = pool
        self.refusals = [pattern.lower() for pattern in refusal_patterns if pattern]
        self.media = media_regex(params.media_patterns)

    def check(self, instruction: str, answer: str) -> tuple[Verdict | None, Nearest | None]:
        """The first filter that drops the pair (None: it passes), and the pool's nearest instruction."""
        p = self.params
        for name, text, low, high in (
            ("instruction", instruction, p.min_instruction_chars, p.max_instruction_chars),
            ("answer", answer, p.min_answer_chars, p.max_answer_chars),
        ):
            if len(text) < low:
                return Verdict("too_short", f"{name} has {len(text)} characters < {low}"), None
            if len(text) > high:
                return Verdict("too_long", f"{name} has {len(text)} characters > {high}"), None
        if self.media is not None and (match := self.media.search(instruction)):
            return Verdict("needs_media", f"instruction mentions {match.group(0)!r}"), None
        lowered = answer.lower()
        for pattern in self.refusals:
            if pattern in lowered:
                return Verdict("refusal", f"answer contains {pattern!r}"), None
        nearest = self.pool.nearest(instruction)
        if nearest is not None and nearest.score >= p.rouge_l_threshold:
            detail = f"ROUGE-L {nearest.score:.2f} >= {p.rouge_l_threshold:g} with {nearest.source}"
            return Verdict("too_similar", detail), nearest
        return None, nearest


def media_regex(patterns: list[str]) -> re.Pattern[str] | None:
    """One case-insensitive regex for the media patterns: ASCII words match whole (not inside a longer ASCII
    word: "photo" is not in "photosynthesis", but is in "看photo"), anything else as written."""
    parts = [
        rf"(?<![A-Za-z0-9]){re.escape(p)}(?![A-Za-z0-9])" if re.fullmatch(r"[A-Za-z0-9 ]+", p) else re.escape(p)
        for p in patterns
        if p
    ]
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None
