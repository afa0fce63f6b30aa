"""The eval gates (ta/eval/gates.py): a breach beyond noise (the whole interval past the threshold) fails, one
within noise warns, `eval.gate_evidence: point` fails on the point value; unmeasured gates are skipped and
metrics that are not finite fail."""

from __future__ import annotations

import dataclasses

import pytest

from ta.config import load_params
from ta.eval import gates
from tests.helpers import REPO

SHIPPED_EVAL = load_params(REPO / "params.yaml").eval


def eval_params(**changes):
    limits = {"max_q4_k_m_vs_f16_ppl_ratio": 1.10, "max_task_drop_dpo_vs_sft": 0.05, "gate_evidence": "interval"}
    return dataclasses.replace(SHIPPED_EVAL, **{**limits, **changes})


def report(ratio: float | None = None, task: tuple[float, float] | None = None) -> dict:
    found: dict = {}
    if ratio is not None:
        found["quantization"] = {"q4_k_m_vs_f16_ppl_ratio": ratio}
    if task is not None:
        found["task"] = {"sft": task[0], "dpo": task[1]}
    return found


def intervals(ratio: tuple[float, float] | None = None, task_difference: tuple[float, float] | None = None) -> dict:
    """eval_intervals.json's comparisons: ratio = q4_k_m / f16 perplexity, task_difference = task dpo - sft."""
    comparisons: dict = {}
    if ratio is not None:
        entry = {"statistic": "ratio", "low": ratio[0], "high": ratio[1], "items": 32}
        comparisons["perplexity"] = {"gguf_q4_k_m_vs_gguf_f16": entry}
    if task_difference is not None:
        entry = {"statistic": "difference", "low": task_difference[0], "high": task_difference[1], "items": 8}
        comparisons["task"] = {"dpo_vs_sft": entry}
    return {"comparisons": comparisons}


def test_lookup_reads_nested_key_paths() -> None:
    m = {"task": {"dpo": 0.4}, "quantization": {"q4_k_m_vs_f16_ppl_ratio": 1.02}}
    assert gates.lookup(m, "task.dpo") == 0.4
    assert gates.lookup(m, "task.sft") is None
    assert gates.lookup(m, "task") is None  # a section is not a value


def test_gates_pass_inside_the_limits_whatever_the_interval() -> None:
    # at the limits exactly; the intervals reach past them, but nothing is breached
    verdicts = gates.gate_verdicts(
        report(ratio=1.10, task=(0.50, 0.45)), intervals(ratio=(1.0, 1.3), task_difference=(-0.4, 0.3)), eval_params()
    )
    assert [(v.gate, v.status, v.fails, v.message) for v in verdicts] == [
        ("max_q4_k_m_vs_f16_ppl_ratio", "pass", False, ""),
        ("max_task_drop_dpo_vs_sft", "pass", False, ""),
    ]


def test_a_breach_beyond_noise_fails() -> None:
    # q4_k_m 1.25x, and even the interval's low end 1.15x is past 1.10; dpo 0.30 below sft, and even the
    # smallest drop in its interval (dpo - sft at most -0.10) is past 0.05
    beyond_noise = intervals(ratio=(1.15, 1.35), task_difference=(-0.5, -0.1))
    verdicts = gates.gate_verdicts(report(ratio=1.25, task=(0.50, 0.20)), beyond_noise, eval_params())
    assert [(v.status, v.fails) for v in verdicts] == [("breach beyond noise", True), ("breach beyond noise", True)]
    assert verdicts[0].message == (
        "gate eval.max_q4_k_m_vs_f16_ppl_ratio: q4_k_m perplexity is 1.250x the f16 one (allowed 1.100x); "
        "95% interval [1.150x, 1.350x] over 32 conversations: beyond noise"
    )
    assert verdicts[1].message == (
        "gate eval.max_task_drop_dpo_vs_sft: task.dpo = 0.2000 is 0.3000 below task.sft = 0.5000 "
        "(allowed drop 0.0500); 95% interval of the drop [0.1000, 0.5000] over 8 questions: beyond noise"
    )


def test_a_breach_within_noise_warns_and_does_not_fail() -> None:
    # the point values break both limits, but each interval reaches back inside: 1.05x, and a drop of -0.2
    verdicts = gates.gate_verdicts(
        report(ratio=1.25, task=(0.50, 0.20)), intervals(ratio=(1.05, 1.35), task_difference=(-0.6, 0.2)), eval_params()
    )
    assert [(v.status, v.fails) for v in verdicts] == [("breach within noise", False), ("breach within noise", False)]
    assert verdicts[0].message.endswith(
        "95% interval [1.050x, 1.350x] over 32 conversations: within noise (a warning: eval.gate_evidence is interval)"
    )
    assert "95% interval of the drop [-0.2000, 0.6000] over 8 questions: within noise" in verdicts[1].message


def test_point_evidence_fails_every_breach_and_still_says_whether_it_is_noise() -> None:
    verdicts = gates.gate_verdicts(
        report(ratio=1.25, task=(0.50, 0.20)),
        intervals(ratio=(1.05, 1.35), task_difference=(-0.6, 0.2)),
        eval_params(gate_evidence="point"),
    )
    assert [(v.status, v.fails) for v in verdicts] == [("breach within noise", True), ("breach within noise", True)]
    assert verdicts[0].message.endswith("over 32 conversations: within noise")


def test_an_interval_ending_on_the_threshold_is_within_noise() -> None:
    # beyond noise needs the favourable end strictly past the limit, as a breach needs the value strictly past it
    (verdict,) = gates.gate_verdicts(report(ratio=1.2), intervals(ratio=(1.10, 1.3)), eval_params())
    assert verdict.status == "breach within noise"


def test_a_breach_without_an_interval_fails() -> None:
    # nothing shows the breach is noise (e.g. eval_intervals.json written by an older run)
    (verdict,) = gates.gate_verdicts(report(ratio=1.25), {}, eval_params())
    assert (verdict.status, verdict.fails) == ("breach beyond noise", True)
    assert verdict.message.endswith("(allowed 1.100x); no 95% interval: beyond noise")


def test_the_confidence_is_named_in_the_message() -> None:
    (verdict,) = gates.gate_verdicts(
        report(ratio=1.25), intervals(ratio=(1.2, 1.3)), eval_params(bootstrap_confidence=0.9)
    )
    assert "; 90% interval [1.200x, 1.300x]" in verdict.message


def test_gates_skip_metrics_that_were_not_measured() -> None:
    assert gates.gate_verdicts({"task": {"sft": 0.5}}, {}, eval_params(max_task_drop_dpo_vs_sft=0.0)) == []
    assert gates.gate_verdicts({"task": {"sft": None, "dpo": None}}, {}, eval_params()) == []  # no questions


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_gate_on_a_metric_that_is_not_finite_fails(bad: float) -> None:
    (verdict,) = gates.gate_verdicts(report(ratio=bad), intervals(ratio=(0.9, 1.0)), eval_params())
    assert (verdict.status, verdict.fails) == ("not finite", True)
    assert verdict.message == (
        f"gate eval.max_q4_k_m_vs_f16_ppl_ratio: quantization.q4_k_m_vs_f16_ppl_ratio is {bad} "
        "(a perplexity is not finite)"
    )
    (verdict,) = gates.gate_verdicts(report(task=(0.5, bad)), {}, eval_params())
    assert verdict.message == f"gate eval.max_task_drop_dpo_vs_sft: task.dpo is {bad} (not a finite score)"
    assert verdict.fails


def test_an_interval_of_the_drop_starting_at_zero_reads_as_zero() -> None:
    # dpo - sft in [-0.0164, 0]: the drop's interval is [0, 0.0164], not [-0.0000, ...]
    (verdict,) = gates.gate_verdicts(
        report(task=(0.0507, 0.0432)),
        intervals(task_difference=(-0.0164, 0.0)),
        eval_params(max_task_drop_dpo_vs_sft=0.005),
    )
    assert "95% interval of the drop [0.0000, 0.0164] over 8 questions: within noise" in verdict.message
