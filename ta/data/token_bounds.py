"""Bounds on a tokenizer's token count that need no tokenizing, so prepare counts only the rows near a limit.

Tokenizing is most of prepare's cost per row, yet almost every row is far from both limits: a few
hundred tokens against min_tokens 10 and max_tokens 2048. Two facts give cheap, safe bounds from the
UTF-8 length of the text after the tokenizer's normaliser:

* upper: no subword model (BPE with or without byte fallback, WordPiece, Unigram, byte-level BPE) makes
  more tokens than the normalised text has bytes, plus one prefix piece per stretch of text between
  special tokens;
* lower: for BPE, no token covers more bytes than the longest piece in the vocabulary (added tokens
  included; an unknown character is at most 4 bytes), as long as unknown characters do not fuse into one
  `<unk>` and the pre-tokenizer drops no text (Whitespace does); otherwise there is no lower bound. Much
  tighter where it holds (CharWeights): a character weighs 1 / the length of the longest piece that
  contains it, and no token's characters weigh more than 1 in all, so a text has at least as many
  tokens as its characters weigh.

The normalised length is itself bounded from the raw text for the normalisers tokenizers commonly use:
SentencePiece's Prepend "▁" and Replace " " -> "▁" (computed exactly from counts), NFC (at most 3x
the bytes, at least 1/2). Any other normaliser gets no bounds, so every text is counted exactly.

A chat-templated conversation's length is its contents plus the template's own text. `Skeletons`
renders the template once per sequence of roles with placeholder contents and keeps the template text's
length; a template that repeats, drops or rewrites a content is detected (two renders with different
placeholders must agree) and gets no skeleton.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass
from typing import Any

from ta.data.normalise import code_points

Message = dict[str, str]


@dataclass(frozen=True)
class NormalizerBounds:
    """Bounds on the normalised UTF-8 length from the raw text. `known` False: no bounds at all."""

    known: bool
    grow: float = 1.0  # normalised bytes <= grow * raw bytes + extra(text) + prepend bytes
    shrink: float = 1.0  # normalised bytes >= shrink * raw bytes
    prepend: int = 0  # bytes a Prepend normaliser adds to each segment
    replaces: tuple[tuple[str, int], ...] = ()  # (pattern, bytes added per occurrence)

    @classmethod
    def of(cls, normalizer: dict[str, Any] | None) -> NormalizerBounds:
        if normalizer is None:
            return cls(True)
        parts = normalizer["normalizers"] if normalizer.get("type") == "Sequence" else [normalizer]
        grow, shrink, prepend, replaces = 1.0, 1.0, 0, []
        for part in parts:
            kind = part.get("type")
            if kind == "Prepend":
                prepend += len(part["prepend"].encode("utf-8"))
            elif kind == "Replace" and "String" in part.get("pattern", {}):
                pattern = part["pattern"]["String"]
                delta = len(part["content"].encode("utf-8")) - len(pattern.encode("utf-8"))
                if len(pattern) != 1 and delta > 0:  # counted in pieces of text, a longer one could straddle
                    return cls(False)
                if delta > 0:
                    replaces.append((pattern, delta))
                elif delta < 0:
                    shrink *= len(part["content"].encode("utf-8")) / len(pattern.encode("utf-8"))
            elif kind == "NFC":
                grow, shrink = grow * 3, shrink / 2
            else:  # NFKC (one character can become 18), Lowercase, Strip, BertNormalizer, Precompiled ...
                return cls(False)
        if replaces and grow != 1.0:  # counting patterns in the raw text assumes nothing changed it first
            return cls(False)
        return cls(True, grow, shrink, prepend, tuple(replaces))

    def most_bytes(self, text: str, segments: int = 1) -> int | None:
        if not self.known:
            return None
        raw = len(text.encode("utf-8"))
        extra = sum(delta * text.count(pattern) for pattern, delta in self.replaces)
        return math.ceil(self.grow * raw) + extra + self.prepend * segments

    def most_bytes_for(self, chars: int, segments: int = 1) -> int | None:
        """most_bytes() of any text of `chars` characters: a character is at most 4 UTF-8 bytes, or what a
        Replace makes of it. Needs no look at the text (its length is enough)."""
        if not self.known:
            return None
        per_char = max([4, *(1 + delta for _, delta in self.replaces)])  # a replaced character: 1 byte + delta
        return math.ceil(self.grow * per_char * chars) + self.prepend * segments

    def fewest_bytes(self, raw_bytes: Any) -> Any:
        """Normalised bytes at least, from texts' UTF-8 lengths (an array); None: no bound."""
        import numpy as np

        return np.floor(self.shrink * raw_bytes) if self.known else None


@dataclass(frozen=True)
class TokenBounds:
    """Lower and upper bounds on the tokens of a text (no special tokens in it), from tokenizer.json."""

    normalizer: NormalizerBounds
    longest_piece: int | None  # bytes; None when a token can cover any number of bytes
    weights: CharWeights | None = None  # a tighter lower bound, where it holds

    @classmethod
    def of(cls, tokenizer_json: str) -> TokenBounds:
        spec = json.loads(tokenizer_json)
        model = spec.get("model", {})
        vocab = model.get("vocab", {})
        pieces = list(vocab) if isinstance(vocab, dict) else [piece for piece, _ in vocab]
        added = [token["content"] for token in spec.get("added_tokens", [])]
        fuses_unknown = model.get("fuse_unk") and not model.get("byte_fallback")
        bounded = model.get("type") == "BPE" and not fuses_unknown and _keeps_all_text(spec.get("pre_tokenizer"))
        longest = max([4, *(len(p.encode("utf-8")) for p in pieces + added)]) if bounded else None
        normalizer = NormalizerBounds.of(spec.get("normalizer"))
        weights = CharWeights.of(spec, pieces, added) if bounded and normalizer.known else None
        return cls(normalizer, longest, weights)

    def at_least(self, text: str) -> int:
        return self.at_least_many([text])[0]

    def at_least_many(self, texts: list[str]) -> list[int]:
        """at_least() of many texts: the byte bound, or the character-weight bound where it is tighter."""
        import numpy as np

        from ta.data import kernels

        if self.longest_piece is None or not self.normalizer.known:
            return [0] * len(texts)
        table = np.zeros(0) if self.weights is None else self.weights.table
        byte_level = self.weights is not None and self.weights.byte_level
        lengths, weights = kernels.utf8_lengths_and_weights(*code_points(texts), table, byte_level)
        lows = np.ceil(self.normalizer.fewest_bytes(lengths) / self.longest_piece)
        if self.weights is not None:
            lows = np.maximum(lows, self.weights.at_least_many(texts, weights))
        return lows.astype(np.int64).tolist()

    def at_most(self, text: str, segments: int = 1) -> int | None:
        most = self.normalizer.most_bytes(text, segments)
        return None if most is None else most + segments

    def at_most_for(self, chars: int, segments: int = 1) -> int | None:
        """at_most() of any text of `chars` characters (looser, and free)."""
        most = self.normalizer.most_bytes_for(chars, segments)
        return None if most is None else most + segments


@dataclass(frozen=True)
class CharWeights:
    """A lower bound on BPE tokens from the characters themselves, much tighter than bytes / longest piece.

    Give each unit (a character; a byte for byte-level BPE) the weight 1 / L, L the length of the longest
    piece containing it (1 when no piece does: it becomes at least one token of its own). A token's units
    then weigh at most 1 in all (each weighs at most 1 / its length), so a text needs at least as many
    tokens as its units weigh. Holds when the units the model sees are the raw text's: no normaliser but
    Prepend (it only adds), single-character Replace (the replaced character weighs what its replacement
    does; so do the spaces a Metaspace pre-tokenizer replaces) and NFC (texts already in NFC only)."""

    table: Any  # numpy float64: weight per code point (characters) or per byte value (byte-level)
    byte_level: bool
    nfc: bool

    @classmethod
    def of(cls, spec: dict[str, Any], pieces: list[str], added: list[str]) -> CharWeights | None:
        import numpy as np

        normalizer = spec.get("normalizer") or {}
        parts = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
        parts = [part for part in parts if part]
        byte_level = bool(_pre_tokenizers(spec.get("pre_tokenizer"), "ByteLevel"))
        kinds = {part.get("type") for part in parts}
        allowed = {"NFC"} if byte_level else {"NFC", "Prepend", "Replace"}
        if not kinds <= allowed or ("NFC" in kinds and len(parts) > 1):
            return None
        replaces = [(part["pattern"].get("String", ""), part["content"]) for part in parts if part["type"] == "Replace"]
        if any(len(pattern) != 1 for pattern, _ in replaces):
            return None
        replaces += [(" ", replacement) for replacement in _pre_tokenizers(spec.get("pre_tokenizer"), "Metaspace")]
        if byte_level:  # pieces are spelt in the byte-level alphabet; added tokens match the raw text
            alphabet = _byte_level_alphabet()
            units = {char: code for code, char in enumerate(alphabet)}
            spelt = [[units[c] for c in piece if c in units] for piece in pieces]
            spelt += [list(token.encode("utf-8")) for token in added]
            size = 256
        else:
            spelt = [[ord(c) for c in piece] for piece in pieces + added]
            size = 0x110000
        longest = np.ones(size, dtype=np.int64)
        for units_of_piece in spelt:
            for unit in units_of_piece:
                longest[unit] = max(longest[unit], len(units_of_piece))
        table = 1.0 / longest
        for pattern, content in replaces:  # the replacement's characters stand where the pattern was
            table[ord(pattern)] = sum(table[ord(c)] for c in content)
        return cls(table, byte_level, "NFC" in kinds)

    def at_least_many(self, texts: list[str], weights: Any) -> Any:
        """The bound for each text (an array), from what its units weigh (kernels.utf8_lengths_and_weights
        with this table); 0 for a text NFC would change, where it does not hold."""
        import numpy as np

        lows = np.ceil(weights - 1e-6)  # rounding in the sums is far less
        if self.nfc:
            lows[[not unicodedata.is_normalized("NFC", text) for text in texts]] = 0
        return lows


def _pre_tokenizers(pre_tokenizer: dict[str, Any] | None, kind: str) -> list[str]:
    """The pre-tokenizers of this kind (their `replacement`, for Metaspace, which turns spaces into it)."""
    if pre_tokenizer is None:
        return []
    if pre_tokenizer.get("type") == "Sequence":
        return [found for part in pre_tokenizer["pretokenizers"] for found in _pre_tokenizers(part, kind)]
    return [pre_tokenizer.get("replacement", "▁")] if pre_tokenizer.get("type") == kind else []


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte -> printable character map, as the ByteLevel pre-tokenizer spells bytes."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = bytes_to_unicode()
    return [alphabet[byte] for byte in range(256)]


KEEPS_TEXT = {"Metaspace", "ByteLevel", "Digits", "Punctuation", "UnicodeScripts", "Split"}


def _keeps_all_text(pre_tokenizer: dict[str, Any] | None) -> bool:
    """Whether every byte of the normalised text ends up in some token (Whitespace drops spaces)."""
    if pre_tokenizer is None:
        return True
    if pre_tokenizer.get("type") == "Sequence":
        return all(_keeps_all_text(p) for p in pre_tokenizer["pretokenizers"])
    kind = pre_tokenizer.get("type")
    return kind in KEEPS_TEXT and not (kind == "Split" and pre_tokenizer.get("behavior") == "Removed")


class Skeletons:
    """The chat template's own text per sequence of roles, for an upper bound without rendering."""

    def __init__(self, render: Any) -> None:
        self.render = render  # list[Message] -> str, the tokenizer's apply_chat_template
        self.known: dict[tuple[str, ...], str | None] = {}

    def text(self, messages: list[Message]) -> str | None:
        """The template's text around the contents (concatenated), or None if the template does not
        place each content exactly once, unchanged."""
        roles = tuple(m["role"] for m in messages)
        if roles not in self.known:
            self.known[roles] = self._skeleton(roles)
        return self.known[roles]

    def _skeleton(self, roles: tuple[str, ...]) -> str | None:
        found = []
        for width in (1, 7):
            marks = [f"\ue000{'x' * width}{i}\ue001" for i in range(len(roles))]
            rendered = self.render([{"role": r, "content": m} for r, m in zip(roles, marks, strict=True)])
            if any(rendered.count(mark) != 1 for mark in marks):
                return None
            for mark in marks:
                rendered = rendered.replace(mark, "")
            found.append(rendered)
        return found[0] if found[0] == found[1] else None
