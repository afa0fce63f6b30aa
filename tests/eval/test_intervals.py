"""metrics/eval_intervals.json's content (ta/eval/intervals.py) on hand-made per-item scores: which intervals and
comparisons it holds, their verdicts, and the statements metrics/samples.md makes from them."""

from __future__ import annotations

import json

import pytest

from ta.eval import intervals
from ta.eval.bootstrap import Interval
from ta.eval.intervals import HeldOutScores

SETTINGS = intervals.Bootstrap(resamples=1000, seed=42, confidence=0.95)


def scores(nll: list[float], right: list[bool], task: list[float]) -> HeldOutScores:
    return HeldOutScores(nll_sums=nll, token_counts=[10] * len(nll), preference_correct=right, task_scores=task)


def chain() -> dict[str, HeldOutScores]:
    """base -> sft lowers every conversation's NLL by 5 (of 10 tokens: perplexity x e^-0.5 each); dpo gets one
    more pair of 22 right than sft; q4_k_m is the f16 file, one token of one conversation a little worse."""
    nll = [30.0, 40.0, 50.0, 60.0, 35.0, 45.0]
    sft_right = [True] * 15 + [False] * 7
    return {
        "base": scores([x + 5 for x in nll], [True] * 11 + [False] * 11, [0.0, 0.5, 1.0, 0.0]),
        "sft": scores(nll, sft_right, [1.0, 0.5, 1.0, 0.0]),
        "dpo": scores(nll, [True] * 16 + [False] * 6, [1.0, 0.5, 1.0, 0.0]),
        "gguf_f16": scores(nll, sft_right, [1.0, 0.5, 1.0, 0.0]),
        "gguf_q4_k_m": scores([30.1, *nll[1:]], sft_right, [1.0, 0.5, 1.0, 0.0]),
    }


def test_every_artifact_has_its_intervals_and_every_claim_its_comparison() -> None:
    report = intervals.build(chain(), [True] * 17 + [False] * 5, SETTINGS)
    assert (report["confidence"], report["bootstrap_samples"], report["bootstrap_seed"]) == (0.95, 1000, 42)
    assert set(report["artifacts"]["perplexity"]) == {"base", "sft", "dpo", "gguf_f16", "gguf_q4_k_m"}
    assert report["artifacts"]["preference_accuracy"]["dpo_implicit_reward"]["value"] == round(17 / 22, 4)
    assert report["artifacts"]["preference_accuracy"]["sft"]["items"] == 22
    assert {metric: set(entries) for metric, entries in report["comparisons"].items()} == {
        "perplexity": {"sft_vs_base", "gguf_q4_k_m_vs_gguf_f16"},
        "preference_accuracy": {"sft_vs_base", "dpo_vs_sft"},
        "task": {"sft_vs_base", "dpo_vs_sft"},
    }
    sft_vs_base = report["comparisons"]["perplexity"]["sft_vs_base"]
    # every conversation 5 nats lower over 10 tokens: each resample's ratio is e^-0.5, exactly
    assert sft_vs_base["statistic"] == "ratio" and sft_vs_base["items"] == 6
    assert sft_vs_base["value"] == sft_vs_base["low"] == sft_vs_base["high"] == pytest.approx(0.6065, abs=1e-4)
    assert sft_vs_base["verdict"] == "lower"
    dpo_vs_sft = report["comparisons"]["preference_accuracy"]["dpo_vs_sft"]
    # one pair of 22: +0.0455, the interval holds 0
    assert dpo_vs_sft["value"] == round(1 / 22, 4) and dpo_vs_sft["low"] <= 0 < dpo_vs_sft["high"]
    assert dpo_vs_sft["verdict"] == "within noise"
    # dpo's answers score as sft's on every question: every resample agrees
    assert report["comparisons"]["task"]["dpo_vs_sft"]["verdict"] == "no difference"
    # q4_k_m a hair worse on one conversation only: higher in some resamples, equal in the rest
    assert report["comparisons"]["perplexity"]["gguf_q4_k_m_vs_gguf_f16"]["low"] == 1.0


def test_the_same_scores_and_seed_give_the_same_bytes_and_another_seed_other_bytes() -> None:
    def text(settings: intervals.Bootstrap) -> str:
        return json.dumps(intervals.build(chain(), None, settings), indent=2, allow_nan=False)

    assert text(SETTINGS) == text(SETTINGS)
    assert text(SETTINGS) != text(intervals.Bootstrap(1000, 43, 0.95))


def test_unmeasured_artifacts_and_metrics_without_items_are_left_out() -> None:
    # max_generations 0: no task scores; dpo not among eval.artifacts
    without_task = {n: HeldOutScores(s.nll_sums, s.token_counts, s.preference_correct, []) for n, s in chain().items()}
    report = intervals.build({n: without_task[n] for n in ("base", "sft")}, None, SETTINGS)
    assert "task" not in report["artifacts"] and "task" not in report["comparisons"]
    assert set(report["comparisons"]["preference_accuracy"]) == {"sft_vs_base"}
    assert "dpo_implicit_reward" not in report["artifacts"]["preference_accuracy"]


@pytest.mark.parametrize(
    ("metric", "low", "high", "verdict"),
    [
        ("task", 0.01, 0.2, "higher"),
        ("task", -0.2, -0.01, "lower"),
        ("task", -0.1, 0.1, "within noise"),
        ("task", 0.0, 0.1, "within noise"),  # an interval that touches no change does not exclude it
        ("task", 0.0, 0.0, "no difference"),
        ("perplexity", 1.001, 1.2, "higher"),
        ("perplexity", 0.5, 0.9, "lower"),
        ("perplexity", 0.9, 1.1, "within noise"),
        ("perplexity", 1.0, 1.0, "no difference"),
        ("perplexity", float("nan"), float("nan"), "not finite"),
    ],
)
def test_verdicts_against_no_change(metric: str, low: float, high: float, verdict: str) -> None:
    assert intervals.verdict(metric, Interval(value=(low + high) / 2, low=low, high=high, items=10)) == verdict


def test_the_evidence_section_states_each_comparison_with_its_interval() -> None:
    report = intervals.build(chain(), None, SETTINGS)
    report["gates"] = {"eval.max_task_drop_dpo_vs_sft": "pass"}
    section = "\n".join(intervals.evidence_markdown(report))
    assert section.startswith("## What the evidence supports\n")
    assert "95% percentile bootstrap intervals over the held-out items (1000 resamples, seed 42;" in section
    dpo_vs_sft = report["comparisons"]["preference_accuracy"]["dpo_vs_sft"]
    low, high = dpo_vs_sft["low"], dpo_vs_sft["high"]
    assert f"- dpo vs sft preference accuracy: +0.0455 [{low:+.4f}, {high:+.4f}] (22 pairs): within noise" in section
    assert "- sft vs base perplexity: ×0.6065 [0.6065, 0.6065] (6 conversations): lower" in section
    assert "- dpo vs sft task: +0.0000 [+0.0000, +0.0000] (4 questions): no difference" in section
    assert "- gate eval.max_task_drop_dpo_vs_sft: pass" in section
    base = report["artifacts"]["preference_accuracy"]["base"]
    (row,) = [line for line in section.splitlines() if line.startswith("| base | ")]
    assert f"| 0.5000 [{base['low']:.4f}, {base['high']:.4f}] |" in row
    assert "| dpo_implicit_reward | – |" not in section  # no implicit-reward accuracy given
