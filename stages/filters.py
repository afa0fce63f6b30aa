"""The decisions prepare makes about each row: small pure functions, each with its reject reason code.

Row filters look at one normalised sample and return a detail string when the row must go (None keeps
it). They run in the order of ROW_FILTERS; the first that fires names the reason. Duplicates need state
(what was seen before), so they are decided afterwards from the keys computed here (`content_key`,
`band_hashes`); the split and per-source sampling are hashes of the row id, so they are stable when rows
are appended.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stages.data import Message, Sample

# ------------------------------------------------------------------------------------------ the rules


class TokenCounter:
    """How the filters count tokens: plain text (no special tokens) and a chat-templated conversation.

    This base class wraps two plain functions (the tests use a hand-countable one). prepare's tokenizer
    counter adds bounds that spare most counting, and `prefill`, which counts a whole chunk of texts in
    one call into the Rust tokenizer."""

    def __init__(self, count: Callable[[str], int], count_chat: Callable[[list[Message]], int]) -> None:
        self._count = count
        self._count_chat = count_chat

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
    def refusal_regex(self) -> re.Pattern[str]:
        """The lower-cased patterns as one regex: where the first of them starts."""
        return re.compile("|".join(map(re.escape, self.refusals)))


def with_system(messages: list[Message], system_prompt: str) -> list[Message]:
    """The conversation as the trainer sees it: the row's own system turn, else the params one."""
    if (messages and messages[0]["role"] == "system") or not system_prompt:
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def with_system_prompt(sample: Sample, system_prompt: str) -> Sample:
    return Sample(with_system(sample.messages, system_prompt), sample.chosen, sample.rejected)


def own_text(sample: Sample) -> str:
    """The sample's own words (prompt + answer, no system prompt, no template): what min_tokens counts.
    Kept on the sample: several filters ask (samples are not changed once built)."""
    if sample.own is None:
        turns = [m["content"] for m in sample.messages if m["role"] != "system"]
        if sample.is_preference:
            turns.append(sample.chosen or "")
        sample.own = "\n".join(turns)
    return sample.own


def templated_variants(sample: Sample, system_prompt: str) -> list[list[Message]]:
    """The full conversations a trainer will template: one for SFT, chosen and rejected for a pair."""
    messages = with_system(sample.messages, system_prompt)
    if not sample.is_preference:
        return [messages]
    return [messages + [{"role": "assistant", "content": answer}] for answer in (sample.chosen, sample.rejected)]


# --------------------------------------------------------------------------------------- row filters


def empty_turn(sample: Sample, rules: Rules) -> str | None:
    for i, message in enumerate(sample.messages):
        if not message["content"].strip():
            return f"turn {i + 1} ({message['role']}) is empty"
    for name in ("chosen", "rejected"):
        answer = getattr(sample, name)
        if answer is not None and not answer.strip():
            return f"{name} answer is empty"
    return None


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


# ------------------------------------------------------------------------------------------ PII scrub

PII_PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    "id_card": re.compile(
        r"(?<![0-9])[1-9]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx](?![0-9])"
    ),
    "phone": re.compile(r"(?<![0-9])(?:\+?86[- ]?)?1[3-9]\d[- ]?\d{4}[- ]?\d{4}(?![0-9])"),
}


def scrub_pii(text: str, counts: dict[str, int]) -> str:
    """Replace e-mail addresses, Chinese ID-card and mobile numbers with [EMAIL]/[ID_CARD]/[PHONE]."""
    for kind, pattern in PII_PATTERNS.items():
        text, found = pattern.subn(f"[{kind.upper()}]", text)
        if found:
            counts[kind] = counts.get(kind, 0) + found
    return text


def scrub_sample(sample: Sample, counts: dict[str, int]) -> Sample:
    messages = [{"role": m["role"], "content": scrub_pii(m["content"], counts)} for m in sample.messages]
    chosen = scrub_pii(sample.chosen, counts) if sample.chosen is not None else None
    rejected = scrub_pii(sample.rejected, counts) if sample.rejected is not None else None
    return Sample(messages, chosen, rejected)


# ----------------------------------------------------------------------------------- duplicate keys


def normalise_text(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: what counts as 'the same text'."""
    return normalise_texts([text])[0]


def normalise_texts(texts: list[str]) -> list[str]:
    """normalise_text() of many texts at once, equal to `" ".join(NFKC(text).split()).casefold()` for each.

    Python's NFKC costs ~100 ns a character once a text has anything to change, and Chinese text nearly
    always has (full-width punctuation). So the texts go through one compiled loop together instead
    (stages/kernels.py): a table takes each character to its NFKC, case-folded (one character, or several:
    "…" is "...", "℃" is "°c"), and runs of whitespace are collapsed. That is exact for text whose
    characters each become "settled" ones: in NFKC on their own, and unable to combine with a neighbour
    (combining class 0, not a mark). Replacing characters by their own NFKC leaves a text's NFKD, so its
    NFKC, unchanged; and a string of settled characters is its own NFKC. A text with any other character
    (combining marks, Hangul jamo, astral letters ...) takes unicodedata's way."""
    from stages import kernels

    codes, starts = code_points(texts)
    out, out_starts, unplain = kernels.normalise(codes, starts, *_character_tables())
    joined = out.tobytes().decode("utf-32-le", "surrogatepass")
    bounds = out_starts.tolist()
    return [
        " ".join(unicodedata.normalize("NFKC", text).split()).casefold() if odd else joined[bounds[i] : bounds[i + 1]]
        for i, (odd, text) in enumerate(zip(unplain.tolist(), texts, strict=True))
    ]


def code_points(texts: list[str]) -> tuple[Any, Any]:
    """The texts' code points in one uint32 array, and where each text starts (and the last one ends)."""
    import numpy as np

    codes = np.frombuffer(bytearray("".join(texts).encode("utf-32-le", "surrogatepass")), dtype=np.uint32)
    starts = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)), out=starts[1:])
    return codes, starts


@functools.cache
def _character_tables() -> tuple[Any, Any, Any, Any, Any]:
    """kernels.normalise's tables, over the BMP: per code point `folded` and its kind (0: not done by the
    tables, see normalise_texts; 1: it becomes the one character `folded[code]`; 2: several characters,
    expansion number `folded[code]`), and whether it is whitespace; then the expansions, end to end, and
    where each starts (one more entry than expansions). An expansion's characters are each of kind 1 and
    their own `folded`."""
    import numpy as np

    folded = np.arange(0x110000, dtype=np.uint32)
    kinds = np.zeros(0x110000, dtype=np.uint8)
    space = np.zeros(0x110000, dtype=bool)
    several = []
    for code in [*range(0xD800), *range(0xE000, 0x10000)]:
        single = unicodedata.normalize("NFKC", chr(code))
        fold = single.casefold()
        if not all(map(_settled, single + fold)):
            continue
        if len(single) == 1 and len(fold) == 1:
            folded[code], kinds[code], space[code] = ord(fold), 1, single.isspace()
        elif single.split() and [word.casefold() for word in single.split()] == fold.split():
            several.append((code, fold))
    expansions, starts = [], [0]
    for code, fold in several:
        if all(kinds[ord(char)] == 1 and folded[ord(char)] == ord(char) for char in fold):
            folded[code], kinds[code] = len(starts) - 1, 2
            expansions += map(ord, fold)
            starts.append(len(expansions))
    return folded, kinds, space, np.array(expansions, dtype=np.uint32), np.array(starts, dtype=np.int64)


def _settled(char: str) -> bool:
    """In NFKC, and nothing can combine it with a neighbour: combining class 0 and not a mark (the
    characters that may compose with the one before are marks, or Hangul vowel and final jamo)."""
    return (
        unicodedata.is_normalized("NFKC", char)
        and unicodedata.combining(char) == 0
        and not unicodedata.category(char).startswith("M")
        and not 0x1160 <= ord(char) <= 0x11FF
    )


def content_text(sample: Sample) -> str:
    """Normalised content without the system prompt, a "role:text" line a turn (a pair's answers as
    chosen/rejected); its hash is the row id and the exact-dup key."""
    return contents([sample])[0][0]


def contents(samples: list[Sample]) -> tuple[list[str], list[str]]:
    """content_text() of many samples, their texts normalised together; and each one's last user turn,
    normalised (where its opening is read), "" when it has none."""
    labels, texts, bounds, last_user = [], [], [0], []
    for sample in samples:
        user = -1
        for message in sample.messages:
            role = message["role"]
            if role != "system":
                if role == "user":
                    user = len(texts)
                labels.append(role + ":")
                texts.append(message["content"])
        if sample.chosen is not None:
            labels += ("chosen:", "rejected:")
            texts += (sample.chosen, sample.rejected or "")
        bounds.append(len(texts))
        last_user.append(user)
    normalised = normalise_texts(texts)
    lines = list(map(str.__add__, labels, normalised))
    return (
        ["\n".join(lines[lo:hi]) for lo, hi in zip(bounds, bounds[1:], strict=False)],
        [normalised[user] if user >= 0 else "" for user in last_user],
    )


def row_id(content: str) -> str:
    """16 hex digits of the SHA-1 of content_text(): the same for rows that differ only in spacing."""
    return hashlib.sha1(content.encode("utf-8")).hexdigest()[:16]


def shingle_hashes(text: str, size: int) -> Any:
    """32-bit hashes (numpy array) of the text's character n-grams, which work for Chinese (written
    without spaces) as well as for English: a polynomial hash over the code points, then mixed (murmur3's
    64-bit finaliser, so that every code point reaches the top half kept). A text shorter than `size` is
    padded with U+0000 to one n-gram."""
    from stages import kernels

    hashes, _ = kernels.shingle_hashes(*code_points([text]), size)
    return hashes


@functools.lru_cache(maxsize=4)
def permutations(num_perm: int) -> tuple[Any, Any]:
    """The (a, b) of datasketch's MinHash(num_perm, seed=1) in its affine32 scheme, drawn the way it draws
    them (a odd, both uint32), without importing datasketch (which pulls in scipy: a second at startup).
    tests/test_prepare_filters.py checks them against datasketch."""
    import numpy as np

    gen = np.random.RandomState(1)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def minhash_signature(text: str, num_perm: int, shingle_size: int = 5) -> Any:
    """datasketch's MinHash of the text's shingles (its default affine32 scheme: murmur3 fmix32 of each
    hash, then h * a + b modulo 2**32, minimum over the shingles)."""
    return minhash_signatures([text], num_perm, shingle_size)[0]


def minhash_signatures(texts: list[str], num_perm: int, shingle_size: int = 5, used: int | None = None) -> Any:
    """minhash_signature() of many texts, as rows of one array, in two compiled loops over all their
    shingles (stages/kernels.py). `used`: only the first this many permutations (LSH bands may not use
    them all)."""
    from stages import kernels

    a, b = (p[:used] for p in permutations(num_perm))
    hashes, offsets = kernels.shingle_hashes(*code_points(texts), shingle_size)
    return kernels.min_hashes(hashes, offsets, a, b)


def band_hashes(text: str, num_perm: int, bands: int, rows_per_band: int) -> list[int]:
    """The MinHash signature cut into LSH bands; two rows sharing any band hash are near-duplicates."""
    return band_hashes_many([text], num_perm, bands, rows_per_band)[0].tolist()


def band_hashes_many(texts: list[str], num_perm: int, bands: int, rows_per_band: int) -> Any:
    """band_hashes() of many texts, a uint64 array (texts x bands): each band's values are folded into 64
    bits (FNV-style multiply, then murmur3's finaliser) for all texts and bands at once."""
    import numpy as np

    signatures = minhash_signatures(texts, num_perm, used=bands * rows_per_band)
    values = signatures.reshape(len(texts), bands, rows_per_band).astype(np.uint64)
    folded = np.broadcast_to(np.arange(1, bands + 1, dtype=np.uint64), values.shape[:2]).copy()  # band number
    for r in range(rows_per_band):
        folded ^= values[:, :, r]
        folded *= np.uint64(0x100000001B3)
    folded ^= folded >> np.uint64(33)
    folded *= np.uint64(0xFF51AFD7ED558CCD)
    folded ^= folded >> np.uint64(33)
    return folded


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH picks for this Jaccard threshold and signature
    length: the pair minimising false-positive plus false-negative probability mass (equal weights).

    The same search, with the integrals done by Gauss-Legendre quadrature: the integrands are
    polynomials of degree bands x rows <= num_perm, which num_perm // 2 + 1 nodes integrate exactly.
    (datasketch integrates each pair with scipy's quad: a second or more at every start.)"""
    import numpy as np

    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=np.float64)
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)

    def integral(lo: float, hi: float, false_positive: bool) -> Any:
        s = (hi - lo) / 2 * nodes + (hi + lo) / 2  # the nodes moved from [-1, 1] to [lo, hi]
        collide = 1 - (1 - s[None, :] ** pairs[:, 1:2]) ** pairs[:, 0:1]  # P(share a band) at similarity s
        return (collide if false_positive else 1 - collide) @ weights * (hi - lo) / 2

    error = integral(0.0, threshold, True) + integral(threshold, 1.0, False)
    bands, rows = pairs[int(np.argmin(error))]
    if bands < 2:  # as datasketch refuses: one band is an exact match of the whole signature
        raise ValueError(f"near_dup_threshold {threshold} with {num_perm} permutations gives a single LSH band")
    return int(bands), int(rows)


# -------------------------------------------------------------------------------- split and sampling


def hash_fraction(seed: int, salt: str, key: str) -> float:
    """A number in [0, 1) fixed by (seed, salt, key): decisions that stay put when rows are appended."""
    digest = hashlib.sha1(f"{seed}:{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_eval(seed: int, row_id_: str, eval_fraction: float) -> bool:
    return hash_fraction(seed, "split", row_id_) < eval_fraction


def is_sampled(seed: int, row_id_: str, weight: float) -> bool:
    return weight >= 1.0 or hash_fraction(seed, "sample", row_id_) < weight
