"""Ask the TeachingAssistant through Ollama: its own /api/chat (default) or its OpenAI-compatible /v1.

    ollama create teachingassistant -f models/ollama/Modelfile
    python serve/ollama_client.py --prompt "你好，请介绍一下你自己" [--stream] [--openai]

/api/chat streams NDJSON: one JSON object per line, each with the next piece in `message.content`, the
last with `"done": true` and `done_reason` ("stop" or "length"). Without --system the Modelfile's SYSTEM
prompt applies. Failures are one line on stderr and exit code 2, as in vllm_client.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

import requests

from serve.vllm_client import (
    ClientError,
    Reply,
    ServerDown,
    chat_completion,
    common_args,
    messages_for,
    post,
    print_piece,
    print_reply,
)
from ta.config import load_project_params
from ta.errors import ParamsError


def ollama_chat(
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
    """One reply from Ollama's /api/chat; with `stream`, `on_text` gets each piece as it arrives."""
    url = base_url.rstrip("/") + "/api/chat"
    body = {
        "model": model,
        "messages": messages,
        "stream": stream,
        "options": {"temperature": temperature, "num_predict": max_tokens},
    }
    response = post(url, body, api_key, timeout, stream)
    try:
        if not stream:
            data = response.json()
            return Reply(data["message"]["content"], data.get("done_reason"))
        pieces: list[str] = []
        for line in response.iter_lines(chunk_size=None):
            if not line.strip():
                continue
            data = json.loads(line)
            if "error" in data:  # Ollama reports failures mid-stream as {"error": "..."}
                raise ClientError(f"{url}: {data['error']}")
            text = (data.get("message") or {}).get("content") or ""
            if text:
                pieces.append(text)
                if on_text:
                    on_text(text)
            if data.get("done"):
                return Reply("".join(pieces), data.get("done_reason"))
        raise ClientError(f'{url}: stream ended without a final "done": true object')
    except (KeyError, TypeError, ValueError) as err:
        raise ClientError(f"{url}: unexpected response shape ({type(err).__name__}: {err})") from err
    except requests.RequestException as err:
        raise ClientError(f"{url}: connection lost while reading the answer ({type(err).__name__})") from err


def main(argv: list[str] | None = None) -> int:
    try:
        params = load_project_params()
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description="Ask the TeachingAssistant through Ollama.")
    common_args(parser, params, params.serve.ollama_url, params.serve.ollama_model)
    parser.add_argument("--openai", action="store_true", help="use Ollama's OpenAI-compatible /v1 endpoint")
    args = parser.parse_args(argv)
    chat = chat_completion if args.openai else ollama_chat
    base_url = args.base_url.rstrip("/") + "/v1" if args.openai else args.base_url

    try:
        reply = chat(
            base_url,
            args.model,
            messages_for(args.prompt, args.system),
            api_key=os.environ.get(args.api_key_env),
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            timeout=args.timeout,
            stream=args.stream,
            on_text=print_piece,
        )
    except ClientError as err:
        hint = "; start it with `ollama serve`" if isinstance(err, ServerDown) else ""
        print(f"error: {err}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print_reply(reply, args.stream, args.max_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
