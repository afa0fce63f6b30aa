"""The eval gates: thresholds over metrics/eval.json, judged against the bootstrap intervals of
metrics/eval_intervals.json (ta/eval/intervals.py).

A gate is breached when its metric is past the threshold. With `eval.gate_evidence: interval` (default) a breach
fails the gate only when it is *beyond noise* — the whole interval is past the threshold, so even its favourable
end breaks it; a breach whose interval reaches back inside the limit is *within noise*: a warning, never a
failure (22 held-out pairs or 8 questions cannot tell a drop of 0.05 from chance). With `point` the point value
decides, as before the intervals; the message still says whether the breach is beyond noise.

A gate whose metrics were not measured (an artifact left out of `eval.artifacts`) is skipped: it says nothing
about the models. A metric that is NaN or infinite fails its gate: every comparison with NaN is false, so it
would otherwise pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ta.config import Eval


@dataclass(frozen=True)
class GateVerdict:
    gate: str  # the param holding its threshold, e.g. "max_q4_k_m_vs_f16_ppl_ratio"
    status: str  # "pass", "breach within noise", "breach beyond noise" or "not finite"
    fails: bool  # what eval.gate_action acts on
    message: str  # "" for a pass


def lookup(metrics: Mapping, key_path: str) -> float | None:
    """`lookup(m, "task.dpo")` -> m["task"]["dpo"], or None where the path is absent or not a number."""
    node: object = metrics
    for part in key_path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def gate_verdicts(report: Mapping, intervals: Mapping, params: Eval) -> list[GateVerdict]:
    """One verdict per gate whose metrics were measured, in the order of params.yaml."""
    verdicts = []
    ratio = lookup(report, "quantization.q4_k_m_vs_f16_ppl_ratio")
    if ratio is not None:
        verdicts.append(q4_k_m_ratio_verdict(ratio, intervals, params))
    task_sft, task_dpo = lookup(report, "task.sft"), lookup(report, "task.dpo")
    if task_sft is not None and task_dpo is not None:
        verdicts.append(task_drop_verdict(task_sft, task_dpo, intervals, params))
    return verdicts


def q4_k_m_ratio_verdict(ratio: float, intervals: Mapping, params: Eval) -> GateVerdict:
    gate, limit = "max_q4_k_m_vs_f16_ppl_ratio", params.max_q4_k_m_vs_f16_ppl_ratio
    if not math.isfinite(ratio):
        return _not_finite(gate, f"quantization.q4_k_m_vs_f16_ppl_ratio is {ratio} (a perplexity is not finite)")
    breach = f"q4_k_m perplexity is {ratio:.3f}x the f16 one (allowed {limit:.3f}x)"
    found = comparison(intervals, "perplexity.gguf_q4_k_m_vs_gguf_f16")
    if found is None:
        return _verdict(gate, ratio, limit, None, breach, None, params)
    low, high, items = found  # the favourable end is the low one
    return _verdict(gate, ratio, limit, low, breach, f"[{low:.3f}x, {high:.3f}x] over {items} conversations", params)


def task_drop_verdict(task_sft: float, task_dpo: float, intervals: Mapping, params: Eval) -> GateVerdict:
    gate, limit = "max_task_drop_dpo_vs_sft", params.max_task_drop_dpo_vs_sft
    scores = (("task.sft", task_sft), ("task.dpo", task_dpo))
    unusable = [f"{key} is {value}" for key, value in scores if not math.isfinite(value)]
    if unusable:
        return _not_finite(gate, f"{', '.join(unusable)} (not a finite score)")
    drop = task_sft - task_dpo
    breach = f"task.dpo = {task_dpo:.4f} is {drop:.4f} below task.sft = {task_sft:.4f} (allowed drop {limit:.4f})"
    found = comparison(intervals, "task.dpo_vs_sft")
    if found is None:
        return _verdict(gate, drop, limit, None, breach, None, params)
    low, high, items = 0.0 - found[1], 0.0 - found[0], found[2]  # dpo - sft's interval as the drop's (no -0.0)
    shown = f"of the drop [{low:.4f}, {high:.4f}] over {items} questions"
    return _verdict(gate, drop, limit, low, breach, shown, params)  # the favourable end is the smaller drop


def comparison(intervals: Mapping, key_path: str) -> tuple[float, float, int] | None:
    """(low, high, items) of a comparison in eval_intervals.json, e.g. "task.dpo_vs_sft"; None when absent."""
    low, high = (lookup(intervals, f"comparisons.{key_path}.{end}") for end in ("low", "high"))
    items = lookup(intervals, f"comparisons.{key_path}.items")
    return None if low is None or high is None or items is None else (low, high, int(items))


def _verdict(
    gate: str,
    value: float,
    limit: float,
    favourable_end: float | None,
    breach: str,
    interval: str | None,
    params: Eval,
) -> GateVerdict:
    """A gate broken when value > limit; beyond noise when the interval's favourable end is too (no interval:
    nothing shows the breach is noise)."""
    if value <= limit:
        return GateVerdict(gate, "pass", False, "")
    beyond = favourable_end is None or not math.isfinite(favourable_end) or favourable_end > limit
    status = "breach beyond noise" if beyond else "breach within noise"
    level = f"{params.bootstrap_confidence:.0%} interval"
    evidence = f"{level} {interval}" if interval else f"no {level}"
    fails = beyond or params.gate_evidence == "point"
    message = f"gate eval.{gate}: {breach}; {evidence}: {'beyond' if beyond else 'within'} noise"
    if not fails:
        message += " (a warning: eval.gate_evidence is interval)"
    return GateVerdict(gate, status, fails, message)


def _not_finite(gate: str, message: str) -> GateVerdict:
    return GateVerdict(gate, "not finite", True, f"gate eval.{gate}: {message}")
