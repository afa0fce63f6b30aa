"""Serve the quantized GGUF with llama.cpp's OpenAI-compatible server, on CPU, as the model `ta-lora`.

The same API as the vLLM server (same port, same model name), so the clients and tests work anywhere:

    python -m serve.llama_server [--gguf models/gguf/teachingassistant-q4_k_m.gguf] [--port 8000]
    python serve/vllm_client.py --prompt "什么是线性代数？"

Runs `python -m llama_cpp.server` from the installed llama-cpp-python[server]. The prompt format is the
GGUF's own `tokenizer.chat_template` (chat_format `chat_template.default`): without one, llama-cpp-python
would silently fall back to the llama-2 format, so a GGUF without a template is refused. The API key is
handed over in the server's `API_KEY` environment variable (llama_cpp.server reads its settings from the
environment), so it never shows in the process list.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from pathlib import Path

from serve.vllm import api_key_from_env
from ta.config import Serve, load_params
from ta.errors import ServeError, report
from ta.server import wait_until_ready  # noqa: F401 - serve's name for it (tests start the server with it)

log = logging.getLogger(__name__)

# Variables llama_cpp.server would take over our settings: uvicorn.run() prefers $HOST/$PORT to the CLI.
OVERRIDING_ENV = ("HOST", "PORT", "API_KEY", "CONFIG_FILE")


def gguf_chat_template(gguf_path: Path) -> str:
    """The chat template stored in the GGUF (`tokenizer.chat_template`); ServeError if there is none."""
    from gguf import GGUFReader

    if not gguf_path.is_file():
        raise ServeError(f"{gguf_path}: not found (run `dvc repro quantize` first, or set serve.gguf)")
    field = GGUFReader(gguf_path).get_field("tokenizer.chat_template")
    template = field.contents() if field is not None else None
    if not template:
        raise ServeError(f"{gguf_path}: no tokenizer.chat_template in the GGUF (was the tokenizer saved with one?)")
    return template


def server_command(params: Serve, gguf_path: Path, port: int | None = None) -> list[str]:
    """argv for llama.cpp's OpenAI-compatible server on `gguf_path`, serving it as `params.lora_name`."""
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf_path),
        "--model_alias",
        params.lora_name,
        "--chat_format",
        "chat_template.default",
        "--n_ctx",
        str(params.max_model_len),
        "--host",
        params.host,
        "--port",
        str(port or params.port),
    ]


def server_env(api_key: str | None) -> dict[str, str]:
    """The server's environment: ours without variables that would override the command line, plus the
    API key as llama_cpp.server's API_KEY."""
    env = {name: value for name, value in os.environ.items() if name not in OVERRIDING_ENV}
    if api_key:
        env["API_KEY"] = api_key
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the quantized GGUF with llama.cpp's OpenAI server.")
    parser.add_argument("--gguf", type=Path, default=None, help="default: serve.gguf from params.yaml")
    parser.add_argument("--port", type=int, default=None, help="default: serve.port from params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> None:
        params = load_params().serve
        gguf_path = args.gguf or Path(params.gguf)
        if importlib.util.find_spec("llama_cpp") is None:
            raise ServeError("llama-cpp-python is not installed: pip install -r requirements.txt")
        gguf_chat_template(gguf_path)
        command = server_command(params, gguf_path, args.port)
        env = server_env(api_key_from_env(params))
        port = args.port or params.port
        log.info("serving %s as %r at http://%s:%s/v1", gguf_path, params.lora_name, params.host, port)
        os.execve(sys.executable, command, env)  # the server takes this process over: Ctrl-C reaches it directly

    return report("llama_server", body)


if __name__ == "__main__":
    sys.exit(main())
