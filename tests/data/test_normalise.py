"""What counts as "the same text" (ta/data/normalise.py): the compiled batch normalisation gives exactly
`" ".join(NFKC(text).split()).casefold()`, over every character and any mix of them."""

from __future__ import annotations

import unicodedata
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ta.data import normalise
from ta.data.samples import Sample
from ta.data.split import content_text


def plain(text: str) -> str:
    """The definition, spelled out with the standard library."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


# Characters where NFKC does something: full-width forms, ligatures, compatibility and combining marks,
# Hangul jamo, astral mathematical letters, a lone surrogate; and any character at all.
NFKC_PROBES = "Ｈｅ，：？　ﬁ①㎏½é\u0301\u0327\u1100\u1161\u11a8가𝐀𝟏\ud800\u3099か\u212b\u2126"
NFKC_PROBES += " \t\n\u3000\u00a0\x1c\u2028"  # whitespace that split() knows
NFKC_PROBES += "…℃⑴㏂ǅﷺ¨"  # one character, several after NFKC (with a space or a mark, for the last two)
PROBE_TEXT = st.text(alphabet=st.sampled_from(NFKC_PROBES) | st.characters(), max_size=40)


def test_normalised_text_ignores_width_case_and_spacing() -> None:
    assert normalise.normalise_text("  Ｈｅｌｌｏ，\t WORLD？ ") == "hello, world?"


@settings(max_examples=300, deadline=None)
@given(st.lists(PROBE_TEXT, max_size=8))
def test_batch_normalisation_is_plain_nfkc_casefold_and_spacing(texts: list[str]) -> None:
    assert normalise.normalise_texts(texts) == [plain(text) for text in texts]


def test_every_bmp_character_normalises_as_unicodedata_does() -> None:
    """The tables over every character, alone and between neighbours (full-width, accented, spaces)."""
    texts = []
    for code in [*range(0xD800), *range(0xE000, 0x10000)]:
        char = chr(code)
        texts += [char, f"a{char}Ｂ", f" {char}{char}\u3000é"]
    assert normalise.normalise_texts(texts) == [plain(text) for text in texts]


def test_the_characters_nfkc_expands_in_chinese_text_stay_on_the_compiled_path() -> None:
    from ta.data import kernels

    texts = ["好……", "30℃", "½", "㈠"]
    _, _, unplain = kernels.normalise(*normalise.code_points(texts), *normalise._character_tables())
    assert not unplain.any()
    assert normalise.normalise_texts(texts) == ["好......", "30°c", "1⁄2", "(一)"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.tuples(st.sampled_from(["user", "assistant", "system"]), PROBE_TEXT), max_size=4),
            st.none() | st.tuples(PROBE_TEXT, PROBE_TEXT),
        ),
        max_size=6,
    )
)
def test_contents_are_each_turn_normalised_under_its_role(rows: list[tuple[list[tuple[str, str]], Any]]) -> None:
    """Conversations (system turns left out; a pair's answers as chosen/rejected) normalised in one
    batch: the same contents as normalising each text on its own."""
    samples, expected, last_user = [], [], []
    for turns, pair in rows:
        samples.append(Sample([{"role": role, "content": text} for role, text in turns], *(pair or (None, None))))
        lines = [(role, plain(text)) for role, text in turns if role != "system"]
        lines += [("chosen", plain(pair[0])), ("rejected", plain(pair[1]))] if pair else []
        expected.append("\n".join(f"{role}:{text}" for role, text in lines))
        last_user.append(next((plain(text) for role, text in reversed(turns) if role == "user"), ""))
    assert normalise.contents(samples) == (expected, last_user)
    assert [content_text(sample) for sample in samples] == expected


def test_no_plain_character_can_compose_with_a_neighbour() -> None:
    """What the batch normalisation relies on, over every code point: a plain character and what it
    becomes are never the second half of a canonical composition (NFC quick check Maybe: the primary
    composites' second characters, and Hangul vowel and final jamo), nor combining marks."""
    folded, kinds, _, expansions, _ = normalise._character_tables()
    plain_chars = kinds > 0
    maybe = {*range(0x1161, 0x1176), *range(0x11A8, 0x11C3)}
    for code in [*range(0xD800), *range(0xE000, 0x110000)]:
        decomposition = unicodedata.decomposition(chr(code))
        if decomposition and not decomposition.startswith("<"):
            parts = [int(part, 16) for part in decomposition.split()]
            if len(parts) == 2 and unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == chr(code):
                maybe.add(parts[1])
    assert maybe and not any(plain_chars[code] for code in maybe)
    becomes = {int(folded[code]) for code in np.flatnonzero(kinds == 1).tolist()} | set(expansions.tolist())
    assert not becomes & maybe
    assert not any(unicodedata.combining(chr(code)) for code in becomes)
