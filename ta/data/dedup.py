"""Exact and near-duplicate rows, decided in input order over everything read before (prepare's main process).

A row is a duplicate of the first row with the same id (ta/data/split.py) and a near-duplicate of the first
row sharing a MinHash band (ta/data/minhash.py). The keys seen live in two `KeyTable`s, so millions of rows
cost a few bytes each, and a chunk is decided in one compiled call (ta/data/kernels.py: deduplicate).
"""

from __future__ import annotations

from array import array
from typing import Any

from ta.data.rows import RowDecisions


class Deduplicator:
    """Each row against every row before it, in this chunk or an earlier one; remembers where each key was
    first seen so that a reject can name it."""

    def __init__(self) -> None:
        self.ids = KeyTable()
        self.bands = KeyTable()
        # Row number -> where it came from, for rows that own a key: (source index, line), 6 bytes a row.
        self.sources: list[str] = []
        self.place_source, self.place_line = array("H"), array("L")

    def reserve(self, rows: int, bands_per_row: int) -> None:
        """Room for the keys of a source of about `rows` rows, grown once rather than doubling."""
        self.ids.reserve(rows)
        self.bands.reserve(rows * bands_per_row)

    def reject_duplicates(self, decisions: RowDecisions) -> int:
        """Mark the chunk's duplicate and near-duplicate rows rejected; return how many there were."""
        import numpy as np

        from ta.data import kernels

        passed = decisions.passed
        ids = np.frombuffer(bytes.fromhex("".join(decisions.ids)), dtype=">u8").astype(np.uint64)
        bands = decisions.bands if decisions.bands is not None else np.empty((len(passed), 0), dtype=np.uint64)
        self.ids.reserve(len(passed))
        self.bands.reserve(bands.size)
        rows = self.remember(decisions)
        earlier, exact = kernels.deduplicate(*self.ids.arrays(), *self.bands.arrays(), ids, bands, rows)
        duplicates = np.flatnonzero(earlier >= 0).tolist()
        for k in duplicates:
            i, where = passed[k], self.place(int(earlier[k]))
            if exact[k]:
                decisions.reject(i, "duplicate", f"same content as {where}")
            else:
                decisions.reject(i, "near_duplicate", f"near-duplicate of {where}")
        self.ids.size += len(passed) - len(duplicates)
        self.bands.size += (len(passed) - len(duplicates)) * bands.shape[1]  # at most: a row may repeat a band
        return len(duplicates)

    def remember(self, decisions: RowDecisions) -> Any:
        """Row numbers for the chunk's passing rows, which remember where each came from."""
        import numpy as np

        first = len(self.place_line)
        if not self.sources or self.sources[-1] != decisions.file:  # a chunk comes from one source
            self.sources.append(decisions.file)
        self.place_source.extend([len(self.sources) - 1] * len(decisions.passed))
        self.place_line.extend([decisions.lines[i] for i in decisions.passed])
        return np.arange(first, len(self.place_line), dtype=np.int32)

    def place(self, row: int) -> str:
        return f"{self.sources[self.place_source[row]]}:{self.place_line[row]}"


class KeyTable:
    """64-bit keys -> the first row (a number) that had them, for millions of keys: an open-addressing
    hash table in two numpy arrays (linear probing, at most half full, 12 bytes a slot), read and written
    by the compiled loops of ta/data/kernels.py."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        import numpy as np

        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.rows = np.full(capacity, -1, dtype=np.int32)  # -1: an empty slot
        self.size = 0  # keys stored (or an upper bound)

    def arrays(self) -> tuple[Any, Any]:
        return self.keys, self.rows

    def reserve(self, more: int) -> None:
        """Room for `more` keys than are stored, in one growth rather than a doubling at a time."""
        import numpy as np

        from ta.data import kernels

        capacity = len(self.keys)
        while 2 * (self.size + more) > capacity:
            capacity *= 2
        if capacity > len(self.keys):
            used = self.rows >= 0
            keys, rows = self.keys[used], self.rows[used]
            self.keys = np.zeros(capacity, dtype=np.uint64)
            self.rows = np.full(capacity, -1, dtype=np.int32)
            kernels.insert(self.keys, self.rows, keys, rows)
