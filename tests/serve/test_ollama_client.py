"""The Ollama client (serve/ollama_client.py, on the `ollama` package) against a server speaking Ollama's own
/api/chat, then against servers that misbehave: lines and error bodies that are not objects, an error
inside the stream, a server that drips past the deadline, 503 retried."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from serve.ollama_client import ollama_chat
from serve.vllm_client import ClientError
from tests.helpers import REPO, MisbehavingServer, free_port, json_answer, ndjson_answer, repo_env

ANSWER_PIECES = ["线性代数", "研究向量", "和线性映射。"]
ANSWER = "".join(ANSWER_PIECES)


class FakeOllama(BaseHTTPRequestHandler):
    """Ollama's /api/chat (JSON or an NDJSON stream) as its API documentation shows it; the canned answer is
    ANSWER, split into ANSWER_PIECES when streaming. (No Ollama binary can run here; its OpenAI-compatible
    /v1 is tested against llama.cpp's real server in test_vllm_client.py.) While streaming it waits, after
    the first piece, until the test says the client has handed that piece on (`first_piece_seen`)."""

    protocol_version = "HTTP/1.1"  # a stream goes out in chunks, as Ollama's Go server sends it
    received: ClassVar[list[dict]] = []
    first_piece_seen: ClassVar[threading.Event] = threading.Event()
    waited_in_vain: ClassVar[bool] = False

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if body["model"] != "teachingassistant":
            return self.reply(404, {"error": f'model "{body["model"]}" not found, try pulling it first'})
        if self.path == "/api/chat":
            self.ollama(body)
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
        self.start(200, "application/x-ndjson", chunked=True)
        for i, piece in enumerate(ANSWER_PIECES):
            if i == 1 and not FakeOllama.first_piece_seen.wait(10):
                FakeOllama.waited_in_vain = True
            line = {"model": body["model"], "message": {"role": "assistant", "content": piece}, "done": False}
            self.chunk(json.dumps(line, ensure_ascii=False).encode() + b"\n")
        final = {
            "model": body["model"],
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "total_duration": 1,
            "eval_count": 3,
        }
        self.chunk(json.dumps(final).encode() + b"\n")
        self.chunk(b"")  # the last chunk

    def start(self, status: int, content_type: str, chunked: bool = False, length: int = 0) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(length))))
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.start(status, "application/json", length=len(data))
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    """Base URL of a FakeOllama on a free 127.0.0.1 port; FakeOllama.received records the requests."""
    FakeOllama.received = []
    FakeOllama.first_piece_seen = threading.Event()
    FakeOllama.waited_in_vain = False
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOllama)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def run_script(*args: str) -> subprocess.CompletedProcess:
    """Run the client as the guide does, `python serve/ollama_client.py …`, from outside the repo."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": repo_env()["PYTHONPATH"]}
    cmd = [sys.executable, str(REPO / "serve" / "ollama_client.py"), *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60, cwd="/", env=env)


def test_ollama_chat_request_and_reply_shape(server: str) -> None:
    messages = [{"role": "user", "content": "什么是线性代数？"}]
    reply = ollama_chat(server, "teachingassistant", messages, temperature=0.2, max_tokens=64)
    assert (reply.text, reply.finish_reason) == (ANSWER, "stop")
    request = FakeOllama.received[0]
    assert request["path"] == "/api/chat"
    assert request["body"] == {
        "model": "teachingassistant",
        "messages": messages,
        "stream": False,
        "options": {"temperature": 0.2, "num_predict": 64},
        "tools": [],  # the ollama package always sends the (empty) tool list
    }


def test_ollama_chat_hands_each_ndjson_piece_on_as_it_arrives(server: str) -> None:
    """The server sends the second piece only once the client has handed the first to on_text."""
    pieces: list[str] = []

    def on_text(text: str) -> None:
        pieces.append(text)
        FakeOllama.first_piece_seen.set()

    reply = ollama_chat(server, "teachingassistant", [{"role": "user", "content": "q"}], stream=True, on_text=on_text)
    assert not FakeOllama.waited_in_vain
    assert pieces == ANSWER_PIECES
    assert (reply.text, reply.finish_reason) == (ANSWER, "stop")
    assert FakeOllama.received[0]["body"]["stream"] is True


def test_ollama_script_streams_and_leaves_system_to_the_modelfile(server: str) -> None:
    FakeOllama.first_piece_seen.set()  # the script prints pieces; the hand-over is the test above's
    result = run_script("--prompt", "你好", "--base-url", server, "--stream")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ANSWER + "\n"
    assert FakeOllama.received[0]["body"]["messages"] == [{"role": "user", "content": "你好"}]


def test_unknown_model_is_one_line_with_the_servers_message(server: str) -> None:
    result = run_script("--prompt", "q", "--base-url", server, "--model", "nope")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert 'HTTP 404: model "nope" not found' in result.stderr


def test_a_stream_that_ends_without_done_is_an_error(server: str) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            # Read the whole request first: closing with unread bytes would send a reset, not an end of stream.
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, body = request.split(b"\r\n\r\n", 1)
            length = int(
                next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
            )
            while len(body) < length:
                body += conn.recv(65536)
            piece = json.dumps({"message": {"role": "assistant", "content": "半"}, "done": False}).encode() + b"\n"
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n"
            conn.sendall(head + piece)
            conn.close()

        threading.Thread(target=answer, daemon=True).start()
        with pytest.raises(ClientError, match=r'/api/chat: stream ended without a final "done": true object'):
            ollama_chat(
                f"http://127.0.0.1:{port}", "teachingassistant", [{"role": "user", "content": "q"}], stream=True
            )


def test_dead_server_is_one_clear_line_and_exit_2() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_script("--prompt", "q", "--base-url", url, "--timeout", "5")
    assert result.returncode == 2
    assert result.stdout == ""
    assert (
        result.stderr
        == f"error: cannot connect to {url}/api/chat: is the server running?; start it with `ollama serve`\n"
    )


# ---------------------------------------------------------------------- servers that misbehave


def ask(server: MisbehavingServer, **kwargs: Any) -> Any:
    return ollama_chat(server.url, "teachingassistant", [{"role": "user", "content": "q"}], **kwargs)


def piece(content: str, done: bool = False) -> dict[str, Any]:
    return {"model": "teachingassistant", "message": {"role": "assistant", "content": content}, "done": done}


@pytest.mark.parametrize(
    ("answer", "stream", "message"),
    [
        (ndjson_answer(piece("半"), [1, 2]), True, "unexpected response shape"),
        (ndjson_answer(piece("半"), {"message": "x", "done": True}), True, "unexpected response shape"),
        (json_answer(500, ["boom"]), False, "HTTP 500: ['boom']"),
        (json_answer(500, ["boom"]), True, "HTTP 500: ['boom']"),
        (json_answer(200, "x"), False, "unexpected response shape"),
        (ndjson_answer(piece("半"), {"error": "model runner crashed"}), True, "/api/chat: model runner crashed"),
    ],
    ids=["line-list", "message-str", "error-list", "stream-error-list", "reply-str", "error-in-stream"],
)
def test_malformed_lines_and_bodies_are_one_clean_line(misbehaving, answer, stream: bool, message: str) -> None:
    server = misbehaving(answer)
    with pytest.raises(ClientError) as caught:
        ask(server, stream=stream)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_deadline_is_for_the_whole_answer_not_each_read(misbehaving) -> None:
    server = misbehaving(ndjson_answer(*[piece("字")] * 100, delay=0.1))
    started = time.monotonic()
    with pytest.raises(ClientError, match=r"no answer from .*/api/chat within 1s \(raise --timeout\)"):
        ask(server, stream=True, timeout=1.0)
    assert time.monotonic() - started < 2.0


def test_503_then_200_is_retried(misbehaving) -> None:
    server = misbehaving(json_answer(503, {"error": "loading model"}), ndjson_answer(piece("好"), piece("", done=True)))
    assert ask(server, stream=True).text == "好"
    assert len(server.requests) == 2


def test_503_until_the_deadline_says_so(misbehaving) -> None:
    server = misbehaving(json_answer(503, {"error": "server busy"}))
    with pytest.raises(ClientError, match=r"HTTP 503 after 1 retry: server busy"):
        ask(server, timeout=1.2)
