"""Ask the TeachingAssistant a question over the OpenAI chat completions API (vLLM or llama.cpp's server),
through the official `openai` SDK.

    python serve/vllm_client.py --prompt "什么是线性代数？" [--stream] [--base-url http://127.0.0.1:8000/v1]

Defaults come from params.yaml (`serve.*`, and `prepare.system_prompt`, the prompt the model was tuned
with); the API key from the environment variable named by `serve.api_key_env` (TA_API_KEY). `--timeout` is
one deadline for the whole answer, retries included (serve/deadline.py); 429 and 502-504 are retried with
backoff. A stream must end with a finish_reason: one cut before it is an error, not a short answer. Any
failure (server down, deadline, HTTP error, a malformed reply) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from serve.deadline import Deadline, retry_after
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


def one_line(value: object, limit: int = 300) -> str:
    return " ".join(str(value).split())[:limit]


def error_text(body: object) -> str:
    """The server's own error message from an error body of any shape (OpenAI's {"message"}, FastAPI's
    {"detail"}, Ollama's {"error"}, or not an object at all), on one line."""
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail") or body.get("error") or body
        body = message.get("message", message) if isinstance(message, dict) else message
    return one_line(body)


def timed_out(url: str, timeout: float) -> ClientError:
    return ClientError(f"no answer from {url} within {timeout:g}s (raise --timeout)")


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
    """One chat completion within `timeout` seconds overall; with `stream`, `on_text` gets each piece of text
    as it arrives. Every failure is a ClientError."""
    import openai

    url = base_url.rstrip("/") + "/chat/completions"
    with Deadline(timeout) as deadline:
        http_client = openai.DefaultHttpxClient(event_hooks={"response": [deadline.on_response]})
        # the SDK insists on a key: without one, a placeholder it never sends. Its retries would ignore the deadline.
        client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0, http_client=http_client)
        no_key = None if api_key else {"Authorization": openai.omit}

        def attempt() -> Any:
            return client.with_options(timeout=deadline.remaining()).chat.completions.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                temperature=temperature,
                max_tokens=max_tokens,
                stream=stream,
                extra_headers=no_key,
            )

        try:
            response = deadline.retry(attempt, refusal)
            return read_stream(response, url, on_text) if stream else read_reply(response, url)
        except (openai.OpenAIError, ClientError, ValueError) as err:
            if deadline.expired:
                raise timed_out(url, timeout) from err
            if isinstance(err, ClientError):
                raise
            raise client_error(err, url, timeout, deadline.retries) from err
        finally:
            client.close()


def refusal(err: Exception) -> tuple[int, float | None] | None:
    """(status, Retry-After) of an HTTP error answer, for Deadline.retry."""
    import openai

    if isinstance(err, openai.APIStatusError):
        return err.status_code, retry_after(err.response.headers)
    return None


def client_error(err: Exception, url: str, timeout: float, retries: int) -> ClientError:
    """The one line for an SDK error (or a reply that is not JSON)."""
    import httpx2
    import openai

    if isinstance(err, openai.AuthenticationError):
        return ClientError(f"{url}: 401 unauthorized: missing or wrong API key (the variable named by --api-key-env)")
    if isinstance(err, openai.APIStatusError):
        after = f" after {retries} {'retry' if retries == 1 else 'retries'}" if retries else ""
        return ClientError(f"{url}: HTTP {err.status_code}{after}: {error_text(err.body)}")
    if isinstance(err, openai.APITimeoutError):
        return timed_out(url, timeout)
    if isinstance(err, openai.APIConnectionError):
        if isinstance(err.__cause__, httpx2.ConnectError):
            return ServerDown(f"cannot connect to {url}: is the server running?")
        cause = type(err.__cause__ or err).__name__
        return ClientError(f"{url}: connection lost while reading the answer ({cause})")
    if isinstance(err, openai.APIError):  # an error event inside the stream
        return ClientError(f"{url}: error in stream: {error_text(err.body or err.message)}")
    return ClientError(f"{url}: unexpected response shape ({type(err).__name__}: {one_line(err, 200)})")


def read_reply(completion: object, url: str) -> Reply:
    """The text and finish_reason of a whole (not streamed) completion, its shape checked: the SDK builds
    its objects from any JSON without validating it."""
    from openai.types.chat import ChatCompletion
    from openai.types.chat.chat_completion import ChatCompletionMessage, Choice

    if not isinstance(completion, ChatCompletion):
        raise bad_shape(url, "the reply is not a JSON object", completion)
    choices = completion.choices
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Choice):
        raise bad_shape(url, "the reply has no choices", choices)
    message = choices[0].message
    content = message.content if isinstance(message, ChatCompletionMessage) else None
    if content is not None and not isinstance(content, str):
        raise bad_shape(url, "the message content is not text", content)
    return Reply(content or "", finish_reason_of(choices[0].finish_reason, url))


def read_stream(chunks: Iterable[object], url: str, on_text: Callable[[str], None] | None) -> Reply:
    """The streamed pieces, handed to `on_text` as they arrive. A stream that ends before any chunk carried
    a finish_reason was cut (the server died, a proxy timed out): an error, not a short answer."""
    from openai.types.chat import ChatCompletionChunk
    from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta

    pieces: list[str] = []
    finish_reason = None
    for chunk in chunks:
        if not isinstance(chunk, ChatCompletionChunk):
            raise bad_shape(url, "a stream event is not a JSON object", chunk)
        choices = chunk.choices or []  # a usage-only chunk has none
        if not isinstance(choices, list) or not all(isinstance(choice, Choice) for choice in choices):
            raise bad_shape(url, "a stream event's choices are not objects", choices)
        for choice in choices:
            text = choice.delta.content if isinstance(choice.delta, ChoiceDelta) else None
            if text is not None and not isinstance(text, str):
                raise bad_shape(url, "a stream event's content is not text", text)
            if text:
                pieces.append(text)
                if on_text:
                    on_text(text)
            finish_reason = finish_reason_of(choice.finish_reason, url) or finish_reason
    if finish_reason is None:
        got = f" after {len(''.join(pieces))} characters" if pieces else ""
        raise ClientError(f"{url}: the stream ended{got} without a finish_reason: the answer was cut off")
    return Reply("".join(pieces), finish_reason)


def finish_reason_of(value: object, url: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise bad_shape(url, "finish_reason is not text", value)
    return value


def bad_shape(url: str, what: str, value: object) -> ClientError:
    return ClientError(f"{url}: unexpected response shape: {what} ({one_line(repr(value), 80)})")


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
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole answer, retries included")
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
