"""prepare's row filters: small pure functions over one normalised sample, each with its reject reason.

A filter returns a detail string when the row must go (None keeps it). They run in the order of
ROW_FILTERS; the first that fires names the reason. Decisions that need other rows (duplicates, the
per-source mix) are taken later, in ta/data/dedup.py and ta/data/mix.py.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from ta.data.samples import Sample, own_text, templated_variants
from ta.data.tokens import TokenCounter


@dataclass(frozen=True)
class Rules:
    """Everything the row filters need: limits from params and the token counter."""

    min_tokens: int
    max_tokens: int
    refusal_patterns: tuple[str, ...]
    system_prompt: str
    tokens: TokenCounter

    @functools.cached_property
    def refusals(self) -> tuple[str, ...]:
        """The patterns lower-cased, to look for in lower-cased text: case-insensitive, and several times
        faster than re.IGNORECASE on Chinese text."""
        return tuple(pattern.lower() for pattern in self.refusal_patterns)

    @functools.cached_property
    def special_token_regex(self) -> re.Pattern[str] | None:
        """The tokenizer's special tokens as one regex (None: it has none)."""
        tokens = sorted(self.tokens.special_tokens, key=len, reverse=True)
        return re.compile("|".join(map(re.escape, tokens))) if tokens else None

    @functools.cached_property
    def refusal_regex(self) -> re.Pattern[str]:
        """The lower-cased patterns as one regex: where the first of them starts."""
        return re.compile("|".join(map(re.escape, self.refusals)))


def empty_turn(sample: Sample, rules: Rules) -> str | None:
    for i, message in enumerate(sample.messages):
        if not message["content"].strip():
            return f"turn {i + 1} ({message['role']}) is empty"
    for name in ("chosen", "rejected"):
        answer = getattr(sample, name)
        if answer is not None and not answer.strip():
            return f"{name} answer is empty"
    return None


def special_tokens(sample: Sample, rules: Rules) -> str | None:
    """Text that spells one of the tokenizer's special tokens (`<|im_end|>` ...) would become that token
    when templated: a row could forge turns of the chat template."""
    if rules.special_token_regex is None:
        return None
    for name, text in _texts(sample):
        if match := rules.special_token_regex.search(text):
            return f"{name} contains the special token {match.group(0)!r}"
    return None


def _texts(sample: Sample) -> list[tuple[str, str]]:
    named = [(f"turn {i + 1} ({m['role']})", m["content"]) for i, m in enumerate(sample.messages)]
    return named + [(name, text) for name in ("chosen", "rejected") if (text := getattr(sample, name)) is not None]


def refusal(sample: Sample, rules: Rules) -> str | None:
    """SFT answers only: in preference pairs a safe refusal is often the chosen answer (guide, 3.3)."""
    if not rules.refusals or sample.is_preference:
        return None
    for message in sample.messages:
        if message["role"] == "assistant":
            text = message["content"]
            lowered = text.lower()
            for pattern in rules.refusals:  # `in` is faster than the regex, which then says where it starts
                if pattern in lowered and (match := rules.refusal_regex.search(lowered)):
                    said = text[match.start() : match.end()] if len(lowered) == len(text) else match.group(0)
                    return f"assistant turn contains {said!r}"
    return None


def too_short(sample: Sample, rules: Rules) -> str | None:
    tokens = rules.tokens.count_under(own_text(sample), rules.min_tokens)
    return f"{tokens} tokens < min_tokens {rules.min_tokens}" if tokens is not None else None


def too_long(sample: Sample, rules: Rules) -> str | None:
    for messages in templated_variants(sample, rules.system_prompt):
        tokens = rules.tokens.count_chat_over(messages, rules.max_tokens)
        if tokens is not None:
            return f"{tokens} templated tokens > max_tokens {rules.max_tokens}"
    return None


ROW_FILTERS: list[tuple[str, Callable[[Sample, Rules], str | None]]] = [
    ("empty_turn", empty_turn),
    ("special_tokens", special_tokens),
    ("refusal", refusal),
    ("too_short", too_short),
    ("too_long", too_long),
]


def first_failing(sample: Sample, rules: Rules) -> tuple[str, str] | None:
    """(reason, detail) of the first row filter that rejects the sample, or None when all keep it."""
    for reason, check in ROW_FILTERS:
        detail = check(sample, rules)
        if detail is not None:
            return reason, detail
    return None
