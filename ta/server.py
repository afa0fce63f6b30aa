"""Waiting for a local OpenAI-compatible server (llama.cpp's, vLLM's) that this process started.

Used by `serve/llama_server.py` (and the tests that start it) and by the `harness` stage, which serves the GGUF
while lm-eval scores it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from ta.errors import ServeError


def wait_until_ready(
    base_url: str,
    process: subprocess.Popen,
    timeout: float,
    api_key: str | None = None,
    log_file: Path | None = None,
) -> None:
    """Block until GET <base_url>/models answers 200. ServeError when the process exits first (with the last
    line of `log_file`, where its output goes) or after `timeout` seconds."""
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            last = log_file.read_text(errors="replace").strip().splitlines()[-1:] if log_file else []
            said = f": {last[0]}" if last else ""
            code = process.returncode
            raise ServeError(f"the server at {base_url} exited with code {code} before it was ready{said}")
        try:
            if requests.get(f"{base_url}/models", headers=headers, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise ServeError(f"the server at {base_url} was not ready after {timeout:g} s")
        time.sleep(0.2)
