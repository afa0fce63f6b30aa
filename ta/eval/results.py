"""What eval holds in memory: the held-out items every artifact is measured on, and one artifact's results."""

from __future__ import annotations

from dataclasses import dataclass, field

from ta.eval.metrics import TaskScore
from ta.eval.runtimes import Encoded


@dataclass
class TaskItem:
    prompt: list[dict[str, str]]
    reference: str


@dataclass
class PreferenceItem:
    chosen: Encoded
    rejected: Encoded


@dataclass
class HeldOut:
    conversations: list[Encoded]
    tasks: list[TaskItem]
    task_prompt_ids: list[list[int]]
    preferences: list[PreferenceItem]
    sample_prompts: list[str]
    sample_prompt_ids: list[list[int]]


@dataclass
class ArtifactResult:
    perplexity: float
    task: dict[str, float | None]
    preference_sums: list[tuple[float, float]]  # summed log-probs (chosen, rejected) per pair
    preference_accuracy: float
    refusal_rate: float
    task_answers: list[str] = field(default_factory=list)
    task_scores: list[TaskScore] = field(default_factory=list)
    sample_answers: list[str] = field(default_factory=list)
    # per held-out item, what the aggregates above are made of (the bootstrap intervals resample them)
    nll_sums: list[float] = field(default_factory=list)  # per conversation: minus its summed token log-probs
    token_counts: list[int] = field(default_factory=list)  # per conversation: tokens scored
    preference_margins: list[float] = field(default_factory=list)  # per pair: length-normalised margin
