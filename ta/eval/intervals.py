"""How far the held-out data supports each number of metrics/eval.json: bootstrap intervals (ta/eval/bootstrap.py)
for every artifact's perplexity, preference accuracy and task score, and paired intervals for the comparisons the
pipeline's claims rest on (fine-tuning lowers perplexity, DPO ranks preferred answers higher and keeps the task
score, quantization costs little perplexity). The eval stage writes them to metrics/eval_intervals.json — tracked,
not a metric: `dvc exp show` would grow by a column for every bound — and states them in metrics/samples.md.

A comparison's verdict is "higher" or "lower" when its whole interval lies on one side of no change (0 for a
difference, 1 for a ratio), "within noise" when the interval holds it, "no difference" when every resample
agrees on no change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ta.eval import bootstrap
from ta.eval.bootstrap import Interval

METRICS = ("perplexity", "preference_accuracy", "task")
# (metric, artifact, against): perplexity is compared as a ratio, the shares and scores as a difference
COMPARISONS = (
    ("perplexity", "sft", "base"),  # fine-tuning fits the held-out answers
    ("perplexity", "gguf_q4_k_m", "gguf_f16"),  # quantization costs little (gate eval.max_q4_k_m_vs_f16_ppl_ratio)
    ("preference_accuracy", "sft", "base"),
    ("preference_accuracy", "dpo", "sft"),  # DPO ranks the preferred answer higher
    ("task", "sft", "base"),
    ("task", "dpo", "sft"),  # DPO keeps the task score (gate eval.max_task_drop_dpo_vs_sft)
)
ITEMS = {"perplexity": "conversations", "preference_accuracy": "pairs", "task": "questions"}
IMPLICIT_REWARD = "dpo_implicit_reward"  # preference_accuracy's entry beside the artifacts, as in eval.json


@dataclass
class HeldOutScores:
    """The per-item values behind one artifact's aggregates: what the bootstrap resamples."""

    nll_sums: list[float] = field(default_factory=list)  # per conversation: minus its assistant tokens' log-probs
    token_counts: list[int] = field(default_factory=list)  # per conversation: assistant tokens scored
    preference_correct: list[bool] = field(default_factory=list)  # per pair: chosen beats rejected
    task_scores: list[float] = field(default_factory=list)  # per question: exact match or ROUGE-L F1


@dataclass(frozen=True)
class Bootstrap:
    resamples: int
    seed: int
    confidence: float


def artifact_intervals(scores: HeldOutScores, settings: Bootstrap) -> dict[str, Interval]:
    """metric -> interval of one artifact's own value (a metric without items is left out)."""
    found = {}
    if scores.nll_sums:
        found["perplexity"] = bootstrap.perplexity_interval(scores.nll_sums, scores.token_counts, *_args(settings))
    if scores.preference_correct:
        found["preference_accuracy"] = bootstrap.mean_interval(scores.preference_correct, *_args(settings))
    if scores.task_scores:
        found["task"] = bootstrap.mean_interval(scores.task_scores, *_args(settings))
    return found


def comparison_interval(metric: str, scores: HeldOutScores, against: HeldOutScores, settings: Bootstrap) -> Interval:
    if metric == "perplexity":
        return bootstrap.perplexity_ratio_interval(
            scores.nll_sums, scores.token_counts, against.nll_sums, against.token_counts, *_args(settings)
        )
    field_name = "preference_correct" if metric == "preference_accuracy" else "task_scores"
    return bootstrap.difference_interval(getattr(scores, field_name), getattr(against, field_name), *_args(settings))


def _args(settings: Bootstrap) -> tuple[int, int, float]:
    return settings.resamples, settings.seed, settings.confidence


def verdict(metric: str, interval: Interval) -> str:
    """higher / lower / within noise / no difference, against no change (ratio 1, difference 0)."""
    unchanged = 1.0 if metric == "perplexity" else 0.0
    low, high = round(interval.low, 4), round(interval.high, 4)  # as written, so the file agrees with itself
    if not (math.isfinite(low) and math.isfinite(high)):
        return "not finite"
    if low == high == unchanged:
        return "no difference"
    if low > unchanged:
        return "higher"
    if high < unchanged:
        return "lower"
    return "within noise"


def build(
    scores: Mapping[str, HeldOutScores], implicit_reward_correct: list[bool] | None, settings: Bootstrap
) -> dict[str, Any]:
    """The content of metrics/eval_intervals.json: settings, per-artifact intervals, paired comparisons."""
    artifacts: dict[str, dict[str, Any]] = {metric: {} for metric in METRICS}
    for name, artifact_scores in scores.items():
        for metric, interval in artifact_intervals(artifact_scores, settings).items():
            artifacts[metric][name] = _entry(interval)
    if implicit_reward_correct:
        interval = bootstrap.mean_interval(implicit_reward_correct, *_args(settings))
        artifacts["preference_accuracy"][IMPLICIT_REWARD] = _entry(interval)
    comparisons: dict[str, dict[str, Any]] = {metric: {} for metric in METRICS}
    for metric, name, against in COMPARISONS:
        if not (name in artifacts[metric] and against in artifacts[metric]):  # not measured, or no items
            continue
        interval = comparison_interval(metric, scores[name], scores[against], settings)
        statistic = "ratio" if metric == "perplexity" else "difference"
        entry = {"statistic": statistic, **_entry(interval), "verdict": verdict(metric, interval)}
        comparisons[metric][f"{name}_vs_{against}"] = entry
    return {
        "method": "percentile bootstrap over held-out items, paired for comparisons",
        "confidence": settings.confidence,
        "bootstrap_samples": settings.resamples,
        "bootstrap_seed": settings.seed,
        "artifacts": {metric: entries for metric, entries in artifacts.items() if entries},
        "comparisons": {metric: entries for metric, entries in comparisons.items() if entries},
    }


def _entry(interval: Interval) -> dict[str, Any]:
    return {
        "value": round(interval.value, 4),
        "low": round(interval.low, 4),
        "high": round(interval.high, 4),
        "items": interval.items,
    }


def evidence_markdown(report: Mapping[str, Any]) -> list[str]:
    """The "What the evidence supports" section of metrics/samples.md: every artifact's intervals, one line per
    comparison and the gates' verdicts — what a reader may conclude from this run."""
    level = f"{report['confidence']:.0%}"
    lines = [
        "## What the evidence supports",
        "",
        f"{level} percentile bootstrap intervals over the held-out items ({report['bootstrap_samples']} resamples, "
        f"seed {report['bootstrap_seed']}; metrics/eval_intervals.json). A comparison resamples the same items for "
        "both artifacts; it is *within noise* when its interval holds no change (a difference of 0, a ratio of 1).",
    ]
    lines += ["", *artifact_table(report.get("artifacts", {}))]
    lines += ["", *(f"- {line}" for line in comparison_lines(report))]
    lines += [f"- gate {gate}: {status}" for gate, status in report.get("gates", {}).items()]
    return lines


def artifact_table(artifacts: Mapping[str, Mapping[str, Any]]) -> list[str]:
    names = list(dict.fromkeys(name for entries in artifacts.values() for name in entries))
    rows = ["| artifact | perplexity | preference accuracy | task |", "|---|---|---|---|"]
    for name in names:
        cells = []
        for metric in METRICS:
            entry = artifacts.get(metric, {}).get(name)
            spec = ".2f" if metric == "perplexity" else ".4f"
            cells.append("–" if entry is None else _shown(entry, spec))
        rows.append(f"| {name} | {' | '.join(cells)} |")
    return rows


def comparison_lines(report: Mapping[str, Any]) -> list[str]:
    """e.g. `dpo vs sft preference accuracy: +0.0455 [-0.0909, +0.1818] (22 pairs): within noise`."""
    lines = []
    for metric, entries in report.get("comparisons", {}).items():
        for key, entry in entries.items():
            name, against = key.split("_vs_")
            shown = "×" + _shown(entry, ".4f") if entry["statistic"] == "ratio" else _shown(entry, "+.4f")
            label = metric.replace("_", " ")
            lines.append(f"{name} vs {against} {label}: {shown} ({entry['items']} {ITEMS[metric]}): {entry['verdict']}")
    return lines


def _shown(entry: Mapping[str, Any], spec: str) -> str:
    value, low, high = (_number(entry[key], spec) for key in ("value", "low", "high"))
    return f"{value} [{low}, {high}]"


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)
