"""Near-duplicate keys: character-shingle MinHash signatures (datasketch's scheme) and LSH band hashes.

Two rows sharing any band hash are near-duplicates (ta/data/dedup.py). The loops over every shingle are
compiled (ta/data/kernels.py); tests check the signatures against datasketch itself.
"""

from __future__ import annotations

import functools
from typing import Any

from ta.data.normalise import code_points


def shingle_hashes(text: str, size: int) -> Any:
    """32-bit hashes (numpy array) of the text's character n-grams, which work for Chinese (written
    without spaces) as well as for English: a polynomial hash over the code points, then mixed (murmur3's
    64-bit finaliser, so that every code point reaches the top half kept). A text shorter than `size` is
    padded with U+0000 to one n-gram."""
    from ta.data import kernels

    hashes, _ = kernels.shingle_hashes(*code_points([text]), size)
    return hashes


@functools.lru_cache(maxsize=4)
def permutations(num_perm: int) -> tuple[Any, Any]:
    """The (a, b) of datasketch's MinHash(num_perm, seed=1) in its affine32 scheme, drawn the way it draws
    them (a odd, both uint32), without importing datasketch (which pulls in scipy: a second at startup).
    tests/data/test_minhash.py checks them against datasketch."""
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
    shingles (ta/data/kernels.py). `used`: only the first this many permutations (LSH bands may not use
    them all)."""
    from ta.data import kernels

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
