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
from stages.judging import Verdict

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
        self.ids = filters.FirstSeen()
        self.bands = filters.FirstSeen()
        # Row number -> where it came from, for rows that own a key: (source index, line), 6 bytes a row.
        self.sources: list[str] = []
        self.place_source, self.place_line = array("H"), array("L")
        self.kept_per_source: Counter[str] = Counter()

    def decide(self, source: Source, verdicts: list[Verdict]) -> None:
        if self.on_error == "stop":
            for verdict in verdicts:
                if verdict.reason in STRUCTURAL_REASONS:
                    raise DataError(verdict.detail, verdict.reason)
        kept = [v for v in verdicts if v.reason is None]
        if kept:
            self._dedup(kept)
            self._mix(source, [v for v in kept if v.reason is None])

    def _dedup(self, kept: list[Verdict]) -> None:
        """Exact and near duplicates of a chunk's rows, looked up together. A row none of whose keys is
        stored or shared with another row of the chunk is new: only the others are decided one by one,
        in input order, as each may have an earlier row of the chunk to be a duplicate of."""
        import numpy as np

        ids = np.array([int(v.id, 16) for v in kept], dtype=np.uint64)
        bands = np.array([v.bands for v in kept], dtype=np.uint64).reshape(len(kept), -1)
        stored_id = self.ids.find(ids)
        stored_bands = self.bands.find(bands.ravel()).reshape(bands.shape)
        suspects = (
            (stored_id >= 0)
            | (stored_bands >= 0).any(axis=1)
            | _repeated(ids)
            | _repeated(bands.ravel()).reshape(bands.shape).any(axis=1)
        )
        rows = self.remember(kept)
        new = np.ones(len(kept), dtype=bool)
        seen_ids: dict[int, int] = {}
        seen_bands: dict[int, int] = {}
        for i in np.flatnonzero(suspects).tolist():
            verdict, key, row_bands = kept[i], int(ids[i]), bands[i].tolist()
            earlier = int(stored_id[i]) if stored_id[i] >= 0 else seen_ids.get(key)
            if earlier is not None:
                verdict.reason, verdict.detail = "duplicate", f"same content as {self.place(earlier)}"
            else:
                stored = stored_bands[i].tolist()
                hits = (hit if hit >= 0 else seen_bands.get(band) for hit, band in zip(stored, row_bands, strict=True))
                similar = next((hit for hit in hits if hit is not None), None)
                if similar is None:
                    seen_ids[key] = int(rows[i])
                    seen_bands.update(dict.fromkeys(row_bands, int(rows[i])))
                    continue
                verdict.reason, verdict.detail = "near_duplicate", f"near-duplicate of {self.place(similar)}"
            new[i] = False
        self.ids.add(ids[new], rows[new])
        self.bands.add(bands[new].ravel(), np.repeat(rows[new], bands.shape[1]))
        self.ids.flush()
        self.bands.flush()

    def remember(self, verdicts: list[Verdict]) -> Any:
        """Row numbers for these rows, which remember where each came from."""
        import numpy as np

        first = len(self.place_line)
        name = verdicts[0].source.rsplit(":", 1)[0]  # a chunk comes from one source
        if not self.sources or self.sources[-1] != name:
            self.sources.append(name)
        self.place_source.extend([len(self.sources) - 1] * len(verdicts))
        self.place_line.extend([v.line for v in verdicts])
        return np.arange(first, len(self.place_line), dtype=np.int64)

    def place(self, row: int) -> str:
        return f"{self.sources[self.place_source[row]]}:{self.place_line[row]}"

    def _mix(self, source: Source, kept: list[Verdict]) -> None:
        weight, max_rows = source.config.weight, source.config.max_rows
        for verdict in kept:
            if weight < 1 and not filters.is_sampled(self.seed, verdict.id, weight):
                verdict.reason, verdict.detail = "not_sampled", f"outside the source's weight {weight} sample"
            elif max_rows and self.kept_per_source[source.name] >= max_rows:
                verdict.reason, verdict.detail = "over_cap", f"the source already gave max_rows {max_rows}"
            else:
                self.kept_per_source[source.name] += 1


def _repeated(keys: Any) -> Any:
    """Which keys (a uint64 array) occur more than once in it."""
    import numpy as np

    order = np.argsort(keys, kind="stable")
    same = keys[order][1:] == keys[order][:-1]
    marked = np.zeros(len(keys), dtype=bool)
    marked[1:] |= same
    marked[:-1] |= same
    repeated = np.empty(len(keys), dtype=bool)
    repeated[order] = marked
    return repeated


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

    def add(self, source: Source, verdicts: list[Verdict]) -> None:
        self.rows_in[source.name] += len(verdicts)
        kept = [v for v in verdicts if v.reason is None]
        self.kept[source.name] += len(kept)
        self.openings.update(v.opening for v in kept)
        counted = [v.tokens for v in kept if v.counted]  # a sample of one in `length_every` rows ...
        self.counted += len(counted)
        for tokens, rows in Counter(counted).items():
            self.lengths[tokens] += rows * source.length_every  # ... stands for that many
        rejected = Counter(v.reason for v in verdicts if v.reason is not None)
        if rejected:
            self.rejected.update(rejected)
            self.rejected_per_source.setdefault(source.name, Counter()).update(rejected)
        for verdict in verdicts:
            if verdict.redacted:
                self.redacted.update(verdict.redacted)

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
