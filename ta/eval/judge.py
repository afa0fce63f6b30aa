"""Optional LLM-as-judge for the eval stage (off by default: `eval.judge_enabled`).

Any OpenAI-compatible chat endpoint works (vLLM, llama.cpp's `python -m llama_cpp.server`, a hosted API).
The judge grades each held-out answer against its reference on a teaching rubric — correct, clear,
pedagogical, 1–5 each — and replies with one JSON object. We ask for JSON mode with the verdict's schema
(llama.cpp turns it into a grammar, so even a weak judge model answers in shape); a reply that still does
not parse is counted as unscored, never guessed. `judge.<artifact>` is the mean verdict mapped to [0, 1].
The API key is read from the environment variable named by `eval.judge_api_key_env`, never from params.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ta.errors import UserError

log = logging.getLogger("judge")

CRITERIA = ("correct", "clear", "pedagogical")
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {name: {"type": "integer", "enum": [1, 2, 3, 4, 5]} for name in CRITERIA},
    "required": list(CRITERIA),
}
RUBRIC = (
    "你是一位严格的教学质量评审。请对照参考答案，评价“教学助手的回答”，三个方面各打 1 到 5 分：\n"
    "correct：内容是否正确，结论是否与参考答案一致；\n"
    "clear：表达是否清楚、有条理；\n"
    "pedagogical：是否循序渐进、讲清思路、有助于学生理解。\n"
    '只输出一个 JSON 对象，例如 {"correct": 4, "clear": 5, "pedagogical": 3}。'
)


class JudgeError(UserError):
    """The judge endpoint could not be reached or answered with an error."""


@dataclass(frozen=True)
class Verdict:
    correct: int
    clear: int
    pedagogical: int

    @property
    def score(self) -> float:
        """Mean of the three grades mapped from 1..5 to 0..1."""
        return ((self.correct + self.clear + self.pedagogical) / 3 - 1) / 4


def parse_verdict(reply: str) -> Verdict | None:
    """The first JSON object in the reply with all three grades as integers 1..5, else None."""
    match = re.search(r"\{.*?\}", reply, flags=re.DOTALL)
    if not match:
        return None
    try:
        value = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    grades = [value.get(name) if isinstance(value, dict) else None for name in CRITERIA]
    if not all(isinstance(g, int) and not isinstance(g, bool) and 1 <= g <= 5 for g in grades):
        return None
    return Verdict(*grades)


def judge_messages(question: str, reference: str, answer: str) -> list[dict[str, str]]:
    content = f"【问题】\n{question}\n\n【参考答案】\n{reference}\n\n【教学助手的回答】\n{answer or '（空）'}"
    return [{"role": "system", "content": RUBRIC}, {"role": "user", "content": content}]


def ask_judge(
    base_url: str, model: str, messages: list[dict[str, str]], api_key: str | None, timeout_s: float = 120.0
) -> str:
    """One chat completion through the openai SDK (temperature 0, JSON mode with the verdict schema; the SDK
    retries 429, 5xx and dropped connections twice with backoff); returns the reply text."""
    import openai

    url = base_url.rstrip("/") + "/chat/completions"
    client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout_s)
    no_key = None if api_key else {"Authorization": openai.omit}  # the SDK insists on a key: a placeholder, not sent
    try:
        response = client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            temperature=0.0,
            max_tokens=64,
            response_format={"type": "json_object", "schema": VERDICT_SCHEMA},  # type: ignore[typeddict-unknown-key]
            extra_headers=no_key,
        )
    except openai.APIStatusError as err:
        raise JudgeError(f"{url}: judge answered HTTP {err.status_code}: {str(err.body)[:200]}") from err
    except openai.APIConnectionError as err:
        cause = type(err.__cause__ or err).__name__
        raise JudgeError(f"{url}: judge endpoint unreachable ({cause}); is the server running?") from err
    except (ValueError, openai.APIResponseValidationError) as err:  # a 200 whose body is not JSON
        raise JudgeError(f"{url}: the judge's reply is not a chat completion ({type(err).__name__})") from err
    finally:
        client.close()
    choices = getattr(response, "choices", None)
    message = getattr(choices[0], "message", None) if isinstance(choices, list) and choices else None
    content = getattr(message, "content", None)
    if content is not None and not isinstance(content, str):
        raise JudgeError(f"{url}: the judge's reply is not a chat completion")
    return content or ""


def judge_answers(
    base_url: str,
    model: str,
    api_key: str | None,
    questions: Sequence[str],
    references: Sequence[str],
    answers: Sequence[str],
) -> list[Verdict | None]:
    """One verdict per answer, None where the judge failed on it: unreachable, an HTTP error, a reply that is
    not a chat completion or not a verdict. A failure is logged and costs that sample only."""
    verdicts: list[Verdict | None] = []
    for i, (q, r, a) in enumerate(zip(questions, references, answers, strict=True)):
        try:
            reply = ask_judge(base_url, model, judge_messages(q, r, a), api_key)
        except JudgeError as err:
            log.warning("judge: sample %d unscored: %s", i + 1, err)
            verdicts.append(None)
            continue
        verdict = parse_verdict(reply)
        if verdict is None:
            log.warning("judge: sample %d unscored: the reply is not a verdict: %r", i + 1, reply[:200])
        verdicts.append(verdict)
    return verdicts


def judge_score(params: Any, tasks: Sequence[Any], answers: Sequence[str]) -> tuple[float | None, int]:
    """Mean judge score of the first `eval.judge_max_samples` task answers (None if none was scored), and
    how many were left unscored.

    `params` is the eval section; `tasks` carry `.prompt` (messages ending with the user turn) and
    `.reference`.
    """
    n = min(params.judge_max_samples, len(tasks))
    verdicts = judge_answers(
        params.judge_base_url,
        params.judge_model,
        os.environ.get(params.judge_api_key_env) or None,
        [task.prompt[-1]["content"] for task in tasks[:n]],
        [task.reference for task in tasks[:n]],
        list(answers[:n]),
    )
    scored = [v.score for v in verdicts if v is not None]
    if len(scored) < n:
        log.warning("judge: %d of %d answers unscored", n - len(scored), n)
    return (sum(scored) / len(scored) if scored else None), n - len(scored)
