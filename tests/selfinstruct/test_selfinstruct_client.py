"""The endpoint client and the stage against small in-test HTTP servers that throttle and fail: the openai
SDK's retries (429 then 200, Retry-After honoured; 500 until the retries run out; 401 not retried), the key
from the named variable, one-line errors, and a failed run resumed from the cache."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from ta.config import load_params
from ta.errors import SelfInstructError
from ta.selfinstruct.client import ChatClient

REPO = Path(__file__).resolve().parents[2]
PAIRS = {
    "pairs": [
        {"instruction": "分数和小数有什么关系？", "answer": "分数可以化成小数：用分子除以分母，例如 1/4 = 0.25。"}
    ]
}
REPLY = json.dumps(PAIRS, ensure_ascii=False)


def completion(content: str) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


class ScriptedServer:
    """Answers POST /v1/chat/completions with the scripted (status, headers) in turn, the last one for ever
    after; a 200 carries a completion of `content`. Records every request's body and Authorization."""

    def __init__(self, script: list[tuple[int, dict[str, str]]], content: str = REPLY) -> None:
        self.script, self.content = list(script), content
        self.requests: list[dict] = []
        self.authorizations: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.authorizations.append(self.headers.get("Authorization"))
                    status, headers = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                payload = completion(server.content) if status == 200 else {"error": {"message": f"scripted {status}"}}
                data = json.dumps(payload, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers: list[ScriptedServer] = []

    def start(script, content=REPLY) -> ScriptedServer:
        servers.append(ScriptedServer(script, content))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def client_for(server: ScriptedServer, **changes) -> ChatClient:
    params = load_params(REPO / "params.yaml").selfinstruct
    changes = {"base_url": server.base_url, "model": "test", "api_key_env": "", "max_retries": 2, **changes}
    return ChatClient(dataclasses.replace(params, **changes))


BODY = {"model": "test", "messages": [{"role": "user", "content": "出题"}], "seed": 7, "top_k": 5}


def test_a_429_is_retried_after_its_retry_after_then_answered(serve) -> None:
    server = serve([(429, {"Retry-After": "1"}), (200, {})])
    start = time.monotonic()
    reply = client_for(server).complete(BODY)
    assert time.monotonic() - start >= 1.0  # the server's Retry-After, not the SDK's 0.5 s first backoff
    assert json.loads(reply.content) == PAIRS and (reply.prompt_tokens, reply.completion_tokens) == (11, 7)
    assert len(server.requests) == 2 and server.requests[0] == server.requests[1]
    assert server.requests[0]["seed"] == 7 and server.requests[0]["top_k"] == 5  # extra fields sent as written


def test_a_500_is_retried_max_retries_times_then_a_one_line_error(serve) -> None:
    server = serve([(500, {})])
    with pytest.raises(SelfInstructError, match=r"/v1: HTTP 500 after 2 retries: .*scripted 500"):
        client_for(server).complete(BODY)
    assert len(server.requests) == 3


def test_a_401_is_not_retried_and_the_key_comes_from_the_named_variable(serve, monkeypatch) -> None:
    server = serve([(401, {})])
    monkeypatch.setenv("TA_TEST_SELFINSTRUCT_KEY", "sk-test-123")
    with pytest.raises(SelfInstructError, match=r"HTTP 401: ") as err:
        client_for(server, api_key_env="TA_TEST_SELFINSTRUCT_KEY").complete(BODY)
    assert "after" not in str(err.value)
    assert server.authorizations == ["Bearer sk-test-123"]
    monkeypatch.delenv("TA_TEST_SELFINSTRUCT_KEY")
    with pytest.raises(SelfInstructError, match=r"\$TA_TEST_SELFINSTRUCT_KEY is not set"):
        client_for(server, api_key_env="TA_TEST_SELFINSTRUCT_KEY")


# -------------------------------------------------------------------------------- through the stage


def workspace(tmp_path: Path, **selfinstruct) -> Path:
    """A directory the stage runs in: the project's params (selfinstruct changed), templates and seeds."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["selfinstruct"].update(selfinstruct)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    shutil.copytree(REPO / "prompts", tmp_path / "prompts")
    shutil.copytree(REPO / "data/raw", tmp_path / "data/raw")
    return tmp_path


def run_stage(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "stages.selfinstruct"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_failing_endpoint_stops_the_stage_and_the_rerun_sends_only_what_failed(serve, tmp_path: Path) -> None:
    # round 1 = two requests, one at a time: the first is answered, the second fails past its one retry
    server = serve([(200, {}), (500, {}), (500, {}), (200, {})])
    ws = workspace(
        tmp_path,
        enabled=True,
        base_url=server.base_url,
        model="test",
        api_key_env="",
        max_retries=1,
        num_pairs=2,
        pairs_per_request=1,
        round_size=2,
        concurrency=1,
        max_requests=2,
    )
    failed = run_stage(ws)
    assert failed.returncode == 2, failed.stderr
    assert failed.stderr.strip().splitlines() == [
        f"selfinstruct: error: {server.base_url}: HTTP 500 after 1 retries: scripted 500; "
        "the 1 replies received are cached, rerun to resume"
    ]
    cached = [json.loads(line) for line in (ws / "data/selfinstruct/responses.jsonl").read_text("utf-8").splitlines()]
    assert len(server.requests) == 3 and [c["request"] for c in cached] == [server.requests[0]]
    assert (ws / "data/selfinstruct/review.jsonl").exists() is False  # outputs are written only by a whole run

    resumed = run_stage(ws)
    assert resumed.returncode == 0, resumed.stderr
    assert len(server.requests) == 4 and server.requests[3] == server.requests[1]  # only the failed one again
    rows = [json.loads(line) for line in (ws / "data/selfinstruct/review.jsonl").read_text("utf-8").splitlines()]
    assert [r["status"] for r in rows] == ["pending"] and rows[0]["instruction"] == PAIRS["pairs"][0]["instruction"]
    # the second reply repeats the first pair: ROUGE-L 1.0 with the pair accepted just before
    rejects = [json.loads(line) for line in (ws / "data/selfinstruct/rejects.jsonl").read_text("utf-8").splitlines()]
    assert [r["reason"] for r in rejects] == ["too_similar"] and rows[0]["id"] in rejects[0]["detail"]
