"""The OpenAI-API client (serve/vllm_client.py) and the Ollama client's --openai mode, against llama.cpp's real
OpenAI-compatible server (the session's `llama_server`, the pipeline's q4_k_m GGUF as `ta-lora`); a relay in
front of it shows what the server received. Then against servers that misbehave (tests.helpers'
MisbehavingServer): streams cut or ended without a finish_reason, events and error bodies that are not
objects, a server that drips bytes past the deadline, 503 and 429 retried, 401 not."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest

from serve.vllm_client import ClientError, chat_completion
from ta.config import load_params
from tests.helpers import (
    REPO,
    Answer,
    MisbehavingServer,
    Relay,
    chunk_event,
    free_port,
    json_answer,
    repo_env,
    sse_answer,
)

SYSTEM_PROMPT = load_params(REPO / "params.yaml").prepare.system_prompt


def run_script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a client as the guide does, `python serve/<name>.py …`, from outside the repo."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": repo_env()["PYTHONPATH"], **(env or {})}
    cmd = [sys.executable, str(REPO / "serve" / name), *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=180, cwd="/", env=env)


@pytest.fixture
def relay(llama_server: SimpleNamespace):
    relay = Relay(llama_server.port)
    yield relay
    relay.close()


def test_streaming_and_not_give_the_same_greedy_answer(llama_server: SimpleNamespace) -> None:
    messages = [{"role": "user", "content": "什么是光合作用？"}]
    kwargs = {"api_key": llama_server.key, "temperature": 0.0, "max_tokens": 64}
    whole = chat_completion(llama_server.base_url, "ta-lora", messages, **kwargs)
    pieces: list[str] = []
    streamed = chat_completion(llama_server.base_url, "ta-lora", messages, stream=True, on_text=pieces.append, **kwargs)
    assert whole.text and streamed.text == whole.text == "".join(pieces)
    assert streamed.finish_reason == whole.finish_reason


def test_vllm_script_sends_the_key_from_the_environment_and_the_tuned_system_prompt(
    llama_server: SimpleNamespace, relay: Relay
) -> None:
    result = run_script(
        "vllm_client.py", "--prompt", "什么是线性代数？", "--base-url", relay.base_url, "--temperature", "0",
        env={"TA_API_KEY": llama_server.key},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    headers, body = relay.request_head_and_body()
    assert headers["authorization"] == f"Bearer {llama_server.key}"
    request = json.loads(body)
    assert request["model"] == "ta-lora"
    assert request["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "什么是线性代数？"},
    ]


def test_vllm_script_warns_when_cut_at_max_tokens(llama_server: SimpleNamespace) -> None:
    args = ("--prompt", "请详细讲解勾股定理。", "--base-url", llama_server.base_url, "--max-tokens", "2")
    result = run_script("vllm_client.py", *args, env={"TA_API_KEY": llama_server.key})
    assert result.returncode == 0, result.stderr
    assert "warning: the answer was cut at --max-tokens 2 (finish_reason=length)" in result.stderr


def test_ollama_script_openai_mode_uses_v1(llama_server: SimpleNamespace, relay: Relay) -> None:
    base = relay.base_url.removesuffix("/v1")
    args = ("--prompt", "q", "--base-url", base, "--openai", "--system", "S", "--model", "ta-lora")
    result = run_script("ollama_client.py", *args, env={"TA_API_KEY": llama_server.key})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    head = relay.requests[-1].split(b"\r\n", 1)[0]
    assert head == b"POST /v1/chat/completions HTTP/1.1"
    assert json.loads(relay.request_head_and_body()[1])["messages"][0] == {"role": "system", "content": "S"}


@pytest.mark.parametrize("script", ["vllm_client.py", "ollama_client.py"])
def test_dead_server_is_one_clear_line_and_exit_2(script: str) -> None:
    url = f"http://127.0.0.1:{free_port()}" + ("/v1" if script == "vllm_client.py" else "")
    result = run_script(script, "--prompt", "q", "--base-url", url, "--timeout", "5")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: cannot connect to {url}")
    assert "Traceback" not in result.stderr


def test_timeout_is_a_client_error() -> None:
    with socket.socket() as listener:  # accepts the connection but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        with pytest.raises(ClientError, match=r"no answer from .* within 0.5s"):
            chat_completion(url, "ta-lora", [{"role": "user", "content": "q"}], timeout=0.5)


# ---------------------------------------------------------------------- servers that misbehave


def ask(server: MisbehavingServer, **kwargs: Any) -> Any:
    return chat_completion(server.url + "/v1", "ta-lora", [{"role": "user", "content": "q"}], **kwargs)


def test_a_stream_that_ends_without_finish_reason_is_an_error_and_exit_2(misbehaving) -> None:
    pieces = [chunk_event("线性"), chunk_event("代数")]
    server = misbehaving(sse_answer(*pieces, done=False))
    with pytest.raises(ClientError, match=r"stream ended after 4 characters without a finish_reason"):
        ask(server, stream=True)
    result = run_script("vllm_client.py", "--prompt", "q", "--base-url", server.url + "/v1", "--stream")
    assert result.returncode == 2
    assert result.stdout == "线性代数"  # what came is shown; the exit code and the line say it is not all
    assert result.stderr.count("\n") == 1 and "without a finish_reason" in result.stderr


def test_a_stream_cut_mid_chunk_is_an_error(misbehaving) -> None:
    server = misbehaving(sse_answer(chunk_event("半"), done=False, complete=False))
    with pytest.raises(ClientError, match=r"/v1/chat/completions: connection lost while reading the answer"):
        ask(server, stream=True)


def test_finish_reason_without_done_is_a_whole_answer(misbehaving) -> None:
    server = misbehaving(sse_answer(chunk_event("答"), chunk_event(finish_reason="stop"), done=False))
    reply = ask(server, stream=True)
    assert (reply.text, reply.finish_reason) == ("答", "stop")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (sse_answer([1, 2]), "a stream event is not a JSON object ([1, 2])"),
        (sse_answer({"choices": "x"}), "a stream event's choices are not objects ('x')"),
        (
            sse_answer(chunk_event(finish_reason="stop") | {"choices": [{"delta": {"content": 5}}]}),
            "content is not text",
        ),
        (Answer(body=[b"data: {not json\n\n"], content_type="text/event-stream"), "unexpected response shape"),
        (json_answer(500, ["boom"]), "HTTP 500: ['boom']"),
        (json_answer(400, "context too long"), "HTTP 400: context too long"),
        (json_answer(200, "x"), "the reply is not a JSON object ('x')"),
        (json_answer(200, {"choices": []}), "the reply has no choices"),
    ],
    ids=[
        "event-list",
        "choices-str",
        "content-int",
        "event-not-json",
        "error-list",
        "error-str",
        "reply-str",
        "no-choices",
    ],
)
def test_malformed_events_and_bodies_are_one_clean_line(misbehaving, answer: Answer, message: str) -> None:
    server = misbehaving(answer)
    stream = answer.content_type == "text/event-stream"
    with pytest.raises(ClientError) as caught:
        ask(server, stream=stream)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_the_deadline_is_for_the_whole_answer_not_each_read(misbehaving, stream: bool) -> None:
    """A server that drips a piece every 0.1 s never lets a read time out; the 1 s deadline still holds."""
    if stream:
        server = misbehaving(sse_answer(*[chunk_event("字")] * 100, delay=0.1))
    else:
        body = json.dumps(completion("字" * 100)).encode()
        server = misbehaving(Answer(body=[body[i : i + 4] for i in range(0, len(body), 4)], delay=0.1))
    started = time.monotonic()
    with pytest.raises(ClientError, match=r"no answer from .* within 1s \(raise --timeout\)"):
        ask(server, stream=stream, timeout=1.0)
    assert time.monotonic() - started < 2.0


def test_503_then_200_is_retried(misbehaving) -> None:
    server = misbehaving(json_answer(503, {"error": {"message": "loading"}}), sse_answer(chunk_event("好", "stop")))
    assert ask(server, stream=True).text == "好"
    assert len(server.requests) == 2


def test_429_waits_as_retry_after_says(misbehaving) -> None:
    limited = json_answer(429, {"error": {"message": "slow down"}}, **{"Retry-After": "0.3"})
    server = misbehaving(limited, json_answer(200, completion("好")))
    started = time.monotonic()
    assert ask(server).text == "好"
    assert time.monotonic() - started >= 0.3


def test_retries_stop_at_the_deadline_and_say_how_many(misbehaving) -> None:
    server = misbehaving(json_answer(503, {"error": {"message": "overloaded"}}))
    started = time.monotonic()
    with pytest.raises(ClientError, match=r"HTTP 503 after 1 retry: overloaded"):
        ask(server, timeout=1.2)  # waits 0.5 s, then a 1 s wait would pass the deadline
    assert time.monotonic() - started < 1.2
    assert len(server.requests) == 2


def test_401_and_400_are_not_retried(misbehaving) -> None:
    server = misbehaving(json_answer(401, {"error": {"message": "bad key"}}))
    with pytest.raises(ClientError, match="401 unauthorized: missing or wrong API key"):
        ask(server)
    assert len(server.requests) == 1


def completion(content: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}
