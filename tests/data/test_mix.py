"""Each source's share of the mix (ta/data/mix.py): a hash sample of `weight` of its rows, then at most
`max_rows`, counted over the rows left after deduplication."""

from __future__ import annotations

from ta.config import PrepareSource
from ta.data.mix import SourceMix
from ta.data.rows import RowDecisions
from ta.data.split import is_sampled


def passing_rows(n: int, start: int = 0) -> RowDecisions:
    decisions = RowDecisions("s.jsonl")
    for i in range(n):
        decisions.add(i + 1, None, "", b"{}")
    decisions.passed = list(range(n))
    decisions.ids = [f"{start + i:016x}" for i in range(n)]
    return decisions


def test_a_full_weight_uncapped_source_keeps_everything_without_looking() -> None:
    mix, decisions = SourceMix(42), passing_rows(10)
    mix.apply("s", PrepareSource(path="s"), decisions, unique=10)
    assert decisions.passing() == list(range(10)) and mix.kept_per_source["s"] == 10


def test_weight_samples_by_id_and_the_cap_counts_across_chunks() -> None:
    mix = SourceMix(7)
    config = PrepareSource(path="s", weight=0.5, max_rows=30)
    first, second = passing_rows(40), passing_rows(40, start=40)
    mix.apply("s", config, first, unique=40)
    mix.apply("s", config, second, unique=40)
    sampled = [i for i in range(80) if is_sampled(7, f"{i:016x}", 0.5)]
    kept = first.passing() + [40 + k for k in second.passing()]
    assert kept == sampled[:30]  # the hash sample, then the first 30 of it in input order
    reasons = first.reject_reasons + second.reject_reasons
    assert reasons.count("over_cap") == len(sampled) - 30
    assert reasons.count("not_sampled") == 80 - len(sampled)
    assert mix.kept_per_source["s"] == 30


def test_rows_rejected_before_the_mix_are_not_counted_against_the_cap() -> None:
    mix, decisions = SourceMix(1), passing_rows(5)
    decisions.reject(0, "duplicate", "same content as s.jsonl:9")
    mix.apply("s", PrepareSource(path="s", max_rows=3), decisions, unique=4)
    assert decisions.reject_reasons == ["duplicate", None, None, None, "over_cap"]
