"""prepare's decisions over the whole set and its accounting, in the main process, in input order.

SetDecisions takes what needs the rows seen before: exact and near duplicates, per-source weight and cap.
Tally counts every row into exactly one place (kept, or rejected with its reason) for the summary,
metrics/prepare.json and the plot data.
"""

from __future__ import annotations

import csv
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages import filters
from stages.data import DataError
from stages.judging import Verdicts

if TYPE_CHECKING:
    from stages.prepare import Source

# Every reject reason, in the order a row meets them. Metrics list all of them (0 included) so that
# `dvc metrics diff` compares the same keys run after run.
STRUCTURAL_REASONS = ["not_utf8", "malformed_json", "wrong_top_level"]
CONTENT_REASONS = ["missing_field", "wrong_type", "bad_roles", "no_pair"]
FILTER_REASONS = [reason for reason, _ in filters.ROW_FILTERS]
SET_REASONS = ["duplicate", "near_duplicate", "not_sampled", "over_cap"]
REASONS = STRUCTURAL_REASONS + CONTENT_REASONS + FILTER_REASONS + SET_REASONS


class SetDecisions:
    """Decisions that need the rows seen before, taken in input order: exact duplicates (same id),
    near-duplicates (a shared MinHash band), then each source's weight sample and cap."""

    def __init__(self, seed: int, on_error: str) -> None:
        self.seed = seed
        self.on_error = on_error
        self.ids = KeyTable()
        self.bands = KeyTable()
        # Row number -> where it came from, for rows that own a key: (source index, line), 6 bytes a row.
        self.sources: list[str] = []
        self.place_source, self.place_line = array("H"), array("L")
        self.kept_per_source: Counter[str] = Counter()
        self.reserved: set[str] = set()

    def decide(self, source: Source, verdicts: Verdicts) -> None:
        if self.on_error == "stop":
            for i, reason in enumerate(verdicts.reasons):
                if reason in STRUCTURAL_REASONS:
                    raise DataError(verdicts.details[i], reason)
        if source.expected_rows and source.name not in self.reserved:  # room for its keys, grown once
            self.reserved.add(source.name)
            self.ids.reserve(source.expected_rows)
            if verdicts.bands is not None:
                self.bands.reserve(source.expected_rows * verdicts.bands.shape[1])
        if verdicts.kept:
            duplicates = self._dedup(verdicts)
            self._mix(source, verdicts, len(verdicts.kept) - duplicates)
        verdicts.still = verdicts.final()

    def _dedup(self, verdicts: Verdicts) -> int:
        """Exact and near duplicates of a chunk's rows, in input order (stages/kernels.py: deduplicate):
        each row against every row before it, in this chunk or an earlier one."""
        import numpy as np

        from stages import kernels

        kept = verdicts.kept
        ids = np.frombuffer(bytes.fromhex("".join(verdicts.ids)), dtype=">u8").astype(np.uint64)
        bands = verdicts.bands if verdicts.bands is not None else np.empty((len(kept), 0), dtype=np.uint64)
        self.ids.reserve(len(kept))
        self.bands.reserve(bands.size)
        rows = self.remember(verdicts)
        earlier, exact = kernels.deduplicate(*self.ids.arrays(), *self.bands.arrays(), ids, bands, rows)
        duplicates = np.flatnonzero(earlier >= 0).tolist()
        for k in duplicates:
            i, where = kept[k], self.place(int(earlier[k]))
            if exact[k]:
                verdicts.reasons[i], verdicts.details[i] = "duplicate", f"same content as {where}"
            else:
                verdicts.reasons[i], verdicts.details[i] = "near_duplicate", f"near-duplicate of {where}"
        self.ids.size += len(kept) - len(duplicates)
        self.bands.size += (len(kept) - len(duplicates)) * bands.shape[1]  # at most: a row may repeat a band
        return len(duplicates)

    def remember(self, verdicts: Verdicts) -> Any:
        """Row numbers for the judge's kept rows, which remember where each came from."""
        import numpy as np

        first = len(self.place_line)
        if not self.sources or self.sources[-1] != verdicts.file:  # a chunk comes from one source
            self.sources.append(verdicts.file)
        self.place_source.extend([len(self.sources) - 1] * len(verdicts.kept))
        self.place_line.extend([verdicts.lines[i] for i in verdicts.kept])
        return np.arange(first, len(self.place_line), dtype=np.int32)

    def place(self, row: int) -> str:
        return f"{self.sources[self.place_source[row]]}:{self.place_line[row]}"

    def _mix(self, source: Source, verdicts: Verdicts, unique: int) -> None:
        """Each source's weight sample and cap, over the `unique` rows that are not duplicates."""
        weight, max_rows = source.config.weight, source.config.max_rows
        if weight >= 1 and not max_rows:
            self.kept_per_source[source.name] += unique
            return
        for k in verdicts.final():
            i = verdicts.kept[k]
            if weight < 1 and not filters.is_sampled(self.seed, verdicts.ids[k], weight):
                verdicts.reasons[i], verdicts.details[i] = "not_sampled", f"outside the source's weight {weight} sample"
            elif max_rows and self.kept_per_source[source.name] >= max_rows:
                verdicts.reasons[i], verdicts.details[i] = "over_cap", f"the source already gave max_rows {max_rows}"
            else:
                self.kept_per_source[source.name] += 1


class KeyTable:
    """64-bit keys -> the first row (a number) that had them, for millions of keys: an open-addressing
    hash table in two numpy arrays (linear probing, at most half full, 12 bytes a slot), read and written
    by the compiled loops of stages/kernels.py."""

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

        from stages import kernels

        capacity = len(self.keys)
        while 2 * (self.size + more) > capacity:
            capacity *= 2
        if capacity > len(self.keys):
            used = self.rows >= 0
            keys, rows = self.keys[used], self.rows[used]
            self.keys = np.zeros(capacity, dtype=np.uint64)
            self.rows = np.full(capacity, -1, dtype=np.int32)
            kernels.insert(self.keys, self.rows, keys, rows)


@dataclass
class Tally:
    """Counts for the summary and metrics/prepare.json: every row lands in exactly one count."""

    rows_in: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_per_source: dict[str, Counter[str]] = field(default_factory=dict)
    openings: Counter[str] = field(default_factory=Counter)
    lengths: Counter[int] = field(default_factory=Counter)  # token length -> kept rows (estimated, see add)
    counted: int = 0  # kept rows whose token length was counted
    redacted: Counter[str] = field(default_factory=Counter)

    def add(self, source: Source, verdicts: Verdicts) -> None:
        self.rows_in[source.name] += len(verdicts.lines)
        final = verdicts.still
        self.kept[source.name] += len(final)
        self.openings.update([verdicts.openings[k] for k in final])
        counted = [tokens for k in final if (tokens := verdicts.tokens[k]) >= 0]  # one in `length_every` ...
        self.counted += len(counted)
        for tokens, rows in Counter(counted).items():
            self.lengths[tokens] += rows * source.length_every  # ... stands for that many
        rejected = Counter(verdicts.reasons)
        del rejected[None]  # the kept rows
        if rejected:
            self.rejected.update(rejected)
            self.rejected_per_source.setdefault(source.name, Counter()).update(rejected)
        self.redacted.update(verdicts.redacted)

    def summary(self, sources: list[Source], formats: dict[str, str]) -> dict[str, Any]:
        kept, near = sum(self.kept.values()), self.rejected["near_duplicate"]
        top = sorted(self.openings.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        return {
            "rows_in": sum(self.rows_in.values()),
            "kept": kept,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": {reason: self.rejected[reason] for reason in REASONS},
            "sources": {
                source.name: {
                    "format": formats.get(source.name, ""),
                    "rows_in": self.rows_in[source.name],
                    "kept": self.kept[source.name],
                    "rejected": dict(sorted(self.rejected_per_source.get(source.name, Counter()).items())),
                }
                for source in sources
            },
            "pii_redacted": {kind: self.redacted[kind] for kind in filters.PII_PATTERNS},
            "diversity": {
                "distinct_openings": len(self.openings),
                "top_opening_share": round(top[0][1] / kept, 4) if kept else 0.0,
                "top_openings": dict(top),
                "near_duplicate_share": round(near / (kept + near), 4) if kept + near else 0.0,
                "tokens": self.token_stats(),
            },
        }

    def token_stats(self) -> dict[str, float]:
        total = sum(self.lengths.values())
        if not total:
            return {"mean": 0.0, "p10": 0, "p50": 0, "p90": 0, "max": 0, "counted_rows": 0}
        ordered = sorted(self.lengths.items())

        def quantile(q: float) -> int:
            seen = 0
            for tokens, count in ordered:
                seen += count
                if seen > q * total:
                    return tokens
            return ordered[-1][0]

        mean = sum(t * c for t, c in ordered) / total
        return {
            "mean": round(mean, 1),
            "p10": quantile(0.1),
            "p50": quantile(0.5),
            "p90": quantile(0.9),
            "max": ordered[-1][0],
            "counted_rows": self.counted,
        }


def length_buckets(lengths: Counter[int]) -> list[tuple[str, int]]:
    """Token lengths in power-of-two buckets ("64-127"), smallest first, empty buckets included."""
    counts: Counter[int] = Counter()
    for tokens, count in lengths.items():
        counts[max(tokens, 1).bit_length()] += count
    top = max(counts, default=1)
    return [(f"{2 ** (b - 1) if b > 1 else 0}-{2**b - 1}", counts[b]) for b in range(1, top + 1)]


def write_plot_data(summary: dict[str, Any], lengths: Counter[int], openings_csv: Path, lengths_csv: Path) -> None:
    """CSV for `dvc plots` (bar charts; rendered in the browser, where CJK fonts exist)."""
    openings_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(openings_csv, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["opening", "rows"])
        writer.writerows(summary["diversity"]["top_openings"].items())
    with open(lengths_csv, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["tokens", "rows"])
        writer.writerows(length_buckets(lengths))


def print_summary(summary: dict[str, Any]) -> None:
    print(f"rows in {summary['rows_in']} = kept {summary['kept']} + rejected {summary['rejected']}")
    for reason, count in summary["rejected_by_reason"].items():
        if count:
            print(f"  rejected {reason:<16} {count}")
    for name, count in summary.get("splits", {}).items():
        print(f"  {name:<25} {count}")
