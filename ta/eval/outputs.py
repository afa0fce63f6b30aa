"""eval's outputs: metrics/eval.json (`build_report`), metrics/eval_intervals.json (`build_intervals`), the
`dvc plots` bars, metrics/samples.{md,json}; every file written whole or not at all (`write_json`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ta import paths
from ta.config import Eval
from ta.eval import intervals, metrics
from ta.eval.gates import GateVerdict
from ta.eval.results import ArtifactResult, HeldOut
from ta.files import write_atomically


def implicit_reward_margins(policy: list[tuple[float, float]], reference: list[tuple[float, float]]) -> list[float]:
    """Per pair, DPO's implicit reward margin (vs the sft model as reference) at beta 1: beta > 0 only scales
    the margin, so whether chosen ranks above rejected does not depend on it."""
    return [
        metrics.implicit_reward_margin(pc, rc, pr, rr, beta=1.0)
        for (pc, pr), (rc, rr) in zip(policy, reference, strict=True)
    ]


def implicit_reward_accuracy(policy: list[tuple[float, float]], reference: list[tuple[float, float]]) -> float:
    """Share of pairs whose DPO implicit reward ranks chosen above rejected."""
    return metrics.preference_accuracy(implicit_reward_margins(policy, reference))


def build_report(results: dict[str, ArtifactResult], sizes: dict[str, int]) -> dict[str, Any]:
    """The nested metrics/eval.json: section -> artifact -> value, rounded so diffs stay readable."""
    report: dict[str, Any] = {
        "perplexity": {name: round(r.perplexity, 4) for name, r in results.items()},
        "task": {name: round_or_none(r.task["task"]) for name, r in results.items()},
        "preference_accuracy": {name: round(r.preference_accuracy, 4) for name, r in results.items()},
        "refusal_rate": {name: round(r.refusal_rate, 4) for name, r in results.items()},
    }
    if "dpo" in results and "sft" in results:
        accuracy = implicit_reward_accuracy(results["dpo"].preference_sums, results["sft"].preference_sums)
        report["preference_accuracy"]["dpo_implicit_reward"] = round(accuracy, 4)
    quantization: dict[str, Any] = {}
    if "gguf_f16" in results and "gguf_q4_k_m" in results:
        ratio = results["gguf_q4_k_m"].perplexity / results["gguf_f16"].perplexity
        quantization["q4_k_m_vs_f16_ppl_ratio"] = round(ratio, 4)
    for name, size in sizes.items():
        quantization[f"{name.removeprefix('gguf_')}_size_mib"] = round(size / 2**20, 3)
    if "f16_size_mib" in quantization and "q4_k_m_size_mib" in quantization:
        quantization["q4_k_m_vs_f16_size_ratio"] = round(sizes["gguf_q4_k_m"] / sizes["gguf_f16"], 4)
    if quantization:
        report["quantization"] = quantization
    return report


def build_intervals(results: dict[str, ArtifactResult], params: Eval) -> dict[str, Any]:
    """metrics/eval_intervals.json: the bootstrap intervals of eval.json's numbers (ta/eval/intervals.py)."""
    scores = {
        name: intervals.HeldOutScores(
            nll_sums=r.nll_sums,
            token_counts=r.token_counts,
            preference_correct=[margin > 0 for margin in r.preference_margins],
            task_scores=[score.value for score in r.task_scores],
        )
        for name, r in results.items()
    }
    implicit = None
    if "dpo" in results and "sft" in results:
        margins = implicit_reward_margins(results["dpo"].preference_sums, results["sft"].preference_sums)
        implicit = [margin > 0 for margin in margins]
    settings = intervals.Bootstrap(params.bootstrap_samples, params.bootstrap_seed, params.bootstrap_confidence)
    return intervals.build(scores, implicit, settings)


def round_or_none(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def plot_rows(results: dict[str, ArtifactResult]) -> dict[str, list[dict[str, Any]]]:
    """Bar data for `dvc plots`: one row per artifact (task rows carry the two parts of the score)."""
    return {
        "perplexity": [{"artifact": n, "perplexity": round(r.perplexity, 4)} for n, r in results.items()],
        "task": [
            {
                "artifact": n,
                "task": round_or_none(r.task["task"]),
                "rouge_l": round_or_none(r.task["rouge_l"]),
                "exact_match": round_or_none(r.task["exact_match"]),
            }
            for n, r in results.items()
        ],
    }


def samples_markdown(
    prompts: list[str], answers: dict[str, list[str]], max_new_tokens: int, evidence: list[str] | None = None
) -> str:
    lines = [
        "# Generated samples",
        "",
        f"Greedy decoding, at most {max_new_tokens} new tokens, the same prompt token ids for every artifact.",
        "Written by `python -m stages.eval`; prompts are `eval.sample_prompts` in params.yaml.",
    ]
    if evidence:
        lines += ["", *evidence]
    for i, prompt in enumerate(prompts):
        lines += ["", f"## {i + 1}. {prompt}"]
        for name, texts in answers.items():
            quoted = [f"> {line}" if line else ">" for line in texts[i].splitlines()] or ["> *(empty answer)*"]
            lines += ["", f"**{name}**", "", *quoted]
    return "\n".join(lines) + "\n"


def write_json(path: Path, value: Any) -> None:
    """Strict JSON (NaN and infinity as null: `dvc metrics` and every other reader refuse NaN), written whole
    or not at all."""
    text = json.dumps(metrics.finite_or_null(value), ensure_ascii=False, indent=2, allow_nan=False)
    write_atomically(path, text + "\n")


def write_outputs(
    report: dict[str, Any],
    interval_report: dict[str, Any],
    verdicts: list[GateVerdict],
    results: dict[str, ArtifactResult],
    held: HeldOut,
    params: Eval,
) -> None:
    write_json(paths.EVAL_METRICS, report)
    interval_report = {**interval_report, "gates": {f"eval.{v.gate}": v.status for v in verdicts}}
    write_json(paths.EVAL_INTERVALS, interval_report)
    for plot, rows in plot_rows(results).items():
        write_json(paths.EVAL_PLOTS_DIR / f"{plot}.json", rows)
    answers = {name: result.sample_answers for name, result in results.items()}
    samples = [
        {"prompt": prompt, "answers": {name: texts[i] for name, texts in answers.items()}}
        for i, prompt in enumerate(held.sample_prompts)
    ]
    questions = [
        {
            "question": item.prompt[-1]["content"],
            "reference": item.reference,
            "answers": {
                name: {"text": r.task_answers[i], r.task_scores[i].kind: round(r.task_scores[i].value, 4)}
                for name, r in results.items()
            },
        }
        for i, item in enumerate(held.tasks)
    ]
    write_json(paths.SAMPLES_JSON, {"max_new_tokens": params.max_new_tokens, "samples": samples, "task": questions})
    evidence = intervals.evidence_markdown(interval_report)
    markdown = samples_markdown(held.sample_prompts, answers, params.max_new_tokens, evidence)
    write_atomically(paths.SAMPLES_MD, markdown)
