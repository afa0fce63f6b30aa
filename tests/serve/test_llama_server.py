"""llama.cpp's OpenAI-compatible server on the q4_k_m GGUF, driven through serve/vllm_client.py.

Needs the `q4_gguf` fixture (tests/conftest.py, session-scoped): a q4_k_m GGUF of the tiny model.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from serve.llama_server import server_command, server_env, wait_until_ready
from serve.vllm import ServeError
from serve.vllm_client import ClientError, chat_completion
from stages.params import Serve, load_params

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-key-7f3a"
QUESTION = "什么是线性代数？"
MAX_TOKENS = 256  # generous for the tiny model: a reply that hits it did not stop at the end token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(q4_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (…/v1) of llama.cpp's server on a free 127.0.0.1 port, requiring API_KEY."""
    port = free_port()
    log_file = tmp_path_factory.mktemp("llama_server") / "server.log"
    command = server_command(Serve(max_model_len=1024), q4_gguf, port)
    with log_file.open("w") as log:
        process = subprocess.Popen(command, env=server_env(API_KEY), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_ready(base_url, process, timeout=180, api_key=API_KEY)
        yield base_url
    except RuntimeError as err:
        pytest.fail(f"{err}\n{log_file.read_text()[-3000:]}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ask(base_url: str, **kwargs: object) -> object:
    system = load_params(ROOT / "params.yaml").prepare.system_prompt
    messages = [{"role": "system", "content": system}, {"role": "user", "content": QUESTION}]
    return chat_completion(
        base_url,
        "ta-lora",
        messages,
        api_key=API_KEY,
        temperature=0.0,
        max_tokens=MAX_TOKENS,
        timeout=120,
        **kwargs,
    )


def test_command_binds_loopback_and_uses_the_gguf_template() -> None:
    argv = server_command(Serve(), Path("m.gguf"))
    assert argv[1:3] == ["-m", "llama_cpp.server"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--model_alias") + 1] == "ta-lora"
    assert argv[argv.index("--chat_format") + 1] == "chat_template.default"
    assert "--api_key" not in argv  # the key travels in the environment, not in the process list


def test_server_env_carries_key_and_drops_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("API_KEY", "someone-elses")
    env = server_env(None)
    assert "HOST" not in env and "API_KEY" not in env
    assert server_env("k")["API_KEY"] == "k"


def test_gguf_without_chat_template_is_refused(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    from serve.llama_server import gguf_chat_template

    path = tmp_path / "no-template.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ServeError, match="no-template.gguf: no tokenizer.chat_template"):
        gguf_chat_template(path)


def test_served_under_the_lora_name(server: str) -> None:
    models = requests.get(f"{server}/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["ta-lora"]


def test_api_key_is_required(server: str) -> None:
    with pytest.raises(ClientError, match="401 unauthorized"):
        chat_completion(server, "ta-lora", [{"role": "user", "content": "q"}], api_key=None, max_tokens=4)


def test_non_streaming_answer_stops_at_the_end_token(server: str) -> None:
    reply = ask(server)
    assert reply.text.strip()
    assert reply.finish_reason == "stop"
    assert "<|im_end|>" not in reply.text and "<|im_start|>" not in reply.text


def test_streaming_answer_arrives_in_pieces_and_stops(server: str) -> None:
    pieces: list[str] = []
    reply = ask(server, stream=True, on_text=pieces.append)
    assert len(pieces) > 1
    assert "".join(pieces) == reply.text
    assert reply.finish_reason == "stop"


def test_client_script_streams_from_the_server(server: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "TA_API_KEY": API_KEY}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "serve" / "vllm_client.py"),
            "--prompt",
            QUESTION,
            "--base-url",
            server,
            "--stream",
            "--temperature",
            "0",
            "--max-tokens",
            str(MAX_TOKENS),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "finish_reason=length" not in result.stderr
