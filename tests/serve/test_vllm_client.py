"""The OpenAI-API client (serve/vllm_client.py) and the Ollama client's --openai mode, against llama.cpp's real
OpenAI-compatible server (the session's `llama_server`, the pipeline's q4_k_m GGUF as `ta-lora`); a relay in
front of it shows what the server received."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from serve.vllm_client import ClientError, chat_completion
from ta.config import load_params
from tests.helpers import REPO, Relay, free_port, repo_env

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
