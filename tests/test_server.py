"""ta.server.wait_until_ready against real processes: one that exits, one that never answers, one that does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ta.errors import ServeError
from ta.server import wait_until_ready
from tests.helpers import free_port


def test_a_server_that_exits_is_reported_with_its_last_line(tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    with log_file.open("w") as out:
        process = subprocess.Popen([sys.executable, "-c", "print('loading'); print('bad magic'); exit(3)"], stdout=out)
    with pytest.raises(ServeError, match=r"exited with code 3 before it was ready: bad magic"):
        wait_until_ready(f"http://127.0.0.1:{free_port()}/v1", process, timeout=30, log_file=log_file)


def test_a_server_that_never_answers_times_out() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(ServeError, match=r"not ready after 1 s"):
            wait_until_ready(f"http://127.0.0.1:{free_port()}/v1", process, timeout=1)
    finally:
        process.kill()
        process.wait()


def test_it_returns_once_models_answers_with_the_key() -> None:
    port = free_port()
    server = f"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/v1/models" and self.headers.get("Authorization") == "Bearer k"
        self.send_response(200 if ok else 401); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
"""
    process = subprocess.Popen([sys.executable, "-c", server])
    try:
        with pytest.raises(ServeError, match="not ready"):  # without the key: 401 is not ready
            wait_until_ready(f"http://127.0.0.1:{port}/v1", process, timeout=3)
        wait_until_ready(f"http://127.0.0.1:{port}/v1", process, timeout=30, api_key="k")
    finally:
        process.kill()
        process.wait()
