"""Fixtures of the serving tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.helpers import Answer, MisbehavingServer


@pytest.fixture
def misbehaving() -> Iterator[Callable[..., MisbehavingServer]]:
    """misbehaving(*answers): a MisbehavingServer answering as scripted, closed after the test."""
    servers: list[MisbehavingServer] = []

    def start(*answers: Answer) -> MisbehavingServer:
        servers.append(MisbehavingServer(*answers))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
