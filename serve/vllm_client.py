"""Ask the TeachingAssistant a question over the OpenAI chat completions API (vLLM or llama.cpp's server).

    python serve/vllm_client.py --prompt "什么是线性代数？" [--stream] [--base-url http://127.0.0.1:8000/v1]

Defaults come from params.yaml (`serve.*`, and `prepare.system_prompt`, the prompt the model was tuned
with); the API key from the environment variable named by `serve.api_key_env` (TA_API_KEY). Any failure
(server down, timeout, HTTP error) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests

from ta.config import Params, load_project_params
from ta.errors import ParamsError, UserError

START_HINT = "start one with `python -m serve.llama_server` (CPU) or `python -m serve.vllm` (GPU)"


class ClientError(UserError):
    """A one-line, user-facing reason why no answer came back."""


class ServerDown(ClientError):
    """Nothing listens at the URL."""


@dataclass
class Reply:
    text: str
    finish_reason: str | None  # "stop": the model ended its turn; "length": cut at max_tokens


def messages_for(prompt: str, system: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def post(url: str, body: dict[str, Any], api_key: str | None, timeout: float, stream: bool) -> requests.Response:
    """POST JSON; turn every transport or HTTP failure into a one-line ClientError."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = requests.post(url, json=body, headers=headers, timeout=timeout, stream=stream)
    except requests.ConnectionError as err:
        raise ServerDown(f"cannot connect to {url}: is the server running?") from err
    except requests.Timeout as err:
        raise ClientError(f"no answer from {url} within {timeout:g}s (raise --timeout)") from err
    except requests.RequestException as err:  # a malformed --base-url, too many redirects, ...
        raise ClientError(f"{url}: {type(err).__name__}: {err}") from err
    if response.status_code == 401:
        raise ClientError(f"{url}: 401 unauthorized: missing or wrong API key (the variable named by --api-key-env)")
    if response.status_code >= 400:
        raise ClientError(f"{url}: HTTP {response.status_code}: {error_text(response)}")
    return response


def error_text(response: requests.Response) -> str:
    """The server's own error message (OpenAI, FastAPI and Ollama shapes), on one line."""
    try:
        body = response.json()
        message = body.get("error") or body.get("detail") or body
        if isinstance(message, dict):
            message = message.get("message", message)
    except ValueError:
        message = response.text
    return " ".join(str(message).split())[:300]


def chat_completion(
    base_url: str,
    model: str,
    messages: list[dict[str, str]],
    *,
    api_key: str | None = None,
    temperature: float = 0.7,
    max_tokens: int = 512,
    timeout: float = 120.0,
    stream: bool = False,
    on_text: Callable[[str], None] | None = None,
) -> Reply:
    """One chat completion; with `stream`, `on_text` gets each piece of text as it arrives (SSE)."""
    url = base_url.rstrip("/") + "/chat/completions"
    body = {
        "model": model,
        "messages": messages,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "stream": stream,
    }
    response = post(url, body, api_key, timeout, stream)
    try:
        if not stream:
            choice = response.json()["choices"][0]
            return Reply(choice["message"]["content"] or "", choice.get("finish_reason"))
        pieces: list[str] = []
        finish_reason = None
        for event in sse_events(response):
            if event.get("error"):
                raise ClientError(f"{url}: error in stream: {event['error']}")
            for choice in event.get("choices", []):
                text = (choice.get("delta") or {}).get("content") or ""
                if text:
                    pieces.append(text)
                    if on_text:
                        on_text(text)
                finish_reason = choice.get("finish_reason") or finish_reason
        return Reply("".join(pieces), finish_reason)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise ClientError(f"{url}: unexpected response shape ({type(err).__name__}: {err})") from err
    except requests.RequestException as err:
        raise ClientError(f"{url}: connection lost while reading the answer ({type(err).__name__})") from err


def sse_events(response: requests.Response) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a server-sent-events stream (`data: {...}` lines), up to `data: [DONE]`."""
    for line in response.iter_lines(chunk_size=None):
        if not line.startswith(b"data:"):
            continue  # blank separators, ": ping" comments, event: names
        data = line[len(b"data:") :].strip()
        if data == b"[DONE]":
            return
        yield json.loads(data)


def print_reply(reply: Reply, streamed: bool, max_tokens: int) -> None:
    print("" if streamed else reply.text, flush=True)
    if reply.finish_reason == "length":
        print(
            f"warning: the answer was cut at --max-tokens {max_tokens} (finish_reason=length)",
            file=sys.stderr,
        )


def common_args(parser: argparse.ArgumentParser, params: Params, base_url: str, model: str) -> None:
    """The options both clients share, with defaults from params.yaml."""
    parser.add_argument("--prompt", required=True, help="the question")
    parser.add_argument("--base-url", default=base_url)
    parser.add_argument("--model", default=model)
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    parser.add_argument("--temperature", type=float, default=params.serve.temperature)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server")
    parser.add_argument("--api-key-env", default=params.serve.api_key_env, help="env var holding the API key")


def print_piece(text: str) -> None:
    print(text, end="", flush=True)


def main(argv: list[str] | None = None) -> int:
    try:
        params = load_project_params()
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description="Ask the TeachingAssistant over the OpenAI chat API.")
    common_args(parser, params, f"http://{params.serve.host}:{params.serve.port}/v1", params.serve.lora_name)
    args = parser.parse_args(argv)
    system = params.prepare.system_prompt if args.system is None else args.system

    try:
        reply = chat_completion(
            args.base_url,
            args.model,
            messages_for(args.prompt, system),
            api_key=os.environ.get(args.api_key_env),
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            timeout=args.timeout,
            stream=args.stream,
            on_text=print_piece,
        )
    except ClientError as err:
        hint = f"; {START_HINT}" if isinstance(err, ServerDown) else ""
        print(f"error: {err}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print_reply(reply, args.stream, args.max_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
