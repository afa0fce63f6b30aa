"""The clients' overall deadline and retries (serve/deadline.py), on their own: which refusals are retried, how
long it waits, when it gives up, and the socket of a late answer shut down at the deadline."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from serve.deadline import RETRY_STATUSES, Deadline


class Refused(Exception):
    def __init__(self, status: int, retry_after: float | None = None) -> None:
        self.status, self.retry_after = status, retry_after


def refusal(err: Exception) -> tuple[int, float | None] | None:
    return (err.status, err.retry_after) if isinstance(err, Refused) else None


def attempts(*outcomes: Exception | str) -> tuple[list[float], Callable[[], str]]:
    """An attempt that raises or returns `outcomes` in turn, recording when it was called."""
    calls: list[float] = []
    left = list(outcomes)

    def attempt() -> str:
        calls.append(time.monotonic())
        outcome = left.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return calls, attempt


def test_not_now_statuses_are_retried_with_doubling_waits() -> None:
    assert {429, 502, 503, 504} == RETRY_STATUSES
    calls, attempt = attempts(Refused(503), Refused(429), "answer")
    with Deadline(10) as deadline:
        assert deadline.retry(attempt, refusal) == "answer"
    assert deadline.retries == 2
    assert calls[1] - calls[0] == pytest.approx(0.5, abs=0.2) and calls[2] - calls[1] == pytest.approx(1.0, abs=0.2)


def test_retry_after_is_honoured() -> None:
    calls, attempt = attempts(Refused(429, retry_after=0.2), "answer")
    with Deadline(10) as deadline:
        assert deadline.retry(attempt, refusal) == "answer"
    assert calls[1] - calls[0] == pytest.approx(0.2, abs=0.15)


@pytest.mark.parametrize("error", [Refused(500), Refused(401), ValueError("not an HTTP refusal")])
def test_other_errors_are_not_retried(error: Exception) -> None:
    calls, attempt = attempts(error, "answer")
    with Deadline(10) as deadline, pytest.raises(type(error)):
        deadline.retry(attempt, refusal)
    assert len(calls) == 1 and deadline.retries == 0


def test_no_wait_runs_past_the_deadline() -> None:
    calls, attempt = attempts(Refused(503, retry_after=5), "answer")
    started = time.monotonic()
    with Deadline(1) as deadline, pytest.raises(Refused):
        deadline.retry(attempt, refusal)
    assert time.monotonic() - started < 0.5 and len(calls) == 1


def test_retries_stop_after_three() -> None:
    calls, attempt = attempts(*[Refused(503, retry_after=0)] * 5)
    with Deadline(10) as deadline, pytest.raises(Refused):
        deadline.retry(attempt, refusal)
    assert len(calls) == 4 and deadline.retries == 3


def test_the_socket_of_an_answer_still_coming_is_shut_at_the_deadline() -> None:
    """A read blocked on the answer's socket wakes (with end of file) when the deadline passes."""
    ours, theirs = socket.socketpair()
    response = SimpleNamespace(extensions={"network_stream": SimpleNamespace(get_extra_info={"socket": ours}.get)})
    read: list[bytes] = []
    with Deadline(0.3) as deadline:
        deadline.on_response(response)
        reader = threading.Thread(target=lambda: read.append(ours.recv(10)))
        reader.start()
        reader.join(timeout=3)
    assert not reader.is_alive() and read == [b""] and deadline.expired
    ours.close()
    theirs.close()
