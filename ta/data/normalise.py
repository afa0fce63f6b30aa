"""What counts as "the same text": Unicode NFKC, case-folded, whitespace collapsed — fast, for millions of rows.

The definition is ta/data/split.py's `normalise_plain`; here the same result comes from one compiled loop
over a whole batch of texts (ta/data/kernels.py). `contents()` gives each sample's row content (the text
its id is the hash of) laid out as ta/data/split.py defines it.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Any

from ta.data.samples import Sample
from ta.data.split import content_parts, join_content


def normalise_text(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: what counts as 'the same text'."""
    return normalise_texts([text])[0]


def normalise_texts(texts: list[str]) -> list[str]:
    """normalise_text() of many texts at once, equal to `" ".join(NFKC(text).split()).casefold()` for each.

    Python's NFKC costs ~100 ns a character once a text has anything to change, and Chinese text nearly
    always has (full-width punctuation). So the texts go through one compiled loop together instead
    (ta/data/kernels.py): a table takes each character to its NFKC, case-folded (one character, or several:
    "…" is "...", "℃" is "°c"), and runs of whitespace are collapsed. That is exact for text whose
    characters each become "settled" ones: in NFKC on their own, and unable to combine with a neighbour
    (combining class 0, not a mark). Replacing characters by their own NFKC leaves a text's NFKD, so its
    NFKC, unchanged; and a string of settled characters is its own NFKC. A text with any other character
    (combining marks, Hangul jamo, astral letters ...) takes unicodedata's way."""
    from ta.data import kernels

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


def contents(samples: list[Sample]) -> tuple[list[str], list[str]]:
    """ta/data/split.py's content_text() of many samples, their texts normalised together; and each one's
    last user turn, normalised (where its opening is read), "" when it has none."""
    labels, texts, bounds, last_user = [], [], [0], []
    for sample in samples:
        sample_labels, sample_texts, user = content_parts(sample)
        last_user.append(len(texts) + user if user >= 0 else -1)
        labels += sample_labels
        texts += sample_texts
        bounds.append(len(texts))
    normalised = normalise_texts(texts)
    return (
        [join_content(labels[lo:hi], normalised[lo:hi]) for lo, hi in zip(bounds, bounds[1:], strict=False)],
        [normalised[user] if user >= 0 else "" for user in last_user],
    )
