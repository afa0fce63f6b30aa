"""The bootstrap (ta/eval/bootstrap.py) against cases worked out by hand and against a plain loop over the same
resamples (the comment beside each case shows the working)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ta.eval import bootstrap, metrics

RESAMPLES, SEED, CONFIDENCE = 1000, 42, 0.95


def test_resample_counts_draw_n_of_n_items_with_replacement() -> None:
    counts = bootstrap.resample_counts(7, RESAMPLES, SEED)
    assert counts.shape == (RESAMPLES, 7)
    assert (counts.sum(axis=1) == 7).all() and (counts >= 0).all() and (counts == counts.round()).all()
    # each item is drawn once per resample on average; a resample leaves out (6/7)^7 ~ 34 % of the items
    assert counts.mean() == pytest.approx(1.0)
    assert (counts == 0).mean() == pytest.approx((6 / 7) ** 7, abs=0.02)


def test_the_same_seed_draws_the_same_resamples_and_another_seed_others() -> None:
    first = bootstrap.resample_counts(22, RESAMPLES, SEED)
    assert first.tobytes() == bootstrap.resample_counts(22, RESAMPLES, SEED).tobytes()
    assert (first != bootstrap.resample_counts(22, RESAMPLES, SEED + 1)).any()


def test_all_equal_items_give_a_zero_width_interval() -> None:
    # every resample of [0.7] * 9 has mean 0.7; every resample of equal per-item scores a difference of 0
    interval = bootstrap.mean_interval([0.7] * 9, RESAMPLES, SEED, CONFIDENCE)
    assert (interval.value, interval.low, interval.high) == pytest.approx((0.7, 0.7, 0.7), abs=1e-12)
    assert interval.items == 9
    same = bootstrap.difference_interval([1, 0, 1], [1, 0, 1], RESAMPLES, SEED, CONFIDENCE)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)


def test_two_items_span_the_whole_range() -> None:
    # resamples of [0, 1]: mean 0 (p 1/4), 1/2 (p 1/2), 1 (p 1/4); the 2.5 % and 97.5 % quantiles of 1000
    # such draws are 0 and 1 (each end is drawn ~250 times, far more than the 25 each tail holds)
    interval = bootstrap.mean_interval([0.0, 1.0], RESAMPLES, SEED, CONFIDENCE)
    assert (interval.value, interval.low, interval.high, interval.items) == (0.5, 0.0, 1.0, 2)


def test_a_large_difference_lies_outside_zero_and_a_small_one_does_not() -> None:
    # 20 of 22 pairs right against 2 of 22: +0.82, far beyond what resampling 22 pairs moves
    better = [True] * 20 + [False] * 2
    worse = [False] * 20 + [True] * 2
    large = bootstrap.difference_interval(better, worse, RESAMPLES, SEED, CONFIDENCE)
    assert large.value == pytest.approx(18 / 22) and 0 < large.low <= large.value <= large.high
    # one pair of 22 flipped: +1/22, the interval holds 0
    small = bootstrap.difference_interval([True] + [False] * 21, [False] * 22, RESAMPLES, SEED, CONFIDENCE)
    assert small.value == pytest.approx(1 / 22) and small.low <= 0 < small.high


def test_paired_resampling_is_narrower_than_unpaired_on_correlated_items() -> None:
    """Items that vary a lot (easy and hard questions) and an artifact a little better on each: the paired
    interval follows the per-item differences (all +0.05: zero width, beyond noise); resampling the two artifacts
    independently (computed here by hand) mixes the items' spread into the difference and holds 0."""
    difficulty = np.linspace(0.0, 0.9, 20)
    a, b = difficulty + 0.05, difficulty
    paired = bootstrap.difference_interval(a.tolist(), b.tolist(), RESAMPLES, SEED, CONFIDENCE)
    assert paired.low == pytest.approx(0.05) and paired.high == pytest.approx(0.05)

    rng = np.random.default_rng(SEED)
    unpaired = [
        a[rng.integers(0, 20, 20)].mean() - b[rng.integers(0, 20, 20)].mean() for _ in range(RESAMPLES)
    ]  # a and b each drawn on their own
    low, high = np.quantile(unpaired, [0.025, 0.975])
    assert low < 0 < high
    assert high - low > 0.2


def test_perplexity_intervals_match_a_loop_over_the_same_resamples() -> None:
    """The vectorised statistic against metrics.perplexity on the token log-probs each resample draws."""
    rows = [[-1.0, -2.0], [-0.5], [-3.0, -1.0, -2.0], [-0.1, -0.2, -0.3, -0.4]]
    other = [[-1.5, -2.0], [-0.5], [-2.0, -1.0, -2.5], [-0.3, -0.2, -0.3, -0.4]]
    nll, tokens = [-sum(r) for r in rows], [len(r) for r in rows]
    other_nll = [-sum(r) for r in other]
    counts = bootstrap.resample_counts(len(rows), RESAMPLES, SEED)

    def ppl(per_row: list[list[float]], drawn: np.ndarray) -> float:
        return metrics.perplexity([lp for i, times in enumerate(drawn) for _ in range(int(times)) for lp in per_row[i]])

    own = np.quantile([ppl(rows, drawn) for drawn in counts], [0.025, 0.975])
    ratio = np.quantile([ppl(rows, drawn) / ppl(other, drawn) for drawn in counts], [0.025, 0.975])

    single = bootstrap.perplexity_interval(nll, tokens, RESAMPLES, SEED, CONFIDENCE)
    assert single.value == pytest.approx(metrics.perplexity([lp for r in rows for lp in r]))
    assert (single.low, single.high) == pytest.approx(tuple(own))
    paired = bootstrap.perplexity_ratio_interval(nll, tokens, other_nll, tokens, RESAMPLES, SEED, CONFIDENCE)
    whole = metrics.perplexity([lp for r in rows for lp in r]) / metrics.perplexity([lp for r in other for lp in r])
    assert paired.value == pytest.approx(whole)
    assert (paired.low, paired.high) == pytest.approx(tuple(ratio))


def test_a_ratio_of_equal_perplexities_is_exactly_one() -> None:
    interval = bootstrap.perplexity_ratio_interval([3.0, 5.0], [2, 4], [3.0, 5.0], [2, 4], RESAMPLES, SEED, 0.95)
    assert (interval.value, interval.low, interval.high) == (1.0, 1.0, 1.0)


def test_a_wider_confidence_gives_a_wider_interval() -> None:
    values = np.linspace(0.0, 1.0, 30).tolist()
    narrow = bootstrap.mean_interval(values, RESAMPLES, SEED, 0.8)
    wide = bootstrap.mean_interval(values, RESAMPLES, SEED, 0.99)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_an_infinite_perplexity_gives_no_finite_interval() -> None:
    interval = bootstrap.perplexity_interval([math.inf, 2.0], [1, 1], RESAMPLES, SEED, CONFIDENCE)
    assert interval.value == math.inf and not math.isfinite(interval.high)


def test_a_paired_comparison_needs_the_same_items() -> None:
    with pytest.raises(ValueError, match="the same items: 2 against 3"):
        bootstrap.difference_interval([1, 0], [1, 0, 1], RESAMPLES, SEED, CONFIDENCE)
    with pytest.raises(ValueError, match="zero items"):
        bootstrap.mean_interval([], RESAMPLES, SEED, CONFIDENCE)


def test_a_thousand_resamples_of_a_thousand_items_take_well_under_a_second() -> None:
    import time

    rng = np.random.default_rng(0)
    nll, tokens = rng.uniform(50, 150, 1000).tolist(), rng.integers(20, 80, 1000).tolist()
    started = time.perf_counter()
    bootstrap.perplexity_ratio_interval(nll, tokens, nll, tokens, RESAMPLES, SEED, CONFIDENCE)
    bootstrap.difference_interval(nll, nll, RESAMPLES, SEED, CONFIDENCE)
    assert time.perf_counter() - started < 1.0
