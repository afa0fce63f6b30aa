"""Counting tokens for prepare's length filters: the interface the filters use, and the tokenizer's.

`TokenCounter` wraps two plain functions (the tests use a hand-countable one). `TokenizerCounter` counts
with the base model's tokenizer and adds bounds (ta/data/token_bounds.py) that spare most counting, and
`prefill`, which counts a whole chunk of texts in one call into the Rust tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ta.data import token_bounds
from ta.data.samples import Message
from ta.errors import PrepareError


class TokenCounter:
    """How the filters count tokens: plain text (no special tokens) and a chat-templated conversation.

    This base class wraps two plain functions (the tests use a hand-countable one). prepare's tokenizer
    counter adds bounds that spare most counting, and `prefill`, which counts a whole chunk of texts in
    one call into the Rust tokenizer."""

    def __init__(
        self,
        count: Callable[[str], int],
        count_chat: Callable[[list[Message]], int],
        special_tokens: Sequence[str] = (),
    ) -> None:
        self._count = count
        self._count_chat = count_chat
        self.special_tokens = tuple(special_tokens)  # text no row may contain (the tokenizer's control tokens)

    def count(self, text: str) -> int:
        return self._count(text)

    def at_least(self, text: str) -> int:
        """A lower bound on count(text) that needs no counting (0: nothing known)."""
        return 0

    def at_least_many(self, texts: list[str]) -> list[int]:
        return [self.at_least(text) for text in texts]

    def count_under(self, text: str, limit: int) -> int | None:
        """count(text) when it is under `limit`, else None; counts only when the bound cannot tell."""
        if self.at_least(text) >= limit:
            return None
        tokens = self.count(text)
        return tokens if tokens < limit else None

    def count_chat_over(self, messages: list[Message], limit: int) -> int | None:
        """The templated conversation's token count when it is over `limit`, else None."""
        tokens = self._count_chat(messages)
        return tokens if tokens > limit else None

    def count_many(self, texts: list[str]) -> list[int]:
        return [self.count(text) for text in texts]

    def prefill(self, texts: list[str]) -> None:
        """A hint: these texts will be counted next."""


def special_tokens_of(tokenizer: Any) -> list[str]:
    """The tokenizer's special tokens: its named ones (eos, pad, additional ...) and every added token marked
    special (Qwen2's <|im_start|>, <|im_end|>, <|endoftext|>, <|fim_*|> ...)."""
    added = [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]
    return sorted({*tokenizer.all_special_tokens, *added} - {""})


class TokenizerCounter(TokenCounter):
    """Token counts with the base model's tokenizer (its Rust backend: the same ids as tokenizer(text)).

    Most rows are nowhere near a limit, and token_bounds proves it from their byte length without
    tokenizing. The texts that still need counting in a chunk are counted in one batch call (prefill);
    a templated conversation is rendered and counted only when its bound could pass max_tokens."""

    def __init__(self, tokenizer_dir: Path) -> None:
        if not (tokenizer_dir / "tokenizer_config.json").is_file():
            raise PrepareError(
                f"{tokenizer_dir}: no tokenizer here; run the base stage first (dvc repro base) or pass --tokenizer DIR"
            )
        from ta.models import load_tokenizer

        self.tokenizer = load_tokenizer(tokenizer_dir)
        if not self.tokenizer.chat_template:
            raise PrepareError(f"{tokenizer_dir}: the tokenizer has no chat_template; max_tokens counts templated text")
        self.backend = self.tokenizer.backend_tokenizer
        self.bounds = token_bounds.TokenBounds.of(self.backend.to_str())
        self.skeletons = token_bounds.Skeletons(self.render)
        self.known: dict[str, int] = {}
        self.lows: dict[str, int] = {}
        self.rooms: dict[tuple[tuple[str, ...], int], int] = {}
        super().__init__(self.count, self.count_chat, special_tokens_of(self.tokenizer))

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
