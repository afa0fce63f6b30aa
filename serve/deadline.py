"""One overall deadline and bounded retries around a client's request, for serve/vllm_client.py and
serve/ollama_client.py.

The `openai` and `ollama` packages time out each connect and each read (their httpx timeouts), so a server
that drips a byte a second never times out. A `Deadline` bounds the whole answer instead: every attempt gets
only the time that is left, and when it runs out a timer shuts down the socket of the response being read
(found through an httpx "response" event hook), which wakes the blocked read at once. `Deadline.retry` repeats an
attempt the server refused for now (429, 502, 503, 504) with exponential backoff, a Retry-After honoured,
never past the deadline. (The SDKs' own retries are off: the openai SDK's would wait past the deadline, and
the ollama package has none.)
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 502, 503, 504})  # "not now": rate limited, or the server is loading/overloaded
MAX_RETRIES = 3
FIRST_BACKOFF_S = 0.5  # then 1 s, 2 s
MAX_RETRY_AFTER_S = 30.0


class Deadline:
    """`with Deadline(seconds) as deadline:` — the time left, and the sockets to cut when it is over."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self.retries = 0  # how many times `retry` repeated the attempt
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._timer.cancel()

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def retry(self, attempt: Callable[[], T], refusal: Callable[[Exception], tuple[int, float | None] | None]) -> T:
        """`attempt()`, repeated while it fails with an exception that `refusal` maps to (HTTP status, Retry-After
        seconds or None) with a status in RETRY_STATUSES: at most MAX_RETRIES more times, never past the end."""
        while True:
            try:
                return attempt()
            except Exception as err:
                refused = refusal(err)
                if refused is None or refused[0] not in RETRY_STATUSES or self.retries == MAX_RETRIES:
                    raise
                after = refused[1]
                wait = min(after, MAX_RETRY_AFTER_S) if after is not None else FIRST_BACKOFF_S * 2**self.retries
                if wait >= self.remaining():
                    raise
            time.sleep(wait)
            self.retries += 1

    def on_response(self, response: Any) -> None:
        """An httpx/httpx2 "response" event hook (headers in, body not yet read): remember its socket."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    """Shut the socket down (unlike close(), this wakes a read blocked on it in another thread)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by its owner


def retry_after(headers: Any) -> float | None:
    """Seconds from a Retry-After header given in seconds (the HTTP-date form is left to the backoff)."""
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
