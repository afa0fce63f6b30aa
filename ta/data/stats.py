"""prepare's accounting: every row lands in exactly one count (kept, or rejected with its reason), for the
summary, metrics/prepare.json and the plot data."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ta.data.filters import ROW_FILTERS
from ta.data.io import loads_quietly
from ta.data.pii import PII_PATTERNS
from ta.data.rows import RowDecisions
from ta.data.sources import Source
from ta.files import open_atomically

# Every reject reason, in the order a row meets them. Metrics list all of them (0 included) so that
# `dvc metrics diff` compares the same keys run after run.
STRUCTURAL_REASONS = ["not_utf8", "malformed_json", "wrong_top_level"]
CONTENT_REASONS = ["missing_field", "wrong_type", "bad_roles", "no_pair", "no_preference"]
REVIEW_REASONS = ["review_rejected", "review_pending"]  # a self-instruct pair a person rejected / did not review
FILTER_REASONS = [reason for reason, _ in ROW_FILTERS]
SET_REASONS = ["duplicate", "near_duplicate", "not_sampled", "over_cap"]
REASONS = STRUCTURAL_REASONS + CONTENT_REASONS + REVIEW_REASONS + FILTER_REASONS + SET_REASONS


@dataclass
class PrepareStats:
    """Counts for the summary and metrics/prepare.json: every row lands in exactly one count."""

    rows_in: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_per_source: dict[str, Counter[str]] = field(default_factory=dict)
    openings: Counter[str] = field(default_factory=Counter)
    lengths: Counter[int] = field(default_factory=Counter)  # token length -> kept rows (estimated, see add)
    counted: int = 0  # kept rows whose token length was counted
    redacted: Counter[str] = field(default_factory=Counter)
    # selfinstruct sources: rows in and kept per provenance (model, endpoint, templates, reviewer decision)
    provenance: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)

    def add(self, source: Source, decisions: RowDecisions) -> None:
        self.rows_in[source.name] += len(decisions.lines)
        final = decisions.kept
        self.kept[source.name] += len(final)
        self.openings.update([decisions.openings[k] for k in final])
        counted = [tokens for k in final if (tokens := decisions.tokens[k]) >= 0]  # one in `length_every` ...
        self.counted += len(counted)
        for tokens, rows in Counter(counted).items():
            self.lengths[tokens] += rows * source.length_every  # ... stands for that many
        rejected = Counter(decisions.reject_reasons)
        del rejected[None]  # the kept rows
        if rejected:
            self.rejected.update(rejected)
            self.rejected_per_source.setdefault(source.name, Counter()).update(rejected)
        self.redacted.update(decisions.redacted)
        if source.format == "selfinstruct":
            self.count_provenance(source.name, decisions)

    def count_provenance(self, name: str, decisions: RowDecisions) -> None:
        groups = self.provenance.setdefault(name, {})
        kept = {decisions.passed[k] for k in decisions.kept}
        for i, raw in enumerate(decisions.rows):
            counts = groups.setdefault(provenance_key(raw), Counter())
            counts["rows_in"] += 1
            counts["kept"] += i in kept

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
                    **({"revision": source.config.revision} if source.config.hub else {}),
                    **self.provenance_summary(source.name),
                }
                for source in sources
            },
            "pii_redacted": {kind: self.redacted[kind] for kind in PII_PATTERNS},
            "diversity": {
                "distinct_openings": len(self.openings),
                "top_opening_share": round(top[0][1] / kept, 4) if kept else 0.0,
                "top_openings": dict(top),
                "near_duplicate_share": round(near / (kept + near), 4) if kept + near else 0.0,
                "tokens": self.token_stats(),
            },
        }

    def provenance_summary(self, name: str) -> dict[str, Any]:
        if name not in self.provenance:
            return {}
        groups = sorted(self.provenance[name].items())
        return {"provenance": {key: {"rows_in": c["rows_in"], "kept": c["kept"]} for key, c in groups}}

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


def provenance_key(raw: bytes) -> str:
    """Where a review-file row comes from and what the reviewer decided: "<model> @ <endpoint>, templates
    <hash>: <status>" ("unknown" for a row without provenance)."""
    row = loads_quietly(raw)
    if not isinstance(row, dict) or not isinstance(origin := row.get("provenance"), dict):
        return "unknown"
    return f"{origin.get('model')} @ {origin.get('endpoint')}, templates {origin.get('template')}: {row.get('status')}"


def length_buckets(lengths: Counter[int]) -> list[tuple[str, int]]:
    """Token lengths in power-of-two buckets ("64-127"), smallest first, empty buckets included."""
    counts: Counter[int] = Counter()
    for tokens, count in lengths.items():
        counts[max(tokens, 1).bit_length()] += count
    top = max(counts, default=1)
    return [(f"{2 ** (b - 1) if b > 1 else 0}-{2**b - 1}", counts[b]) for b in range(1, top + 1)]


def write_plot_data(summary: dict[str, Any], lengths: Counter[int], openings_csv: Path, lengths_csv: Path) -> None:
    """CSV for `dvc plots` (bar charts; rendered in the browser, where CJK fonts exist)."""
    with open_atomically(openings_csv, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["opening", "rows"])
        writer.writerows(summary["diversity"]["top_openings"].items())
    with open_atomically(lengths_csv, "w", encoding="utf-8", newline="") as f:
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
