"""llama.cpp's OpenAI-compatible server on the pipeline's q4_k_m GGUF (serve/llama_server.py): its command and
environment, and the real server (the session's `llama_server`) serving the model as `ta-lora`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from serve.llama_server import gguf_chat_template, server_command, server_env
from serve.vllm_client import ClientError, chat_completion
from ta.config import load_params
from ta.errors import ServeError
from tests.helpers import REPO, Relay, repo_env

PARAMS = load_params(REPO / "params.yaml")
QUESTION = "什么是线性代数？"
MAX_TOKENS = 256  # generous for the tiny model: a reply that hits it did not stop at the end token


def ask(base_url: str, key: str, **kwargs: object):
    messages = [{"role": "system", "content": PARAMS.prepare.system_prompt}, {"role": "user", "content": QUESTION}]
    return chat_completion(
        base_url, "ta-lora", messages, api_key=key, temperature=0.0, max_tokens=MAX_TOKENS, timeout=120, **kwargs
    )


def test_command_binds_loopback_and_uses_the_gguf_template() -> None:
    argv = server_command(PARAMS.serve, Path("m.gguf"))
    assert argv[:3] == [sys.executable, "-m", "llama_cpp.server"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == str(PARAMS.serve.port)
    assert argv[argv.index("--model_alias") + 1] == "ta-lora"
    assert argv[argv.index("--chat_format") + 1] == "chat_template.default"
    assert argv[argv.index("--n_ctx") + 1] == str(PARAMS.serve.max_model_len)
    assert "--api_key" not in argv  # the key travels in the environment, not in the process list
    other = server_command(dataclasses.replace(PARAMS.serve, host="0.0.0.0"), Path("m.gguf"), port=9)
    assert other[other.index("--host") + 1] == "0.0.0.0" and other[other.index("--port") + 1] == "9"


def test_server_env_carries_key_and_drops_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("API_KEY", "someone-elses")
    env = server_env(None)
    assert "HOST" not in env and "API_KEY" not in env
    assert server_env("k")["API_KEY"] == "k"


def test_gguf_without_chat_template_is_refused(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "no-template.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ServeError, match="no-template.gguf: no tokenizer.chat_template"):
        gguf_chat_template(path)
    with pytest.raises(ServeError, match="absent.gguf: not found"):
        gguf_chat_template(tmp_path / "absent.gguf")


def test_the_gguf_carries_the_merged_models_template(q4_gguf: Path, merged_dir: Path) -> None:
    assert gguf_chat_template(q4_gguf) == (merged_dir / "chat_template.jinja").read_text(encoding="utf-8")


def test_served_under_the_lora_name(llama_server: SimpleNamespace) -> None:
    headers = {"Authorization": f"Bearer {llama_server.key}"}
    models = requests.get(f"{llama_server.base_url}/models", headers=headers, timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["ta-lora"]


def test_api_key_is_required(llama_server: SimpleNamespace) -> None:
    with pytest.raises(ClientError, match="401 unauthorized"):
        chat_completion(llama_server.base_url, "ta-lora", [{"role": "user", "content": "q"}], max_tokens=4)
    with pytest.raises(ClientError, match="401 unauthorized"):
        chat_completion(llama_server.base_url, "ta-lora", [{"role": "user", "content": "q"}], api_key="wrong")


def test_non_streaming_answer_stops_at_the_end_token(llama_server: SimpleNamespace) -> None:
    reply = ask(llama_server.base_url, llama_server.key)
    assert reply.text.strip()
    assert reply.finish_reason == "stop"
    assert "<|im_end|>" not in reply.text and "<|im_start|>" not in reply.text


def test_streaming_hands_each_piece_on_as_it_arrives(llama_server: SimpleNamespace) -> None:
    """Through a relay that holds the rest of the stream back until the first piece reached on_text: a client
    that read the whole answer before handing out pieces would stall here."""
    relay = Relay(llama_server.port, hold_after_first_piece=True)
    pieces: list[str] = []

    def on_text(text: str) -> None:
        pieces.append(text)
        relay.piece_seen.set()

    try:
        reply = ask(relay.base_url, llama_server.key, stream=True, on_text=on_text)
    finally:
        relay.close()
    assert relay.held and not relay.held_in_vain
    assert len(pieces) > 1 and "".join(pieces) == reply.text
    assert reply.finish_reason == "stop"
    assert reply.text == ask(llama_server.base_url, llama_server.key).text  # greedy: the same answer


def test_client_script_prints_the_stream_as_it_arrives(llama_server: SimpleNamespace) -> None:
    """`python serve/vllm_client.py --stream` from outside the repo: its stdout shows the first piece while the
    relay still holds the rest."""
    relay = Relay(llama_server.port, hold_after_first_piece=True)
    env = {"PATH": "/usr/bin:/bin", "TA_API_KEY": llama_server.key, "PYTHONPATH": repo_env()["PYTHONPATH"]}
    cmd = [sys.executable, str(REPO / "serve" / "vllm_client.py"), "--prompt", QUESTION, "--base-url", relay.base_url]
    cmd += ["--stream", "--temperature", "0", "--max-tokens", str(MAX_TOKENS)]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd="/")
    output = bytearray()

    def read() -> None:
        while chunk := process.stdout.read1(1024):  # type: ignore[union-attr]
            output.extend(chunk)
            if output.strip():
                relay.piece_seen.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert process.wait(timeout=180) == 0, process.stderr.read().decode()  # type: ignore[union-attr]
        reader.join(timeout=10)
    finally:
        relay.close()
    assert relay.held and not relay.held_in_vain
    assert output.decode().strip()
    assert b"finish_reason=length" not in process.stderr.read()  # type: ignore[union-attr]
