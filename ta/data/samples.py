"""The internal form of one conversation, which every input layout is turned into.

`Sample` is one conversation: a list of chat messages (the whole conversation for SFT, the prompt for a
preference pair) plus the chosen/rejected answers for pairs; ta/data/formats.py turns every supported
layout into it. A row whose content is unusable raises `RowRejected` with a reason code, so the caller can
reject just that row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Message = dict[str, str]


class RowRejected(ValueError):
    """A row whose content cannot be used; `reason` is its reject reason code. Caught per row (never a
    user-facing error: the row goes to the rejects file)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class Sample:
    """One conversation. SFT: `messages` ends with the assistant answer. Preference: `messages` is the
    prompt (ends with a user turn) and `chosen`/`rejected` are the two assistant answers."""

    messages: list[Message]
    chosen: str | None = None
    rejected: str | None = None
    own: str | None = field(default=None, repr=False, compare=False)  # own_text(), once computed

    @property
    def is_preference(self) -> bool:
        return self.chosen is not None


def with_system(messages: list[Message], system_prompt: str) -> list[Message]:
    """The conversation as the trainer sees it: the row's own system turn, else the params one."""
    if (messages and messages[0]["role"] == "system") or not system_prompt:
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def with_system_prompt(sample: Sample, system_prompt: str) -> Sample:
    return Sample(with_system(sample.messages, system_prompt), sample.chosen, sample.rejected)


def own_text(sample: Sample) -> str:
    """The sample's own words (prompt + answer, no system prompt, no template): what min_tokens counts.
    Kept on the sample: several filters ask (samples are not changed once built)."""
    if sample.own is None:
        turns = [m["content"] for m in sample.messages if m["role"] != "system"]
        if sample.is_preference:
            turns.append(sample.chosen or "")
        sample.own = "\n".join(turns)
    return sample.own


def templated_variants(sample: Sample, system_prompt: str) -> list[list[Message]]:
    """The full conversations a trainer will template: one for SFT, chosen and rejected for a pair."""
    messages = with_system(sample.messages, system_prompt)
    if not sample.is_preference:
        return [messages]
    return [messages + [{"role": "assistant", "content": answer}] for answer in (sample.chosen, sample.rejected)]
