"""Near-duplicate keys (ta/data/minhash.py): shingle hashes as specified, MinHash signatures and LSH bands
exactly as datasketch computes and chooses them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ta.data import minhash

TEXT = "光合作用是绿色植物利用光能，把二氧化碳和水合成有机物并释放氧气的过程，它为几乎所有生命提供能量。"


def shingle_set(text: str) -> set[str]:
    return {text[i : i + 5] for i in range(len(text) - 4)}


def reference_shingle_hashes(text: str, size: int) -> list[int]:
    """The shingle hash as specified, in Python integers: a polynomial over the code points modulo 2**64,
    murmur3's 64-bit finaliser, the top 32 bits; a short text padded with U+0000 to one shingle."""
    mask = (1 << 64) - 1
    codes = [ord(c) for c in text] + [0] * max(0, size - len(text))
    hashes = []
    for start in range(len(codes) - size + 1):
        value = 0
        for code in codes[start : start + size]:
            value = (value * 1_000_003 + code) & mask
        for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
            value = ((value ^ (value >> 33)) * multiplier) & mask
        hashes.append((value ^ (value >> 33)) >> 32)
    return hashes


def test_signature_is_exactly_datasketch_minhash_of_the_shingles() -> None:
    from datasketch import MinHash

    reference = MinHash(num_perm=64, seed=1, hashfunc=int)
    reference.update_batch(minhash.shingle_hashes(TEXT, 5).tolist())
    assert np.array_equal(minhash.minhash_signature(TEXT, 64), reference.hashvalues)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(alphabet=st.sampled_from("光合作用ab ，") | st.characters(), max_size=30), max_size=6),
    st.integers(1, 6),
    st.sampled_from([16, 64, 128]),
)
def test_compiled_shingles_and_signatures_match_python_and_datasketch(
    texts: list[str], size: int, num_perm: int
) -> None:
    """Every text of a batch (empty and shorter-than-a-shingle ones, astral characters) gets the hashes
    the spec gives and the signature datasketch computes from them; `used` keeps the first permutations."""
    from datasketch import MinHash

    signatures = minhash.minhash_signatures(texts, num_perm, size)
    first = minhash.minhash_signatures(texts, num_perm, size, used=num_perm // 2)
    assert signatures.shape == (len(texts), num_perm)
    for text, signature, half in zip(texts, signatures, first, strict=True):
        hashes = minhash.shingle_hashes(text, size).tolist()
        assert hashes == reference_shingle_hashes(text, size)
        reference = MinHash(num_perm=num_perm, seed=1, hashfunc=int)
        reference.update_batch(hashes)
        assert np.array_equal(signature, reference.hashvalues)
        assert np.array_equal(half, signature[: num_perm // 2])


def test_shingle_hashes_do_not_collide_on_a_sentence() -> None:
    assert len(set(minhash.shingle_hashes(TEXT, 5).tolist())) == len(shingle_set(TEXT))


@pytest.mark.parametrize("changes", [0, 3, 8])
def test_signature_estimates_the_jaccard_similarity(changes: int) -> None:
    other = list(TEXT)
    for i in range(changes):
        other[5 + 6 * i] = "字"
    other_text = "".join(other)
    true = len(shingle_set(TEXT) & shingle_set(other_text)) / len(shingle_set(TEXT) | shingle_set(other_text))
    estimate = np.mean(minhash.minhash_signature(TEXT, 256) == minhash.minhash_signature(other_text, 256))
    assert abs(estimate - true) < 0.12


@pytest.mark.parametrize("num_perm", [16, 64, 128, 256])
def test_permutations_and_bands_are_datasketchs(num_perm: int) -> None:
    from datasketch import MinHash, MinHashLSH

    a, b = minhash.permutations(num_perm)
    assert np.array_equal(np.array([a, b]), MinHash(num_perm=num_perm, seed=1).permutations)
    for threshold in (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95):
        try:
            lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        except ValueError:  # datasketch refuses a single band
            with pytest.raises(ValueError, match="single LSH band"):
                minhash.lsh_bands(threshold, num_perm)
        else:
            assert minhash.lsh_bands(threshold, num_perm) == (lsh.b, lsh.r), threshold


def test_near_identical_texts_share_a_band_and_unrelated_ones_do_not() -> None:
    bands, rows = minhash.lsh_bands(0.8, 64)
    assert (bands, rows) == (5, 11)  # datasketch's choice for threshold 0.8 and 64 permutations
    base = set(minhash.band_hashes(TEXT, 64, bands, rows))
    assert base & set(minhash.band_hashes(TEXT[:-1] + "！", 64, bands, rows))
    assert not base & set(minhash.band_hashes("The derivative of x squared is 2x, by the power rule.", 64, bands, rows))


def test_band_hashes_of_a_batch_are_each_texts_own() -> None:
    texts = [TEXT, "", "short", TEXT[::-1]]
    many = minhash.band_hashes_many(texts, 64, 5, 11)
    assert many.shape == (4, 5)
    assert [row.tolist() for row in many] == [minhash.band_hashes(text, 64, 5, 11) for text in texts]
