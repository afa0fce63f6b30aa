"""Tokenizers of several kinds for the token counter and its bounds, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TOKENIZER_KINDS, build_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {kind: build_tokenizer(kind, tmp_path_factory.mktemp(kind)) for kind in TOKENIZER_KINDS}


@pytest.fixture(scope="session")
def token_counters(tokenizer_dirs: dict[str, Path]) -> dict:
    from ta.data.tokens import TokenizerCounter

    return {kind: TokenizerCounter(path) for kind, path in tokenizer_dirs.items()}
