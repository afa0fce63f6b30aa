"""Percentile bootstrap intervals over held-out items: pure numpy, seeded, vectorised.

A resample draws n of the n held-out items with replacement; `resample_counts` gives, for every resample, how
often each item was drawn, so a statistic of all resamples is one matrix product (1000 resamples of a few
hundred items take milliseconds). The counts depend only on (n, resamples, seed): two artifacts scored on the
same items are resampled alike — a *paired* bootstrap, which keeps what the items share (an easy question is
easy for both) out of the difference. Percentile interval: the (1 - c)/2 and (1 + c)/2 quantiles of the
resampled statistic (numpy's default linear interpolation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    value: float  # the statistic on the held-out items as they are
    low: float
    high: float
    items: int  # held-out items it rests on


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) array of whole numbers: how often each of n items is drawn in each resample (each row sums
    to n). Floats, as the matrix products that use it want them."""
    if n < 1:
        raise ValueError("a bootstrap over zero items is undefined")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def percentile_interval(statistics: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` share of the resampled statistics; NaN where any of them is NaN."""
    tail = (1.0 - confidence) / 2.0
    with np.errstate(invalid="ignore"):  # inf - inf in the interpolation is NaN, written as null
        low, high = np.quantile(statistics, [tail, 1.0 - tail])
    return float(low), float(high)


def mean_interval(values: Sequence[float], resamples: int, seed: int, confidence: float) -> Interval:
    """Interval of a mean over items (an accuracy: values 0/1; a task score: one score per question)."""
    x = np.asarray(values, dtype=np.float64)
    counts = resample_counts(len(x), resamples, seed)
    return Interval(float(x.mean()), *percentile_interval(counts @ x / len(x), confidence), len(x))


def difference_interval(
    values: Sequence[float], against: Sequence[float], resamples: int, seed: int, confidence: float
) -> Interval:
    """Paired interval of mean(values) - mean(against): both are scored on the same items, resampled alike."""
    if len(values) != len(against):
        raise ValueError(f"a paired difference needs the same items: {len(values)} against {len(against)}")
    difference = np.asarray(values, dtype=np.float64) - np.asarray(against, dtype=np.float64)
    return mean_interval(difference, resamples, seed, confidence)


def perplexity_interval(
    nll_sums: Sequence[float], token_counts: Sequence[int], resamples: int, seed: int, confidence: float
) -> Interval:
    """Interval of a corpus perplexity, exp(summed NLL / tokens), resampling whole items (conversations)."""
    nll, tokens = _as_arrays(nll_sums, token_counts)
    counts = resample_counts(len(nll), resamples, seed)
    with np.errstate(over="ignore", invalid="ignore"):
        value = np.exp(nll.sum() / tokens.sum())
        statistics = np.exp((counts @ nll) / (counts @ tokens))
    return Interval(float(value), *percentile_interval(statistics, confidence), len(nll))


def perplexity_ratio_interval(
    nll_sums: Sequence[float],
    token_counts: Sequence[int],
    against_nll_sums: Sequence[float],
    against_token_counts: Sequence[int],
    resamples: int,
    seed: int,
    confidence: float,
) -> Interval:
    """Paired interval of perplexity / against's perplexity over the same conversations, resampled alike."""
    nll, tokens = _as_arrays(nll_sums, token_counts)
    other_nll, other_tokens = _as_arrays(against_nll_sums, against_token_counts)
    if len(nll) != len(other_nll):
        raise ValueError(f"a paired ratio needs the same items: {len(nll)} against {len(other_nll)}")
    counts = resample_counts(len(nll), resamples, seed)
    with np.errstate(over="ignore", invalid="ignore"):  # exp of a difference: no overflow before the ratio
        value = np.exp(nll.sum() / tokens.sum() - other_nll.sum() / other_tokens.sum())
        statistics = np.exp((counts @ nll) / (counts @ tokens) - (counts @ other_nll) / (counts @ other_tokens))
    return Interval(float(value), *percentile_interval(statistics, confidence), len(nll))


def _as_arrays(nll_sums: Sequence[float], token_counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    nll, tokens = np.asarray(nll_sums, dtype=np.float64), np.asarray(token_counts, dtype=np.float64)
    if len(nll) != len(tokens):
        raise ValueError(f"{len(nll)} NLL sums for {len(tokens)} token counts")
    return nll, tokens
