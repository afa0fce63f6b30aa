"""The layouts conversation data comes in, and the forms it goes out in.

Every supported layout (the guide's raw Q&A, Alpaca, ShareGPT, OpenAI messages, Firefly; the guide's
preference pairs, ShareGPT-style pairs, HH-RLHF strings, UltraFeedback binarized and as published) is
recognised by its keys (`detect_format`) and turned into one internal form, `Sample` (`normalise`); a row
whose content is unusable (missing field, wrong type, wrong roles) raises `RowRejected` with a reason
code. Out: the guide's Alpaca and instruction/chosen/rejected forms, and TRL's conversational form.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from ta.data.samples import Message, RowRejected, Sample

# ------------------------------------------------------------------------------------ format detection

SFT_FORMATS = ("qa", "alpaca", "sharegpt", "openai", "firefly", "selfinstruct")
REVIEW_STATUSES = ("pending", "accepted", "rejected", "edited")  # a selfinstruct row's `status`
REVIEWED = ("accepted", "edited")  # the statuses prepare takes when review is required
PREFERENCE_FORMATS = ("pairs", "sharegpt_pairs", "hh_rlhf", "ultrafeedback", "ultrafeedback_raw")


def detect_format(row: dict[str, Any]) -> str | None:
    """Name the layout of one row from its keys, or None when no known layout fits."""
    keys = set(row)
    if {"chosen", "rejected"} <= keys:
        if "conversations" in keys:
            return "sharegpt_pairs"
        if "prompt" in keys and isinstance(row["chosen"], list):
            return "ultrafeedback"
        if "instruction" in keys:
            return "pairs"
        if isinstance(row["chosen"], str) and "\n\nHuman:" in row["chosen"]:
            return "hh_rlhf"
        return None
    if {"instruction", "completions"} <= keys:
        return "ultrafeedback_raw"
    if {"instruction", "answer", "status"} <= keys:
        return "selfinstruct"
    if {"question", "answer"} <= keys:
        return "qa"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "openai"
    if {"input", "target"} <= keys:
        return "firefly"
    return None


def is_preference_format(fmt: str) -> bool:
    return fmt in PREFERENCE_FORMATS


# ----------------------------------------------------------------------------------------- normalisers


def _field(row: dict[str, Any], name: str, optional: bool = False) -> str:
    if name not in row or row[name] is None:
        if optional:
            return ""
        raise RowRejected("missing_field", f'field "{name}" is missing')
    value = row[name]
    if not isinstance(value, str):
        raise RowRejected("wrong_type", f'field "{name}" should be a string, got {type(value).__name__}')
    return value


def _list_field(row: dict[str, Any], name: str) -> list[Any]:
    if name not in row or row[name] is None:
        raise RowRejected("missing_field", f'field "{name}" is missing')
    if not isinstance(row[name], list):
        raise RowRejected("wrong_type", f'field "{name}" should be a list, got {type(row[name]).__name__}')
    return row[name]


def _check_roles(messages: list[Message], ends_with: str, where: str) -> list[Message]:
    """System first (optional), then user/assistant alternating from user, ending with `ends_with`."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    expected = "user"
    for i, message in enumerate(turns):
        if message["role"] != expected:
            raise RowRejected("bad_roles", f"{where}: turn {i + 1} is {message['role']!r}, expected {expected!r}")
        expected = "assistant" if expected == "user" else "user"
    if not turns or turns[-1]["role"] != ends_with:
        raise RowRejected("bad_roles", f"{where}: the conversation must end with a {ends_with} turn")
    return messages


def _alpaca_user_turn(row: dict[str, Any], instruction_key: str = "instruction", input_key: str = "input") -> str:
    instruction = _field(row, instruction_key)
    extra = _field(row, input_key, optional=True)
    return f"{instruction}\n{extra}" if extra.strip() else instruction


def _history(row: dict[str, Any]) -> list[Message]:
    """Alpaca `history`: [[question, answer], ...] before the current turn (LLaMA-Factory's layout)."""
    if row.get("history") is None:
        return []
    messages: list[Message] = []
    for i, pair in enumerate(_list_field(row, "history")):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise RowRejected("wrong_type", f'field "history[{i}]" should be [question, answer] strings')
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages


def _system(row: dict[str, Any]) -> list[Message]:
    system = _field(row, "system", optional=True)
    return [{"role": "system", "content": system}] if system.strip() else []


def from_qa(row: dict[str, Any]) -> Sample:
    messages = [
        {"role": "user", "content": _field(row, "question")},
        {"role": "assistant", "content": _field(row, "answer")},
    ]
    return Sample(messages)


def from_alpaca(row: dict[str, Any]) -> Sample:
    messages = (
        _system(row)
        + _history(row)
        + [
            {"role": "user", "content": _alpaca_user_turn(row)},
            {"role": "assistant", "content": _field(row, "output")},
        ]
    )
    return Sample(messages)


def from_firefly(row: dict[str, Any]) -> Sample:
    return Sample(
        [{"role": "user", "content": _field(row, "input")}, {"role": "assistant", "content": _field(row, "target")}]
    )


def from_selfinstruct(row: dict[str, Any]) -> Sample:
    """A row of the self-instruct review file (ta/selfinstruct/review.py); which statuses are taken is
    prepare's decision (RowProcessor.review_statuses), a status outside the four is a wrong value."""
    if row.get("status") not in REVIEW_STATUSES:
        raise RowRejected("wrong_type", f'field "status" is {row.get("status")!r}; use {", ".join(REVIEW_STATUSES)}')
    instruction, answer = _field(row, "instruction"), _field(row, "answer")
    return Sample([{"role": "user", "content": instruction}, {"role": "assistant", "content": answer}])


SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}


def _sharegpt_turn(turn: Any, where: str) -> Message:
    if not isinstance(turn, dict):
        raise RowRejected("wrong_type", f"{where} should be an object with from/value")
    for key in ("from", "value"):
        if key not in turn:
            raise RowRejected("missing_field", f'{where}: field "{key}" is missing')
        if not isinstance(turn[key], str):
            raise RowRejected("wrong_type", f'{where}: field "{key}" should be a string')
    role = SHAREGPT_ROLES.get(turn["from"].lower())
    if role is None:
        raise RowRejected("bad_roles", f"{where}: unknown speaker {turn['from']!r}")
    return {"role": role, "content": turn["value"]}


def _sharegpt_messages(row: dict[str, Any]) -> list[Message]:
    turns = _list_field(row, "conversations")
    messages = _system(row) + [_sharegpt_turn(t, f"conversations[{i}]") for i, t in enumerate(turns)]
    return messages


def from_sharegpt(row: dict[str, Any]) -> Sample:
    return Sample(_check_roles(_sharegpt_messages(row), "assistant", "conversations"))


def _openai_messages(value: list[Any], name: str) -> list[Message]:
    messages = []
    for i, message in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            raise RowRejected("wrong_type", f"{where} should be an object with role/content")
        for key in ("role", "content"):
            if key not in message:
                raise RowRejected("missing_field", f'{where}: field "{key}" is missing')
            if not isinstance(message[key], str):
                raise RowRejected("wrong_type", f'{where}: field "{key}" should be a string')
        if message["role"] not in ("system", "user", "assistant"):
            raise RowRejected("bad_roles", f"{where}: unknown role {message['role']!r}")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def from_openai(row: dict[str, Any]) -> Sample:
    return Sample(_check_roles(_openai_messages(_list_field(row, "messages"), "messages"), "assistant", "messages"))


def from_pairs(row: dict[str, Any]) -> Sample:
    prompt = _system(row) + _history(row) + [{"role": "user", "content": _alpaca_user_turn(row)}]
    return Sample(prompt, chosen=_field(row, "chosen"), rejected=_field(row, "rejected"))


def _present(row: dict[str, Any], name: str) -> Any:
    """A field that must be there (any type: the caller checks it)."""
    if row.get(name) is None:
        raise RowRejected("missing_field", f'field "{name}" is missing')
    return row[name]


def from_sharegpt_pairs(row: dict[str, Any]) -> Sample:
    prompt = _check_roles(_sharegpt_messages(row), "user", "conversations")
    chosen = _sharegpt_turn(_present(row, "chosen"), "chosen")
    rejected = _sharegpt_turn(_present(row, "rejected"), "rejected")
    for name, turn in (("chosen", chosen), ("rejected", rejected)):
        if turn["role"] != "assistant":
            raise RowRejected("bad_roles", f"{name}: expected an assistant turn, got {turn['role']!r}")
    return Sample(prompt, chosen=chosen["content"], rejected=rejected["content"])


HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def _hh_messages(text: str, name: str) -> list[Message]:
    parts = HH_TURN.split(text)
    if parts[0].strip():
        raise RowRejected("bad_roles", f'{name}: text before the first "\\n\\nHuman:"')
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": said} for who, said in zip(parts[1::2], parts[2::2], strict=True)]


def from_hh_rlhf(row: dict[str, Any]) -> Sample:
    chosen = _check_roles(_hh_messages(_field(row, "chosen"), "chosen"), "assistant", "chosen")
    rejected = _check_roles(_hh_messages(_field(row, "rejected"), "rejected"), "assistant", "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise RowRejected("bad_roles", "chosen and rejected do not share the same conversation before the answer")
    return Sample(chosen[:-1], chosen=chosen[-1]["content"], rejected=rejected[-1]["content"])


def from_ultrafeedback(row: dict[str, Any]) -> Sample:
    prompt_text = _field(row, "prompt")
    chosen = _openai_messages(_list_field(row, "chosen"), "chosen")
    rejected = _openai_messages(_list_field(row, "rejected"), "rejected")
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if not messages or messages[-1]["role"] != "assistant":
            raise RowRejected("bad_roles", f"{name}: must end with an assistant turn")
    prompt = chosen[:-1] or [{"role": "user", "content": prompt_text}]
    if rejected[:-1] and rejected[:-1] != prompt:
        raise RowRejected("bad_roles", "chosen and rejected do not share the same conversation before the answer")
    return Sample(
        _check_roles(prompt, "user", "prompt"), chosen=chosen[-1]["content"], rejected=rejected[-1]["content"]
    )


def from_ultrafeedback_raw(row: dict[str, Any]) -> Sample:
    """openbmb/UltraFeedback as published: several rated completions per instruction. Binarised the
    usual way: the best overall_score is chosen, the worst rejected (the first one on a tie). A NaN score
    (the published set has some) rates nothing; without two different scores there is no preference."""
    instruction = _field(row, "instruction")
    rated = []
    completions = _list_field(row, "completions")
    for i, completion in enumerate(completions):
        if not isinstance(completion, dict):
            raise RowRejected("wrong_type", f"completions[{i}] should be an object")
        score, response = completion.get("overall_score"), completion.get("response")
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not isinstance(response, str):
            raise RowRejected("wrong_type", f"completions[{i}] needs a numeric overall_score and a response string")
        if isinstance(score, int) or math.isfinite(score):  # an int may be past float range
            rated.append((score, i, response))
    if len(completions) < 2:
        raise RowRejected("no_pair", f"{len(completions)} completion(s); a pair needs two")
    if len(rated) < 2 or max(rated)[0] == min(rated)[0]:
        raise RowRejected("no_preference", "no two completions with different finite overall_score")
    best = max(rated, key=lambda r: (r[0], -r[1]))
    worst = min(rated, key=lambda r: (r[0], r[1]))
    return Sample([{"role": "user", "content": instruction}], chosen=best[2], rejected=worst[2])


NORMALISERS: dict[str, Callable[[dict[str, Any]], Sample]] = {
    "qa": from_qa,
    "alpaca": from_alpaca,
    "firefly": from_firefly,
    "sharegpt": from_sharegpt,
    "openai": from_openai,
    "pairs": from_pairs,
    "sharegpt_pairs": from_sharegpt_pairs,
    "hh_rlhf": from_hh_rlhf,
    "ultrafeedback": from_ultrafeedback,
    "ultrafeedback_raw": from_ultrafeedback_raw,
    "selfinstruct": from_selfinstruct,
}


def normalise(row: dict[str, Any], fmt: str, columns: dict[str, str] | None = None) -> Sample:
    """Turn one row of layout `fmt` into a Sample; `columns` renames a source's columns first."""
    if columns:
        row = {columns.get(key, key): value for key, value in row.items()}
    return NORMALISERS[fmt](row)


# ------------------------------------------------------------------------------------ target formats


def to_alpaca(sample: Sample) -> dict[str, Any]:
    """The guide's target form: instruction/input/output, plus `history` (and `system`) for multi-turn."""
    system = [m["content"] for m in sample.messages if m["role"] == "system"]
    turns = [m for m in sample.messages if m["role"] != "system"]
    row: dict[str, Any] = {"instruction": turns[-2]["content"], "input": "", "output": turns[-1]["content"]}
    if len(turns) > 2:
        row["history"] = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)]
    if system:
        row["system"] = system[0]
    return row


def to_guide_pair(sample: Sample) -> dict[str, Any]:
    """The guide's preference form: instruction/chosen/rejected (+ history/system when present)."""
    system = [m["content"] for m in sample.messages if m["role"] == "system"]
    turns = [m for m in sample.messages if m["role"] != "system"]
    row: dict[str, Any] = {"instruction": turns[-1]["content"], "chosen": sample.chosen, "rejected": sample.rejected}
    if len(turns) > 1:
        row["history"] = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 1, 2)]
    if system:
        row["system"] = system[0]
    return row


def to_chat(sample: Sample) -> dict[str, Any]:
    """The trainers' form (TRL conversational): `messages`, or `prompt`/`chosen`/`rejected`."""
    if sample.is_preference:
        return {
            "prompt": sample.messages,
            "chosen": [{"role": "assistant", "content": sample.chosen}],
            "rejected": [{"role": "assistant", "content": sample.rejected}],
        }
    return {"messages": sample.messages}
