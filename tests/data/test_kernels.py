"""prepare's compiled loops (ta/data/kernels.py) that no wrapper test reaches directly: UTF-8 lengths and unit
weights, and the open-addressing key table."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ta.data import kernels
from ta.data.normalise import code_points


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("a光é\ud800\U0001d518 ") | st.characters(), max_size=30), max_size=6))
def test_compiled_utf8_lengths_and_unit_weights_match_the_encoded_text(texts: list[str]) -> None:
    """The bounds' inputs, per text: its UTF-8 length, and the weights of its code points or (byte-level)
    of its UTF-8 bytes, a lone surrogate written as surrogatepass writes it."""
    rng = np.random.default_rng(0)
    chars, bytes_ = rng.random(0x110000), rng.random(256)
    encoded = [text.encode("utf-8", "surrogatepass") for text in texts]
    lengths, weights = kernels.utf8_lengths_and_weights(*code_points(texts), chars, False)
    assert lengths.tolist() == [len(e) for e in encoded]
    assert np.allclose(weights, [sum(chars[ord(c)] for c in text) for text in texts])
    lengths, weights = kernels.utf8_lengths_and_weights(*code_points(texts), bytes_, True)
    assert np.allclose(weights, [sum(bytes_[b] for b in e) for e in encoded])
    no_table = kernels.utf8_lengths_and_weights(*code_points(texts), np.zeros(0), False)[1]
    assert no_table.tolist() == [0] * len(texts)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1) | st.integers(0, 20), st.integers(0, 10**6)), max_size=40))
def test_insert_keeps_the_first_row_of_each_key(pairs: list[tuple[int, int]]) -> None:
    """kernels.insert into a table at most half full (keys 0 and colliding small keys included): every key
    is found with the row it was first inserted with, as a dict's setdefault keeps it."""
    capacity = 1 << max(2, (2 * len(pairs)).bit_length())
    keys, rows = np.zeros(capacity, dtype=np.uint64), np.full(capacity, -1, dtype=np.int32)
    batch_keys = np.array([k for k, _ in pairs], dtype=np.uint64)
    batch_rows = np.array([r for _, r in pairs], dtype=np.int32)
    kernels.insert(keys, rows, batch_keys, batch_rows)
    expected: dict[int, int] = {}
    for key, row in pairs:
        expected.setdefault(key, row)
    stored = rows >= 0
    assert dict(zip(keys[stored].tolist(), rows[stored].tolist(), strict=True)) == expected
