"""One chat completion from any OpenAI-compatible endpoint (DashScope/Qwen-Max, OpenAI, vLLM, llama.cpp's
server), through the official `openai` SDK.

Retries are the SDK's own: 429, 408, 409, 5xx, timeouts and dropped connections are retried up to
`max_retries` times with exponential backoff and jitter (0.5 s doubling to 8 s), a server's Retry-After
honoured. What still fails after that, and any other HTTP error (400 context too long, 401 bad key, 404
unknown model), is a SelfInstructError naming the endpoint and status. The key is read from the
environment variable named in params, never from params.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ta.config import SelfInstruct
from ta.errors import SelfInstructError
from ta.selfinstruct.filters import Reply

SDK_FIELDS = ("temperature", "top_p", "max_tokens", "seed", "response_format")


def request_body(params: SelfInstruct, messages: list[dict[str, str]], sampling_seed: int) -> dict[str, Any]:
    """The request exactly as sent (and as the cache keys it): params' sampling settings, then extra_body."""
    body: dict[str, Any] = {
        "model": params.model,
        "messages": messages,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "seed": sampling_seed,
    }
    if params.json_mode:
        body["response_format"] = {"type": "json_object"}
    return {**body, **params.extra_body}


def api_key(params: SelfInstruct) -> str:
    if not params.api_key_env:
        return "none"  # the SDK insists on a key; a local server without one ignores it
    key = os.environ.get(params.api_key_env, "")
    if not key:
        raise SelfInstructError(
            f"${params.api_key_env} is not set: export it with your key, or set selfinstruct.api_key_env "
            '(params.yaml) to "" for a server without one'
        )
    return key


class ChatClient:
    """Thread-safe: one instance serves every worker thread."""

    def __init__(self, params: SelfInstruct) -> None:
        from openai import OpenAI

        self.base_url = params.base_url
        self.max_retries = params.max_retries
        self.client = OpenAI(
            base_url=params.base_url, api_key=api_key(params), timeout=params.timeout_s, max_retries=params.max_retries
        )

    def complete(self, body: dict[str, Any]) -> Reply:
        import openai

        fields = dict(body)
        model, messages = fields.pop("model"), fields.pop("messages")
        known = {name: fields.pop(name) for name in SDK_FIELDS if name in fields}
        try:
            response = self.client.chat.completions.create(
                model=model, messages=messages, **known, extra_body=fields or None
            )
        except openai.APIStatusError as err:
            retryable = err.status_code in (408, 409, 429) or err.status_code >= 500
            retried = f" after {self.max_retries} retries" if retryable else ""
            raise SelfInstructError(
                f"{self.base_url}: HTTP {err.status_code}{retried}: {_short(err.message)}"
            ) from None
        except openai.APIConnectionError as err:
            raise SelfInstructError(
                f"{self.base_url}: {type(err).__name__.removeprefix('API')} after {self.max_retries} retries"
                " (is the server running? params.yaml: selfinstruct.base_url)"
            ) from None
        if not response.choices:
            raise SelfInstructError(f"{self.base_url}: a reply without choices from model {model!r}")
        choice = response.choices[0]
        usage = response.usage
        return Reply(
            content=choice.message.content or "",
            finish_reason=choice.finish_reason or "",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )


def _short(text: str) -> str:
    """The server's message on one line, without the SDK's "Error code: 500 - " prefix."""
    return re.sub(r"^Error code: \d+ - ", "", " ".join(str(text).split()))[:200]
