"""prepare's inner loops over characters and shingles, compiled with numba: a chunk of texts travels as one
array of code points (`codes`) with each text's start (`starts`, one more entry than texts, the last is
the end), and every loop runs over all of them in one call.

numpy alone needs one array pass per step and temporaries the size of the chunk; these loops do each
step once per element, in registers. They compile when this module is imported (explicit signatures,
cached beside it in __pycache__, so only the first import on a machine pays), which prepare does before
it forks its workers. ta/data/normalise.py, minhash.py and dedup.py wrap them and document what they
compute; the tests check them against plain Python and datasketch.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types

_UINT32 = np.uint32(0xFFFFFFFF)
# the arrays' types, for the explicit signatures: contiguous, one dimension
U32, I64, BOOL = (dtype[::1] for dtype in (types.uint32, types.int64, types.boolean))


@njit(cache=True, nogil=True)
def _grown(out, written, more):
    """`out` with its first `written` codes, in an array with room for `more` codes beyond twice its size."""
    grown = np.empty(2 * len(out) + more, dtype=np.uint32)
    grown[:written] = out[:written]
    return grown


@njit(cache=True, nogil=True, inline="always")
def _put(out, written, after_blank, char, blank):
    """One character of normalised text: a blank is written only after a non-blank (a run of blanks becomes
    one U+0020; the caller drops a trailing one). Returns (written, after_blank)."""
    if not blank:
        out[written] = char
        return written + 1, False
    if not after_blank:
        out[written] = 32
        return written + 1, True
    return written, True


@njit(types.Tuple((U32, I64, BOOL))(U32, I64, U32, types.uint8[::1], BOOL, U32, I64), cache=True, nogil=True)
def normalise(codes, starts, folded, kinds, space, expansions, expansion_starts):
    """Each text's characters through the tables: kind 1, the one character `folded[code]`; kind 2, the
    characters of expansion number `folded[code]` (`expansions`, from `expansion_starts[e]` to the next
    start); runs of `space` characters become one U+0020, none at either end. Returns (the normalised
    codes, their starts, whether a text has a character of kind 0, which the tables cannot do)."""
    count = len(starts) - 1
    out = np.empty(len(codes) + 64, dtype=np.uint32)
    out_starts = np.empty(count + 1, dtype=np.int64)
    unplain = np.zeros(count, dtype=np.bool_)
    written = 0
    for t in range(count):
        out_starts[t] = written
        after_blank = True  # leading blanks go
        for i in range(starts[t], starts[t + 1]):
            code = codes[i]
            kind = kinds[code]
            if kind == 2:
                e = folded[code]
                # room for this expansion and one code a character after it (expansions can outrun the input)
                if written + expansion_starts[e + 1] - expansion_starts[e] + len(codes) - i > len(out):
                    out = _grown(out, written, expansion_starts[e + 1] - expansion_starts[e])
                for j in range(expansion_starts[e], expansion_starts[e + 1]):
                    written, after_blank = _put(out, written, after_blank, expansions[j], space[expansions[j]])
            else:
                written, after_blank = _put(out, written, after_blank, folded[code], space[code])
                if kind == 0:
                    unplain[t] = True
        if written > out_starts[t] and after_blank:  # a trailing blank
            written -= 1
    out_starts[count] = written
    return out[:written], out_starts, unplain


@njit(types.Tuple((I64, types.float64[::1]))(U32, I64, types.float64[::1], types.boolean), cache=True, nogil=True)
def utf8_lengths_and_weights(codes, starts, weights, byte_level):
    """Each text's UTF-8 length (a surrogate counts 3, as surrogatepass writes it), and what its units
    weigh in all: its code points, or with `byte_level` the bytes of their UTF-8 (0 when `weights` is
    empty)."""
    count = len(starts) - 1
    lengths = np.zeros(count, dtype=np.int64)
    sums = np.zeros(count, dtype=np.float64)
    weighed = len(weights) > 0
    for t in range(count):
        size, weight = 0, 0.0
        for i in range(starts[t], starts[t + 1]):
            code = np.int64(codes[i])
            width = 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
            size += width
            if not weighed:
                continue
            if not byte_level:
                weight += weights[code]
            elif width == 1:
                weight += weights[code]
            else:
                lead = 0xC0 if width == 2 else 0xE0 if width == 3 else 0xF0
                weight += weights[lead | (code >> (6 * (width - 1)))]
                for k in range(width - 2, -1, -1):  # continuation bytes, 6 bits each
                    weight += weights[0x80 | ((code >> (6 * k)) & 0x3F)]
        lengths[t], sums[t] = size, weight
    return lengths, sums


@njit(types.Tuple((U32, I64))(U32, I64, types.int64), cache=True, nogil=True)
def shingle_hashes(codes, starts, size):
    """32-bit hashes of every run of `size` code points within each text (a text shorter than that is padded
    with U+0000 to one run): the polynomial sum(code * 1000003 ** (size - 1 - k)) modulo 2**64, mixed by
    murmur3's 64-bit finaliser, top half. Returns (the hashes, where each text's start)."""
    count = len(starts) - 1
    offsets = np.empty(count + 1, dtype=np.int64)
    total = 0
    for t in range(count):
        offsets[t] = total
        total += max(starts[t + 1] - starts[t] - size + 1, 1)
    offsets[count] = total
    top = np.uint64(1)  # 1000003 ** (size - 1): the weight of a run's first code point
    for _ in range(size - 1):
        top = np.uint64(top * np.uint64(1_000_003))
    padded = np.zeros(size, dtype=np.uint32)
    sums = np.empty(total, dtype=np.uint64)
    hashes = np.empty(total, dtype=np.uint32)
    for t in range(count):
        text = codes[starts[t] : starts[t + 1]]
        if len(text) < size:
            padded[:] = 0
            padded[: len(text)] = text
            text = padded
        first, runs = offsets[t], offsets[t + 1] - offsets[t]
        value = np.uint64(0)
        for k in range(size):
            value = np.uint64(value * np.uint64(1_000_003) + np.uint64(text[k]))
        sums[first] = value
        for s in range(1, runs):  # rolled along: the first code point out, the next one in
            value = np.uint64(
                (value - np.uint64(text[s - 1]) * top) * np.uint64(1_000_003) + np.uint64(text[s + size - 1])
            )
            sums[first + s] = value
    for s in range(total):  # the finaliser, over every hash at once: vectorises
        x = sums[s]
        x ^= x >> np.uint64(33)
        x = x * np.uint64(0xFF51AFD7ED558CCD)
        x ^= x >> np.uint64(33)
        x = x * np.uint64(0xC4CEB9FE1A85EC53)
        x ^= x >> np.uint64(33)
        hashes[s] = np.uint32(x >> np.uint64(32))
    return hashes, offsets


@njit(types.uint32[:, ::1](U32, I64, U32, U32), cache=True, nogil=True)
def min_hashes(hashes, offsets, a, b):
    """datasketch's affine32 MinHash of each text's hashes: murmur3's 32-bit finaliser of each hash h, then
    min over the text of (a * h + b) modulo 2**32, for every permutation (a, b): (texts x permutations)."""
    count, perms = len(offsets) - 1, len(a)
    signatures = np.empty((count, perms), dtype=np.uint32)
    lowest = np.empty(perms, dtype=np.uint32)
    for t in range(count):
        lowest[:] = _UINT32
        for s in range(offsets[t], offsets[t + 1]):
            h = hashes[s]
            h = np.uint32(h ^ (h >> np.uint32(16)))
            h = np.uint32(h * np.uint32(0x85EBCA6B))
            h = np.uint32(h ^ (h >> np.uint32(13)))
            h = np.uint32(h * np.uint32(0xC2B2AE35))
            h = np.uint32(h ^ (h >> np.uint32(16)))
            for q in range(perms):  # across permutations: vectorises
                lowest[q] = min(lowest[q], np.uint32(a[q] * h + b[q]))
        signatures[t] = lowest
    return signatures


# ------------------------------------------------------------------ key tables (prepare's seen keys)
# A table is two arrays of a power-of-two length: keys (uint64) and the row that first had each (int32,
# -1 in an empty slot). Open addressing with linear probing; the caller keeps it at most half full.

I32 = types.int32[::1]
U64 = types.uint64[::1]


@njit(cache=True, nogil=True)
def _slot(keys, rows, key):
    """Where `key` is stored, or the empty slot where it would go."""
    mask = len(keys) - 1
    slot = np.int64(key & np.uint64(mask))
    while rows[slot] >= 0 and keys[slot] != key:
        slot = (slot + 1) & mask
    return slot


@njit(types.void(U64, I32, U64, I32), cache=True, nogil=True)
def insert(table_keys, table_rows, keys, rows):
    """Store each key with its row, unless it is stored already (the first row stays)."""
    for i in range(len(keys)):
        slot = _slot(table_keys, table_rows, keys[i])
        if table_rows[slot] < 0:
            table_keys[slot], table_rows[slot] = keys[i], rows[i]


@njit(
    types.Tuple((I32, types.boolean[::1]))(U64, I32, U64, I32, U64, types.uint64[:, ::1], I32),
    cache=True,
    nogil=True,
)
def deduplicate(id_keys, id_rows, band_keys, band_rows, ids, bands, rows):
    """Rows in order, each against the rows stored before it: the stored row with the same id (an exact
    duplicate); else the one holding the first of its bands that a stored row has (a near-duplicate);
    else -1, and the row is stored under its id and its bands. Returns (that row, whether it is an exact
    duplicate) for each row."""
    earlier = np.full(len(ids), -1, dtype=np.int32)
    exact = np.zeros(len(ids), dtype=np.bool_)
    for k in range(len(ids)):
        at = _slot(id_keys, id_rows, ids[k])
        if id_rows[at] >= 0:
            earlier[k], exact[k] = id_rows[at], True
            continue
        for band in bands[k]:
            hit = band_rows[_slot(band_keys, band_rows, band)]
            if hit >= 0:
                earlier[k] = hit
                break
        if earlier[k] < 0:
            id_keys[at], id_rows[at] = ids[k], rows[k]
            for band in bands[k]:
                slot = _slot(band_keys, band_rows, band)
                if band_rows[slot] < 0:
                    band_keys[slot], band_rows[slot] = band, rows[k]
    return earlier, exact
