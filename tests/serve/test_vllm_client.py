"""The clients against a small in-test server speaking Ollama's /api/chat and the OpenAI chat API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from serve.ollama_client import ollama_chat
from serve.vllm_client import ClientError, chat_completion
from stages.params import load_params

ROOT = Path(__file__).resolve().parents[1]
ANSWER_PIECES = ["线性代数", "研究向量", "和线性映射。"]
ANSWER = "".join(ANSWER_PIECES)


class FakeServer(BaseHTTPRequestHandler):
    """Ollama's /api/chat (JSON or NDJSON stream) and OpenAI's /v1/chat/completions (JSON or SSE), as
    documented; the canned answer is ANSWER, split into ANSWER_PIECES when streaming."""

    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if body["model"] not in ("teachingassistant", "ta-lora"):
            return self.reply(404, {"error": f'model "{body["model"]}" not found, try pulling it first'})
        if self.path == "/api/chat":
            self.ollama(body)
        elif self.path == "/v1/chat/completions":
            self.openai(body)
        else:
            self.reply(404, {"error": "404 page not found"})

    def ollama(self, body: dict) -> None:
        if not body.get("stream", True):
            message = {"role": "assistant", "content": ANSWER}
            return self.reply(
                200,
                {
                    "model": body["model"],
                    "created_at": "2026-01-01T00:00:00Z",
                    "message": message,
                    "done": True,
                    "done_reason": "stop",
                    "eval_count": 3,
                },
            )
        self.start(200, "application/x-ndjson")
        for piece in ANSWER_PIECES:
            line = {"model": body["model"], "message": {"role": "assistant", "content": piece}, "done": False}
            self.wfile.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
        final = {
            "model": body["model"],
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "total_duration": 1,
            "eval_count": 3,
        }
        self.wfile.write(json.dumps(final).encode() + b"\n")

    def openai(self, body: dict) -> None:
        finish = "length" if body["max_tokens"] < 5 else "stop"
        if not body.get("stream"):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "finish_reason": finish,
            }
            return self.reply(200, {"id": "c1", "object": "chat.completion", "choices": [choice]})
        self.start(200, "text/event-stream")
        self.wfile.write(b": ping\n\n")
        for piece in ANSWER_PIECES:
            chunk = {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
            self.wfile.write(b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n")
        last = {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
        }
        self.wfile.write(b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")

    def start(self, status: int, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.end_headers()

    def reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.start(status, "application/json")
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    """Base URL of a FakeServer on a free 127.0.0.1 port; FakeServer.received records the requests."""
    FakeServer.received = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a client as the guide does, `python serve/<name>.py …`, from outside the repo."""
    return subprocess.run(
        [sys.executable, str(ROOT / "serve" / name), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env=env,
    )


def test_ollama_chat_request_and_reply_shape(server: str) -> None:
    messages = [{"role": "user", "content": "什么是线性代数？"}]
    reply = ollama_chat(server, "teachingassistant", messages, temperature=0.2, max_tokens=64)
    assert (reply.text, reply.finish_reason) == (ANSWER, "stop")
    request = FakeServer.received[0]
    assert request["path"] == "/api/chat"
    assert request["body"] == {
        "model": "teachingassistant",
        "messages": messages,
        "stream": False,
        "options": {"temperature": 0.2, "num_predict": 64},
    }


def test_ollama_chat_streams_ndjson_pieces_in_order(server: str) -> None:
    pieces: list[str] = []
    reply = ollama_chat(
        server, "teachingassistant", [{"role": "user", "content": "q"}], stream=True, on_text=pieces.append
    )
    assert pieces == ANSWER_PIECES
    assert (reply.text, reply.finish_reason) == (ANSWER, "stop")
    assert FakeServer.received[0]["body"]["stream"] is True


def test_ollama_script_streams_and_leaves_system_to_the_modelfile(server: str) -> None:
    result = run_script("ollama_client.py", "--prompt", "你好", "--base-url", server, "--stream")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ANSWER + "\n"
    assert FakeServer.received[0]["body"]["messages"] == [{"role": "user", "content": "你好"}]


def test_ollama_script_openai_mode_uses_v1(server: str) -> None:
    result = run_script("ollama_client.py", "--prompt", "q", "--base-url", server, "--openai", "--system", "S")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ANSWER + "\n"
    request = FakeServer.received[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["messages"][0] == {"role": "system", "content": "S"}


def test_unknown_model_is_one_line_with_the_servers_message(server: str) -> None:
    result = run_script("ollama_client.py", "--prompt", "q", "--base-url", server, "--model", "nope")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert 'HTTP 404: model "nope" not found' in result.stderr


def test_openai_chat_non_streaming_and_streaming(server: str) -> None:
    base = server + "/v1"
    messages = [{"role": "user", "content": "q"}]
    assert chat_completion(base, "ta-lora", messages).text == ANSWER
    pieces: list[str] = []
    reply = chat_completion(base, "ta-lora", messages, stream=True, on_text=pieces.append)
    assert pieces == ANSWER_PIECES
    assert (reply.text, reply.finish_reason) == (ANSWER, "stop")


def test_vllm_script_sends_api_key_and_tuned_system_prompt(server: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "TA_API_KEY": "k-123"}
    result = run_script("vllm_client.py", "--prompt", "什么是线性代数？", "--base-url", server + "/v1", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ANSWER + "\n"
    request = FakeServer.received[0]
    assert request["auth"] == "Bearer k-123"
    system_prompt = load_params(ROOT / "params.yaml").prepare.system_prompt
    assert request["body"]["messages"] == [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": "什么是线性代数？"},
    ]
    assert request["body"]["model"] == "ta-lora"


def test_vllm_script_warns_when_cut_at_max_tokens(server: str) -> None:
    result = run_script("vllm_client.py", "--prompt", "q", "--base-url", server + "/v1", "--max-tokens", "2")
    assert result.returncode == 0
    assert "cut at --max-tokens 2 (finish_reason=length)" in result.stderr


@pytest.mark.parametrize("script", ["vllm_client.py", "ollama_client.py"])
def test_dead_server_is_one_clear_line_and_exit_2(script: str) -> None:
    url = f"http://127.0.0.1:{dead_port()}" + ("/v1" if script == "vllm_client.py" else "")
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
