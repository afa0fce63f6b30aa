"""Each source's share of the mix: a hash sample of `weight` of its rows, then at most `max_rows` of them."""

from __future__ import annotations

from collections import Counter

from ta.config import PrepareSource
from ta.data.rows import RowDecisions
from ta.data.split import is_sampled


class SourceMix:
    """Per-source weight and cap over the rows still in after deduplication, in input order."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.kept_per_source: Counter[str] = Counter()

    def apply(self, name: str, config: PrepareSource, decisions: RowDecisions, unique: int) -> None:
        """`unique`: how many of the chunk's passing rows are not duplicates (all kept when nothing is
        sampled or capped)."""
        weight, max_rows = config.weight, config.max_rows
        if weight >= 1 and not max_rows:
            self.kept_per_source[name] += unique
            return
        for k in decisions.passing():
            i = decisions.passed[k]
            if weight < 1 and not is_sampled(self.seed, decisions.ids[k], weight):
                decisions.reject(i, "not_sampled", f"outside the source's weight {weight} sample")
            elif max_rows and self.kept_per_source[name] >= max_rows:
                decisions.reject(i, "over_cap", f"the source already gave max_rows {max_rows}")
            else:
                self.kept_per_source[name] += 1
