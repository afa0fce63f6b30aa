"""Pure metric functions used by the eval stage: no torch, no model, testable on tiny hand-made inputs.

- perplexity: exp of the mean negative log-likelihood over all scored tokens (token-weighted, pooled over
  rows, so a long answer counts for more tokens than a short one — the usual corpus perplexity);
- ROUGE-L F1 on characters: Chinese has no spaces, so characters are the natural unit; English is scored
  the same way so one number covers both (whitespace dropped, NFKC + lower-case first);
- exact match of the drill set's final answers (the last line "答案：<final>");
- task score: per held-out question, exact match when the reference has a final answer, else ROUGE-L F1;
  `task.<artifact>` is the mean over questions;
- preference accuracy: share of pairs whose length-normalised log-prob margin (mean log-prob per response
  token, chosen minus rejected) is > 0; the DPO implicit-reward form compares against a reference model;
- refusal rate: share of answers containing one of the refusal patterns (whitespace/case-insensitive).

How far the held-out data supports them is ta/eval/intervals.py; the gates over them are ta/eval/gates.py.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

FINAL_ANSWER_MARK = "答案:"  # NFKC turns the full-width "答案：" of the drill data into this form
_TRAILING_PUNCTUATION = "。.!！;；,，"


def normalize_text(text: str) -> str:
    """NFKC, lower-case, and no whitespace at all: the unit both ROUGE-L and exact match compare."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).lower()


def perplexity(token_logprobs: Sequence[float]) -> float:
    """exp(-mean log p) over the scored tokens; natural-log probabilities in, perplexity out."""
    if not token_logprobs:
        raise ValueError("perplexity of zero tokens is undefined")
    try:
        return math.exp(-sum(token_logprobs) / len(token_logprobs))
    except OverflowError:  # a model that gives the text (almost) no probability
        return math.inf


def next_token_logprobs(logits: Any, targets: Sequence[int]) -> list[float]:
    """log softmax(logits[i])[targets[i]] for each row: the log-prob a runtime gave each next token.

    `logits` is a (len(targets), vocab) array-like of raw scores (e.g. llama.cpp's `scores`).
    """
    import numpy as np

    rows = np.asarray(logits, dtype=np.float64)
    if rows.shape[0] != len(targets):
        raise ValueError(f"{rows.shape[0]} logit rows for {len(targets)} target tokens")
    peak = rows.max(axis=1, keepdims=True)
    log_norm = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))
    return (rows[np.arange(len(targets)), list(targets)] - log_norm).tolist()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row of memory)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for item in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if item == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    """Character-level ROUGE-L F1 (beta = 1) of two texts after `normalize_text`."""
    pred, ref = normalize_text(prediction), normalize_text(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def final_answer(text: str) -> str | None:
    """The text after the last "答案：" (rest of that line), normalised; None when there is none."""
    normalized = unicodedata.normalize("NFKC", text)
    at = normalized.rfind(FINAL_ANSWER_MARK)
    if at < 0:
        return None
    answer = normalize_text(normalized[at + len(FINAL_ANSWER_MARK) :].split("\n", 1)[0])
    return answer.rstrip(_TRAILING_PUNCTUATION) or None


def is_drill_reference(reference: str) -> bool:
    """A drill reference ends with its own line "答案：<final>" (a "答案：" inside prose does not count)."""
    lines = [line.strip() for line in unicodedata.normalize("NFKC", reference).splitlines() if line.strip()]
    return bool(lines) and lines[-1].startswith(FINAL_ANSWER_MARK) and final_answer(lines[-1]) is not None


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the prediction's final answer equals the reference's, else 0.0."""
    expected = final_answer(reference)
    if expected is None:
        raise ValueError("reference has no final answer line '答案：…'")
    return float(final_answer(prediction) == expected)


@dataclass(frozen=True)
class TaskScore:
    kind: str  # "exact_match" (drill: reference has a final answer) or "rouge_l"
    value: float


def task_score(prediction: str, reference: str) -> TaskScore:
    """Exact match where the reference is a drill answer, character ROUGE-L F1 otherwise."""
    if is_drill_reference(reference):
        return TaskScore("exact_match", exact_match(prediction, reference))
    return TaskScore("rouge_l", rouge_l_f1(prediction, reference))


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def task_summary(scores: Sequence[TaskScore]) -> dict[str, float | None]:
    """{"task": mean of all question scores, "rouge_l": mean over open questions, "exact_match": drill}."""
    return {
        "task": mean(s.value for s in scores),
        "rouge_l": mean(s.value for s in scores if s.kind == "rouge_l"),
        "exact_match": mean(s.value for s in scores if s.kind == "exact_match"),
    }


def length_normalized_margin(chosen_logprobs: Sequence[float], rejected_logprobs: Sequence[float]) -> float:
    """Mean log-prob per chosen-response token minus the same for the rejected response."""
    if not chosen_logprobs or not rejected_logprobs:
        raise ValueError("a preference response has no scored tokens")
    return sum(chosen_logprobs) / len(chosen_logprobs) - sum(rejected_logprobs) / len(rejected_logprobs)


def implicit_reward_margin(
    policy_chosen: float, reference_chosen: float, policy_rejected: float, reference_rejected: float, beta: float
) -> float:
    """DPO's implicit reward margin: beta * ((log π(c) - log π_ref(c)) - (log π(r) - log π_ref(r))).

    Arguments are summed log-probs of the whole response (DPO's own form, not length-normalised).
    """
    return beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))


def preference_accuracy(margins: Sequence[float]) -> float:
    """Share of pairs where chosen beats rejected (margin strictly > 0; a tie is not a preference)."""
    if not margins:
        raise ValueError("preference accuracy of zero pairs is undefined")
    return sum(margin > 0 for margin in margins) / len(margins)


def is_refusal(text: str, patterns: Sequence[str]) -> bool:
    """True when the answer contains a pattern; whitespace and case are ignored on both sides."""
    normalized = normalize_text(text)
    return any(normalize_text(p) and normalize_text(p) in normalized for p in patterns)


def refusal_rate(texts: Sequence[str], patterns: Sequence[str]) -> float:
    if not texts:
        raise ValueError("refusal rate of zero answers is undefined")
    return sum(is_refusal(t, patterns) for t in texts) / len(texts)


def finite_or_null(value: Any) -> Any:
    """A report with every NaN and infinity replaced by None (JSON null): metrics files stay strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value
