"""Ask the TeachingAssistant through Ollama: its own /api/chat (default, through the official `ollama` package)
or its OpenAI-compatible /v1 (the `openai` SDK, as vllm_client.py).

    ollama create teachingassistant -f models/ollama/Modelfile
    python serve/ollama_client.py --prompt "你好，请介绍一下你自己" [--stream] [--openai]

/api/chat streams NDJSON: one JSON object per line, each with the next piece in `message.content`, the
last with `"done": true` and `done_reason` ("stop" or "length"); a stream that ends before it was cut. Without
--system the Modelfile's SYSTEM prompt applies. `--timeout` is one deadline for the whole answer, retries on
429/502-504 included. Failures are one line on stderr and exit code 2, as in vllm_client.py.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from serve.deadline import Deadline
from serve.vllm_client import (
    ClientError,
    Reply,
    ServerDown,
    chat_completion,
    common_args,
    error_text,
    messages_for,
    print_piece,
    print_reply,
    timed_out,
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
    """One reply from Ollama's /api/chat within `timeout` seconds overall; with `stream`, `on_text` gets each
    piece as it arrives. Every failure is a ClientError."""
    import httpx
    import ollama

    url = base_url.rstrip("/") + "/api/chat"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    options = {"temperature": temperature, "num_predict": max_tokens}
    clients: list[Any] = []
    with Deadline(timeout) as deadline:
        hooks = {"response": [deadline.on_response]}

        def attempt() -> Any:
            # a client per attempt: the package takes its timeout only when the client is made
            client = ollama.Client(base_url, headers=headers, timeout=deadline.remaining(), event_hooks=hooks)
            clients.append(client)
            reply = client.chat(model=model, messages=messages, stream=stream, options=options)
            if not stream:
                return reply
            first = next(reply, None)  # the request goes out only now: let a 503 be retried
            return itertools.chain([first] if first is not None else [], reply)

        try:
            reply = deadline.retry(attempt, refusal)
            return read_stream(reply, url, on_text) if stream else read_reply(reply, url)
        except ClientError:
            if deadline.expired:
                raise timed_out(url, timeout) from None
            raise
        # AttributeError and TypeError: the package calls .get() on, and unpacks, whatever JSON the server sent
        except (ollama.ResponseError, httpx.HTTPError, OSError, ValueError, AttributeError, TypeError) as err:
            if deadline.expired:
                raise timed_out(url, timeout) from err
            raise client_error(err, url, timeout, deadline.retries) from err
        finally:
            for client in clients:
                client.close()


def http_status(err: BaseException) -> tuple[int, object] | None:
    """(status, error body) of an HTTP error answer, also when the package failed to parse its body (then
    the httpx error it was handling is the context)."""
    import httpx
    import ollama

    if isinstance(err, ollama.ResponseError) and err.status_code > 0:
        return err.status_code, err.error
    if isinstance(err.__context__, httpx.HTTPStatusError):
        response = err.__context__.response
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text
    return None


def refusal(err: Exception) -> tuple[int, float | None] | None:
    """(status, Retry-After) for Deadline.retry: the package keeps no headers, so the backoff decides."""
    status = http_status(err)
    return (status[0], None) if status else None


def client_error(err: Exception, url: str, timeout: float, retries: int) -> ClientError:
    import httpx
    import ollama

    status = http_status(err)
    if status and status[0] == 401:
        return ClientError(f"{url}: 401 unauthorized: missing or wrong API key (the variable named by --api-key-env)")
    if status:
        after = f" after {retries} {'retry' if retries == 1 else 'retries'}" if retries else ""
        return ClientError(f"{url}: HTTP {status[0]}{after}: {error_text(status[1])}")
    if isinstance(err, ollama.ResponseError):  # Ollama reports failures mid-stream as {"error": "..."}
        return ClientError(f"{url}: {error_text(err.error)}")
    if isinstance(err, (ConnectionError, httpx.ConnectError)):
        return ServerDown(f"cannot connect to {url}: is the server running?")
    if isinstance(err, httpx.TimeoutException):
        return timed_out(url, timeout)
    if isinstance(err, (httpx.HTTPError, OSError)):
        return ClientError(f"{url}: connection lost while reading the answer ({type(err).__name__})")
    return ClientError(f"{url}: unexpected response shape ({type(err).__name__}: {' '.join(str(err).split())[:200]})")


def read_reply(response: Any, url: str) -> Reply:
    """The package has checked the shape (pydantic): `message.content` is text or None."""
    return Reply(response.message.content or "", response.done_reason)


def read_stream(parts: Iterator[Any], url: str, on_text: Callable[[str], None] | None) -> Reply:
    """The pieces, handed to `on_text` as they arrive, up to the object with "done": true."""
    pieces: list[str] = []
    for part in parts:
        text = part.message.content or ""
        if text:
            pieces.append(text)
            if on_text:
                on_text(text)
        if part.done:
            return Reply("".join(pieces), part.done_reason)
    raise ClientError(f'{url}: stream ended without a final "done": true object')


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
